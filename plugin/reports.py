"""What an agent reports on its stream, as the data layer takes it: a result as the end of
an attempt, a heartbeat's instance pools. Pure translation, no I/O."""

from __future__ import annotations

from hodei.domain import OUTCOMES, now_ms
from hodei.errors import ProtocolError
from hodei.plugin.data.leases import AttemptEnd
from hodei.plugin.data.records import Pool
from hodei.proto import hodei_pb2 as pb


def pools_of(beat: pb.Heartbeat) -> list[Pool] | None:
    if not beat.pools:
        return []
    return [
        Pool(
            p.function,
            p.revision,
            p.idle,
            p.busy,
            p.starting,
            int(p.resources.cpu_millicores),
            int(p.resources.memory_mb),
        )
        for p in beat.pools
    ]


def attempt_end(worker: str, result: pb.JobResult, announce_start: bool = False) -> AttemptEnd:
    outcome = OUTCOMES.get(result.outcome)
    if outcome is None:
        raise ProtocolError(f"JobResult for {result.invocation_id} has no outcome")
    return AttemptEnd(
        result.invocation_id,
        result.attempt,
        worker,
        outcome,
        exit_code=result.exit_code if outcome != "handed_back" else None,
        error=result.error[:4096],
        output=result.output,
        truncated=result.output_truncated,
        started_ms=result.started_at_ms or None,
        finished_ms=result.finished_at_ms or now_ms(),
        final=result.final,
        cold_start=result.cold_start if result.HasField("cold_start") else None,
        init_ms=result.init_ms or None,
        announce_start=announce_start,
    )
