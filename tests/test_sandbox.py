"""The process runtime's sandbox, attacked the way the audit of issue 12 did: a function
with an inline command trying to read the agent's secrets, reach Redis without network,
use the Docker socket, outlive its invocation, exhaust the process table, read another
function's /tmp, or run as root. Runtimes are built the way the agent builds them."""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import signal
import socket
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from conftest import (
    SESSION_MARK,
    STATE_DIR,
    AgentProcess,
    deploy,
    final,
    invoke,
    random_suffix,
    require,
    sleeping,
    start_agent,
    wait_for,
)

from hodei.agent.resources import capacity
from hodei.agent.runtime import Outcome, Runtime
from hodei.agent.runtime_setup import build_runtimes
from hodei.agent.settings import AgentSettings
from hodei.plugin.server import ControlPlane
from hodei.proto import hodei_pb2 as pb

PY_AGENT = sys.executable
PY = "python3"  # the venv under /root is out of reach of a function's uid
DOCKER_SOCKET = "/var/run/docker.sock"


def is_socket(path: str) -> bool:
    return os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode)


@pytest.fixture(params=["cgroup", "off"], ids=["cgroup", "no-cgroup"])
async def runtime(request: pytest.FixtureRequest) -> AsyncIterator[Runtime]:
    """The agent's process runtime, as ``hodei agent --runtimes process`` builds it: with a
    cgroup per function, and with uids and rlimits alone (hosts without cgroup v2)."""
    require("root (the process sandbox needs it)", os.geteuid() == 0)
    settings = AgentSettings.from_env(
        {
            "HODEI_RUNTIMES": "process",
            "HODEI_WORKER_ID": f"attack-{SESSION_MARK[:8]}",
            "HODEI_STATE_DIR": str(STATE_DIR),
            "HODEI_PROCESS_UID_COUNT": "8",
            "HODEI_PROCESS_CGROUP_ROOT": "" if request.param == "cgroup" else "off",
        }
    )
    built = build_runtimes(settings, SESSION_MARK)["process"]
    yield built
    sandbox = getattr(built, "sandbox", None)
    if sandbox is not None:
        await sandbox.close()


def job(
    *command: str, network: bool = False, timeout_s: float = 20, **kw: object
) -> pb.AssignJobRequest:
    return pb.AssignJobRequest(
        invocation_id=uuid.uuid4().hex,
        attempt=1,
        function="attack",
        runtime="process",
        command=list(command),
        timeout_s=timeout_s,
        network=network,
        **kw,
    )  # type: ignore[arg-type]


async def run(
    runtime: Runtime, request: pb.AssignJobRequest, cancel: asyncio.Event | None = None
) -> tuple[Outcome, list[str]]:
    lines: list[str] = []
    outcome = await runtime.run(
        request, lambda stream, line: lines.append(line), cancel or asyncio.Event()
    )
    return outcome, lines


async def test_the_agent_prepares_a_slot_per_job_slot(runtime: Runtime) -> None:
    sandbox = getattr(runtime, "sandbox", None)
    assert sandbox is not None and sandbox.preparing is not None
    await sandbox.preparing
    job_slots = capacity(AgentSettings.from_env({})).job_slots
    ready = [c for c in sandbox.slots if c is not None and not c.closed]
    assert len(ready) == min(job_slots, len(sandbox.uids))


async def test_functions_run_as_unprivileged_uids_of_their_own(runtime: Runtime) -> None:
    outcome, _ = await run(runtime, job("id", "-u"))
    assert outcome.outcome == pb.JOB_OUTCOME_SUCCEEDED
    assert int(outcome.output) != 0
    # Two at once never share a uid, so neither can signal or ptrace the other.
    victim = job("sh", "-c", "echo $$ >&2; sleep 30")
    victim_lines: list[str] = []
    running = asyncio.ensure_future(
        runtime.run(victim, lambda s, line: victim_lines.append(line), asyncio.Event())
    )
    await wait_for(lambda: victim_lines, 10)
    pid = int(victim_lines[0])
    attacker, _ = await run(runtime, job("sh", "-c", f"id -u; kill -9 {pid} && echo KILLED"))
    assert b"KILLED" not in attacker.output
    assert int(attacker.output.split()[0]) != int(psutil.Process(pid).uids().real)
    assert psutil.Process(pid).is_running()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 5
    )


async def test_a_function_holds_no_privilege_and_cannot_signal_its_slot(
    runtime: Runtime,
) -> None:
    """Every id of the function is its uid (real, effective, saved, filesystem), it has no
    supplementary group and no capability, and its slot (its parent, root) is out of its
    reach: the slot serves the next function."""
    status = "grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Amb)):' /proc/self/status"
    attack = f"{status}; kill -STOP $PPID && echo STOPPED; kill -KILL $PPID && echo KILLED"
    outcome, _ = await run(runtime, job("sh", "-c", attack))
    rows = outcome.output.decode().splitlines()
    fields = dict(row.split(":", 1) for row in rows if ":" in row)
    uids, gids = fields["Uid"].split(), fields["Gid"].split()
    assert len(set(uids)) == 1 and int(uids[0]) != 0, fields
    assert len(set(gids)) == 1 and int(gids[0]) != 0, fields
    assert fields["Groups"].split() == [], fields
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(fields[cap], 16) == 0, fields
    assert b"STOPPED" not in outcome.output and b"KILLED" not in outcome.output
    again, _ = await run(runtime, job("true"))
    assert again.outcome == pb.JOB_OUTCOME_SUCCEEDED


def data_limit(pid: int) -> tuple[int, int]:
    """RLIMIT_DATA of ``pid`` (soft, hard), as /proc shows it to root without
    CAP_SYS_RESOURCE (prlimit would need it for another uid's process)."""
    with open(f"/proc/{pid}/limits") as limits:
        row = next(line for line in limits if line.startswith("Max data size"))
    soft, hard = row.split()[3:5]
    return int(soft), int(hard)


async def test_a_function_gets_its_limits_and_a_session_of_its_own(runtime: Runtime) -> None:
    lines: list[str] = []
    request = job(
        "sh",
        "-c",
        "echo $$ >&2; ps -o sid= -p $$ >&2; sleep 30",
        resources=pb.Resources(memory_mb=96),
    )
    running = asyncio.ensure_future(
        runtime.run(request, lambda stream, line: lines.append(line), asyncio.Event())
    )
    await wait_for(lambda: len(lines) >= 2, 10)
    pid = int(lines[0])
    assert int(lines[1]) == pid  # a session leader
    data = 96 * 1024 * 1024
    assert data_limit(pid) == (data, data)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_command_is_looked_up_on_the_functions_path(runtime: Runtime) -> None:
    """As execvpe does: the function's PATH, in order, past missing entries; a command
    found nowhere fails to start."""
    path = "/nonexistent:/usr/bin:/bin"
    found, _ = await run(runtime, job("id", "-u", env={"PATH": path}))
    assert found.outcome == pb.JOB_OUTCOME_SUCCEEDED and int(found.output) != 0
    name = f"hodei-missing-{random_suffix()}"
    missing, _ = await run(runtime, job(name, env={"PATH": path}))
    assert missing.outcome == pb.JOB_OUTCOME_FAILED and missing.exit_code == 127
    assert name in missing.error or "No such file" in missing.error


async def test_no_network_means_redis_is_out_of_reach(runtime: Runtime) -> None:
    code = (
        "import socket\n"
        "try:\n"
        "    s = socket.create_connection(('127.0.0.1', 6379), 2)\n"
        "    s.sendall(b'PING\\r\\n'); print(s.recv(64))\n"
        "except OSError as exc:\n"
        "    print('refused', exc)\n"
    )
    outcome, _ = await run(runtime, job(PY, "-c", code, network=False))
    assert outcome.output.startswith(b"refused"), outcome.output
    # network: true is the function's explicit choice, and works.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        reach = code.replace("6379", str(port)).replace(
            "s.sendall(b'PING\\r\\n'); print(s.recv(64))", "print('reached')"
        )
        outcome, _ = await run(runtime, job(PY, "-c", reach, network=True))
    assert outcome.output.startswith(b"reached"), outcome.output


async def test_docker_socket_is_out_of_sight(runtime: Runtime) -> None:
    require("a Docker socket on this host", is_socket(DOCKER_SOCKET))
    code = (
        "import os, socket, stat\n"
        f"path = {DOCKER_SOCKET!r}\n"
        "seen = os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode)\n"
        "print('seen' if seen else 'hidden')\n"
        "try:\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    s.connect(path)\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('refused', exc)\n"
    )
    outcome, _ = await run(runtime, job(PY, "-c", code, network=True))
    assert outcome.output.split(b"\n")[0] == b"hidden", outcome.output
    assert b"connected" not in outcome.output


async def test_nothing_a_function_started_outlives_it(runtime: Runtime) -> None:
    needle = random_suffix()
    script = (
        f"setsid sleep 61.{needle} </dev/null >/dev/null 2>&1 & "
        f"setsid sh -c 'trap \"\" HUP TERM; exec sleep 62.{needle}' </dev/null >/dev/null 2>&1 & "
        f"env -i setsid sleep 63.{needle} </dev/null >/dev/null 2>&1 & "
        "echo started"
    )
    outcome, _ = await run(runtime, job("sh", "-c", script))
    assert outcome.outcome == pb.JOB_OUTCOME_SUCCEEDED and outcome.output == b"started\n"
    assert sleeping(needle) == []
    # The same on a timeout, and on a cancel.
    outcome, _ = await run(
        runtime, job("sh", "-c", f"setsid sleep 64.{needle} & sleep 65.{needle}", timeout_s=0.5)
    )
    assert outcome.outcome == pb.JOB_OUTCOME_TIMED_OUT
    assert sleeping(needle) == []
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, cancel.set)
    outcome, _ = await run(
        runtime, job("sh", "-c", f"setsid sleep 66.{needle} & sleep 67.{needle}"), cancel
    )
    assert outcome.outcome == pb.JOB_OUTCOME_CANCELLED
    assert sleeping(needle) == []


async def test_ten_thousand_background_sleeps_are_refused(runtime: Runtime) -> None:
    needle = random_suffix()
    code = (
        "import subprocess\n"
        "started = 0\n"
        "try:\n"
        "    for _ in range(10000):\n"
        f"        subprocess.Popen(['sleep', '60.{needle}'], start_new_session=True)\n"
        "        started += 1\n"
        "except OSError as exc:\n"
        "    print('refused after', started, exc)\n"
        "print(started)\n"
    )
    outcome, _ = await run(runtime, job(PY, "-c", code, timeout_s=60))
    lines = outcome.output.decode().splitlines()
    assert lines[0].startswith("refused after"), lines[:1]
    assert int(lines[-1]) < 10000
    assert sleeping(needle) == []


# A System V shared memory segment anyone may read, and its key.
SHARED_SEGMENT = (
    "id=$(ipcmk -M 4096 -p 0666 | grep -o '[0-9]*$'); ipcs -m | awk -v id=$id '$2 == id {print $1}'"
)


async def test_tmp_and_ipc_are_private_to_each_function(runtime: Runtime) -> None:
    secret = uuid.uuid4().hex
    writer = job(
        "sh",
        "-c",
        f"echo {secret} > /tmp/secret-{secret}; echo {secret} > /dev/shm/shm-{secret}; "
        f"{SHARED_SEGMENT} >&2; sleep 30",
    )
    lines: list[str] = []
    running = asyncio.ensure_future(
        runtime.run(writer, lambda s, line: lines.append(line), asyncio.Event())
    )
    await wait_for(lambda: lines, 10)
    key = lines[0]
    assert key.startswith("0x"), lines
    spy = f"cat /tmp/secret-{secret} /dev/shm/shm-{secret} 2>/dev/null; ls /tmp /dev/shm /var/tmp"
    outcome, _ = await run(runtime, job("sh", "-c", f"{spy}; ipcs -m"))
    assert secret.encode() not in outcome.output
    assert key.encode() not in outcome.output
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # Nor does the next function on the same uid find what the previous one left.
    for _ in range(3):
        left, lines = await run(
            runtime, job("sh", "-c", f"echo {secret} > /tmp/left-{secret}; {SHARED_SEGMENT}")
        )
        key = left.output.decode().strip()
        assert key.startswith("0x"), lines
        outcome, _ = await run(
            runtime, job("sh", "-c", "cat /tmp/left-* 2>/dev/null; ls -a /tmp; ipcs -m")
        )
        assert secret.encode() not in outcome.output
        assert key.encode() not in outcome.output
    assert not glob.glob(f"/tmp/left-{secret}")


async def test_semaphores_and_queues_left_behind_are_gone_for_the_next_function(
    runtime: Runtime,
) -> None:
    for kind, flag in (("s", "-S 1"), ("q", "-Q")):
        make = f"ipcmk {flag} -p 0666 | grep -o '[0-9]*$'"
        left, lines = await run(runtime, job("sh", "-c", make))
        ipc_id = left.output.decode().strip()
        assert ipc_id.isdigit(), lines
        outcome, _ = await run(runtime, job("sh", "-c", f"ipcs -{kind} -i {ipc_id} || true"))
        assert b"mode=" not in outcome.output, outcome.output


# POSIX message queues through the C library (librt before glibc 2.34): open ``sys.argv[1]``
# with flags ``sys.argv[2]``, send ``sys.argv[3]`` if given, else receive without waiting;
# prints the message, or the errno's name.
POSIX_QUEUE = """
import ctypes, errno, sys
lib = ctypes.CDLL(None, use_errno=True)
if not hasattr(lib, "mq_open"):
    lib = ctypes.CDLL("librt.so.1", use_errno=True)
lib.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
q = lib.mq_open(sys.argv[1].encode(), int(sys.argv[2]), 0o666, None)
if q < 0:
    sys.exit(print("mq_open", errno.errorcode[ctypes.get_errno()]))
if len(sys.argv) > 3:
    sent = lib.mq_send(q, sys.argv[3].encode(), len(sys.argv[3]), 0)
    sys.exit(print("sent" if sent == 0 else errno.errorcode[ctypes.get_errno()]))
buffer = ctypes.create_string_buffer(1 << 16)
size = lib.mq_receive(q, buffer, len(buffer), None)
print(buffer.raw[:size].decode() if size >= 0 else errno.errorcode[ctypes.get_errno()])
"""
O_RDONLY, O_RDWR, O_NONBLOCK, O_CREAT = os.O_RDONLY, os.O_RDWR, os.O_NONBLOCK, os.O_CREAT


async def test_posix_message_queues_left_behind_are_gone_for_the_next_function(
    runtime: Runtime,
) -> None:
    # One of the host's own queues, to check it is out of sight of functions as well.
    host_queue = f"/hodei-host-{random_suffix()}"
    made = await asyncio.create_subprocess_exec(
        PY, "-c", POSIX_QUEUE, host_queue, str(O_CREAT | O_RDWR), "host"
    )
    assert await made.wait() == 0
    try:
        for _ in range(2):
            secret = uuid.uuid4().hex
            left, lines = await run(
                runtime, job(PY, "-c", POSIX_QUEUE, "/hodei-leak", str(O_CREAT | O_RDWR), secret)
            )
            assert left.output.strip() == b"sent", (left.output, lines)
            flags = str(O_RDONLY | O_NONBLOCK)
            outcome, lines = await run(
                runtime,
                job(
                    "sh",
                    "-c",
                    f"{PY} -c '{POSIX_QUEUE}' /hodei-leak {flags}; "
                    f"{PY} -c '{POSIX_QUEUE}' {host_queue} {flags}; "
                    "ls -a /dev/mqueue || true",
                ),
            )
            assert secret.encode() not in outcome.output, outcome.output
            assert outcome.output.splitlines()[:2] == [b"mq_open ENOENT"] * 2, (outcome, lines)
            # Where the host mounts /dev/mqueue, the function sees its own queues there.
            assert b"hodei-" not in outcome.output, outcome.output
    finally:
        unlink = (
            POSIX_QUEUE.split("lib.mq_open.argtypes")[0] + "lib.mq_unlink(sys.argv[1].encode())"
        )
        await (await asyncio.create_subprocess_exec(PY, "-c", unlink, host_queue)).wait()


async def test_the_agents_python_is_usable_and_nothing_else_of_its_home(runtime: Runtime) -> None:
    # A runtime client (awslambdaric) runs from the agent's interpreter, wherever it is.
    code = "import hodei.agent.sandbox, os; print(os.getuid())"
    outcome, lines = await run(runtime, job(PY_AGENT, "-c", code))
    assert outcome.outcome == pb.JOB_OUTCOME_SUCCEEDED, lines
    assert int(outcome.output) != 0
    home, visible = closed_home()
    if home:  # e.g. /root (0700) holding the interpreter: only the way to it shows
        outcome, _ = await run(runtime, job("sh", "-c", f"ls -a {home}; cat {home}/.bashrc"))
        assert set(outcome.output.decode().split()) <= {".", "..", *visible}


def closed_home() -> tuple[str, set[str]]:
    """The agent's home folder if it is closed to others, and the entries of it that lead
    to the agent's Python (exposed to functions)."""
    from hodei.agent.sandbox import own_installation

    home = str(Path.home())
    if os.stat(home).st_mode & 0o001:
        return "", set()
    inside = [os.path.realpath(p) for p in own_installation()]
    depth = len(home.split("/"))
    return home, {p.split("/")[depth] for p in inside if p.startswith(home + "/")}


async def test_agent_secrets_are_out_of_reach(
    plane: ControlPlane, agents: list[AgentProcess], tmp_path: Path
) -> None:
    require("root (the process sandbox needs it)", os.geteuid() == 0)
    secret = f"tok-{uuid.uuid4().hex}"
    token_file = tmp_path / "token"
    token_file.write_text(secret)
    token_file.chmod(0o600)
    await start_agent(plane, agents, "w1", "--job-slots", "2", env={"HODEI_TOKEN": secret})
    spy = (
        "cat /proc/$PPID/environ /proc/*/environ /proc/*/cmdline "
        f"{token_file} 2>/dev/null | tr '\\0' '\\n'; env; ls /proc"
    )
    fn = await deploy(plane, "spy", command=["sh", "-c", spy])
    inv = await final(plane, await invoke(plane, fn, b""))
    _, out = await plane.data.invocations.result(inv.id)
    assert out, inv.error
    assert secret.encode() not in out
    assert b"HODEI_TOKEN" not in out


@pytest.mark.parametrize("cgroups", ["", "off"], ids=["cgroup", "no-cgroup"])
async def test_leftovers_of_a_killed_agent_are_killed_by_its_next_life(
    plane: ControlPlane, agents: list[AgentProcess], cgroups: str
) -> None:
    require("root (the process sandbox needs it)", os.geteuid() == 0)
    # Uids of its own, far from where other agents on the host claim theirs: none of them
    # takes the dead agent's uids (and kills its leftovers) before its next life does.
    uid_base = str(2_147_100_000 + secrets.randbelow(90) * 4096)
    options = ("--job-slots", "2", "--process-cgroup-root", cgroups, "--process-uid-base", uid_base)
    agent = await start_agent(plane, agents, "w-crash", *options)
    needle = random_suffix()
    # The leftover drops the agent's mark from its environment: only the uid or the
    # cgroup can tell it is ours.
    fn = await deploy(
        plane,
        "leave",
        command=[
            "sh",
            "-c",
            f"env -i setsid sleep 71.{needle} </dev/null >/dev/null 2>&1 & echo go >&2; sleep 60",
        ],
    )
    inv_id = await invoke(plane, fn, b"")

    async def started() -> bool:
        return bool(sleeping(needle))

    await wait_for(started, 15)
    # The agent and its spawner processes die at once, without a chance to clean up:
    # all stopped first, then killed.
    spawners = [
        p
        for p in psutil.Process(agent.proc.pid).children(recursive=True)
        if "sandbox_spawner" in " ".join(p.cmdline())
    ]
    group = [agent.proc.pid, *(p.pid for p in spawners)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in group:
            os.kill(pid, sig)
    agent.proc.wait(10)
    assert sleeping(needle)
    # (Its registration may still look alive to the server: wait on the new life's log.)
    again = AgentProcess(plane.port, "w-crash", *options)
    agents.append(again)
    await wait_for(lambda: "left by an earlier run" in again.output(), 20)
    assert not sleeping(needle)
    await plane.data.invocations.cancel(inv_id)
