"""The hodei image (Dockerfile, built by .ci/build-image) runs the stack as the jobspecs do:
server, gateway and agent each in its own container (host networking), the agent driving
the host's Docker engine through its socket to run a docker function in a sibling
container, and a drain as Nomad does it (``docker stop`` with the jobspec's kill timeout)
that hands running work back — the agent stops the sibling it handed back and exits
cleanly before SIGKILL; the invocation then finishes on another agent."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ROOT, free_port, require, wait_for
from test_hcl import blocks, duration_s, job_of

IMAGE = os.environ.get("HODEI_TEST_IMAGE", "hodei-ci/hodei:latest")
FUNCTION_IMAGE = "hodei-test/busybox:latest"


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def container_logs(name: str, tail: str = "all") -> str:
    """What the container wrote (Hodei logs to stderr)."""
    done = subprocess.run(
        ["docker", "logs", "--tail", tail, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    return done.stdout


def image_present(name: str) -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def agent_task() -> dict[str, Any]:
    [task] = list(blocks(job_of(ROOT / "jobspecs" / "hodei-agent.nomad.hcl"), "task"))
    return task


class Stack:
    """Containers of one test, named after it; all removed at the end."""

    def __init__(self, redis_url: str, state: Path) -> None:
        self.prefix = f"hodei-ci-{uuid.uuid4().hex[:8]}"
        self.redis_url = redis_url
        self.state = state
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.names: list[str] = []
        self.workers: list[str] = []

    def run(self, role: str, env: dict[str, str], *options: str) -> str:
        name = f"{self.prefix}-{role}"
        flags = [f"--env={k}={v}" for k, v in env.items()]
        docker("run", "--detach", "--name", name, "--network", "host", *options, *flags,
               IMAGE, "hodei", role.split("-")[0])  # fmt: skip
        self.names.append(name)
        return name

    def server(self) -> str:
        return self.run(
            "server",
            {
                "HODEI_REDIS_URL": self.redis_url,
                "HODEI_GRPC_HOST": "127.0.0.1",
                "HODEI_GRPC_PORT": str(self.grpc_port),
                "HODEI_METRICS_PORT": "-1",
                "HODEI_SERVER_ID": f"{self.prefix}-s1",
                "HODEI_HEARTBEAT_INTERVAL_S": "1",
                "HODEI_LEADER_TTL_S": "3",
            },
        )

    def gateway(self) -> str:
        return self.run(
            "gateway",
            {
                "HODEI_REDIS_URL": self.redis_url,
                "HODEI_HOST": "127.0.0.1",
                "HODEI_PORT": str(self.http_port),
            },
        )

    def agent(self, worker: str, env: dict[str, str]) -> str:
        """As the docker jobspec runs it: root, the host's Docker socket, a state folder
        that outlives the container, an init, the jobspec's drain settings."""
        self.workers.append(worker)
        jobspec_env = next(blocks(agent_task(), "env"))
        return self.run(
            f"agent-{worker}",
            {
                "HODEI_SERVER": f"127.0.0.1:{self.grpc_port}",
                "HODEI_WORKER_ID": worker,
                "HODEI_RUNTIMES": jobspec_env["HODEI_RUNTIMES"],
                "HODEI_STATE_DIR": jobspec_env["HODEI_STATE_DIR"],
                "HODEI_DRAIN_GRACE_S": jobspec_env["HODEI_DRAIN_GRACE_S"],
                "HODEI_DRAIN_HANDBACK_S": jobspec_env["HODEI_DRAIN_HANDBACK_S"],
                "HODEI_HEARTBEAT_INTERVAL_S": "1",
                "HODEI_METRICS_PORT": "-1",
                "HODEI_HEALTH_PORT": "-1",
                "HODEI_CPU_MILLICORES": "2000",
                "HODEI_MEMORY_MB": "1024",
                "HODEI_JOB_SLOTS": "2",
            }
            | env,
            "--user=root",
            "--init",
            "--volume=/var/run/docker.sock:/var/run/docker.sock",
            f"--volume={self.state}:/var/lib/hodei",
        )

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{container_logs(name, '40')}" for name in self.names)

    def remove(self) -> None:
        for name in self.names:
            docker("rm", "--force", name, check=False)
        for worker in self.workers:
            leftovers = docker("ps", "-aq", "--filter", f"label=hodei.worker={worker}", check=False)
            for container in leftovers.split():
                docker("rm", "--force", container, check=False)


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    require("Docker and the hodei image (.ci/build-image)", image_present(IMAGE))
    require(f"the test image {FUNCTION_IMAGE} (.ci/test-image)", image_present(FUNCTION_IMAGE))
    built = Stack(redis_url, tmp_path)
    try:
        yield built
    except BaseException:
        print(built.logs())
        raise
    finally:
        built.remove()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{stack.http_port}") as session:
        yield session


async def ready(http: aiohttp.ClientSession) -> bool:
    try:
        async with http.get("/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def worker_state(http: aiohttp.ClientSession, worker: str) -> str:
    async with http.get("/v1/workers") as r:
        workers = (await r.json())["workers"]
    return next((w["state"] for w in workers if w["id"] == worker), "")


async def record(http: aiohttp.ClientSession, invocation_id: str) -> dict[str, Any]:
    async with http.get(f"/v1/invocations/{invocation_id}") as r:
        found: dict[str, Any] = await r.json()
        return found


def siblings(invocation_id: str) -> list[str]:
    return docker("ps", "-aq", "--filter", f"label=hodei.invocation={invocation_id}").split()


async def test_stack_in_containers_runs_docker_functions_and_drains_as_nomad_stops_it(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    stack.server()
    stack.gateway()
    # The jobspec's drain settings (grace, hand-back) and, below, its kill timeout.
    first = stack.agent("ci-w1", {})
    await wait_for(lambda: ready(http), 60, interval=0.2)
    await wait_for(lambda: worker_state(http, "ci-w1"), 60, interval=0.2)

    spec = {"runtime": "docker", "image": FUNCTION_IMAGE, "command": ["tr", "a-z", "A-Z"]}
    async with http.put("/v1/functions/shout", json=spec) as r:
        assert r.status == 201, await r.text()
    async with http.post("/v1/functions/shout/invoke?wait=60", data=b"hello") as r:
        assert (r.status, await r.read()) == (200, b"HELLO"), r.headers
        assert r.headers["X-Hodei-Worker"] == "ci-w1"

    # Attempt 1 would run for five minutes; a later attempt answers at once.
    script = 'if [ "$HODEI_ATTEMPT" = 1 ]; then sleep 300; fi; echo "done $HODEI_ATTEMPT"'
    slow = {"runtime": "docker", "image": FUNCTION_IMAGE, "command": ["sh", "-c", script]}
    async with http.put("/v1/functions/slow", json=slow) as r:
        assert r.status == 201
    async with http.post("/v1/functions/slow/invoke?async=true") as r:
        invocation_id = (await r.json())["id"]
    await wait_for(lambda: siblings(invocation_id), 60, interval=0.2)
    assert (await record(http, invocation_id))["status"] == "running"

    # Nomad stops the agent: kill_signal, then SIGKILL after kill_timeout.
    kill_timeout = duration_s(agent_task()["kill_timeout"])
    started = time.monotonic()
    await asyncio.to_thread(docker, "stop", "--time", str(int(kill_timeout)), first)
    stopped_in = time.monotonic() - started
    state = json.loads(docker("inspect", "--format", "{{json .State}}", first))
    assert state["ExitCode"] == 0, (state, stack.logs())  # 137 would be SIGKILL
    grace = float(next(blocks(agent_task(), "env"))["HODEI_DRAIN_GRACE_S"])
    assert grace <= stopped_in < kill_timeout
    assert not siblings(invocation_id), "the agent left the container it handed back"
    assert "handing back 1 jobs" in container_logs(first)
    handed = await record(http, invocation_id)
    assert handed["status"] == "queued" and handed["attempt"] == 2, handed

    # Another agent takes it.
    stack.agent("ci-w2", {})

    async def finished() -> dict[str, Any] | None:
        found = await record(http, invocation_id)
        return found if found["status"] not in ("queued", "running") else None

    done = await wait_for(finished, 90, interval=0.3)
    assert (done["status"], done["worker_id"], done["attempt"]) == ("succeeded", "ci-w2", 2)
    async with http.get(f"/v1/invocations/{invocation_id}/result") as r:
        assert await r.read() == b"done 2\n"
    print(f"image e2e: drain with hand-back took {stopped_in:.2f}s of {kill_timeout:g}s")
