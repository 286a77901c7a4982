"""Domain objects of the control plane: function specs, resources, invocation records."""

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from hodei.errors import InvalidSpec
from hodei.tracing import trace_id

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
RUNTIMES = ("process", "docker")


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class Status(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


@dataclass(frozen=True, slots=True)
class Resources:
    cpu_millicores: int = 100
    memory_mb: int = 128
    gpus: int = 0

    @classmethod
    def from_dict(cls, raw: Any) -> Resources:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InvalidSpec("resources", "must be an object")
        known = {"cpu_millicores", "memory_mb", "gpus"}
        for key in raw:
            if key not in known:
                raise InvalidSpec(f"resources.{key}", "unknown field")
        res = cls(**{k: raw[k] for k in known if k in raw})
        res.validate()
        return res

    def validate(self) -> None:
        for name in ("cpu_millicores", "memory_mb", "gpus"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidSpec(f"resources.{name}", "must be an integer")
        if self.cpu_millicores <= 0:
            raise InvalidSpec("resources.cpu_millicores", "must be > 0")
        if self.memory_mb <= 0:
            raise InvalidSpec("resources.memory_mb", "must be > 0")
        if self.gpus < 0:
            raise InvalidSpec("resources.gpus", "must be >= 0")


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    name: str
    runtime: str = "process"
    image: str = ""
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = Resources()
    timeout_s: float = 60.0
    max_retries: int = 3
    priority: Priority = Priority.NORMAL
    concurrency: int = 0
    network: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    queue_timeout_s: float = 300.0

    @classmethod
    def from_dict(cls, name: str, raw: dict[str, Any]) -> FunctionSpec:
        """Validate a user-supplied spec; raises InvalidSpec naming the bad field."""
        if not NAME_RE.match(name):
            raise InvalidSpec("name", f"must match {NAME_RE.pattern}")
        if not isinstance(raw, dict):
            raise InvalidSpec("spec", "must be an object")
        known = {f for f in cls.__dataclass_fields__ if f != "name"}
        for key in raw:
            if key not in known:
                raise InvalidSpec(key, "unknown field")
        runtime = raw.get("runtime", "process")
        if runtime not in RUNTIMES:
            raise InvalidSpec("runtime", f"must be one of {', '.join(RUNTIMES)}")
        command = raw.get("command", [])
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise InvalidSpec("command", "must be a list of strings")
        image = raw.get("image", "")
        if runtime == "docker" and not image:
            raise InvalidSpec("image", "is required for the docker runtime")
        if runtime == "process" and not command:
            raise InvalidSpec("command", "is required for the process runtime")
        for key in ("env", "labels"):
            value = raw.get(key, {})
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise InvalidSpec(key, "must be a map of strings")
        try:
            priority = Priority(raw.get("priority", "normal"))
        except ValueError:
            raise InvalidSpec("priority", "must be high, normal or low") from None
        spec = cls(
            name=name,
            runtime=runtime,
            image=image,
            command=tuple(command),
            env=dict(raw.get("env", {})),
            resources=Resources.from_dict(raw.get("resources")),
            timeout_s=_number(raw, "timeout_s", 60.0, minimum=0.001),
            max_retries=int(_number(raw, "max_retries", 3, minimum=0, integer=True)),
            priority=priority,
            concurrency=int(_number(raw, "concurrency", 0, minimum=0, integer=True)),
            network=_flag(raw, "network"),
            labels=dict(raw.get("labels", {})),
            queue_timeout_s=_number(raw, "queue_timeout_s", 300.0, minimum=0.001),
        )
        return spec

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"] = list(self.command)
        data["priority"] = str(self.priority)
        return data


def _number(
    raw: dict[str, Any], key: str, default: float, *, minimum: float, integer: bool = False
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpec(key, "must be a number")
    if integer and not isinstance(value, int):
        raise InvalidSpec(key, "must be an integer")
    if value < minimum:
        raise InvalidSpec(key, f"must be >= {minimum}")
    return float(value)


def _flag(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise InvalidSpec(key, "must be true or false")
    return value


@dataclass(slots=True)
class Invocation:
    """An invocation record as stored in Redis (the contract's fields plus bookkeeping)."""

    id: str
    function: str
    status: Status
    attempt: int
    priority: Priority
    worker_id: str = ""
    exit_code: int | None = None
    error: str = ""
    pending_reason: str = ""
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    duration_ms: int | None = None
    failures: int = 0
    max_retries: int = 0
    traceparent: str = ""

    # The record fields this class reads: fetch only these (the hash also holds the
    # payload and the result, up to megabytes each).
    FIELDS = (
        "id",
        "function",
        "status",
        "attempt",
        "priority",
        "worker_id",
        "exit_code",
        "error",
        "pending_reason",
        "created_at",
        "started_at",
        "finished_at",
        "duration_ms",
        "failures",
        "max_retries",
        "traceparent",
    )

    @classmethod
    def from_fields(cls, values: list[bytes | None]) -> Invocation | None:
        """From an HMGET of FIELDS; None when the record does not exist."""
        if values[0] is None:
            return None
        return cls.from_hash(
            {k.encode(): v for k, v in zip(cls.FIELDS, values, strict=True) if v is not None}
        )

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> Invocation:
        h = {k.decode(): v.decode(errors="replace") for k, v in raw.items() if k != b"payload"}
        return cls(
            id=h["id"],
            function=h.get("function", ""),
            status=Status(h["status"]),
            attempt=int(h.get("attempt", "1")),
            priority=Priority(h.get("priority", "normal")),
            worker_id=h.get("worker_id", ""),
            exit_code=int(h["exit_code"]) if h.get("exit_code", "") != "" else None,
            error=h.get("error", ""),
            pending_reason=h.get("pending_reason", ""),
            created_at=_ms_to_s(h.get("created_at")) or 0.0,
            started_at=_ms_to_s(h.get("started_at")),
            finished_at=_ms_to_s(h.get("finished_at")),
            duration_ms=int(h["duration_ms"]) if h.get("duration_ms") else None,
            failures=int(h.get("failures", "0")),
            max_retries=int(h.get("max_retries", "0")),
            traceparent=h.get("traceparent", ""),
        )

    def public(self) -> dict[str, Any]:
        """The record as the HTTP contract shows it."""
        return {
            "id": self.id,
            "function": self.function,
            "status": str(self.status),
            "attempt": self.attempt,
            "priority": str(self.priority),
            "worker_id": self.worker_id or None,
            "exit_code": self.exit_code,
            "error": self.error or None,
            "pending_reason": self.pending_reason or None,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms,
            "trace_id": trace_id(self.traceparent) or None,
        }


def _ms_to_s(value: str | None) -> float | None:
    return int(value) / 1000.0 if value else None
