"""The data layer without agents: the scripts' atomicity, fencing, budgets and indexes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
from conftest import FakeClock, dead_ids, deploy, invoke, logs, wait_for
from prometheus_client import REGISTRY

from hodei.domain import WorkerState
from hodei.errors import Conflict, IdempotencyMismatch, NotFound, QueueFull
from hodei.plugin.data.invocations import CancelOutcome, Idempotency
from hodei.plugin.data.leases import AttemptEnd, Ended, EndKind, Lease, LogAppend, LogBatch, Refusal
from hodei.plugin.data.records import Amounts
from hodei.plugin.data.scripts import Call
from hodei.plugin.leader import RedisLeaderLock
from hodei.plugin.models import FunctionSpec, Priority, Status
from hodei.plugin.monitor import HealthMonitor
from hodei.plugin.server import ControlPlane
from hodei.plugin.sessions import Session, Sessions
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2 as pb


@pytest.fixture
async def cp(settings: ServerSettings) -> AsyncIterator[ControlPlane]:
    """A control plane that is not started: no scheduler, just its data layer."""
    plane = ControlPlane(settings)
    yield plane
    await plane.data.close()


async def register(cp: ControlPlane, worker_id: str, cpu: int = 1000, slots: int = 2) -> str:
    reg = await cp.data.workers.register(
        worker_id,
        "s1",
        hostname="h",
        version="t",
        capacity=Amounts(cpu, 1024, 0, slots),
        labels={},
        runtimes=["process"],
        running=[],
    )
    await cp.data.workers.transition(worker_id, WorkerState.AVAILABLE, reg.session_id)
    return reg.session_id


def end(inv_id: str, attempt: int, worker: str, outcome: str, **kw: object) -> AttemptEnd:
    return AttemptEnd(inv_id, attempt, worker, outcome, **kw)  # type: ignore[arg-type]


async def test_invoke_records_and_enqueues_in_one_step(cp: ControlPlane) -> None:
    fn = await deploy(cp, "f", command=["true"])
    inv_id = await invoke(cp, fn, b"\x00payload")
    inv = await cp.data.invocations.get(inv_id)
    assert inv.status is Status.QUEUED and inv.attempt == 1 and inv.function == "f"
    assert inv.revision == fn.revision
    assert await cp.data.redis.zscore(cp.data.keys.queue, inv_id) is not None
    assert await cp.data.redis.hget(cp.data.keys.invocation(inv_id), "payload") == b"\x00payload"
    with pytest.raises(Conflict):
        await invoke(cp, fn, b"", invocation_id=inv_id)
    with pytest.raises(Conflict):
        await cp.data.invocations.result(inv_id)
    with pytest.raises(NotFound):
        await cp.data.invocations.enqueue("nothing", b"")


async def test_bounded_queue_refuses_without_recording(settings: ServerSettings) -> None:
    cp = ControlPlane(replace(settings, max_queue=2))
    fn = await deploy(cp, "f", command=["true"])
    await invoke(cp, fn, b"")
    await invoke(cp, fn, b"")
    with pytest.raises(QueueFull):
        await invoke(cp, fn, b"", invocation_id="third")
    with pytest.raises(NotFound):
        await cp.data.invocations.get("third")
    await cp.data.close()


async def test_admission_counts_parked_and_delayed_work_and_payload_bytes(
    settings: ServerSettings,
) -> None:
    """The queue bound and the byte budget hold however the queued work waits: parked
    (no worker can take it) or delayed (a retry's backoff) counts as much as ready."""
    cp = ControlPlane(replace(settings, max_queue=3, max_queue_bytes=10_000))
    await register(cp, "w1", slots=5)
    fn = await deploy(cp, "f", command=["true"], max_retries=3)
    parked = await invoke(cp, fn, b"x" * 4000)
    assert await cp.data.queue.park({parked: "no worker has label gpu=a100"}) == 1
    retried = await invoke(cp, fn, b"y" * 4000)
    assert isinstance(await cp.data.leases.assign(retried, "w1", ""), Lease)
    ended = await cp.data.leases.end(end(retried, 1, "w1", "failed", exit_code=1))
    assert ended.kind is EndKind.RETRY
    depth = await cp.data.queue.depth()
    assert depth.total == 2 and depth.retrying == 1 and depth.payload_bytes == 8000
    with pytest.raises(QueueFull, match="payload budget"):
        await invoke(cp, fn, b"z" * 4000)
    await invoke(cp, fn, b"z" * 100)
    with pytest.raises(QueueFull, match="queue is full"):
        await invoke(cp, fn, b"")
    await cp.data.invocations.cancel(parked)
    assert (await cp.data.queue.depth()).payload_bytes == 4100
    await cp.data.close()


async def test_queue_order_fifo_within_priority_with_ageing(cp: ControlPlane) -> None:
    fn = await deploy(cp, "f", command=["true"])
    a = await invoke(cp, fn, b"", priority=Priority.LOW)
    b = await invoke(cp, fn, b"", priority=Priority.NORMAL)
    c = await invoke(cp, fn, b"", priority=Priority.HIGH)
    d = await invoke(cp, fn, b"", priority=Priority.HIGH)
    assert await cp.data.queue.head(0, 10) == [c, d, b, a]
    # Ageing: a low invocation waiting two ageing periods goes before a fresh high one.
    positions = {i: await cp.data.redis.zscore(cp.data.keys.queue, i) for i in (a, c)}
    gap_ms = (positions[a] - positions[c]) / 1000  # type: ignore[operator]
    assert 2 * 60_000 - 1000 < gap_ms < 2 * 60_000 + 1000


async def test_the_pending_list_names_every_priority(cp: ControlPlane) -> None:
    """A record stores its priority only when it is not normal; what reads it must say
    normal (GET /v1/queue showed an empty priority)."""
    fn = await deploy(cp, "f", command=["true"])
    normal = await invoke(cp, fn, b"")
    high = await invoke(cp, fn, b"", priority=Priority.HIGH)
    await cp.data.queue.note_pending({normal: "no worker", high: "no worker"})
    pending, _ = await cp.data.queue.pending()
    assert {p.id: p.priority for p in pending} == {normal: "normal", high: "high"}


async def test_functions_crud_and_revisions(cp: ControlPlane) -> None:
    spec = await deploy(cp, "echo", command=["cat"], max_retries=1)
    assert await cp.data.functions.put(replace(spec, max_retries=2)) is False
    assert (await cp.data.functions.get("echo")).max_retries == 2
    assert [f.name for f in await cp.data.functions.all()] == ["echo"]
    # The old revision is kept for what still refers to it.
    assert (await cp.data.functions.spec("echo", spec.revision)).max_retries == 1
    await cp.data.functions.delete("echo")
    with pytest.raises(NotFound):
        await cp.data.functions.get("echo")
    with pytest.raises(NotFound):
        await cp.data.functions.delete("echo")


async def test_a_queued_invocation_keeps_the_spec_it_was_accepted_with(cp: ControlPlane) -> None:
    await register(cp, "w1")
    old = await deploy(cp, "f", command=["echo", "old"], max_retries=1)
    inv_id = await invoke(cp, old, b"")
    new = await deploy(cp, "f", command=["echo", "new"], max_retries=5)
    assert new.revision != old.revision
    lease = await cp.data.leases.assign(inv_id, "w1", "")
    assert isinstance(lease, Lease) and lease.revision == old.revision
    assert (await cp.data.functions.spec(lease.function, lease.revision)).command == (
        "echo",
        "old",
    )


async def test_assignment_respects_capacity_and_fencing(cp: ControlPlane) -> None:
    await register(cp, "w1", cpu=1000, slots=5)
    fn = await deploy(
        cp, "f", command=["true"], resources={"cpu_millicores": 600, "memory_mb": 100}
    )
    first, second = await invoke(cp, fn, b""), await invoke(cp, fn, b"")
    lock = RedisLeaderLock(cp.data.leadership, "me", 5)
    assert await lock.try_acquire()
    token = lock.token or ""
    assert isinstance(await cp.data.leases.assign(first, "w1", token), Lease)
    assert await cp.data.leases.assign(second, "w1", token) is Refusal.DOES_NOT_FIT
    assert await cp.data.leases.assign(first, "w1", token) is Refusal.NOT_QUEUED
    # A deposed leader's token no longer places anything.
    await lock.release()
    other = RedisLeaderLock(cp.data.leadership, "other", 5)
    assert await other.try_acquire()
    assert other.token != token
    await cp.data.leases.end(end(first, 1, "w1", "succeeded"))
    assert await cp.data.leases.assign(second, "w1", token) is Refusal.NOT_LEADER
    assert isinstance(await cp.data.leases.assign(second, "w1", other.token or ""), Lease)


async def test_leadership_is_exclusive_and_passes_on_expiry(cp: ControlPlane) -> None:
    a = RedisLeaderLock(cp.data.leadership, "a", 0.3)
    b = RedisLeaderLock(cp.data.leadership, "b", 0.3)
    assert await a.try_acquire() and not await b.try_acquire()
    assert await a.try_acquire()  # renewal keeps the same epoch
    first = a.token

    # a stops renewing (paused, dead): its lock expires and b takes over.
    await wait_for(b.try_acquire, 5)
    assert not await a.try_acquire() and a.token is None
    assert b.token and first and int(b.token.split(":")[1]) > int(first.split(":")[1])


async def test_results_are_fenced_by_attempt_and_worker(settings: ServerSettings) -> None:
    clock = FakeClock()
    cp = ControlPlane(replace(settings, retry_base_s=5), clock)
    await register(cp, "w1")
    await register(cp, "w2")
    fn = await deploy(cp, "f", command=["true"], max_retries=1)
    inv_id = await invoke(cp, fn, b"")
    assert isinstance(await cp.data.leases.assign(inv_id, "w1", ""), Lease)
    assert (await cp.data.leases.end(end(inv_id, 1, "w2", "succeeded"))).kind is EndKind.STALE
    assert (await cp.data.leases.end(end(inv_id, 2, "w1", "succeeded"))).kind is EndKind.STALE
    # Attempt 1 fails: a retry is scheduled with a backoff, as attempt 2.
    retry = await cp.data.leases.end(end(inv_id, 1, "w1", "failed", exit_code=1, error="exit 1"))
    assert retry.kind is EndKind.RETRY
    inv = await cp.data.invocations.get(inv_id)
    assert inv.status is Status.QUEUED and inv.attempt == 2 and inv.pending_reason
    assert await cp.data.redis.zscore(cp.data.keys.delayed, inv_id) is not None
    stale = await cp.data.leases.end(end(inv_id, 1, "w1", "succeeded"))
    assert stale.kind is EndKind.STALE and stale.reason == "not_running"
    assert await cp.data.queue.promote_due() == 0  # its backoff is not over
    due = await cp.data.queue.next_due_ms()
    assert due is not None
    clock.ms = due
    assert await cp.data.queue.promote_due() == 1
    assert isinstance(await cp.data.leases.assign(inv_id, "w2", ""), Lease)
    done = await cp.data.leases.end(end(inv_id, 2, "w2", "succeeded", exit_code=0, output=b"ok"))
    assert done.kind is EndKind.RECORDED and done.status == "succeeded"
    assert (await cp.data.invocations.result(inv_id))[1] == b"ok"
    assert (await cp.data.leases.end(end(inv_id, 2, "w2", "succeeded"))).kind is EndKind.STALE
    for worker in ("w1", "w2"):
        w = await cp.data.workers.get(worker)
        assert w and w.used.cpu == 0 and w.used.slots == 0 and w.state is WorkerState.AVAILABLE
    await cp.data.close()


async def test_lease_is_reclaimed_only_after_its_deadline(settings: ServerSettings) -> None:
    clock = FakeClock()
    cp = ControlPlane(replace(settings, lease_ttl_s=0.3), clock)
    session = await register(cp, "w1")
    fn = await deploy(cp, "f", command=["true"], max_retries=0)
    inv_id = await invoke(cp, fn, b"")
    await cp.data.leases.assign(inv_id, "w1", "")
    assert await cp.data.leases.reclaim_due() == []
    clock.advance(0.2)
    status, revoked = await cp.data.leases.renew("w1", session, [(inv_id, 1)], 1.0, 1.0)
    assert status == "ok" and revoked == []
    clock.advance(0.2)
    assert await cp.data.leases.reclaim_due() == []  # renewed at 0.2: due at 0.5
    clock.advance(0.2)
    [reclaimed] = await cp.data.leases.reclaim_due()
    assert reclaimed.invocation_id == inv_id and reclaimed.kind is EndKind.RECORDED
    inv = await cp.data.invocations.get(inv_id)
    assert inv.status is Status.FAILED and inv.error.startswith("lease_expired")
    assert await dead_ids(cp) == [inv_id]
    await cp.data.close()


async def test_queue_timeout_and_cancel(settings: ServerSettings) -> None:
    clock = FakeClock()
    cp = ControlPlane(settings, clock)
    fn = await deploy(cp, "f", command=["true"], queue_timeout_s=10)
    inv_id = await invoke(cp, fn, b"")
    parked = await invoke(cp, fn, b"")
    await cp.data.queue.park({parked: "no schedulable workers"})
    clock.advance(9.9)
    assert await cp.data.queue.expire_due() == []
    clock.advance(0.2)
    expired = await cp.data.queue.expire_due()
    assert sorted(e.id for e in expired) == sorted([inv_id, parked])
    inv = await cp.data.invocations.get(inv_id)
    assert inv.status is Status.FAILED and inv.error == "queue_timeout"
    assert (await cp.data.invocations.get(parked)).error == "queue_timeout: no schedulable workers"
    assert (await cp.data.queue.depth()).total == 0
    with pytest.raises(Conflict):
        await cp.data.invocations.cancel(inv_id)
    with pytest.raises(NotFound):
        await cp.data.invocations.cancel("missing")
    await cp.data.close()


async def test_registration_sorts_out_orphans_and_revoked(cp: ControlPlane) -> None:
    await register(cp, "w1")
    fn = await deploy(cp, "f", command=["true"])
    kept, lost = await invoke(cp, fn, b""), await invoke(cp, fn, b"")
    for inv_id in (kept, lost):
        assert isinstance(await cp.data.leases.assign(inv_id, "w1", ""), Lease)
    reg = await cp.data.workers.register(
        "w1",
        "s2",
        hostname="h",
        version="t",
        capacity=Amounts(1000, 1024, 0, 2),
        labels={},
        runtimes=["process"],
        running=[kept, "foreign"],
    )
    assert reg.orphans == [lost] and reg.revoked == ["foreign"]
    w = await cp.data.workers.get("w1")
    assert w and w.server_id == "s2" and w.used.slots == 2


async def test_listing_walks_indexes_with_a_cursor(cp: ControlPlane) -> None:
    f = await deploy(cp, "f", command=["true"])
    g = await deploy(cp, "g", command=["true"])
    ids = [await invoke(cp, fn, b"") for fn in (f, g, f, f)]
    await cp.data.invocations.cancel(ids[0])
    recent = cp.data.invocations.recent
    assert [i.id for i in (await recent()).invocations] == ids[::-1]
    assert [i.id for i in (await recent(function="f")).invocations] == [ids[3], ids[2], ids[0]]
    assert [i.id for i in (await recent(status=Status.CANCELLED)).invocations] == [ids[0]]
    both = await recent(function="f", status=Status.QUEUED)
    assert [i.id for i in both.invocations] == [ids[3], ids[2]]
    first = await recent(limit=2)
    assert [i.id for i in first.invocations] == [ids[3], ids[2]] and first.next_cursor
    second = await recent(limit=2, cursor=first.next_cursor)
    assert [i.id for i in second.invocations] == [ids[1], ids[0]]
    assert (await recent(function="nomatch", limit=1)).invocations == []
    queued = (await recent(status=Status.QUEUED)).invocations
    assert sorted(i.id for i in queued) == sorted(ids[1:])
    depth = await cp.data.queue.depth()
    assert depth.per_priority == {"high": 0, "normal": 3, "low": 0} and depth.retrying == 0


async def test_idempotency_is_per_caller_and_per_payload(cp: ControlPlane) -> None:
    fn = await deploy(cp, "f", command=["true"])

    def key(caller: str, payload: bytes) -> Idempotency:
        return Idempotency(caller, "order-42", payload.hex())

    first = await cp.data.invocations.enqueue("f", b"a", idempotency=key("alice", b"a"))
    again = await cp.data.invocations.enqueue("f", b"a", idempotency=key("alice", b"a"))
    assert again.id == first.id and again.duplicate
    with pytest.raises(IdempotencyMismatch):
        await cp.data.invocations.enqueue("f", b"b", idempotency=key("alice", b"b"))
    other = await cp.data.invocations.enqueue("f", b"a", idempotency=key("bob", b"a"))
    assert other.id != first.id and not other.duplicate
    assert fn.name == "f" and await cp.data.redis.zcard(cp.data.keys.queue) == 2


async def test_concurrency_counts_queued_and_running_until_final(cp: ControlPlane) -> None:
    await register(cp, "w1")
    fn = await deploy(cp, "limited", command=["true"], concurrency=2, max_retries=0)
    a = await invoke(cp, fn, b"")
    b = await invoke(cp, fn, b"")
    with pytest.raises(QueueFull):
        await invoke(cp, fn, b"")
    await cp.data.invocations.cancel(b)  # final: frees a place
    c = await invoke(cp, fn, b"", callback_url="http://127.0.0.1:9/hook")
    assert isinstance(await cp.data.leases.assign(c, "w1", ""), Lease)
    with pytest.raises(QueueFull):
        await invoke(cp, fn, b"")
    await cp.data.leases.end(end(c, 1, "w1", "failed", exit_code=1))
    assert await cp.data.redis.hget(cp.data.keys.inflight, "limited") == b"1"
    assert await cp.data.callbacks.claim(60_000, 10) == [c]
    await cp.data.invocations.cancel(a)
    assert await cp.data.redis.hget(cp.data.keys.inflight, "limited") is None


async def test_replay_is_a_new_invocation_within_the_functions_limits(cp: ControlPlane) -> None:
    await register(cp, "w1")
    fn = await deploy(cp, "limited", command=["true"], concurrency=1, max_retries=0)
    dead = await invoke(cp, fn, b"again", priority=Priority.HIGH)
    await cp.data.leases.assign(dead, "w1", "")
    await cp.data.leases.end(end(dead, 1, "w1", "failed", exit_code=1))
    busy = await invoke(cp, fn, b"")
    with pytest.raises(QueueFull, match="concurrency"):
        await cp.data.invocations.replay(dead)  # the limit holds for replays too
    assert dead in await dead_ids(cp)
    await cp.data.invocations.cancel(busy)
    new = await cp.data.invocations.replay(dead)
    inv = await cp.data.invocations.get(new)
    assert inv.priority is Priority.HIGH and inv.revision == fn.revision and inv.attempt == 1
    assert await cp.data.redis.hget(cp.data.keys.invocation(new), "payload") == b"again"
    assert dead not in await dead_ids(cp)
    with pytest.raises(Conflict):
        await cp.data.invocations.replay(dead)
    with pytest.raises(NotFound):
        await cp.data.invocations.replay("missing")


async def test_a_deleted_functions_dead_letters_are_not_replayed(cp: ControlPlane) -> None:
    """A review: deleting a function stops it from running, but an invoke token could still
    run its last revision (its code, its env) by replaying one of its dead letters."""
    await register(cp, "w1")
    fn = await deploy(cp, "gone", command=["true"], max_retries=0)
    dead = await invoke(cp, fn, b"x")
    await cp.data.leases.assign(dead, "w1", "")
    await cp.data.leases.end(end(dead, 1, "w1", "failed", exit_code=1))
    await cp.data.functions.delete("gone")
    with pytest.raises(NotFound, match="was deleted"):
        await cp.data.invocations.replay(dead)
    assert dead in await dead_ids(cp)  # still there, to read
    await deploy(cp, "gone", command=["true"], max_retries=0)  # registered again: replayable
    assert await cp.data.invocations.replay(dead)


async def test_final_records_expire_and_drop_payloads_but_dead_letters(
    settings: ServerSettings,
) -> None:
    cp = ControlPlane(replace(settings, retention_s=60))
    session = await register(cp, "w1", slots=5)
    fn = await deploy(cp, "f", command=["true"], max_retries=0)
    failed, cancelled, running, succeeded = [await invoke(cp, fn, b"in") for _ in range(4)]
    for i in (failed, running, succeeded):
        await cp.data.leases.assign(i, "w1", "")
    await cp.data.leases.report(logs=[LogBatch(failed, 1, "w1", [(1, "stderr", "x")])])
    await cp.data.leases.end(end(failed, 1, "w1", "failed", exit_code=1))
    await cp.data.leases.end(end(succeeded, 1, "w1", "succeeded", exit_code=0))
    await cp.data.invocations.cancel(cancelled)
    for inv_id in (failed, cancelled, succeeded):
        assert 0 < await cp.data.redis.ttl(cp.data.keys.invocation(inv_id)) <= 60
    assert 0 < await cp.data.redis.ttl(cp.data.keys.logs(failed)) <= 60
    assert await cp.data.redis.ttl(cp.data.keys.invocation(running)) == -1  # not final: kept
    payload = {
        i: await cp.data.redis.hget(cp.data.keys.invocation(i), "payload")
        for i in (failed, cancelled, succeeded)
    }
    assert payload == {failed: b"in", cancelled: None, succeeded: None}  # replay needs it
    assert (await cp.data.leases.renew("w1", session, [(running, 1)], 0, 0))[0] == "ok"
    await cp.data.close()


async def test_log_bytes_have_a_budget_then_a_marker(settings: ServerSettings) -> None:
    cp = ControlPlane(replace(settings, log_bytes_per_invocation=1000))
    await register(cp, "w1")
    fn = await deploy(cp, "f", command=["true"])
    inv_id = await invoke(cp, fn, b"")
    await cp.data.leases.assign(inv_id, "w1", "")
    line = "y" * 100
    reports = await cp.data.leases.report(
        logs=[LogBatch(inv_id, 1, "w1", [(1, "stderr", line)] * 20)]
    )
    assert reports.logged == [LogAppend.TRUNCATED]
    again = await cp.data.leases.report(logs=[LogBatch(inv_id, 1, "w1", [(2, "stderr", "z")])])
    assert again.logged == [LogAppend.TRUNCATED]
    kept = await logs(cp, inv_id)
    assert 5 <= len(kept) <= 9 and kept[-1]["stream"] == "hodei"
    assert "log truncated" in kept[-1]["line"]
    assert (await cp.data.invocations.get(inv_id)).log_truncated
    page = await cp.data.invocations.logs(inv_id, offset=2, limit=2)
    assert [e["line"] for e in page.lines] == [line, line] and page.next_offset == 4
    await cp.data.close()


async def test_depth_counters_match_the_sets_after_every_kind_of_change(
    settings: ServerSettings,
) -> None:
    """The O(1) depth is kept by the scripts: after enqueues, parks, retries, hand-backs,
    cancels, expiries and replays it still equals what the sets hold."""
    clock = FakeClock()
    cp = ControlPlane(settings, clock)
    await register(cp, "w1", slots=10)
    fn = await deploy(cp, "f", command=["true"], max_retries=2, queue_timeout_s=5)
    slow = await deploy(cp, "g", command=["true"], max_retries=0)
    ids = [await invoke(cp, fn, b"ab", priority=p) for p in Priority]
    keep = [await invoke(cp, slow, b"abc") for _ in range(3)]
    await cp.data.queue.park({ids[0]: "no"})
    for i in keep:
        await cp.data.leases.assign(i, "w1", "")
    await cp.data.leases.end(end(keep[0], 1, "w1", "handed_back"))
    await cp.data.leases.end(end(keep[1], 1, "w1", "failed", exit_code=2))  # dead letter
    await cp.data.invocations.replay(keep[1])
    await cp.data.invocations.cancel(ids[1])
    clock.advance(6)
    assert len(await cp.data.queue.expire_due()) == 2
    redis, keys = cp.data.redis, cp.data.keys
    waiting = [m.decode() for m in await redis.zrange(keys.waiting, 0, -1)]
    members = set(await redis.zrange(keys.queue, 0, -1)) | set(
        await redis.zrange(keys.delayed, 0, -1)
    )
    for fn_name, revision in await cp.data.queue.parked_revisions():
        members |= set(await redis.zrange(keys.parked(fn_name, revision), 0, -1))
    assert sorted(m.decode() for m in members) == sorted(waiting)
    depth = await cp.data.queue.depth()
    assert depth.total == len(waiting)
    sizes = [await redis.hstrlen(keys.invocation(i), "payload") for i in waiting]
    assert depth.payload_bytes == sum(sizes)
    await cp.data.close()


async def test_indexes_are_trimmed_to_the_retention(settings: ServerSettings) -> None:
    cp = ControlPlane(replace(settings, retention_s=60))
    fn = await deploy(cp, "f", command=["true"])
    fresh = await invoke(cp, fn, b"")
    old_ms = int(time.time() * 1000) - 120_000
    await cp.data.redis.zadd(cp.data.keys.invocations, {"old": old_ms * 1000})
    await cp.data.redis.zadd(cp.data.keys.function_index("f"), {"old": old_ms * 1000})
    await cp.data.redis.zadd(cp.data.keys.dead, {"old": old_ms})
    monitor = HealthMonitor(cp.settings, cp.data, cp.leader)
    await monitor.trim_indexes()
    for index in (cp.data.keys.invocations, cp.data.keys.function_index("f")):
        assert [i.decode() for i in await cp.data.redis.zrange(index, 0, -1)] == [fresh]
    assert await cp.data.redis.zcard(cp.data.keys.dead) == 0
    await cp.data.close()


async def test_cancel_of_a_running_invocation_goes_to_its_servers_inbox(cp: ControlPlane) -> None:
    await register(cp, "w1")
    fn = await deploy(cp, "f", command=["true"])
    inv_id = await invoke(cp, fn, b"")
    await cp.data.leases.assign(inv_id, "w1", "")
    assert await cp.data.invocations.cancel(inv_id) is CancelOutcome.RUNNING
    [message] = await cp.data.inboxes.receive("s1", 1.0)
    assert (message.worker_id, message.invocation_id, message.attempt) == ("w1", inv_id, 1)


async def test_what_the_wake_ups_told_does_not_outlive_a_leadership(cp: ControlPlane) -> None:
    """A leader that knew the ready queue's head from its wake-ups (empty, then what joined)
    forgets it with its view: leading again, or refreshing its view, it reads the queue, so
    what another leader left queued is placed (or parked), not stranded."""
    fn = await deploy(cp, "f", command=["true"])
    scheduler = cp.scheduler
    scheduler._known_head = []  # a freed slot, nothing joined: heard just before losing
    inv_id = await invoke(cp, fn, b"")  # queued under another leader
    await scheduler._load()  # leading again
    await scheduler.schedule_pass("token")
    inv = await cp.data.invocations.get(inv_id)
    assert inv.parked and inv.pending_reason  # looked at: no worker can take it


async def test_a_quick_jobs_start_and_end_are_recorded_by_one_script(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent holds a quick job's acceptance back until its result: both arrive in one
    batch, and the end announces the start (one script, not two)."""
    session_id = await register(cp, "w1")
    fn = await deploy(cp, "f", command=["true"])
    inv_id = await invoke(cp, fn, b"")
    assert isinstance(await cp.data.leases.assign(inv_id, "w1", ""), Lease)
    ran: list[str] = []
    run_many = cp.data.scripts.run_many

    async def counted(calls: Sequence[Call]) -> list[Any]:
        ran.extend(call.script for call in calls)
        return await run_many(calls)

    monkeypatch.setattr(cp.data.scripts, "run_many", counted)
    now = int(time.time() * 1000)
    accepted = pb.JobAccepted(invocation_id=inv_id, attempt=1, worker_id="w1", started_at_ms=now)
    result = pb.JobResult(
        invocation_id=inv_id,
        attempt=1,
        outcome=pb.JOB_OUTCOME_SUCCEEDED,
        exit_code=0,
        started_at_ms=now,
        finished_at_ms=now + 1,
    )
    batch = pb.AgentMessages(
        messages=[pb.AgentMessage(accepted=accepted), pb.AgentMessage(result=result)]
    )
    session = Session("w1", session_id)
    await cp.sessions.handle(session, [pb.AgentMessage(batch=batch)])
    assert ran == ["finish"]
    assert session.outbox.get_nowait().ack.recorded  # type: ignore[union-attr]
    assert (await cp.data.invocations.get(inv_id)).status is Status.SUCCEEDED
    told = [
        e.type
        for e in await cp.data.events.events("0-0", None)
        if e.fields.get("invocation") == inv_id
    ]
    assert told.count("started") == 1 and told.index("started") < told.index("finished")


async def test_a_job_never_runs_under_a_registered_functions_name(cp: ControlPlane) -> None:
    """A review of the 409: a job could still reach a function's name by a replay (a
    dead-lettered job of that name, from before the function was registered) or by
    reusing an idempotency key of an invoke of the function."""
    await register(cp, "w1")
    job = FunctionSpec.from_dict("later", {"command": ["false"], "max_retries": 0})
    revision = await cp.data.functions.store_revision(job)
    dead = (await cp.data.invocations.enqueue("later", b"", job_revision=revision)).id
    await cp.data.leases.assign(dead, "w1", "")
    await cp.data.leases.end(end(dead, 1, "w1", "failed", exit_code=1))
    assert dead in await dead_ids(cp)
    fn = await deploy(cp, "later", command=["true"], concurrency=1)
    with pytest.raises(Conflict, match="name of its own"):
        await cp.data.invocations.replay(dead)
    assert dead in await dead_ids(cp)  # still there, to replay once the name is free

    alice = Idempotency("alice", "k1", "d1")
    first = await cp.data.invocations.enqueue(fn.name, b"", idempotency=alice)
    with pytest.raises(Conflict, match="name of its own"):
        await cp.data.invocations.enqueue(fn.name, b"", job_revision=revision, idempotency=alice)
    assert await cp.data.invocations.get(first.id)


def test_a_retry_of_a_warm_attempt_counts_as_a_retry() -> None:
    """A review: a result that said whether its start was cold went past the retry
    counter (one if/elif chain), so lambda functions' retries were never counted."""

    def retries() -> float:
        return REGISTRY.get_sample_value("hodei_retries_total") or 0.0

    before = retries()
    result = pb.JobResult(invocation_id="i1", attempt=1, cold_start=False)
    ended = Ended("i1", EndKind.RETRY, function="f", revision="r1")
    Sessions._acknowledge(Session("w1", "s1"), result, ended)
    assert retries() == before + 1
