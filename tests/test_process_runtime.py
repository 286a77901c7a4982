"""The process runtime and the process manager on their own (no server)."""

from __future__ import annotations

import asyncio
import time

from conftest import wait_for

from hodei.agent.process_manager import ProcessManager
from hodei.agent.process_runtime import ProcessRuntime
from hodei.agent.runtime import Outcome
from hodei.agent.sandbox import Sandbox
from hodei.agent.settings import AgentSettings
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2 as pb


def job(*command: str, timeout_s: float = 5, **kw: object) -> pb.AssignJobRequest:
    return pb.AssignJobRequest(
        invocation_id="i1",
        attempt=1,
        function="f",
        runtime="process",
        command=list(command),
        timeout_s=timeout_s,
        **kw,
    )  # type: ignore[arg-type]


async def test_stdout_is_capped_and_the_rest_drained(sandbox: Sandbox) -> None:
    runtime = ProcessRuntime(output_cap_bytes=1000, mark="m", sandbox=sandbox)
    outcome = await runtime.run(
        job("sh", "-c", "head -c 1000000 /dev/zero; echo done >&2"),
        lambda s, line: None,
        asyncio.Event(),
    )
    assert outcome.outcome == pb.JOB_OUTCOME_SUCCEEDED
    assert outcome.output == b"\0" * 1000 and outcome.truncated


async def test_payload_on_stdin_and_missing_command(sandbox: Sandbox) -> None:
    runtime = ProcessRuntime(output_cap_bytes=1 << 20, mark="m", sandbox=sandbox)
    data = bytes(range(256)) * 4096
    outcome = await runtime.run(job("cat", payload=data), lambda s, line: None, asyncio.Event())
    assert outcome.output == data and not outcome.truncated
    missing = await runtime.run(job("/no/such/binary"), lambda s, line: None, asyncio.Event())
    assert missing.outcome == pb.JOB_OUTCOME_FAILED and missing.exit_code == 127
    assert "cannot start" in missing.error


async def test_logs_are_batched_and_results_reported(sandbox: Sandbox) -> None:
    sent: list[pb.AgentMessage] = []
    results: list[pb.JobResult] = []
    manager = ProcessManager(
        {"process": ProcessRuntime(1 << 20, "m", sandbox)},
        sent.append,
        results.append,
        "w",
        batch_lines=100,
        flush_s=0.05,
    )
    manager.start(job("sh", "-c", "for i in $(seq 250); do echo line$i >&2; done; echo out"))
    await asyncio.wait_for(manager.idle.wait(), 5)
    kinds = [m.WhichOneof("kind") for m in sent]
    assert kinds[0] == "accepted"
    batches = [m.log for m in sent if m.WhichOneof("kind") == "log"]
    assert [len(b.lines) for b in batches] == [100, 100, 50]
    assert [line.line for b in batches for line in b.lines] == [f"line{i}" for i in range(1, 251)]
    assert results[0].outcome == pb.JOB_OUTCOME_SUCCEEDED and results[0].output == b"out\n"


async def test_a_quick_job_reports_its_start_with_its_end(sandbox: Sandbox) -> None:
    """One message to the server (one round trip there) for a job that ends at once; a job
    that goes on reports its start on its own, soon."""
    reports: list[str] = []
    manager = ProcessManager(
        {"process": ProcessRuntime(1 << 20, "m", sandbox)},
        lambda m: reports.append(str(m.WhichOneof("kind"))),
        lambda r: reports.append("result"),
        "w",
    )
    manager.start(job("true"))
    assert reports == []
    await asyncio.wait_for(manager.idle.wait(), 10)
    assert reports == ["accepted", "result"]
    reports.clear()
    manager.start(job("sleep", "30"))
    await wait_for(lambda: reports == ["accepted"], 10)
    manager.hand_back_all()
    await asyncio.wait_for(manager.idle.wait(), 10)
    assert reports == ["accepted", "result"]


async def test_unknown_runtime_fails_the_job_and_cancel_hands_back(sandbox: Sandbox) -> None:
    results: list[pb.JobResult] = []
    manager = ProcessManager(
        {"process": ProcessRuntime(1 << 20, "m", sandbox)}, lambda m: None, results.append, "w"
    )
    manager.start(pb.AssignJobRequest(invocation_id="d", attempt=1, runtime="docker"))
    manager.start(job("sleep", "30"))
    await asyncio.sleep(0.2)
    manager.hand_back_all()
    await asyncio.wait_for(manager.idle.wait(), 5)
    by_id = {r.invocation_id: r for r in results}
    assert by_id["d"].outcome == pb.JOB_OUTCOME_FAILED and "docker" in by_id["d"].error
    assert by_id["i1"].outcome == pb.JOB_OUTCOME_HANDED_BACK


async def run(
    runtime: ProcessRuntime, request: pb.AssignJobRequest, cancel: asyncio.Event | None = None
) -> tuple[Outcome, list[str]]:
    lines: list[str] = []
    outcome = await runtime.run(
        request, lambda s, line: lines.append(line), cancel or asyncio.Event()
    )
    return outcome, lines


async def test_exit_codes_and_signals(sandbox: Sandbox) -> None:
    runtime = ProcessRuntime(1 << 20, "m", sandbox)
    failed, lines = await run(runtime, job("sh", "-c", "echo partial; echo oops >&2; exit 3"))
    assert failed.outcome == pb.JOB_OUTCOME_FAILED and failed.exit_code == 3
    assert failed.error == "exit code 3" and failed.output == b"partial\n" and lines == ["oops"]
    killed, _ = await run(runtime, job("sh", "-c", "kill -TERM $$"))
    assert killed.outcome == pb.JOB_OUTCOME_FAILED and killed.exit_code == 128 + 15
    assert killed.error == "killed by signal 15"
    # A command that ignores SIGPIPE only because the agent (Python) does would hang here.
    piped, _ = await run(runtime, job("sh", "-c", "yes | head -c 3"))
    assert piped.outcome == pb.JOB_OUTCOME_SUCCEEDED and piped.output == b"y\ny"


async def test_timeout_and_cancel_kill_everything_it_started(sandbox: Sandbox) -> None:
    runtime = ProcessRuntime(1 << 20, "m", sandbox)
    started = time.monotonic()
    slow, _ = await run(runtime, job("sh", "-c", "sleep 29 & sleep 29; echo never", timeout_s=0.5))
    assert slow.outcome == pb.JOB_OUTCOME_TIMED_OUT and slow.error == "timed out after 0.5s"
    assert slow.output == b"" and time.monotonic() - started < 10
    cancel = asyncio.Event()
    lines: list[str] = []
    running = asyncio.ensure_future(
        runtime.run(
            job("sh", "-c", "echo up >&2; sleep 30 & wait"),
            lambda s, line: lines.append(line),
            cancel,
        )
    )
    await wait_for(lambda: lines, 10)
    cancel.set()
    cancelled = await asyncio.wait_for(running, 10)
    assert cancelled.outcome == pb.JOB_OUTCOME_CANCELLED and cancelled.error == "cancelled"


async def test_memory_limit(sandbox: Sandbox) -> None:
    runtime = ProcessRuntime(1 << 20, "m", sandbox)
    hog = job(
        "python3",
        "-c",
        "x = bytearray(400 * 1024 * 1024); print('allocated')",
        resources=pb.Resources(cpu_millicores=100, memory_mb=64),
    )
    outcome, lines = await run(runtime, hog)
    assert outcome.outcome == pb.JOB_OUTCOME_FAILED and outcome.output == b""
    assert "MemoryError" in " ".join(lines)


def test_settings_precedence_defaults_env_flags() -> None:
    env = {"HODEI_GRPC_PORT": "9999", "HODEI_AGENT_TOKENS": "a, b", "HODEI_LEASE_TTL_S": "7.5"}
    s = ServerSettings.from_env(env)
    assert s.grpc_port == 9999 and s.agent_tokens == ("a", "b") and s.lease_ttl_s == 7.5
    assert ServerSettings.from_env(env, grpc_port=1).grpc_port == 1
    agent = AgentSettings.from_env({"HODEI_LABELS": "zone=eu,disk=ssd", "HODEI_JOB_SLOTS": "3"})
    assert agent.label_map == {"zone": "eu", "disk": "ssd"} and agent.job_slots == 3
