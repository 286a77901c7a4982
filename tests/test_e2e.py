"""End to end: the in-process control plane and agents as separate OS processes."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import (
    AgentProcess,
    dead_ids,
    deploy,
    final,
    invoke,
    logs,
    start_agent,
    wait_for,
)

from hodei.errors import Conflict
from hodei.plugin import scheduler
from hodei.plugin.data.invocations import CancelOutcome
from hodei.plugin.models import Priority, Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings

SMALL = ["--cpu-millicores", "4000", "--memory-mb", "4096", "--job-slots", "4"]


async def test_result_logs_and_exit_code(plane: ControlPlane, agents: list[AgentProcess]) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(
        plane,
        "shout",
        command=[
            "sh",
            "-c",
            'echo "working on $HODEI_INVOCATION_ID" >&2; echo line2 >&2; tr a-z A-Z',
        ],
    )
    inv_id = await invoke(plane, fn, b"hello world")
    inv = await final(plane, inv_id)
    assert inv.status is Status.SUCCEEDED
    assert inv.exit_code == 0 and inv.attempt == 1 and inv.worker_id == "w1"
    assert inv.duration_ms is not None and inv.started_ms and inv.finished_ms
    _, out = await plane.data.invocations.result(inv_id)
    assert out == b"HELLO WORLD"
    lines = [entry["line"] for entry in await logs(plane, inv_id)]
    assert lines == [f"working on {inv_id}", "line2"]


async def test_function_environment(plane: ControlPlane, agents: list[AgentProcess]) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(
        plane,
        "env",
        command=["sh", "-c", 'echo "$HODEI_FUNCTION $HODEI_ATTEMPT $GREETING $TRACEPARENT"'],
        env={"GREETING": "hola"},
    )
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    inv_id = await invoke(plane, fn, b"", traceparent=tp)
    await final(plane, inv_id)
    _, out = await plane.data.invocations.result(inv_id)
    assert out.decode().split() == ["env", "1", "hola", tp]


async def test_non_zero_exit_fails_without_retries(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(plane, "bad", command=["sh", "-c", "echo partial; exit 3"], max_retries=0)
    inv = await final(plane, await invoke(plane, fn, b""))
    assert inv.status is Status.FAILED and inv.exit_code == 3
    assert inv.error == "exit code 3"
    assert inv.id in await dead_ids(plane)


async def test_retries_with_backoff_then_dead_letter_and_replay(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(
        plane, "flaky", command=["sh", "-c", "echo try $HODEI_ATTEMPT >&2; exit 1"], max_retries=2
    )
    inv_id = await invoke(plane, fn, b"x")
    inv = await final(plane, inv_id)
    assert inv.status is Status.FAILED
    assert inv.attempt == 3 and inv.failures == 3
    tries = [e["line"] for e in await logs(plane, inv_id)]
    assert tries == ["try 1", "try 2", "try 3"]
    assert await dead_ids(plane) == [inv_id]
    replayed = await plane.data.invocations.replay(inv_id)
    assert replayed != inv_id
    assert (await final(plane, replayed)).status is Status.FAILED
    assert inv_id not in await dead_ids(plane)


async def test_retry_succeeds_on_second_attempt(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(
        plane,
        "second",
        command=["sh", "-c", 'test "$HODEI_ATTEMPT" -ge 2 && echo ok || exit 1'],
        max_retries=3,
    )
    inv = await final(plane, await invoke(plane, fn, b""))
    assert inv.status is Status.SUCCEEDED and inv.attempt == 2
    assert inv.error == ""


async def test_timeout_kills_the_whole_process_group(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(
        plane, "slow", command=["sh", "-c", "sleep 29.5 & sleep 29.5; echo never"], timeout_s=0.5
    )
    inv = await final(plane, await invoke(plane, fn, b""))
    assert inv.status is Status.TIMED_OUT
    assert "timed out" in inv.error
    assert inv.duration_ms is not None and inv.duration_ms < 5000
    # No orphaned "sleep 30" left behind by the function.
    ps = await asyncio.create_subprocess_exec(
        "pgrep", "-f", "sleep 29.5", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await ps.communicate()
    assert out.strip() == b""


async def test_memory_limit(plane: ControlPlane, agents: list[AgentProcess]) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(
        plane,
        "hog",
        command=["python3", "-c", "x = bytearray(400 * 1024 * 1024); print('allocated')"],
        resources={"cpu_millicores": 100, "memory_mb": 64},
        max_retries=0,
    )
    inv = await final(plane, await invoke(plane, fn, b""))
    assert inv.status is Status.FAILED
    assert "MemoryError" in " ".join(e["line"] for e in await logs(plane, inv.id))


async def test_cancel_queued_never_runs(plane: ControlPlane, agents: list[AgentProcess]) -> None:
    fn = await deploy(plane, "touch", command=["sh", "-c", "echo ran"])
    inv_id = await invoke(plane, fn, b"")
    assert await plane.data.invocations.cancel(inv_id) is CancelOutcome.CANCELLED
    await start_agent(plane, agents, "w1", *SMALL)
    await asyncio.sleep(0.5)
    inv = await plane.data.invocations.get(inv_id)
    assert inv.status is Status.CANCELLED and inv.worker_id == ""
    with pytest.raises(Conflict):
        await plane.data.invocations.cancel(inv_id)


async def test_cancel_running_kills_it(plane: ControlPlane, agents: list[AgentProcess]) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(plane, "forever", command=["sh", "-c", "echo started >&2; sleep 60"])
    inv_id = await invoke(plane, fn, b"")

    async def started() -> bool:
        return bool(await logs(plane, inv_id))

    await wait_for(started, 10)
    # Told through the inbox of the server the agent is connected to.
    assert await plane.data.invocations.cancel(inv_id) is CancelOutcome.RUNNING
    inv = await final(plane, inv_id, 10)
    assert inv.status is Status.CANCELLED and inv.attempt == 1


async def test_high_priority_overtakes_low_and_low_still_runs(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    fn = await deploy(plane, "order", command=["sh", "-c", "sleep 0.05; echo done"])
    low = [await invoke(plane, fn, b"", priority=Priority.LOW) for _ in range(4)]
    high = [await invoke(plane, fn, b"", priority=Priority.HIGH) for _ in range(4)]
    await start_agent(plane, agents, "w1", "--job-slots", "1")
    done = {i: await final(plane, i, 30) for i in low + high}
    assert all(inv.status is Status.SUCCEEDED for inv in done.values())
    order = sorted(done, key=lambda i: done[i].started_ms or 0)
    assert order[:4] == high and order[4:] == low


async def test_job_too_big_shows_reason_and_fails_after_queue_timeout(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    big = await deploy(
        plane,
        "big",
        command=["true"],
        queue_timeout_s=1.5,
        resources={"cpu_millicores": 64000, "memory_mb": 128},
    )
    small = await deploy(plane, "small", command=["sh", "-c", "echo small"])
    big_id = await invoke(plane, big, b"")
    small_id = await invoke(plane, small, b"")
    assert (await final(plane, small_id)).status is Status.SUCCEEDED

    async def reason() -> str:
        return (await plane.data.invocations.get(big_id)).pending_reason

    assert "fits nowhere" in await wait_for(reason, 5)
    inv = await final(plane, big_id)
    assert inv.status is Status.FAILED and inv.error.startswith("queue_timeout")
    assert "fits nowhere" in inv.error


async def test_capacity_is_never_exceeded(plane: ControlPlane, agents: list[AgentProcess]) -> None:
    for n in (1, 2):
        await start_agent(
            plane,
            agents,
            f"w{n}",
            "--cpu-millicores",
            "2000",
            "--memory-mb",
            "2048",
            "--job-slots",
            "3",
        )
    fn = await deploy(
        plane,
        "span",
        command=["sh", "-c", "date +%s%N; sleep 0.3; date +%s%N"],
        resources={"cpu_millicores": 700, "memory_mb": 256},
    )
    ids = [await invoke(plane, fn, b"") for _ in range(12)]
    spans: dict[str, list[tuple[int, int]]] = {}
    for i in ids:
        inv = await final(plane, i, 30)
        assert inv.status is Status.SUCCEEDED
        start, end = map(int, (await plane.data.invocations.result(i))[1].split())
        spans.setdefault(inv.worker_id, []).append((start, end))
    assert set(spans) == {"w1", "w2"}
    for worker, intervals in spans.items():
        # 2000m / 700m: at most two at once on each worker, although it has three slots.
        events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        assert peak <= 2, (worker, peak)
    w = await plane.data.workers.get("w1")
    assert w is not None and w.used.cpu == 0 and w.used.slots == 0


async def test_mixed_workload_lands_in_target_band(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    for n in range(1, 5):
        await start_agent(
            plane,
            agents,
            f"w{n}",
            "--cpu-millicores",
            "4000",
            "--memory-mb",
            "8192",
            "--job-slots",
            "8",
        )
    sizes = [1000, 500, 1000, 500, 250, 250, 500, 1000, 500, 250, 500, 1000, 250, 250, 500, 250]
    fns = {
        c: await deploy(
            plane,
            f"hold-{c}",
            command=["sleep", "30"],
            resources={"cpu_millicores": c, "memory_mb": c},
        )
        for c in set(sizes)
    }
    ids = [await invoke(plane, fns[c], b"") for c in sizes]  # 8500m of 16000m

    async def all_running() -> bool:
        return all([(await plane.data.invocations.get(i)).status is Status.RUNNING for i in ids])

    await wait_for(all_running, 15)
    workers = [await plane.data.workers.get(f"w{n}") for n in range(1, 5)]
    used = sorted(w.used.cpu / 4000 for w in workers if w is not None)
    busy = [u for u in used if u > 0]
    # Every worker taken into use sits in the 60-85 % band, but for the last one opened.
    assert all(0.60 <= u <= 0.85 for u in busy[1:]), used
    assert len(busy) == 3, used
    for i in ids:
        await plane.data.invocations.cancel(i)


async def test_events_record_the_lifecycle(plane: ControlPlane, agents: list[AgentProcess]) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(plane, "evt", command=["true"])
    inv_id = await invoke(plane, fn, b"")
    await final(plane, inv_id)

    async def kinds() -> list[str]:
        entries = await plane.data.redis.xrange(plane.data.keys.events)
        found = [f[b"type"].decode() for _, f in entries if f.get(b"invocation") == inv_id.encode()]
        return found if "finished" in found else []

    assert await wait_for(kinds, 5) == ["queued", "assigned", "started", "finished"]
    assert json.loads(json.dumps(True))


async def test_many_unplaceable_jobs_do_not_hide_placeable_ones(
    settings: ServerSettings, agents: list[AgentProcess], plane: ControlPlane
) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    parked = await deploy(
        plane, "parked", command=["true"], labels={"gpu": "a100"}, queue_timeout_s=2
    )
    runnable = await deploy(plane, "runnable", command=["sh", "-c", "echo ran"])
    for _ in range(3 * plane.settings.scheduler_batch):
        await invoke(plane, parked, b"")
    inv_id = await invoke(plane, runnable, b"")
    assert (await final(plane, inv_id, 10)).status is Status.SUCCEEDED
    # They wait out of the ready queue (passes do not rescan them), and fail after their
    # queue timeout.
    parked_set = plane.data.keys.parked("parked", parked.revision)
    assert await plane.data.redis.zcard(parked_set) == 3 * plane.settings.scheduler_batch
    last = (await plane.data.redis.zrange(parked_set, -1, -1))[0].decode()
    inv = await final(plane, last, 15)
    assert inv.status is Status.FAILED and "no worker has label gpu=a100" in inv.error


async def test_parked_invocations_run_when_a_fitting_worker_joins(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(
        plane, "needs-ssd", command=["sh", "-c", "echo on ssd"], labels={"disk": "ssd"}
    )
    inv_id = await invoke(plane, fn, b"")

    async def parked() -> bool:
        return (await plane.data.invocations.get(inv_id)).parked

    await wait_for(parked, 5)
    assert (
        await plane.data.invocations.get(inv_id)
    ).pending_reason == "no worker has label disk=ssd"
    await start_agent(plane, agents, "w2", "--labels", "disk=ssd")
    inv = await final(plane, inv_id, 10)
    assert inv.status is Status.SUCCEEDED and inv.worker_id == "w2"


async def test_a_call_that_comes_alone_after_a_placed_one_is_placed_at_once(
    plane: ControlPlane, agents: list[AgentProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pause after a busy pass (what queues meanwhile is placed together) is for a
    busy queue: serial calls, each placed alone, never wait for it."""
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(plane, "serial", command=["cat"])
    await wait_for(lambda: plane.scheduler.fleet.has_room, 10)
    # Long enough to fail the test whenever a lone call waits for it.
    monkeypatch.setattr(scheduler, "PASS_GAP_S", 60.0)
    for n in range(3):
        inv_id = await invoke(plane, fn, str(n).encode())
        assert (await final(plane, inv_id, 10)).status is Status.SUCCEEDED


async def test_serial_calls_are_placed_without_reading_the_queue_back(
    plane: ControlPlane, agents: list[AgentProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a pass emptied the ready queue, the wake-ups say all that joins it: a call
    that comes alone is placed from its wake-up, and a freed slot with nothing queued
    costs no read either."""
    await start_agent(plane, agents, "w1", *SMALL)
    fn = await deploy(plane, "serial", command=["cat"])
    await wait_for(lambda: plane.scheduler.fleet.has_room, 10)
    head_reads: list[int] = []
    head = plane.data.queue.head

    async def counted(start: int, count: int) -> list[str]:
        head_reads.append(start)
        return await head(start, count)

    monkeypatch.setattr(plane.data.queue, "head", counted)
    # A quiet second reads the queue on purpose: a slow spawn on a loaded machine must not.
    monkeypatch.setattr(plane.scheduler, "_timeout_ms", lambda: 60_000)
    for n in range(5):
        inv_id = await invoke(plane, fn, str(n).encode())
        assert (await final(plane, inv_id, 10)).status is Status.SUCCEEDED
    assert len(head_reads) <= 1  # (a pass under way when the count began)
