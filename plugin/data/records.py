"""How each record looks in Redis: the one place that writes and reads their hashes.

Invocation hashes (written by ``enqueue.lua`` and the other scripts, read here), function
revisions, worker hashes, log lines and inbox messages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.typing import EncodableT, FieldT

from hodei.domain import WorkerState
from hodei.plugin.models import FunctionSpec, Invocation, Priority, Status

# -- invocations -------------------------------------------------------------------------
# The fields a record read fetches (the hash also holds the payload and the result, up to
# megabytes each: never read them by accident).
INVOCATION_FIELDS = (
    "function",
    "status",
    "attempt",
    "priority",
    "revision",
    "worker_id",
    "exit_code",
    "error",
    "pending_reason",
    "parked",
    "order",
    "queued_at",
    "started_at",
    "finished_at",
    "duration_ms",
    "failures",
    "traceparent",
    "cold_start",
    "init_ms",
    "result_truncated",
    "log_truncated",
)


def _int(raw: bytes | None) -> int | None:
    return int(raw) if raw else None


def _text(raw: bytes | None) -> str:
    return raw.decode(errors="replace") if raw else ""


def priority(raw: bytes | None) -> Priority:
    """A record's priority: stored only when it is not normal."""
    return Priority(_text(raw) or Priority.NORMAL.value)


def invocation(invocation_id: str, values: Sequence[bytes | None]) -> Invocation | None:
    """From an HMGET of INVOCATION_FIELDS; None when there is no such record."""
    h = dict(zip(INVOCATION_FIELDS, values, strict=True))
    if h["status"] is None:
        return None
    cold = h["cold_start"]
    return Invocation(
        id=invocation_id,
        function=_text(h["function"]),
        status=Status(h["status"].decode()),
        attempt=_int(h["attempt"]) or 1,
        priority=priority(h["priority"]),
        revision=_text(h["revision"]),
        worker_id=_text(h["worker_id"]),
        exit_code=_int(h["exit_code"]),
        error=_text(h["error"]),
        pending_reason=_text(h["pending_reason"]),
        parked=h["parked"] == b"1",
        created_ms=(_int(h["order"]) or 0) // 1000,
        # (a record stores what differs from its defaults: queued at creation, normal...)
        queued_ms=_int(h["queued_at"]) or (_int(h["order"]) or 0) // 1000,
        started_ms=_int(h["started_at"]),
        finished_ms=_int(h["finished_at"]),
        duration_ms=_int(h["duration_ms"]),
        failures=_int(h["failures"]) or 0,
        traceparent=_text(h["traceparent"]),
        cold_start=None if not cold else cold == b"1",
        init_ms=_int(h["init_ms"]),
        result_truncated=h["result_truncated"] == b"1",
        log_truncated=h["log_truncated"] == b"1",
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """A waited-on call as its end was announced: its final record and its output."""

    invocation: Invocation
    output: bytes


_FIELD_NAMES = tuple(f.encode() for f in INVOCATION_FIELDS)


def answer_id(message: bytes) -> str:
    """Whose answer a message of the answer channel is."""
    return message[: message.find(b"\n")].decode()


def answer(message: bytes) -> Answer | None:
    """A message of the answer channel (``publish_answer`` in lib.lua): the id, a newline,
    then each field name and value of the record as ``<length>:<bytes>``."""
    cut = message.find(b"\n")
    at, end = cut + 1, len(message)
    parts: list[bytes] = []
    while at < end:
        colon = message.index(b":", at)
        at = colon + 1 + int(message[at:colon])
        parts.append(message[colon + 1 : at])
    h = dict(zip(parts[::2], parts[1::2], strict=True))
    found = invocation(message[:cut].decode(), [h.get(name) for name in _FIELD_NAMES])
    return None if found is None else Answer(found, h.get(b"result", b""))


# -- function revisions ------------------------------------------------------------------
def revision_fields(spec: FunctionSpec) -> dict[FieldT, EncodableT]:
    """A revision hash: the spec as JSON, and what the scripts read of it (the demand a
    placement reserves, the limits an enqueue checks)."""
    return {
        "spec": json.dumps(spec.to_dict(), separators=(",", ":")),
        "cpu": spec.resources.cpu_millicores,
        "mem": spec.resources.memory_mb,
        "gpu": spec.resources.gpus,
        "priority": str(spec.priority),
        "concurrency": spec.concurrency,
        "qt": int(spec.queue_timeout_s * 1000),
        "max_retries": spec.max_retries,
    }


def spec_of(raw: bytes) -> FunctionSpec:
    """The spec stored in a revision hash (trusted: it was validated when stored)."""
    data: dict[str, Any] = json.loads(raw)
    name = data.pop("name")
    return FunctionSpec.from_dict(name, data)


# -- workers -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Amounts:
    cpu: int = 0
    mem: int = 0
    gpu: int = 0
    slots: int = 0


@dataclass(frozen=True, slots=True)
class Pool:
    """The lambda instances of one function revision on a worker."""

    function: str
    revision: str
    idle: int = 0
    busy: int = 0
    starting: int = 0
    cpu: int = 0
    mem: int = 0


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    id: str
    state: WorkerState
    server_id: str = ""
    session_id: str = ""
    hostname: str = ""
    version: str = ""
    capacity: Amounts = Amounts()
    used: Amounts = Amounts()
    labels: dict[str, str] = field(default_factory=dict)
    runtimes: frozenset[str] = frozenset()
    last_heartbeat_ms: int = 0
    unhealthy_since_ms: int | None = None
    unhealthy_count: int = 0
    cpu_percent: float = 0.0
    mem_percent: float = 0.0
    pools: tuple[Pool, ...] = ()


def worker(raw: dict[bytes, bytes]) -> WorkerRecord | None:
    """From an HGETALL of a worker hash; None when there is none (or it is half-made)."""
    h = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
    if "id" not in h or "state" not in h:
        return None

    def num(key: str) -> int:
        return int(h.get(key) or 0)

    return WorkerRecord(
        id=h["id"],
        state=WorkerState(h["state"]),
        server_id=h.get("server_id", ""),
        session_id=h.get("session_id", ""),
        hostname=h.get("hostname", ""),
        version=h.get("version", ""),
        capacity=Amounts(num("cpu_total"), num("mem_total"), num("gpu_total"), num("slots_total")),
        used=Amounts(num("cpu_used"), num("mem_used"), num("gpu_used"), num("slots_used")),
        labels=json.loads(h.get("labels") or "{}"),
        runtimes=frozenset(r for r in (h.get("runtimes") or "").split(",") if r),
        last_heartbeat_ms=num("last_heartbeat"),
        unhealthy_since_ms=int(h["unhealthy_since"]) if h.get("unhealthy_since") else None,
        unhealthy_count=num("unhealthy_count"),
        cpu_percent=float(h.get("cpu_percent") or 0),
        mem_percent=float(h.get("mem_percent") or 0),
        pools=tuple(Pool(**p) for p in json.loads(h.get("pools") or "[]")),
    )


def registration_fields(
    worker_id: str,
    server_id: str,
    session_id: str,
    *,
    hostname: str,
    version: str,
    capacity: Amounts,
    labels: dict[str, str],
    runtimes: Sequence[str],
) -> dict[str, str | int]:
    return {
        "id": worker_id,
        "server_id": server_id,
        "session_id": session_id,
        "hostname": hostname,
        "version": version,
        "cpu_total": capacity.cpu,
        "mem_total": capacity.mem,
        "gpu_total": capacity.gpu,
        "slots_total": capacity.slots,
        "labels": json.dumps(labels, sort_keys=True),
        "runtimes": runtimes_field(runtimes),
    }


def runtimes_field(runtimes: Sequence[str]) -> str:
    return ",".join(sorted(runtimes))


def pools_field(pools: Sequence[Pool]) -> str:
    return json.dumps(
        [
            {k: getattr(p, k) for k in Pool.__dataclass_fields__}
            for p in sorted(pools, key=lambda p: (p.function, p.revision))
        ],
        separators=(",", ":"),
    )


# -- logs ----------------------------------------------------------------------------------
def log_line(ts_ms: int, stream: str, line: str, attempt: int) -> str:
    return json.dumps({"ts": ts_ms, "stream": stream, "line": line, "attempt": attempt})


def log_lines(raw: Sequence[bytes]) -> list[dict[str, Any]]:
    return [json.loads(r) for r in raw]


# -- inboxes: what one server tells another about the agents connected to it -------------
MESSAGE, CANCEL = b"M", b"C"


@dataclass(frozen=True, slots=True)
class InboxMessage:
    kind: bytes  # MESSAGE (body: a ServerMessage, serialized) or CANCEL
    worker_id: str
    body: bytes = b""  # MESSAGE
    invocation_id: str = ""  # CANCEL
    attempt: int = 0  # CANCEL
    reason: str = ""  # CANCEL


def server_message(worker_id: str, message: bytes) -> bytes:
    return MESSAGE + worker_id.encode() + b"\0" + message


def inbox_message(raw: bytes) -> InboxMessage:
    """Decode an inbox entry (cancel.lua writes cancels: C worker NUL id NUL attempt NUL
    reason)."""
    kind, rest = raw[:1], raw[1:]
    if kind == MESSAGE:
        worker, _, body = rest.partition(b"\0")
        return InboxMessage(MESSAGE, worker.decode(), body=body)
    worker, invocation_id, attempt, reason = rest.split(b"\0", 3)
    return InboxMessage(
        CANCEL,
        worker.decode(),
        invocation_id=invocation_id.decode(),
        attempt=int(attempt),
        reason=reason.decode(errors="replace"),
    )


def cancel_message(worker_id: str, invocation_id: str, attempt: int, reason: str) -> bytes:
    return b"\0".join(
        (
            CANCEL + worker_id.encode(),
            invocation_id.encode(),
            str(attempt).encode(),
            reason.encode(),
        )
    )
