"""The Redis store, queue and lease scripts, without agents: atomicity and fencing."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from conftest import deploy

from hodei.errors import Conflict, NotFound, QueueFull
from hodei.plugin.leader import RedisLeaderLock
from hodei.plugin.models import FunctionSpec, Priority, Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings
from hodei.plugin.store import queue_score


@pytest.fixture
async def cp(settings: ServerSettings) -> ControlPlane:
    """A control plane that is not started: no scheduler, just its Redis parts."""
    plane = ControlPlane(settings)
    yield plane  # type: ignore[misc]
    await plane.redis.aclose()


async def register(cp: ControlPlane, worker_id: str, cpu: int = 1000, slots: int = 2) -> str:
    reg = await cp.registry.register(
        worker_id,
        "s1",
        {
            "cpu_total": cpu,
            "mem_total": 1024,
            "gpu_total": 0,
            "slots_total": slots,
            "labels": "{}",
            "runtimes": "process",
        },
        [],
    )
    from hodei.plugin.registry import WorkerState

    await cp.registry.transition(worker_id, WorkerState.AVAILABLE, reg.session_id)
    return reg.session_id


async def test_invoke_records_and_enqueues_in_one_step(cp: ControlPlane) -> None:
    fn = await deploy(cp, "f", command=["true"])
    inv_id = await cp.store.invoke(fn, b"\x00payload")
    inv = await cp.store.get(inv_id)
    assert inv.status is Status.QUEUED and inv.attempt == 1 and inv.function == "f"
    assert await cp.redis.zscore(cp.keys.queue, inv_id) is not None
    assert await cp.redis.hget(cp.keys.invocation(inv_id), "payload") == b"\x00payload"
    with pytest.raises(Conflict):
        await cp.store.invoke(fn, b"", invocation_id=inv_id)
    with pytest.raises(Conflict):
        await cp.store.result(inv_id)


async def test_bounded_queue_refuses_without_recording(settings: ServerSettings) -> None:
    cp = ControlPlane(replace(settings, max_queue=2))
    fn = await deploy(cp, "f", command=["true"])
    await cp.store.invoke(fn, b"")
    await cp.store.invoke(fn, b"")
    with pytest.raises(QueueFull):
        await cp.store.invoke(fn, b"", invocation_id="third")
    with pytest.raises(NotFound):
        await cp.store.get("third")
    await cp.redis.aclose()


async def test_queue_order_fifo_within_priority_with_ageing(cp: ControlPlane) -> None:
    fn = await deploy(cp, "f", command=["true"])
    a = await cp.store.invoke(fn, b"", priority=Priority.LOW)
    b = await cp.store.invoke(fn, b"", priority=Priority.NORMAL)
    c = await cp.store.invoke(fn, b"", priority=Priority.HIGH)
    d = await cp.store.invoke(fn, b"", priority=Priority.HIGH)
    order = [i.decode() for i in await cp.redis.zrange(cp.keys.queue, 0, -1)]
    assert order == [c, d, b, a]
    # Ageing: a low invocation waiting two ageing periods goes before a fresh high one.
    assert queue_score(Priority.LOW, 0, 60) < queue_score(Priority.HIGH, 120_001, 60)
    assert queue_score(Priority.LOW, 0, 60) > queue_score(Priority.HIGH, 119_999, 60)


async def test_functions_crud(cp: ControlPlane) -> None:
    spec = FunctionSpec.from_dict("echo", {"command": ["cat"], "max_retries": 1})
    assert await cp.store.put_function(spec) is True
    assert await cp.store.put_function(replace(spec, max_retries=2)) is False
    assert (await cp.store.get_function("echo")).max_retries == 2
    assert [f.name for f in await cp.store.list_functions()] == ["echo"]
    await cp.store.delete_function("echo")
    with pytest.raises(NotFound):
        await cp.store.get_function("echo")
    with pytest.raises(NotFound):
        await cp.store.delete_function("echo")


async def test_assignment_respects_capacity_and_fencing(cp: ControlPlane) -> None:
    await register(cp, "w1", cpu=1000, slots=5)
    fn = await deploy(
        cp, "f", command=["true"], resources={"cpu_millicores": 600, "memory_mb": 100}
    )
    first, second = await cp.store.invoke(fn, b""), await cp.store.invoke(fn, b"")
    lock = RedisLeaderLock(cp.redis, cp.keys, cp.scripts, "me", 5)
    assert await lock.try_acquire()
    token = lock.token or ""
    assert (await cp.leases.assign_call(first, "w1", token))[0] == 1
    assert (await cp.leases.assign_call(second, "w1", token))[0] == -4  # does not fit
    assert (await cp.leases.assign_call(first, "w1", token))[0] == -2  # not queued
    # A deposed leader's token no longer places anything.
    await lock.release()
    other = RedisLeaderLock(cp.redis, cp.keys, cp.scripts, "other", 5)
    assert await other.try_acquire()
    assert other.token != token
    await cp.leases.finish(first, 1, "w1", "succeeded")
    assert (await cp.leases.assign_call(second, "w1", token))[0] == -1
    assert (await cp.leases.assign_call(second, "w1", other.token or ""))[0] == 1


async def test_leadership_is_exclusive_and_passes_on_expiry(cp: ControlPlane) -> None:
    a = RedisLeaderLock(cp.redis, cp.keys, cp.scripts, "a", 0.3)
    b = RedisLeaderLock(cp.redis, cp.keys, cp.scripts, "b", 0.3)
    assert await a.try_acquire() and not await b.try_acquire()
    assert await a.try_acquire()  # renewal keeps the same epoch
    first = a.token
    await asyncio.sleep(0.4)  # a stops renewing (paused, dead)
    assert await b.try_acquire()
    assert not await a.try_acquire() and a.token is None
    assert b.token and first and int(b.token.split(":")[1]) > int(first.split(":")[1])


async def test_results_are_fenced_by_attempt_and_worker(cp: ControlPlane) -> None:
    await register(cp, "w1")
    await register(cp, "w2")
    fn = await deploy(cp, "f", command=["true"], max_retries=1)
    inv_id = await cp.store.invoke(fn, b"")
    assert (await cp.leases.assign_call(inv_id, "w1", ""))[0] == 1
    assert not (await cp.leases.finish(inv_id, 1, "w2", "succeeded")).recorded
    assert not (await cp.leases.finish(inv_id, 2, "w1", "succeeded")).recorded
    # Attempt 1 fails: a retry is scheduled with a backoff, as attempt 2.
    retry = await cp.leases.finish(inv_id, 1, "w1", "failed", exit_code=1, error="exit code 1")
    assert retry.requeued and retry.detail == "retry"
    inv = await cp.store.get(inv_id)
    assert inv.status is Status.QUEUED and inv.attempt == 2 and inv.pending_reason
    assert await cp.redis.zscore(cp.keys.delayed, inv_id) is not None
    assert (await cp.leases.finish(inv_id, 1, "w1", "succeeded")).detail == "not_running"
    await asyncio.sleep(0.25)
    assert await cp.leases.promote_due() == 1
    assert (await cp.leases.assign_call(inv_id, "w2", ""))[0] == 1
    done = await cp.leases.finish(inv_id, 2, "w2", "succeeded", exit_code=0, output=b"ok")
    assert done.recorded and done.detail == "succeeded"
    assert (await cp.store.result(inv_id))[1] == b"ok"
    assert not (await cp.leases.finish(inv_id, 2, "w2", "succeeded")).recorded
    for worker in ("w1", "w2"):
        h = await cp.registry.get(worker)
        assert h and h["cpu_used"] == "0" and h["slots_used"] == "0" and h["state"] == "available"


async def test_lease_is_reclaimed_only_after_its_deadline(settings: ServerSettings) -> None:
    cp = ControlPlane(replace(settings, lease_ttl_s=0.3))
    await register(cp, "w1")
    fn = await deploy(cp, "f", command=["true"], max_retries=0)
    inv_id = await cp.store.invoke(fn, b"")
    await cp.leases.assign_call(inv_id, "w1", "")
    assert await cp.leases.expired() == []
    session = (await cp.registry.get("w1") or {})["session_id"]
    await asyncio.sleep(0.2)
    status, revoked = await cp.leases.renew("w1", session, [(inv_id, 1)], 1.0, 1.0)
    assert status == "ok" and revoked == []
    await asyncio.sleep(0.2)
    assert await cp.leases.expired() == []  # renewed
    await asyncio.sleep(0.2)
    assert await cp.leases.expired() == [inv_id]
    reclaimed = await cp.leases.reclaim(inv_id)
    assert reclaimed and reclaimed.recorded
    inv = await cp.store.get(inv_id)
    assert inv.status is Status.FAILED and inv.error.startswith("lease_expired")
    assert await cp.store.dead_letters() == [inv_id]
    await cp.redis.aclose()


async def test_queue_timeout_and_cancel(cp: ControlPlane) -> None:
    fn = await deploy(cp, "f", command=["true"], queue_timeout_s=0.05)
    inv_id = await cp.store.invoke(fn, b"")
    assert not await cp.leases.expire_queued("missing")
    await asyncio.sleep(0.1)
    assert await cp.leases.expire_queued(inv_id)
    inv = await cp.store.get(inv_id)
    assert inv.status is Status.FAILED and inv.error == "queue_timeout"
    with pytest.raises(Conflict):
        await cp.store.cancel(inv_id)
    with pytest.raises(NotFound):
        await cp.store.cancel("missing")


async def test_registration_sorts_out_orphans_and_revoked(cp: ControlPlane) -> None:
    await register(cp, "w1")
    fn = await deploy(cp, "f", command=["true"])
    kept, lost = await cp.store.invoke(fn, b""), await cp.store.invoke(fn, b"")
    for inv_id in (kept, lost):
        assert (await cp.leases.assign_call(inv_id, "w1", ""))[0] == 1
    reg = await cp.registry.register("w1", "s2", {"cpu_total": 1000}, [kept, "foreign"])
    assert reg.orphans == [lost] and reg.revoked == ["foreign"]
    h = await cp.registry.get("w1")
    assert h and h["server_id"] == "s2" and h["slots_used"] == "2"


async def test_list_invocations_filters_newest_first(cp: ControlPlane) -> None:
    f = await deploy(cp, "f", command=["true"])
    g = await deploy(cp, "g", command=["true"])
    ids = [await cp.store.invoke(fn, b"") for fn in (f, g, f)]
    await cp.store.cancel(ids[0])
    assert [i.id for i in await cp.store.list_invocations()] == ids[::-1]
    assert [i.id for i in await cp.store.list_invocations(function="f")] == [ids[2], ids[0]]
    assert [i.id for i in await cp.store.list_invocations(status="cancelled")] == [ids[0]]
    assert len(await cp.store.list_invocations(limit=1)) == 1
    depth = await cp.store.queue_depth()
    assert depth == {"high": 0, "normal": 2, "low": 0, "retrying": 0}


async def test_idempotency_key_returns_the_same_invocation(cp: ControlPlane) -> None:
    fn = await deploy(cp, "f", command=["true"])
    first = await cp.store.invoke(fn, b"a", idempotency_key="order-42")
    again = await cp.store.invoke(fn, b"b", idempotency_key="order-42")
    other = await cp.store.invoke(fn, b"c", idempotency_key="order-43")
    assert again == first and other != first
    assert await cp.redis.zcard(cp.keys.queue) == 2


async def test_concurrency_counts_queued_and_running_until_final(cp: ControlPlane) -> None:
    await register(cp, "w1")
    fn = await deploy(cp, "limited", command=["true"], concurrency=2, max_retries=0)
    a = await cp.store.invoke(fn, b"")
    b = await cp.store.invoke(fn, b"")
    with pytest.raises(QueueFull):
        await cp.store.invoke(fn, b"")
    await cp.store.cancel(b)  # final: frees a place
    c = await cp.store.invoke(fn, b"", callback_url="http://127.0.0.1:9/hook")
    assert (await cp.leases.assign_call(c, "w1", ""))[0] == 1
    with pytest.raises(QueueFull):
        await cp.store.invoke(fn, b"")
    await cp.leases.finish(c, 1, "w1", "failed", exit_code=1)
    assert await cp.redis.hget(cp.keys.inflight, "limited") == b"1"
    assert [i.decode() for i in await cp.redis.zrange(cp.keys.callbacks, 0, -1)] == [c]
    await cp.store.cancel(a)
    assert await cp.redis.hget(cp.keys.inflight, "limited") == b"0"


async def test_final_records_expire_after_the_retention(settings: ServerSettings) -> None:
    cp = ControlPlane(replace(settings, retention_s=60))
    await register(cp, "w1")
    fn = await deploy(cp, "f", command=["true"], max_retries=0)
    done, cancelled, running = [await cp.store.invoke(fn, b"") for _ in range(3)]
    await cp.leases.assign_call(done, "w1", "")
    await cp.leases.assign_call(running, "w1", "")
    session = (await cp.registry.get("w1") or {})["session_id"]
    assert await cp.store.append_logs(done, 1, "w1", [{"line": "x"}])
    await cp.leases.finish(done, 1, "w1", "failed", exit_code=1)
    await cp.store.cancel(cancelled)
    for inv_id in (done, cancelled):
        assert 0 < await cp.redis.ttl(cp.keys.invocation(inv_id)) <= 60
    assert 0 < await cp.redis.ttl(cp.keys.logs(done)) <= 60
    assert await cp.redis.ttl(cp.keys.invocation(running)) == -1  # not final: kept
    assert (await cp.leases.renew("w1", session, [(running, 1)], 0, 0))[0] == "ok"
    await cp.redis.aclose()


async def test_indexes_are_trimmed_to_the_retention(settings: ServerSettings) -> None:
    from hodei.plugin.monitor import HealthMonitor

    cp = ControlPlane(replace(settings, retention_s=60))
    fn = await deploy(cp, "f", command=["true"])
    fresh = await cp.store.invoke(fn, b"")
    old_ms = int(time.time() * 1000) - 120_000
    await cp.redis.zadd(cp.keys.invocations, {"old": old_ms * 1000})
    await cp.redis.zadd(cp.keys.dead, {"old": old_ms})
    monitor = HealthMonitor(cp.settings, cp.store, cp.leases, cp.registry, cp.leader)
    await monitor.trim_indexes()
    assert [i.decode() for i in await cp.redis.zrange(cp.keys.invocations, 0, -1)] == [fresh]
    assert await cp.redis.zcard(cp.keys.dead) == 0
    await cp.redis.aclose()
