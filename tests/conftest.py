"""Shared fixtures: a real Redis on an isolated, flushed database; control planes and agents.

A missing Redis skips the tests that need it locally, and fails them under CI=true, so
nothing silently skips in CI.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

# As in the agent (hodei/cli.py): the processes this one starts never use gRPC, and gRPC's
# at-fork handlers crash a child forked while gRPC threads run, as uvloop's spawn does.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import psutil
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from hodei import loops
from hodei.agent.sandbox import Sandbox, SandboxConfig
from hodei.plugin.models import FunctionSpec, Invocation
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings

# Run in the background by a non-interactive shell (`.ci/run &`), the suite inherits SIGINT
# ignored, and so would every `hodei dev` it starts and stops with a Ctrl-C as a user does.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REDIS_URL = os.environ.get("HODEI_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent
# This test session's agents keep their marks here: another Hodei on the host (a second
# test run, a `hodei dev` stack) that uses the same worker ids is never taken for ours.
STATE_DIR = Path(tempfile.mkdtemp(prefix="hodei-test-state-"))
GATES = ROOT / ".test-gates"
SESSION_MARK = secrets.token_hex(16)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on the event loop the processes run on: HODEI_EVENT_LOOP's, uvloop where
    installed unless it says otherwise."""
    new_loop = loops.factory(os.environ.get("HODEI_EVENT_LOOP", "auto"))
    return {"uvloop": new_loop} if new_loop else {"asyncio": asyncio.new_event_loop}


def require(service: str, available: bool) -> None:
    if available:
        return
    if IN_CI:
        pytest.fail(f"{service} is not available, and CI must run every test")
    pytest.skip(f"{service} is not available")


def _redis_up() -> bool:
    try:
        return bool(sync_redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url() -> Iterator[str]:
    require("Redis", _redis_up())
    client = sync_redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def sandbox_config(sandboxed: bool, **overrides: Any) -> SandboxConfig:
    """A spawner configuration of this test session (its own cgroup folder)."""
    if sandboxed:
        require("root (the process sandbox needs it)", os.geteuid() == 0)
    return SandboxConfig(
        **{"sandboxed": sandboxed, "mark": SESSION_MARK, "uid_count": 8, **overrides}
    )


@pytest.fixture(params=["cgroup", "rlimits", "off"], ids=["sandboxed", "no-cgroup", "unsandboxed"])
async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    """The agent's spawner: sandboxed with a cgroup per function, sandboxed without cgroups
    (uids and rlimits alone), and unsandboxed."""
    mode = request.param
    spawner = Sandbox.start(
        sandbox_config(mode != "off", **({"cgroup_root": "off"} if mode == "rlimits" else {}))
    )
    yield spawner
    await spawner.close()


def sleeping(suffix: str) -> list[int]:
    """The live ``sleep N.<suffix>`` processes (the test's own: the suffix is random)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if (
                len(cmdline) == 2
                and cmdline[0].endswith("sleep")
                and cmdline[1].endswith(f".{suffix}")
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def random_suffix() -> str:
    return f"{uuid.uuid4().int % 10**9:09d}"


def fast_settings(redis_url: str, **overrides: Any) -> ServerSettings:
    """Timings scaled down so failure handling happens within a test's patience."""
    base = ServerSettings(
        redis_url=redis_url,
        grpc_port=0,
        metrics_port=-1,
        heartbeat_interval_s=0.2,
        missed_heartbeats=3,
        failed_after_s=30,
        lease_ttl_s=1.5,
        leader_ttl_s=1.0,
        retry_base_s=0.05,
        retry_cap_s=0.2,
        gauge_interval_s=0.3,
        ageing_s=60,
    )
    return replace(base, **overrides)


@pytest.fixture
def settings(redis_url: str) -> ServerSettings:
    return fast_settings(redis_url)


@pytest.fixture
async def plane(settings: ServerSettings) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(settings)
    await cp.start()
    await wait_for(lambda: cp.leader.is_leader, 15)
    yield cp
    await cp.stop(0.5)


class Gate:
    """What a function waits for before it goes on: the test opens it when the moment has
    come (instead of a function that sleeps and a test that hopes). A file in the checkout,
    readable by any uid: sandboxed functions have private /tmp, /var/tmp and /dev/shm."""

    def __init__(self) -> None:
        GATES.mkdir(exist_ok=True)
        GATES.chmod(0o755)
        folder = Path(tempfile.mkdtemp(prefix="gate-", dir=GATES))
        folder.chmod(0o755)
        self.path = folder / "open"

    def command(self, before: str, after: str) -> list[str]:
        """A shell function: ``before``, wait for the gate, ``after``."""
        wait = f'while [ ! -e "{self.path}" ]; do sleep 0.02; done'
        return ["sh", "-c", f"{before}; {wait}; {after}"]

    def open(self) -> None:
        self.path.touch(mode=0o644)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.close()
    g.path.parent.rmdir()


class FakeClock:
    """A clock the test moves by hand (the data layer's ``clock``): lease and queue
    timing tested without waiting."""

    def __init__(self) -> None:
        self.ms = int(time.time() * 1000)

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


async def wait_for(predicate: Any, within: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


async def final(cp: ControlPlane, invocation_id: str, within: float = 15) -> Invocation:
    async def done() -> Invocation | None:
        inv = await cp.data.invocations.get(invocation_id)
        return inv if inv.status.final else None

    result: Invocation = await wait_for(done, within)
    return result


async def invoke(cp: ControlPlane, fn: FunctionSpec, payload: bytes = b"", **kw: Any) -> str:
    """Enqueue an invocation of ``fn`` (as the gateway would); its id."""
    return (await cp.data.invocations.enqueue(fn.name, payload, **kw)).id


async def logs(cp: ControlPlane, invocation_id: str) -> list[dict[str, Any]]:
    return (await cp.data.invocations.logs(invocation_id, 0, 100_000)).lines


async def dead_ids(cp: ControlPlane) -> list[str]:
    return [inv.id for inv in await cp.data.invocations.dead_letters()]


async def deploy(cp: ControlPlane, name: str, **spec: Any) -> FunctionSpec:
    fn = FunctionSpec.from_dict(name, spec)
    await cp.data.functions.put(fn)
    return fn


# The process runtime is off unless asked for: test agents offer it, sandboxed when the
# tests run as root (CI does), else unsandboxed as the test's user.
DEFAULT_RUNTIMES = ("--runtimes", "process", "--runtimes", "docker")
SANDBOX = () if os.geteuid() == 0 else ("--process-sandbox", "off")


class AgentProcess:
    """``hodei agent`` as its own OS process (offering the process runtime unless ``extra``
    names the runtimes)."""

    def __init__(
        self,
        port: int,
        worker_id: str,
        *extra: str,
        token: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        args = [
            sys.executable,
            "-m",
            "hodei.cli",
            "agent",
            *(("--server", f"127.0.0.1:{port}") if port else ()),
            "--worker-id",
            worker_id,
            "--metrics-port",
            "-1",
            "--health-port",
            "-1",
            "--heartbeat-interval-s",
            "0.2",
            "--reconnect-base-s",
            "0.05",
            "--reconnect-cap-s",
            "0.5",
            "--drain-grace-s",
            "1",
            *(() if "--runtimes" in extra else DEFAULT_RUNTIMES),
            *(() if "--process-sandbox" in extra else SANDBOX),
            *extra,
        ]
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("HODEI_", "CONSUL_", "NOMAD_"))
        }
        environ["HODEI_STATE_DIR"] = str(STATE_DIR)
        environ.update(env or {})
        if token:
            environ["HODEI_TOKEN"] = token
        self.worker_id = worker_id
        self.log_path = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"hodei-agent-{worker_id}-{os.getpid()}.log"
        )
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, env=environ, cwd=ROOT
        )

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    async def stop(self) -> None:
        """SIGTERM (a clean drain), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await wait_for(lambda: self.proc.poll() is not None, 8)
            except AssertionError:
                self.proc.kill()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
async def agents(plane: ControlPlane) -> AsyncIterator[list[AgentProcess]]:
    """Agents of the test; they stop before the control plane, while it still answers."""
    started: list[AgentProcess] = []
    yield started
    await asyncio.gather(*(agent.stop() for agent in started))


async def start_agent(
    cp: ControlPlane,
    agents: list[AgentProcess],
    worker_id: str,
    *extra: str,
    token: str = "",
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> AgentProcess:
    agent = AgentProcess(cp.port if port is None else port, worker_id, *extra, token=token, env=env)
    agents.append(agent)

    async def connected() -> bool:
        w = await cp.data.workers.get(worker_id)
        return bool(w and w.state in ("available", "running"))

    await wait_for(connected, 15)
    return agent


class ServerProcess:
    """``hodei server`` as its own OS process, on a fixed port so it can come back."""

    def __init__(
        self, settings: ServerSettings, port: int, server_id: str, metrics_port: int = -1
    ) -> None:
        self.port = port
        self.metrics_port = metrics_port
        self.server_id = server_id
        self.settings = settings
        self.log_path = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"hodei-server-{server_id}-{os.getpid()}.log"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        s = self.settings
        args = [
            sys.executable,
            "-m",
            "hodei.cli",
            "server",
            "--redis-url",
            s.redis_url,
            "--grpc-port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--server-id",
            self.server_id,
            "--heartbeat-interval-s",
            str(s.heartbeat_interval_s),
            "--lease-ttl-s",
            str(s.lease_ttl_s),
            "--leader-ttl-s",
            str(s.leader_ttl_s),
            "--retry-base-s",
            str(s.retry_base_s),
            "--gauge-interval-s",
            str(s.gauge_interval_s),
            "--retry-cap-s",
            str(s.retry_cap_s),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


class RedisServer:
    """A ``redis-server`` of the test's own on a free port, with its AOF in ``folder``
    (``appendfsync always``: what was acknowledged survives a kill -9), so it can be
    killed and started again on the same data."""

    def __init__(self, folder: Path, fsync: str = "always", binary: str | None = None) -> None:
        binary = binary or shutil.which("redis-server")
        require("a redis-server binary", binary is not None)
        self.binary = str(binary)
        self.folder = folder
        self.fsync = fsync
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if sync_redis.Redis.from_url(self.url, socket_timeout=1).ping():
                    return
            except Exception:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class GatewayProcess:
    """``hodei gateway`` as its own OS process."""

    def __init__(self, redis_url: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkdtemp(prefix="hodei-gateway-")) / "gateway.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HODEI_", "CONSUL_"))}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hodei.cli",
                    "gateway",
                    "--port",
                    str(self.port),
                    "--redis-url",
                    redis_url,
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
