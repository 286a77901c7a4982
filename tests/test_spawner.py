"""The spawner's mechanics: refusing what it cannot confine, instance endpoints, a slot
process lost from outside."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import sys
from pathlib import Path

import psutil
from conftest import (
    SESSION_MARK,
    STATE_DIR,
    random_suffix,
    require,
    sandbox_config,
    sleeping,
    wait_for,
)

from hodei.agent.sandbox import Endpoint, Sandbox, SpawnRequest, drain, feed
from hodei.errors import SpawnerFailed

PY_AGENT = sys.executable
PY = "python3"


async def test_an_agent_that_cannot_sandbox_refuses_the_process_runtime() -> None:
    require("root and unshare(1)", os.geteuid() == 0 and shutil.which("unshare") is not None)
    base = [PY_AGENT, "-m", "hodei.cli", "agent", "--server", "127.0.0.1:1", "--worker-id"]
    base += [f"refuse-{SESSION_MARK[:8]}", "--state-dir", str(STATE_DIR), "--runtimes", "process"]
    base += ["--metrics-port", "-1", "--health-port", "-1"]
    # Root of a user namespace: namespaces and mounts, but no other uid to run functions as.
    code, out = await exited(["unshare", "--user", "--map-root-user", *base])
    assert code != 0 and "cannot sandbox functions here" in out and "--process-sandbox off" in out
    # Unsandboxed as root is refused too, unless explicitly allowed.
    code, out = await exited([*base, "--process-sandbox", "off"])
    assert code != 0 and "unsandboxed as root" in out


async def exited(command: list[str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_an_instance_reaches_its_own_endpoint_and_nothing_else() -> None:
    """The lambda interface's case: each long-lived instance gets a listening socket in a
    network namespace of its own; with network false it reaches that socket alone."""
    require("root (the process sandbox needs it)", os.geteuid() == 0)
    sandbox = Sandbox.start(sandbox_config(True))
    loop = asyncio.get_running_loop()
    endpoints = [await sandbox.endpoint(), await sandbox.endpoint()]
    try:

        async def serve(endpoint: Endpoint, answer: bytes) -> None:
            while True:
                conn, _ = await loop.sock_accept(endpoint.listener)
                await loop.sock_sendall(conn, answer)
                conn.close()

        servers = [
            asyncio.ensure_future(serve(endpoint, b"instance %d" % n))
            for n, endpoint in enumerate(endpoints)
        ]
        probe = (
            "import socket, sys\n"
            "for port in (9001, 6379):\n"
            "    try:\n"
            "        s = socket.create_connection(('127.0.0.1', port), 2)\n"
            "        print(port, s.recv(64).decode())\n"
            "    except OSError as exc:\n"
            "        print(port, 'refused')\n"
        )
        outputs = []
        for endpoint in endpoints:
            assert endpoint.address == "127.0.0.1:9001"
            child = await sandbox.spawn(
                SpawnRequest([PY, "-c", probe], {"PATH": os.environ["PATH"]}, endpoint=endpoint)
            )
            out: list[bytes] = []
            io = [
                feed(child.stdin, b""),
                drain(child.stdout, out.append),
                drain(child.stderr, out.append),
            ]
            assert (await child.wait()).code == 0
            await asyncio.gather(*io)
            outputs.append(b"".join(out).decode())
        assert outputs == ["9001 instance 0\n6379 refused\n", "9001 instance 1\n6379 refused\n"]
        for server in servers:
            server.cancel()
    finally:
        for endpoint in endpoints:
            endpoint.close()
        await sandbox.close()


async def test_a_slot_killed_from_outside_fails_its_function_and_nothing_is_left() -> None:
    require("root (the process sandbox needs it)", os.geteuid() == 0)
    sandbox = Sandbox.start(sandbox_config(True, uid_count=1))
    needle = random_suffix()
    try:
        request = SpawnRequest(
            ["sh", "-c", f"setsid sleep 81.{needle} & echo up; exec sleep 82.{needle}"],
            {"PATH": os.environ["PATH"]},
        )
        child = await sandbox.spawn(request)
        lines: list[bytes] = []
        io = [feed(child.stdin, b""), drain(child.stdout, lines.append)]
        await wait_for(lambda: len(sleeping(needle)) == 2, 10)
        slot = psutil.Process(sleeping(needle)[0]).parent()
        assert slot is not None and "sandbox_spawner" in " ".join(slot.cmdline())
        os.kill(slot.pid, signal.SIGKILL)
        assert (await asyncio.wait_for(child.wait(), 10)).code == -9
        await wait_for(lambda: not sleeping(needle), 10)
        await asyncio.wait(io, timeout=5)

        # The uid serves again, from a new slot process, once what was left is cleared.
        async def runs_again() -> bool:
            try:
                retry = await sandbox.spawn(SpawnRequest(["true"], {"PATH": os.environ["PATH"]}))
            except SpawnerFailed:
                return False
            io = [feed(retry.stdin, b""), drain(retry.stdout, len), drain(retry.stderr, len)]
            exit = await retry.wait()
            await asyncio.wait(io, timeout=5)
            return exit.code == 0

        await wait_for(runs_again, 10)
    finally:
        await sandbox.close()


async def test_agent_secrets_come_from_files_and_leave_its_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    token_file.chmod(0o600)
    probe = (
        "import ctypes, os\n"
        "from hodei.agent.sandbox_secrets import protect_agent\n"
        "from hodei.agent.settings import AgentSettings\n"
        f"s = protect_agent(AgentSettings.from_env(token_file={str(token_file)!r}))\n"
        "dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)\n"
        "left = [k for k in ('HODEI_TOKEN', 'CONSUL_HTTP_TOKEN') if k in os.environ]\n"
        "print(s.token, s.consul_token, dumpable, left)\n"
    )
    env = {**os.environ, "HODEI_TOKEN": "from-the-env", "CONSUL_HTTP_TOKEN": "consul-secret"}
    proc = await asyncio.create_subprocess_exec(
        PY_AGENT, "-c", probe, env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out.decode().split() == ["from-the-file", "consul-secret", "0", "[]"]


def _slot_processes(sandbox: Sandbox) -> int:
    return len(psutil.Process(sandbox.process.pid).children())


async def test_prepared_slots_serve_the_first_burst_without_setting_up() -> None:
    """A slot costs its set-up (mount and IPC namespaces, mounts) once; an agent prepares
    its job slots' in the background, so that a first burst of functions (64 at once took
    3.3 s in bench/e2e.py) does not wait for it."""
    require("root (the process sandbox needs it)", os.geteuid() == 0)
    sandbox = Sandbox.start(sandbox_config(True))
    try:
        preparing = sandbox.prepare(4)
        assert preparing is not None
        await preparing
        assert _slot_processes(sandbox) == 4
        children = await asyncio.gather(
            *(sandbox.spawn(SpawnRequest(["true"], {"PATH": os.environ["PATH"]})) for _ in range(4))
        )
        assert [(await c.wait()).code for c in children] == [0, 0, 0, 0]
        assert _slot_processes(sandbox) == 4  # the prepared ones served: none was added
    finally:
        await sandbox.close()


async def test_a_spawn_racing_the_preparation_of_its_slot_shares_it() -> None:
    require("root (the process sandbox needs it)", os.geteuid() == 0)
    sandbox = Sandbox.start(sandbox_config(True))
    try:
        preparing = sandbox.prepare(8)
        children = await asyncio.gather(
            *(sandbox.spawn(SpawnRequest(["true"], {"PATH": os.environ["PATH"]})) for _ in range(8))
        )
        assert [(await c.wait()).code for c in children] == [0] * 8
        assert preparing is not None
        await preparing
        assert _slot_processes(sandbox) == 8
    finally:
        await sandbox.close()


async def test_an_agent_closing_while_it_prepares_slots_leaves_no_stray_error() -> None:
    """A slot being started when the sandbox closes fails with it, and says so to no one:
    no "Task exception was never retrieved" in the agent's log."""
    require("root (the process sandbox needs it)", os.geteuid() == 0)

    async def close_while_preparing() -> list[asyncio.Future[object]]:
        sandbox = Sandbox.start(sandbox_config(True))
        sandbox.prepare(8)
        for _ in range(10):  # the preparation's first step asks for slot 0
            if sandbox.starting:
                break
            await asyncio.sleep(0)
        starting = list(sandbox.starting.values())
        assert starting
        await sandbox.close()
        return starting

    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        starting = await close_while_preparing()
        await asyncio.wait(starting)
        await asyncio.sleep(0)  # their done callbacks
        del starting
        gc.collect()  # a task is told of when it is collected
        assert errors == []
    finally:
        loop.set_exception_handler(previous)


async def test_an_unsandboxed_spawner_has_nothing_to_prepare() -> None:
    sandbox = Sandbox.start(sandbox_config(False))
    try:
        assert sandbox.prepare(4) is None
    finally:
        await sandbox.close()


def _tool_under_tmp() -> tuple[Path, Path]:
    folder = Path(f"/tmp/hodei-exposed-{random_suffix()}")
    tool = folder / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    folder.chmod(0o755)
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    return folder, tool


async def test_a_folder_exposed_under_a_private_one_survives_its_refresh() -> None:
    """The agent's Python in a checkout under /tmp (a CI runner's, say): /tmp is private to
    each function and renewed after one writes in it, and the exposed folder must come back
    with it (it was gone for every later function: "No such file or directory")."""
    require("root (the process sandbox needs it)", os.geteuid() == 0)
    folder, tool = _tool_under_tmp()
    sandbox = Sandbox.start(sandbox_config(True, uid_count=1, exposed_paths=(str(folder),)))
    env = {"PATH": os.environ["PATH"]}
    try:
        for n in range(3):  # one slot: each run follows a renewal of the one before's /tmp
            command = ["sh", "-c", f"{tool} && echo left > /tmp/left-{n} && ls /tmp"]
            child = await sandbox.spawn(SpawnRequest(command, env))
            out = bytearray()
            await asyncio.gather(drain(child.stdout, out.extend), drain(child.stderr, out.extend))
            assert (await child.wait()).code == 0, bytes(out)
            listing = bytes(out).decode().split()
            assert "ran" in listing and f"left-{n - 1}" not in listing, bytes(out)
    finally:
        await sandbox.close()
        shutil.rmtree(folder)
