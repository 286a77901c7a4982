"""The unary WorkerService RPCs' domain side: registration, status and operator pins."""

from __future__ import annotations

import asyncio
import json
import logging

from hodei.errors import NotFound, PinRefused
from hodei.plugin.sessions import Sessions
from hodei.plugin.store import now_ms
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)


async def register(
    sessions: Sessions, req: pb.RegisterWorkerRequest, version: str
) -> pb.WorkerStatus:
    """RegisterWorker: a new session; leases of jobs it still runs kept, the rest sorted out."""
    fields = {
        "hostname": req.hostname,
        "version": req.version or version,
        "cpu_total": req.capacity.cpu_millicores,
        "mem_total": req.capacity.memory_mb,
        "gpu_total": req.capacity.gpus,
        "slots_total": req.capacity.job_slots,
        "labels": json.dumps(dict(req.labels)),
        "runtimes": ",".join(sorted(req.runtimes)),
    }
    running = {j.invocation_id: j.attempt for j in req.running_jobs}
    reg = await sessions.registry.register(req.worker_id, sessions.server_id, fields, list(running))
    for invocation_id in reg.orphans:
        attempt = await sessions.redis.hget(sessions.keys.invocation(invocation_id), "attempt")
        await sessions.leases.finish(
            invocation_id,
            int(attempt or 0),
            req.worker_id,
            "lost",
            error="lost: the worker came back without it",
        )
    kept = [(i, a) for i, a in running.items() if i not in reg.revoked]
    _, stale = await sessions.leases.renew(req.worker_id, reg.session_id, kept, 0.0, 0.0)
    revoked = set(reg.revoked) | set(stale)
    log.info(
        "worker %s registered (session %s): %d jobs kept, %d revoked, %d lost",
        req.worker_id,
        reg.session_id,
        len(running) - len(revoked),
        len(revoked),
        len(reg.orphans),
        extra={"worker_id": req.worker_id},
    )
    return pb.WorkerStatus(
        worker_id=req.worker_id,
        state=pb.WORKER_STATE_REGISTERING,
        session_id=reg.session_id,
        capacity=req.capacity,
        revoked_jobs=[pb.RunningJob(invocation_id=i, attempt=running[i]) for i in revoked],
    )


async def status(sessions: Sessions, worker_id: str) -> pb.WorkerStatus:
    """GetWorkerStatus: state, capacity, reservations and the leases the worker holds."""
    h = await sessions.registry.get(worker_id)
    if h is None:
        raise NotFound(f"worker {worker_id} is not registered")
    jobs = []
    for invocation_id in await sessions.registry.jobs_of(worker_id):
        attempt = await sessions.redis.hget(sessions.keys.invocation(invocation_id), "attempt")
        jobs.append(pb.RunningJob(invocation_id=invocation_id, attempt=int(attempt or 0)))
    return pb.WorkerStatus(
        worker_id=worker_id,
        state=pb.WorkerState.Value(f"WORKER_STATE_{h['state'].upper()}"),
        capacity=pb.Resources(
            cpu_millicores=int(h["cpu_total"]),
            memory_mb=int(h["mem_total"]),
            gpus=int(h["gpu_total"]),
            job_slots=int(h["slots_total"]),
        ),
        allocated=pb.Resources(
            cpu_millicores=int(h["cpu_used"]),
            memory_mb=int(h["mem_used"]),
            gpus=int(h["gpu_used"]),
            job_slots=int(h["slots_used"]),
        ),
        jobs=jobs,
    )


async def pin(
    sessions: Sessions, invocation_id: str, worker_id: str, timeout_s: float
) -> pb.JobAccepted:
    """Lease a queued invocation to a chosen worker and wait until its agent accepts it."""
    if not await sessions.redis.exists(sessions.keys.invocation(invocation_id)):
        raise NotFound(f"invocation {invocation_id} does not exist")
    record = await sessions.registry.get(worker_id)
    if record is None:
        raise NotFound(f"worker {worker_id} is not registered")
    last = await sessions.redis.xrevrange(sessions.keys.events, count=1)
    cursor = last[0][0] if last else b"0-0"
    reply = await sessions.leases.assign_call(invocation_id, worker_id, "")
    code = int(reply[0])
    if code != 1:
        raise PinRefused(code, reply[1].decode())
    request = sessions.leases.assignment(invocation_id, reply)
    await sessions.deliver(worker_id, record.get("server_id", ""), request)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        reply = await sessions.redis.xread(
            {sessions.keys.events: cursor}, count=500, block=max(1, int(left * 1000))
        )
        for _stream, entries in reply or []:
            for entry_id, f in entries:
                cursor = entry_id
                if f.get(b"type") == b"started" and f.get(b"invocation") == invocation_id.encode():
                    return pb.JobAccepted(
                        invocation_id=invocation_id,
                        attempt=request.attempt,
                        worker_id=worker_id,
                        started_at_ms=now_ms(),
                    )
    raise TimeoutError(f"worker {worker_id} did not accept {invocation_id} in {timeout_s}s")
