"""Domain objects of the control plane: function specs, resources, invocation records.

Every user-supplied number has bounds (a spec out of them is a 422 naming the field), so
no invocation can ask for a day-long queue wait, ten thousand retries or a petabyte.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from hodei.domain import is_job
from hodei.errors import InvalidSpec
from hodei.tracing import trace_id

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,127}")
RUNTIMES = ("process", "docker")
INTERFACES = ("stdio", "lambda")
DAY_S = 86_400.0
MAX_TEXT = 4096  # an image name, a command word, a handler
MAX_ENV_VALUE = 32 * 1024
MAX_ITEMS = 256  # command words, env entries, labels


@dataclass(frozen=True, slots=True)
class Bound:
    """The range of a number in a spec (``integer``: a whole number, not 1.0, not true)."""

    minimum: float
    maximum: float
    integer: bool = False


# Every number of a spec, by its path: the validation below and the OpenAPI document
# (api/openapi.py) both read them from here.
BOUNDS: dict[str, Bound] = {
    "timeout_s": Bound(0.001, DAY_S),
    "queue_timeout_s": Bound(0.001, DAY_S),
    "max_retries": Bound(0, 20, integer=True),
    "concurrency": Bound(0, 100_000, integer=True),
    "resources.cpu_millicores": Bound(1, 1_000_000, integer=True),
    "resources.memory_mb": Bound(1, 16 << 20, integer=True),
    "resources.gpus": Bound(0, 64, integer=True),
    # (min counts across the fleet and max on one worker: min may exceed max)
    "warm.min": Bound(0, 1000, integer=True),
    "warm.max": Bound(0, 1000, integer=True),
    "warm.idle_s": Bound(1, DAY_S),
}


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


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


FINAL_STATUSES = tuple(s for s in Status if s.final)


def _number(raw: dict[str, Any], key: str, default: float, where: str = "") -> float:
    """A finite number within its ``BOUNDS``; integers must be integers."""
    name = f"{where}{key}"
    bound = BOUNDS[name]
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpec(name, "must be a number")
    if bound.integer and not isinstance(value, int):
        raise InvalidSpec(name, "must be an integer")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSpec(name, "must be a finite number")
    if value < bound.minimum or value > bound.maximum:
        raise InvalidSpec(name, f"must be between {bound.minimum:g} and {bound.maximum:g}")
    return float(value)


def _flag(raw: dict[str, Any], key: str, default: bool = False) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise InvalidSpec(key, "must be true or false")
    return value


def _text(raw: dict[str, Any], key: str, default: str = "", limit: int = MAX_TEXT) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise InvalidSpec(key, "must be a string")
    if len(value) > limit or "\0" in value:
        raise InvalidSpec(key, f"must be at most {limit} characters, without NUL")
    return value


def _only(raw: dict[str, Any], known: set[str], where: str = "") -> None:
    for key in raw:
        if key not in known:
            raise InvalidSpec(f"{where}{key}", "unknown field")


def _string_map(raw: dict[str, Any], key: str, pattern: re.Pattern[str]) -> dict[str, str]:
    value = raw.get(key, {})
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise InvalidSpec(key, f"must be a map of at most {MAX_ITEMS} strings")
    for k, v in value.items():
        if not isinstance(k, str) or not pattern.fullmatch(k):
            raise InvalidSpec(key, f"{str(k)[:40]!r}: names must match {pattern.pattern}")
        if not isinstance(v, str) or len(v) > MAX_ENV_VALUE or "\0" in v:
            raise InvalidSpec(f"{key}.{k}", f"must be a string of at most {MAX_ENV_VALUE}")
    return dict(value)


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
        _only(raw, {"cpu_millicores", "memory_mb", "gpus"}, "resources.")
        defaults = cls()
        return cls(
            **{
                key: int(_number(raw, key, getattr(defaults, key), "resources."))
                for key in ("cpu_millicores", "memory_mb", "gpus")
            }
        )


@dataclass(frozen=True, slots=True)
class WarmPolicy:
    """Lambda instances: ``min`` kept started across the fleet, at most ``max`` on one
    worker (0 = as capacity allows), each stopped after ``idle_s`` without work."""

    min: int = 0
    max: int = 0
    idle_s: float = 300.0

    @classmethod
    def from_dict(cls, raw: Any) -> WarmPolicy:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InvalidSpec("warm", "must be an object")
        _only(raw, {"min", "max", "idle_s"}, "warm.")
        return cls(
            min=int(_number(raw, "min", 0, "warm.")),
            max=int(_number(raw, "max", 0, "warm.")),
            idle_s=_number(raw, "idle_s", 300.0, "warm."),
        )


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    name: str
    runtime: str = "process"
    interface: str = "stdio"
    handler: str = ""
    warm: WarmPolicy = WarmPolicy()
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
        if not isinstance(name, str) or not valid_name(name):
            raise InvalidSpec("name", f"must match {NAME_RE.pattern}")
        if not isinstance(raw, dict):
            raise InvalidSpec("spec", "must be an object")
        _only(raw, {f for f in cls.__dataclass_fields__ if f != "name"})
        runtime = raw.get("runtime", "process")
        if runtime not in RUNTIMES:
            raise InvalidSpec("runtime", f"must be one of {', '.join(RUNTIMES)}")
        interface = raw.get("interface", "stdio")
        if interface not in INTERFACES:
            raise InvalidSpec("interface", f"must be one of {', '.join(INTERFACES)}")
        command = raw.get("command", [])
        if (
            not isinstance(command, list)
            or len(command) > MAX_ITEMS
            or not all(isinstance(c, str) and len(c) <= MAX_TEXT and "\0" not in c for c in command)
        ):
            raise InvalidSpec("command", f"must be a list of at most {MAX_ITEMS} strings")
        image = _text(raw, "image")
        handler = _text(raw, "handler")
        if runtime == "docker" and not image:
            raise InvalidSpec("image", "is required for the docker runtime")
        if runtime == "process" and not command and interface == "stdio":
            # (a lambda process without one runs the agent's own awslambdaric client)
            raise InvalidSpec("command", "is required for the process runtime")
        if interface == "lambda" and not handler:
            raise InvalidSpec("handler", "is required for the lambda interface")
        warm = WarmPolicy.from_dict(raw.get("warm"))
        if interface == "stdio" and (handler or warm != WarmPolicy()):
            raise InvalidSpec("handler" if handler else "warm", "is for the lambda interface")
        try:
            priority = Priority(raw.get("priority", "normal"))
        except ValueError:
            raise InvalidSpec("priority", "must be high, normal or low") from None
        return cls(
            name=name,
            runtime=runtime,
            interface=interface,
            handler=handler,
            warm=warm,
            image=image,
            command=tuple(command),
            env=_string_map(raw, "env", ENV_NAME_RE),
            resources=Resources.from_dict(raw.get("resources")),
            timeout_s=_number(raw, "timeout_s", 60.0),
            max_retries=int(_number(raw, "max_retries", 3)),
            priority=priority,
            concurrency=int(_number(raw, "concurrency", 0)),
            network=_flag(raw, "network"),
            labels=_string_map(raw, "labels", LABEL_RE),
            queue_timeout_s=_number(raw, "queue_timeout_s", 300.0),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"] = list(self.command)
        data["priority"] = str(self.priority)
        return data

    @property
    def revision(self) -> str:
        """A digest of the spec: equal specs share it, any change gives a new one."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(slots=True)
class Invocation:
    """An invocation record (the contract's fields plus bookkeeping)."""

    id: str
    function: str
    status: Status
    attempt: int
    priority: Priority
    revision: str = ""
    worker_id: str = ""
    exit_code: int | None = None
    error: str = ""
    pending_reason: str = ""
    parked: bool = False
    created_ms: int = 0
    queued_ms: int = 0
    started_ms: int | None = None
    finished_ms: int | None = None
    duration_ms: int | None = None
    failures: int = 0
    traceparent: str = ""
    cold_start: bool | None = None
    init_ms: int | None = None
    result_truncated: bool = False
    log_truncated: bool = False

    def public(self) -> dict[str, Any]:
        """The record as the HTTP contract shows it."""
        return {
            "id": self.id,
            "function": self.function,
            "job": is_job(self.revision),
            "status": str(self.status),
            "attempt": self.attempt,
            "priority": str(self.priority),
            "worker_id": self.worker_id or None,
            "exit_code": self.exit_code,
            "error": self.error or None,
            "pending_reason": self.pending_reason or None,
            "parked": self.parked,
            "created_at": self.created_ms / 1000,
            "started_at": _seconds(self.started_ms),
            "finished_at": _seconds(self.finished_ms),
            "duration_ms": self.duration_ms,
            "cold_start": self.cold_start,
            "init_ms": self.init_ms,
            "result_truncated": self.result_truncated,
            "log_truncated": self.log_truncated,
            "trace_id": trace_id(self.traceparent) or None,
        }


def _seconds(ms: int | None) -> float | None:
    return ms / 1000 if ms is not None else None
