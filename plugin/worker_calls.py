"""The unary WorkerService RPCs' domain side: registration, status and operator pins."""

from __future__ import annotations

import asyncio
import logging

from hodei.domain import WorkerState, now_ms
from hodei.errors import NotFound, PinRefused
from hodei.plugin import assignment
from hodei.plugin.data.leases import AttemptEnd, Refusal
from hodei.plugin.data.records import Amounts
from hodei.plugin.sessions import Sessions
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)


def _amounts(r: pb.Resources) -> Amounts:
    return Amounts(int(r.cpu_millicores), int(r.memory_mb), r.gpus, r.job_slots)


def _resources(a: Amounts) -> pb.Resources:
    return pb.Resources(cpu_millicores=a.cpu, memory_mb=a.mem, gpus=a.gpu, job_slots=a.slots)


async def register(
    sessions: Sessions, req: pb.RegisterWorkerRequest, version: str
) -> pb.WorkerStatus:
    """RegisterWorker: a new session; leases of jobs it still runs kept, the rest sorted out."""
    data = sessions.data
    running = {j.invocation_id: j.attempt for j in req.running_jobs}
    reg = await data.workers.register(
        req.worker_id,
        sessions.instance_id,
        hostname=req.hostname,
        version=req.version or version,
        capacity=_amounts(req.capacity),
        labels=dict(req.labels),
        runtimes=list(req.runtimes),
        running=list(running),
    )
    for invocation_id in reg.orphans:
        await data.leases.end(
            AttemptEnd(
                invocation_id,
                await data.leases.attempt_of(invocation_id),
                req.worker_id,
                "lost",
                error="lost: the worker came back without it",
            )
        )
    kept = [(i, a) for i, a in running.items() if i not in reg.revoked]
    _, stale = await data.leases.renew(req.worker_id, reg.session_id, kept, 0.0, 0.0)
    revoked = set(reg.revoked) | set(stale)
    log.info(
        "worker %s registered (session %s…): %d jobs kept, %d revoked, %d lost",
        req.worker_id,
        reg.session_id[:8],  # a session proves who a worker is: never logged whole
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
    data = sessions.data
    w = await data.workers.get(worker_id)
    if w is None:
        raise NotFound(f"worker {worker_id} is not registered")
    jobs = [
        pb.RunningJob(invocation_id=i, attempt=await data.leases.attempt_of(i))
        for i in await data.workers.jobs_of(worker_id)
    ]
    return pb.WorkerStatus(
        worker_id=worker_id,
        state=WorkerState(w.state).proto,
        capacity=_resources(w.capacity),
        allocated=_resources(w.used),
        jobs=jobs,
    )


async def pin(
    sessions: Sessions, invocation_id: str, worker_id: str, timeout_s: float
) -> pb.JobAccepted:
    """Lease a queued invocation to a chosen worker and wait until its agent accepts it."""
    data = sessions.data
    await data.invocations.get(invocation_id)  # NotFound
    w = await data.workers.get(worker_id)
    if w is None:
        raise NotFound(f"worker {worker_id} is not registered")
    cursor = await data.events.last_event()
    lease = await data.leases.assign(invocation_id, worker_id, "")
    if isinstance(lease, Refusal):
        raise PinRefused(lease, str(lease))
    spec = await data.functions.spec(lease.function, lease.revision)
    message = pb.ServerMessage(assign=assignment.request(lease, spec))
    await sessions.deliver([(worker_id, w.server_id, message)])
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        for entry in await data.events.events(cursor, int(left * 1000), count=500):
            cursor = entry.id
            if entry.type == "started" and entry.fields.get("invocation") == invocation_id:
                return pb.JobAccepted(
                    invocation_id=invocation_id,
                    attempt=lease.attempt,
                    worker_id=worker_id,
                    started_at_ms=now_ms(),
                )
    raise TimeoutError(f"worker {worker_id} did not accept {invocation_id} in {timeout_s}s")
