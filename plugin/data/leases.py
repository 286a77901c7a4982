"""Leases: assigning invocations to workers, what agents report of them (acceptance, logs,
ends), heartbeats renewing them, and reclaiming the ones whose worker went silent.

Assignments of one scheduling pass, and the reports of one batch of agent messages, each
travel in one round trip (every script stays atomic on its own).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from hodei import backoff
from hodei.domain import Clock, now_ms
from hodei.plugin.data import records
from hodei.plugin.data.keys import Keys
from hodei.plugin.data.records import Pool
from hodei.plugin.data.replies import raw, text, texts
from hodei.plugin.data.scripts import Call, Scripts
from hodei.plugin.data.settings import DataSettings

MAX_FAILURES = 21  # max_retries is at most 20: one backoff per possible failure
TRUNCATED = "log truncated: this invocation's log budget of {} bytes is used up"


class Refusal(enum.StrEnum):
    """Why assign.lua did not lease an invocation to a worker."""

    NOT_LEADER = "not_leader"
    NOT_QUEUED = "not_queued"
    NOT_SCHEDULABLE = "not_schedulable"
    DOES_NOT_FIT = "does_not_fit"


@dataclass(frozen=True, slots=True)
class Lease:
    invocation_id: str
    worker_id: str
    attempt: int
    payload: bytes
    traceparent: str
    function: str
    revision: str
    created_ms: int
    queued_ms: int


@dataclass(frozen=True, slots=True)
class Accept:
    invocation_id: str
    attempt: int
    worker_id: str


@dataclass(frozen=True, slots=True)
class LogBatch:
    invocation_id: str
    attempt: int
    worker_id: str
    lines: Sequence[tuple[int, str, str]]  # (ts ms, stream, line)


class LogAppend(enum.StrEnum):
    OK = "ok"
    TRUNCATED = "truncated"  # the budget ran out: the rest of this invocation's logs is dropped
    NOT_HELD = "not_held"


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    invocation_id: str
    attempt: int
    worker_id: str
    # succeeded | failed | timed_out | cancelled | handed_back | lost
    outcome: str
    exit_code: int | None = None
    error: str = ""
    output: bytes = b""
    truncated: bool = False
    started_ms: int | None = None
    finished_ms: int | None = None
    final: bool = False  # retrying cannot help
    cold_start: bool | None = None
    init_ms: int | None = None
    announce_start: bool = False  # its acceptance came with it (no accept call of its own)


class EndKind(enum.StrEnum):
    RECORDED = "recorded"  # final: status says which
    RETRY = "retry"  # failed, runs again after a backoff
    REQUEUED = "requeued"  # handed back, runs again (no failure counted)
    STALE = "stale"  # not the current attempt of that worker: rejected


@dataclass(frozen=True, slots=True)
class Ended:
    invocation_id: str
    kind: EndKind
    status: str = ""  # RECORDED: the final status
    function: str = ""
    reason: str = ""  # STALE: why
    revision: str = ""

    @property
    def taken(self) -> bool:
        """The server has it: the agent may forget the result."""
        return self.kind is not EndKind.STALE


@dataclass(frozen=True, slots=True)
class Reports:
    accepted: list[bool]
    logged: list[LogAppend]
    ended: list[Ended]


class RenewStatus(enum.StrEnum):
    OK = "ok"
    UNKNOWN = "unknown"  # no such worker
    STALE = "stale"  # another session registered since, or declared Failed / Terminated


def _opt(value: Any) -> str | int:
    return "" if value is None else int(value)


class Leases:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        scripts: Scripts,
        settings: DataSettings,
        *,
        lease_ttl_s: float,
        retry_base_s: float,
        retry_cap_s: float,
        clock: Clock = now_ms,
    ) -> None:
        self.clock = clock
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.settings = settings
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.rng = random.Random()

    # -- assignment ----------------------------------------------------------------------
    def _assign_call(self, invocation_id: str, worker_id: str, fence: str) -> Call:
        return Call(
            "assign",
            [
                self.keys.invocation(invocation_id),
                self.keys.worker(worker_id),
                self.keys.worker_jobs(worker_id),
            ],
            [invocation_id, worker_id, fence, self.clock(), self.lease_ttl_ms],
        )

    @staticmethod
    def _lease(invocation_id: str, worker_id: str, reply: Any) -> Lease | Refusal:
        if isinstance(reply, Exception):
            raise reply
        if text(reply[0]) != "ok":
            return Refusal(text(reply[0]))
        attempt, payload, traceparent, function, revision, order, queued = reply[1:8]
        created = int(order) // 1000
        return Lease(
            invocation_id,
            worker_id,
            int(attempt),
            raw(payload),
            text(traceparent),
            text(function),
            text(revision),
            created,
            int(queued or created),
        )

    async def assign(self, invocation_id: str, worker_id: str, fence: str) -> Lease | Refusal:
        """Lease one invocation to a worker (``fence`` '' = an operator's pin)."""
        reply = await self.scripts.run(self._assign_call(invocation_id, worker_id, fence))
        return self._lease(invocation_id, worker_id, reply)

    async def assign_many(
        self, plan: Sequence[tuple[str, str]], fence: str
    ) -> list[Lease | Refusal]:
        """Lease each (invocation, worker) of a scheduling pass, in one round trip."""
        replies = await self.scripts.run_many([self._assign_call(i, w, fence) for i, w in plan])
        return [self._lease(i, w, r) for (i, w), r in zip(plan, replies, strict=True)]

    # -- what agents report -----------------------------------------------------------------
    def _delays(self) -> str:
        return ",".join(
            str(int(backoff.delay(n, self.retry_base_s, self.retry_cap_s, self.rng) * 1000))
            for n in range(1, MAX_FAILURES + 1)
        )

    def _end_call(self, end: AttemptEnd, delays: str) -> Call:
        return Call(
            "finish",
            (),
            [
                end.invocation_id,
                end.attempt,
                end.worker_id,
                end.outcome,
                _opt(end.exit_code),
                end.error,
                end.output,
                int(end.truncated),
                _opt(end.started_ms),
                end.finished_ms or self.clock(),
                int(end.final),
                delays,
                "" if end.cold_start is None else int(end.cold_start),
                _opt(end.init_ms),
                int(end.announce_start),
            ],
        )

    def _log_call(self, batch: LogBatch) -> Call:
        s = self.settings
        return Call(
            "append_logs",
            [self.keys.invocation(batch.invocation_id), self.keys.logs(batch.invocation_id)],
            [
                batch.invocation_id,
                batch.attempt,
                batch.worker_id,
                s.log_lines_kept,
                s.log_bytes_per_invocation,
                records.log_line(
                    self.clock(),
                    "hodei",
                    TRUNCATED.format(s.log_bytes_per_invocation),
                    batch.attempt,
                ),
                *(
                    records.log_line(ts, stream, line, batch.attempt)
                    for ts, stream, line in batch.lines
                ),
            ],
        )

    async def report(
        self,
        accepted: Sequence[Accept] = (),
        logs: Sequence[LogBatch] = (),
        ends: Sequence[AttemptEnd] = (),
    ) -> Reports:
        """Record acceptances, log lines and attempt ends, in one round trip and in that
        order. Raises what Redis raised when it is unavailable (nothing was recorded
        then... or part of it: every script is fenced, so sending it all again is safe)."""
        delays = self._delays() if ends else ""
        calls = [
            *(
                Call(
                    "accept",
                    [self.keys.invocation(a.invocation_id)],
                    [a.invocation_id, a.attempt, a.worker_id],
                )
                for a in accepted
            ),
            *(self._log_call(b) for b in logs),
            *(self._end_call(e, delays) for e in ends),
        ]
        replies = await self.scripts.run_many(calls)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        n_acc, n_logs = len(accepted), len(logs)
        return Reports(
            [text(r) == "ok" for r in replies[:n_acc]],
            [LogAppend(text(r[0])) for r in replies[n_acc : n_acc + n_logs]],
            [
                _ended(e.invocation_id, texts(r))
                for e, r in zip(ends, replies[n_acc + n_logs :], strict=True)
            ],
        )

    async def end(self, end: AttemptEnd) -> Ended:
        return (await self.report(ends=[end])).ended[0]

    # -- liveness --------------------------------------------------------------------------
    async def renew(
        self,
        worker_id: str,
        session_id: str,
        running: Sequence[tuple[str, int]],
        cpu_percent: float,
        mem_percent: float,
        runtimes: Sequence[str] | None = None,
        pools: Sequence[Pool] | None = None,
    ) -> tuple[RenewStatus, list[str]]:
        """A heartbeat: liveness, usage, runtimes and pools (None = unchanged), lease
        renewal. Returns the status and the ids no longer leased to this worker."""
        args: list[str | int | float] = [
            worker_id,
            session_id,
            self.clock(),
            self.lease_ttl_ms,
            round(cpu_percent, 2),
            round(mem_percent, 2),
            "-" if runtimes is None else records.runtimes_field(runtimes),
            "-" if pools is None else records.pools_field(pools),
        ]
        for invocation_id, attempt in running:
            args += [invocation_id, attempt]
        reply = await self.scripts.run(
            Call("renew", [self.keys.worker(worker_id), self.keys.heartbeats], args)
        )
        status, *revoked = texts(reply)
        return RenewStatus(status), revoked

    async def reclaim_due(self, limit: int = 500) -> list[Ended]:
        """End the attempts whose lease ran out (a failure each: retried or final)."""
        flat = texts(
            await self.scripts.run(Call("reclaim", (), [self.clock(), limit, self._delays()]))
        )
        return [
            Ended(flat[i], EndKind(flat[i + 1]), flat[i + 2], flat[i + 3], revision=flat[i + 4])
            for i in range(0, len(flat), 5)
        ]

    async def extend_all(self) -> None:
        """On a new leadership: give every lease one full TTL, so agents of a restarted
        server (or of a Redis back from an outage) have time to renew before anything is
        reclaimed."""
        deadline = self.clock() + self.lease_ttl_ms
        ids = texts(await self.redis.zrangebyscore(self.keys.leases, "-inf", deadline))
        if ids:
            await self.redis.zadd(self.keys.leases, dict.fromkeys(ids, deadline), xx=True, gt=True)

    async def attempt_of(self, invocation_id: str) -> int:
        raw = await self.redis.hget(self.keys.invocation(invocation_id), "attempt")
        return int(raw or 0)


def _ended(invocation_id: str, reply: list[str]) -> Ended:
    kind = EndKind(reply[0])
    if kind is EndKind.RECORDED:
        return Ended(invocation_id, kind, reply[1], reply[2], revision=reply[3])
    if kind is EndKind.STALE:
        return Ended(invocation_id, kind, reason=reply[1])
    return Ended(invocation_id, kind, function=reply[1], revision=reply[2])
