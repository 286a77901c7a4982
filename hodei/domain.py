"""Facts every process shares: the worker states, the job outcomes, the clock."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from hodei.proto import hodei_pb2 as pb

# gRPC: every channel and server takes messages up to this size (above the largest a
# payload or an output may be, see MAX_BODY_BYTES), and a batch of stream messages is
# closed before it reaches MAX_BATCH_BYTES (a single larger message travels alone).
MAX_BODY_BYTES = 16 << 20
MAX_MESSAGE_BYTES = 2 * MAX_BODY_BYTES + (1 << 20)
MAX_BATCH_BYTES = 4 << 20
GRPC_LIMITS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def now_ms() -> int:
    """Wall-clock milliseconds: what Redis records and leases are measured in."""
    return int(time.time() * 1000)


def bearer_token(authorization: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` value; "" when there is none or it
    is not ASCII (what no token can be)."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token.isascii() else ""


# A one-off job's spec is stored as a revision of its own, whose name starts with this
# (a function's revisions are hex digits): what tells a job's invocation from a function's.
JOB_REVISION_PREFIX = "j"
# One-off jobs carry any name their caller chose: in metrics they share this one label
# (registered function names are bounded by their admins).
JOB_LABEL = "(job)"


def is_job(revision: str) -> bool:
    return revision.startswith(JOB_REVISION_PREFIX)


def function_label(function: str, revision: str) -> str:
    """The ``function`` label of a metric series about an invocation of this revision."""
    return JOB_LABEL if is_job(revision) else function


# What the data layer asks the time (tests give it one they move by hand).
Clock = Callable[[], int]


class WorkerState(enum.StrEnum):
    """The seed's worker states, as the server records them and the agent lives them."""

    CREATING = "creating"
    REGISTERING = "registering"
    AVAILABLE = "available"
    RUNNING = "running"
    DRAINING = "draining"
    TERMINATED = "terminated"
    UNHEALTHY = "unhealthy"
    FAILED = "failed"

    @property
    def proto(self) -> pb.WorkerState.ValueType:
        return pb.WorkerState.Value(f"WORKER_STATE_{self.name}")

    @classmethod
    def of(cls, value: pb.WorkerState.ValueType) -> WorkerState:
        return cls[pb.WorkerState.Name(value).removeprefix("WORKER_STATE_")]


# The outcome of an attempt as the agent reports it, and as the records name it.
OUTCOMES: dict[pb.JobOutcome.ValueType, str] = {
    pb.JOB_OUTCOME_SUCCEEDED: "succeeded",
    pb.JOB_OUTCOME_FAILED: "failed",
    pb.JOB_OUTCOME_TIMED_OUT: "timed_out",
    pb.JOB_OUTCOME_CANCELLED: "cancelled",
    pb.JOB_OUTCOME_HANDED_BACK: "handed_back",
}
