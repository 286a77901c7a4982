"""The docker runtime against a real engine: the control plane in-process, agents as OS
processes, functions in containers of the busybox image that `.ci/test-image` builds."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest
from conftest import (
    ROOT,
    STATE_DIR,
    AgentProcess,
    deploy,
    final,
    invoke,
    logs,
    require,
    start_agent,
    wait_for,
)

from hodei.agent.docker_spec import LABEL_INVOCATION, LABEL_WORKER
from hodei.agent.identity import LABEL_MARK, agent_mark
from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings

IMAGE = "hodei-test/busybox:latest"
SMALL = ["--cpu-millicores", "2000", "--memory-mb", "2048", "--job-slots", "8"]
DOCKER_ONLY = ["--runtimes", "docker", "--docker-ping-interval-s", "0.2"]


def _engine() -> docker.APIClient | None:
    try:
        client = docker.APIClient(version="1.41", timeout=10)
        client.ping()
        return client
    except Exception:
        return None


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.APIClient]:
    client = _engine()
    require("Docker engine", client is not None)
    assert client is not None
    try:
        client.inspect_image(IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run([str(ROOT / ".ci" / "test-image"), IMAGE], check=True)
    yield client
    client.close()


class EngineProxy:
    """A Unix-socket relay to the real engine that the test can take down, closing every
    connection through it, as an engine that stops would."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.target = target
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._relay, str(self.path))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.close()
        self.path.unlink(missing_ok=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


def containers_of(engine: docker.APIClient, label: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = engine.containers(all=True, filters={"label": label})
    return found


async def docker_agent(
    plane: ControlPlane, agents: list[AgentProcess], worker_id: str, *extra: str
) -> AgentProcess:
    agent = await start_agent(plane, agents, worker_id, *SMALL, *DOCKER_ONLY, *extra)

    async def offers_docker() -> bool:
        h = await plane.data.workers.get(worker_id)
        return bool(h and "docker" in h.runtimes)

    await wait_for(offers_docker, 10)
    return agent


async def test_result_logs_and_container_removed(
    plane: ControlPlane, agents: list[AgentProcess], engine: docker.APIClient
) -> None:
    await docker_agent(plane, agents, "d1")
    fn = await deploy(
        plane,
        "upper",
        runtime="docker",
        image=IMAGE,
        command=["sh", "-c", 'echo "start $HODEI_INVOCATION_ID" >&2; tr a-z A-Z; echo end >&2'],
    )
    inv_id = await invoke(plane, fn, b"hello container")
    inv = await final(plane, inv_id, 30)
    assert inv.status is Status.SUCCEEDED, inv.error
    assert inv.exit_code == 0 and inv.worker_id == "d1"
    _, out = await plane.data.invocations.result(inv_id)
    assert out == b"HELLO CONTAINER"
    lines = [entry["line"] for entry in await logs(plane, inv_id)]
    assert lines == [f"start {inv_id}", "end"]
    assert containers_of(engine, f"{LABEL_INVOCATION}={inv_id}") == []


async def test_non_zero_exit_and_output_cap(
    plane: ControlPlane, agents: list[AgentProcess], engine: docker.APIClient
) -> None:
    await docker_agent(plane, agents, "d1", "--output-cap-bytes", "1000")
    fn = await deploy(
        plane,
        "bad",
        runtime="docker",
        image=IMAGE,
        command=["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x; exit 3"],
        max_retries=0,
    )
    inv = await final(plane, await invoke(plane, fn, b""), 30)
    assert inv.status is Status.FAILED and inv.exit_code == 3 and inv.error == "exit code 3"
    truncated, out = await plane.data.invocations.result(inv.id)
    assert out == b"x" * 1000 and truncated


async def test_oom_kill_is_reported(
    plane: ControlPlane, agents: list[AgentProcess], engine: docker.APIClient
) -> None:
    await docker_agent(plane, agents, "d1")
    fn = await deploy(
        plane,
        "hog",
        runtime="docker",
        image=IMAGE,
        command=["sh", "-c", 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo survived'],
        resources={"memory_mb": 16},
        max_retries=0,
    )
    inv = await final(plane, await invoke(plane, fn, b""), 60)
    assert inv.status is Status.FAILED and inv.error == "oom_killed"


async def test_timeout_and_cancel_kill_the_container(
    plane: ControlPlane, agents: list[AgentProcess], engine: docker.APIClient
) -> None:
    await docker_agent(plane, agents, "d1")
    slow = await deploy(
        plane, "slow", runtime="docker", image=IMAGE, command=["sleep", "60"], timeout_s=1
    )
    forever = await deploy(
        plane,
        "forever",
        runtime="docker",
        image=IMAGE,
        command=["sh", "-c", "echo started >&2; sleep 60"],
    )
    timed = await invoke(plane, slow, b"")
    cancelled = await invoke(plane, forever, b"")

    async def started() -> bool:
        return bool(await logs(plane, cancelled))

    await wait_for(started, 30)
    await plane.data.invocations.cancel(cancelled, "user request")
    inv = await final(plane, cancelled, 15)
    assert inv.status is Status.CANCELLED
    inv = await final(plane, timed, 30)
    assert inv.status is Status.TIMED_OUT and inv.attempt == 1
    for inv_id in (timed, cancelled):
        assert containers_of(engine, f"{LABEL_INVOCATION}={inv_id}") == []


async def test_hardening_is_visible_inside(
    plane: ControlPlane, agents: list[AgentProcess], engine: docker.APIClient
) -> None:
    await docker_agent(plane, agents, "d1")
    probe = (
        "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status | tr -s '\\t ' ' ';"
        " touch /root-write 2>/dev/null && echo root-writable || echo root-read-only;"
        " touch /tmp/ok && echo tmp-writable; ls /sys/class/net | tr '\\n' ' '"
    )
    closed = await deploy(
        plane, "closed", runtime="docker", image=IMAGE, command=["sh", "-c", probe]
    )
    opened = await deploy(
        plane, "opened", runtime="docker", image=IMAGE, command=["sh", "-c", probe], network=True
    )
    inv = await final(plane, await invoke(plane, closed, b""), 30)
    assert inv.status is Status.SUCCEEDED, inv.error
    _, out = await plane.data.invocations.result(inv.id)
    lines = out.decode().splitlines()
    assert lines[:5] == [
        "65534",
        "CapEff: 0000000000000000",
        "NoNewPrivs: 1",
        "root-read-only",
        "tmp-writable",
    ]
    assert lines[5].split() == ["lo"]
    inv = await final(plane, await invoke(plane, opened, b""), 30)
    _, out = await plane.data.invocations.result(inv.id)
    assert "eth0" in out.decode().splitlines()[5].split()


async def test_four_containers_at_once_within_capacity(
    plane: ControlPlane, agents: list[AgentProcess], engine: docker.APIClient
) -> None:
    # Capacity 2000 millicores, 500 each: four run together and a fifth waits for room.
    await docker_agent(plane, agents, "d1")
    fn = await deploy(
        plane,
        "span",
        runtime="docker",
        image=IMAGE,
        command=["sh", "-c", "cut -d' ' -f1 /proc/uptime; sleep 1.5; cut -d' ' -f1 /proc/uptime"],
        resources={"cpu_millicores": 500, "memory_mb": 64},
    )
    ids = [await invoke(plane, fn, b"") for _ in range(5)]
    spans = []
    for inv_id in ids:
        inv = await final(plane, inv_id, 60)
        assert inv.status is Status.SUCCEEDED, inv.error
        start, end = map(float, (await plane.data.invocations.result(inv_id))[1].split())
        spans.append((start, end))
    first_four, fifth = spans[:4], spans[4]
    assert max(s for s, _ in first_four) < min(e for _, e in first_four)
    assert fifth[0] >= min(e for _, e in first_four)


async def test_image_pull_failure_fails_once_without_retries(
    plane: ControlPlane, agents: list[AgentProcess], engine: docker.APIClient
) -> None:
    await docker_agent(plane, agents, "d1")
    fn = await deploy(
        plane,
        "ghost",
        runtime="docker",
        image="hodei-test/no-such-image:1",
        command=["true"],
        max_retries=3,
    )
    ids = [await invoke(plane, fn, b"") for _ in range(3)]
    for inv_id in ids:
        inv = await final(plane, inv_id, 30)
        assert inv.status is Status.FAILED and inv.attempt == 1
        assert inv.error.startswith("image_pull_failed: hodei-test/no-such-image:1")


async def test_a_command_that_cannot_start_and_an_image_gone_from_the_engine(
    plane: ControlPlane, agents: list[AgentProcess], engine: docker.APIClient
) -> None:
    await docker_agent(plane, agents, "d1")
    missing = await deploy(
        plane, "missing", runtime="docker", image=IMAGE, command=["no-such-binary"], max_retries=0
    )
    inv = await final(plane, await invoke(plane, missing, b""), 30)
    assert inv.status is Status.FAILED and inv.exit_code == 127
    assert inv.error.startswith("cannot start:")

    copy = "hodei-test/busybox:vanishing"
    engine.tag(IMAGE, "hodei-test/busybox", "vanishing")
    fn = await deploy(plane, "vanishing", runtime="docker", image=copy, command=["echo", "hi"])
    inv = await final(plane, await invoke(plane, fn, b""), 30)
    assert inv.status is Status.SUCCEEDED
    engine.remove_image(copy)
    # The agent believed it present; create fails, it looks again and cannot pull it here.
    inv = await final(plane, await invoke(plane, fn, b""), 30)
    assert inv.status is Status.FAILED and inv.attempt == 1
    assert inv.error.startswith(f"image_pull_failed: {copy}")


async def test_docker_is_offered_only_while_the_engine_answers(
    plane: ControlPlane, agents: list[AgentProcess], engine: docker.APIClient, tmp_path: Path
) -> None:
    socket_path = tmp_path / "docker.sock"
    await start_agent(
        plane,
        agents,
        "d1",
        *SMALL,
        "--runtimes",
        "process",
        "--runtimes",
        "docker",
        "--docker-ping-interval-s",
        "0.2",
        "--docker-host",
        f"unix://{socket_path}",
    )
    h = await plane.data.workers.get("d1")
    assert h is not None and h.runtimes == {"process"}
    fn = await deploy(plane, "later", runtime="docker", image=IMAGE, command=["echo", "ran"])
    inv_id = await invoke(plane, fn, b"")
    await asyncio.sleep(1.0)
    inv = await plane.data.invocations.get(inv_id)
    assert inv.status is Status.QUEUED and inv.pending_reason
    # The engine "comes back" at the address the agent watches, then goes away again.
    proxy = EngineProxy(socket_path)
    await proxy.start()
    try:
        inv = await final(plane, inv_id, 30)
        assert inv.status is Status.SUCCEEDED
        h = await plane.data.workers.get("d1")
        assert h is not None and h.runtimes == {"docker", "process"}
    finally:
        await proxy.stop()

    async def withdrawn() -> bool:
        h = await plane.data.workers.get("d1")
        return bool(h and h.runtimes == {"process"})

    await wait_for(withdrawn, 10)


async def test_a_leftover_found_when_the_engine_comes_back_is_not_left_running(
    plane: ControlPlane, agents: list[AgentProcess], engine: docker.APIClient, tmp_path: Path
) -> None:
    socket_path = tmp_path / "docker.sock"
    await start_agent(
        plane,
        agents,
        "d1",
        *SMALL,
        "--runtimes",
        "process",
        "--runtimes",
        "docker",
        "--docker-ping-interval-s",
        "0.2",
        "--docker-host",
        f"unix://{socket_path}",
    )
    # A container an earlier life of d1 started, for an invocation nobody leases to it now.
    labels = {
        LABEL_WORKER: "d1",
        LABEL_MARK: agent_mark(str(STATE_DIR), "d1"),
        LABEL_INVOCATION: "ghost-1",
        "hodei.attempt": "1",
    }
    created = engine.create_container(IMAGE, ["sleep", "60"], labels=labels)
    engine.start(created["Id"])
    proxy = EngineProxy(socket_path)
    try:
        await proxy.start()  # the engine answers the agent again

        def gone() -> bool:
            return not containers_of(engine, f"{LABEL_INVOCATION}=ghost-1")

        await wait_for(gone, 20)
    finally:
        await proxy.stop()
        if not gone():
            engine.remove_container(created["Id"], force=True)


@pytest.mark.parametrize("exits_while_down", [False, True], ids=["running", "exited"])
async def test_agent_killed_and_restarted_keeps_its_container_result(
    redis_url: str,
    engine: docker.APIClient,
    exits_while_down: bool,
    settings: ServerSettings,
) -> None:
    # Leases long enough to outlast the agent's absence: the same attempt must finish.
    cp = ControlPlane(replace(settings, lease_ttl_s=20))
    await cp.start()
    started: list[AgentProcess] = []
    try:
        await wait_for(lambda: cp.leader.is_leader, 5)
        agent = await docker_agent(cp, started, "d1")
        fn = await deploy(
            cp,
            "steady",
            runtime="docker",
            image=IMAGE,
            command=["sh", "-c", "echo begun >&2; sleep 2; cat; echo done >&2"],
        )
        inv_id = await invoke(cp, fn, b"kept")

        async def begun() -> bool:
            return bool(await logs(cp, inv_id))

        await wait_for(begun, 30)
        agent.proc.kill()
        agent.proc.wait(10)
        running = containers_of(engine, f"{LABEL_INVOCATION}={inv_id}")
        assert len(running) == 1
        if exits_while_down:
            await asyncio.sleep(3)
        await docker_agent(cp, started, "d1")
        inv = await final(cp, inv_id, 30)
        assert inv.status is Status.SUCCEEDED and inv.attempt == 1, inv.error
        _, out = await cp.data.invocations.result(inv_id)
        assert out == b"kept"
        assert containers_of(engine, f"{LABEL_WORKER}=d1") == []
    finally:
        await asyncio.gather(*(a.stop() for a in started))
        await cp.stop(0.5)
