"""Leases: assigning an invocation to a worker, renewing, ending and reclaiming attempts."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from hodei.logs import inv
from hodei.plugin.keys import Keys
from hodei.plugin.scripts import RedisClient, Scripts
from hodei.plugin.store import now_ms
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)

OUTCOMES = {
    pb.JOB_OUTCOME_SUCCEEDED: "succeeded",
    pb.JOB_OUTCOME_FAILED: "failed",
    pb.JOB_OUTCOME_TIMED_OUT: "timed_out",
    pb.JOB_OUTCOME_CANCELLED: "cancelled",
    pb.JOB_OUTCOME_HANDED_BACK: "handed_back",
}


@dataclass(frozen=True, slots=True)
class Finish:
    """What became of an ending attempt: recorded (final), back in line, or rejected."""

    recorded: bool
    requeued: bool
    detail: str
    function: str = ""


class Leases:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        scripts: Scripts,
        *,
        lease_ttl_s: float,
        retry_base_s: float,
        retry_cap_s: float,
        events_maxlen: int,
        retention_s: int = 0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.events_maxlen = events_maxlen
        self.retention_s = retention_s
        self.rng = random.Random()

    def assign_call(
        self, invocation_id: str, worker_id: str, fence: str, client: Any = None
    ) -> Any:
        """The assign.lua call (awaitable, or queued on ``client`` when it is a pipeline)."""
        return self.scripts.run(
            "assign",
            [
                self.keys.invocation(invocation_id),
                self.keys.queue,
                self.keys.leases,
                self.keys.worker(worker_id),
                self.keys.worker_jobs(worker_id),
                self.keys.events,
                self.keys.leader,
                self.keys.parked,
            ],
            [invocation_id, worker_id, fence, now_ms(), self.lease_ttl_ms, self.events_maxlen],
            client=client,
        )

    @staticmethod
    def assignment(invocation_id: str, reply: list[Any]) -> pb.AssignJobRequest:
        """The AssignJobRequest built from a successful assign.lua reply."""
        attempt, payload, traceparent, function, runtime, image, command, env, network, timeout = (
            reply[1:11]
        )
        return pb.AssignJobRequest(
            invocation_id=invocation_id,
            attempt=int(attempt),
            function=function.decode(),
            runtime=runtime.decode(),
            image=image.decode(),
            command=json.loads(command or b"[]"),
            env=json.loads(env or b"{}"),
            network=network == b"1",
            timeout_s=float(timeout or 0),
            payload=payload,
            traceparent=traceparent.decode(),
            resources=pb.Resources(
                cpu_millicores=int(reply[11]),
                memory_mb=int(reply[12]),
                gpus=int(reply[13]),
                job_slots=1,
            ),
        )

    async def finish(
        self,
        invocation_id: str,
        attempt: int,
        worker_id: str,
        outcome: str,
        *,
        exit_code: int | None = None,
        error: str = "",
        output: bytes = b"",
        truncated: bool = False,
        started_ms: int | None = None,
        finished_ms: int | None = None,
        final: bool = False,
    ) -> Finish:
        base_ms, cap_ms = int(self.retry_base_s * 1000), int(self.retry_cap_s * 1000)
        retry = f"{base_ms}:{cap_ms}:{self.rng.random():.6f}"
        reply = await self.scripts.run(
            "finish",
            [
                self.keys.invocation(invocation_id),
                self.keys.leases,
                self.keys.worker(worker_id),
                self.keys.worker_jobs(worker_id),
                self.keys.delayed,
                self.keys.queue,
                self.keys.dead,
                self.keys.events,
                self.keys.inflight,
                self.keys.callbacks,
                self.keys.logs(invocation_id),
            ],
            [
                invocation_id,
                attempt,
                worker_id,
                outcome,
                "" if exit_code is None else exit_code,
                error,
                output,
                int(truncated),
                "" if started_ms is None else started_ms,
                finished_ms or now_ms(),
                retry,
                self.events_maxlen,
                self.keys.completed_channel,
                self.retention_s,
                int(final),
            ],
        )
        code = int(reply[0])
        function = reply[2].decode() if len(reply) > 2 and reply[2] else ""
        result = Finish(code == 1, code == 2, reply[1].decode(), function)
        log.info(
            "invocation %s attempt %d on %s ended %s: %s",
            invocation_id,
            attempt,
            worker_id,
            outcome,
            result.detail,
            extra=inv(invocation_id, attempt, worker_id=worker_id),
        )
        return result

    async def renew(
        self,
        worker_id: str,
        session_id: str,
        running: list[tuple[str, int]],
        cpu_percent: float,
        mem_percent: float,
        runtimes: list[str] | None = None,
    ) -> tuple[str, list[str]]:
        """Heartbeat: liveness, usage, runtimes on offer (None = unchanged), lease renewal.
        Returns (status, revoked ids)."""
        keys = [
            self.keys.worker(worker_id),
            self.keys.heartbeats,
            self.keys.leases,
            self.keys.events,
        ]
        args: list[Any] = [
            worker_id,
            session_id,
            now_ms(),
            self.lease_ttl_ms,
            round(cpu_percent, 2),
            round(mem_percent, 2),
            self.events_maxlen,
            "-" if runtimes is None else ",".join(sorted(runtimes)),
        ]
        for invocation_id, attempt in running:
            keys.append(self.keys.invocation(invocation_id))
            args += [invocation_id, attempt]
        reply = await self.scripts.run("renew", keys, args)
        return reply[0].decode(), [r.decode() for r in reply[1:]]

    async def expired(self, limit: int = 500) -> list[str]:
        ids = await self.redis.zrangebyscore(self.keys.leases, "-inf", now_ms(), start=0, num=limit)
        return [i.decode() for i in ids]

    async def reclaim(self, invocation_id: str) -> Finish | None:
        """End an attempt whose lease ran out (its worker is gone or silent)."""
        worker_id, attempt = await self.redis.hmget(
            self.keys.invocation(invocation_id), "worker_id", "attempt"
        )
        if not worker_id:
            await self.redis.zrem(self.keys.leases, invocation_id)
            return None
        result = await self.finish(
            invocation_id,
            int(attempt),
            worker_id.decode(),
            "lease_expired",
            error="lease_expired: the worker stopped renewing it",
        )
        return result

    async def promote_due(self, limit: int = 1000) -> int:
        return int(
            await self.scripts.run(
                "promote",
                [self.keys.delayed, self.keys.queue, self.keys.events],
                [now_ms(), limit, self.keys.invocation_prefix, self.events_maxlen],
            )
        )

    async def next_due_ms(self) -> int | None:
        first = await self.redis.zrange(self.keys.delayed, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def expire_queued(self, invocation_id: str) -> bool:
        return bool(
            await self.scripts.run(
                "expire_queued",
                [
                    self.keys.invocation(invocation_id),
                    self.keys.queue,
                    self.keys.dead,
                    self.keys.events,
                    self.keys.inflight,
                    self.keys.callbacks,
                    self.keys.parked,
                    self.keys.logs(invocation_id),
                ],
                [
                    invocation_id,
                    now_ms(),
                    self.events_maxlen,
                    self.keys.completed_channel,
                    self.retention_s,
                ],
            )
        )

    async def extend_all(self) -> None:
        """On a new leadership: give every lease one full TTL, so agents of a restarted
        server have time to reconnect and renew before anything is reclaimed."""
        deadline = now_ms() + self.lease_ttl_ms
        ids = await self.redis.zrangebyscore(self.keys.leases, "-inf", deadline)
        if ids:
            await self.redis.zadd(self.keys.leases, {i: deadline for i in ids}, xx=True, gt=True)
