"""One invocation's exchange with a lambda instance: waiting for a cold one to come up,
handing it the invocation, and what a timeout, a cancel or its death make of it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hodei.agent.instance import Instance, exit_text
from hodei.agent.lambda_api import NO_DEADLINE_MS, Invocation, Reply
from hodei.agent.runtime import now_ms
from hodei.logs import inv
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)


async def invoke(
    instance: Instance,
    job: pb.AssignJobRequest,
    deadline_ms: int,
    cancel: asyncio.Event,
    deadline: float | None,
) -> tuple[pb.JobOutcome.ValueType, Reply]:
    """Hand the invocation to the instance and wait for its answer; a timeout or a
    cancel kills the instance, which cannot be trusted to serve again."""
    assert instance.endpoint is not None
    invocation = Invocation(
        job.invocation_id,
        job.payload,
        deadline_ms or now_ms() + NO_DEADLINE_MS,
        job.traceparent,
    )
    instance.endpoint.offer(invocation)
    cancelled = asyncio.ensure_future(cancel.wait())
    waits: set[asyncio.Future[Any]] = {invocation.reply, instance.exit_code, cancelled}
    try:
        done, _ = await asyncio.wait(
            waits,
            timeout=remaining(deadline),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        cancelled.cancel()
    if invocation.reply in done:
        reply = invocation.reply.result()
        return (pb.JOB_OUTCOME_SUCCEEDED if reply.ok else pb.JOB_OUTCOME_FAILED), reply
    kind: pb.JobOutcome.ValueType = pb.JOB_OUTCOME_FAILED
    if instance.exit_code in done:
        reason = f"the instance exited during the invocation ({exit_text(instance)})"
    elif cancelled in done:
        kind, reason = pb.JOB_OUTCOME_CANCELLED, "cancelled"
    else:
        kind, reason = pb.JOB_OUTCOME_TIMED_OUT, f"timed out after {job.timeout_s:g}s"
    log.info(
        "invocation %s attempt %d: instance %s %s",
        job.invocation_id,
        job.attempt,
        instance.id,
        "stopped" if instance.exit_code in done else "killed: " + reason,
        extra=inv(job.invocation_id, job.attempt),
    )
    instance.kill()
    instance.endpoint.withdraw(reason)
    return kind, Reply(ok=False, error=reason)


async def until_up(
    instance: Instance, cancel: asyncio.Event, deadline: float | None
) -> tuple[pb.JobOutcome.ValueType, str] | None:
    """Wait for a cold instance to be ready; the failure otherwise."""
    cancelled = asyncio.ensure_future(cancel.wait())
    waits: set[asyncio.Future[Any]] = {instance.up, cancelled}
    try:
        await asyncio.wait(
            waits,
            timeout=remaining(deadline),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        cancelled.cancel()
    if instance.up.done():
        if instance.up.exception() is None:
            return None
        return pb.JOB_OUTCOME_FAILED, str(instance.up.exception())
    instance.kill()
    if cancel.is_set():
        return pb.JOB_OUTCOME_CANCELLED, "cancelled"
    return pb.JOB_OUTCOME_TIMED_OUT, "timed out while the instance started"


def remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - asyncio.get_running_loop().time())
