"""The decisions of a worker's lambda instance pool, free of I/O: which instance serves an
invocation, which idle ones are reaped, which are evicted when memory runs short.

The pool (``instances.py``) shows its instances through the ``Slot`` protocol and carries
out what these functions decide.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class State(enum.StrEnum):
    STARTING = "starting"  # spawned, its runtime has not asked for work yet
    IDLE = "idle"  # waiting in `next` for an invocation
    BUSY = "busy"  # serving one invocation
    STOPPING = "stopping"  # being killed; no longer counts as available


@dataclass(frozen=True, slots=True)
class PoolKey:
    """Instances are shared only within one revision of one function."""

    function: str
    revision: str


class Slot(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def key(self) -> PoolKey: ...
    @property
    def state(self) -> State: ...
    @property
    def memory_mb(self) -> int: ...
    @property
    def last_used(self) -> float: ...  # monotonic seconds; when it last became idle
    @property
    def claimed(self) -> bool: ...  # starting for an invocation that waits for it


class Choice(enum.Enum):
    REUSE = "reuse"  # an idle instance serves it: a warm start
    CLAIM = "claim"  # a pre-warmed instance still starting will serve it
    START = "start"  # start a new instance for it: a cold start
    WAIT = "wait"  # the pool is at its maximum: wait for an instance to become idle


@dataclass(frozen=True, slots=True)
class Decision:
    choice: Choice
    instance_id: str = ""


def live(slots: Iterable[Slot]) -> list[Slot]:
    return [s for s in slots if s.state is not State.STOPPING]


def choose(slots: Sequence[Slot], key: PoolKey, max_instances: int) -> Decision:
    """Where an invocation of ``key`` runs. The most recently used idle instance is taken,
    so that under light load the others stay idle long enough to be reaped."""
    mine = [s for s in live(slots) if s.key == key]
    idle = [s for s in mine if s.state is State.IDLE]
    if idle:
        return Decision(Choice.REUSE, max(idle, key=lambda s: s.last_used).id)
    unclaimed = [s for s in mine if s.state is State.STARTING and not s.claimed]
    if unclaimed:
        return Decision(Choice.CLAIM, unclaimed[0].id)
    if max_instances <= 0 or len(mine) < max_instances:
        return Decision(Choice.START)
    return Decision(Choice.WAIT)


def startable(slots: Sequence[Slot], key: PoolKey, max_instances: int, wanted: int) -> int:
    """How many instances a pre-warm asking for ``wanted`` of ``key`` on this worker starts."""
    have = sum(1 for s in live(slots) if s.key == key)
    room = wanted - have
    if max_instances > 0:
        room = min(room, max_instances - have)
    return max(0, room)


def stale(slots: Sequence[Slot], key: PoolKey) -> list[str]:
    """Idle or unclaimed starting instances of another revision of the same function: they
    will never serve again."""
    return [
        s.id
        for s in live(slots)
        if s.key.function == key.function
        and s.key.revision != key.revision
        and (s.state is State.IDLE or (s.state is State.STARTING and not s.claimed))
    ]


def expired(
    slots: Sequence[Slot],
    now: float,
    idle_s: Mapping[PoolKey, float],
    floors: Mapping[PoolKey, int] | None = None,
) -> list[str]:
    """Idle instances unused for their function's ``idle_s``, oldest first; a pool keeps
    its floor (what the server asked this worker to keep warm) however long it idles."""
    floors = floors or {}
    counts: dict[PoolKey, int] = {}
    for s in live(slots):
        counts[s.key] = counts.get(s.key, 0) + 1
    reaped: list[str] = []
    idle = sorted((s for s in live(slots) if s.state is State.IDLE), key=lambda s: s.last_used)
    for s in idle:
        if now - s.last_used < idle_s.get(s.key, 0.0):
            continue
        if counts[s.key] <= floors.get(s.key, 0):
            continue
        counts[s.key] -= 1
        reaped.append(s.id)
    return reaped


def next_expiry(slots: Sequence[Slot], idle_s: Mapping[PoolKey, float]) -> float | None:
    """When the earliest idle instance reaches its idle limit (monotonic seconds)."""
    times = [s.last_used + idle_s.get(s.key, 0.0) for s in live(slots) if s.state is State.IDLE]
    return min(times) if times else None


def evictions(slots: Sequence[Slot], needed_mb: int, free_mb: int) -> list[str]:
    """Idle instances to stop, least recently used first, until ``needed_mb`` fits in the
    worker's free memory; none when even stopping every idle instance would not do."""
    if needed_mb <= free_mb:
        return []
    chosen: list[str] = []
    idle = sorted((s for s in live(slots) if s.state is State.IDLE), key=lambda s: s.last_used)
    for s in idle:
        if s.memory_mb <= 0:
            continue
        chosen.append(s.id)
        free_mb += s.memory_mb
        if needed_mb <= free_mb:
            return chosen
    return []


def least_recently_used_idle(slots: Iterable[Slot]) -> str | None:
    idle = [s for s in live(slots) if s.state is State.IDLE]
    return min(idle, key=lambda s: s.last_used).id if idle else None


def held_memory(slots: Iterable[Slot]) -> int:
    """Memory the live instances hold of the worker's capacity."""
    return sum(max(0, s.memory_mb) for s in live(slots))


@dataclass(slots=True)
class PoolCounts:
    idle: int = 0
    busy: int = 0
    starting: int = 0


def summary(slots: Iterable[Slot]) -> dict[PoolKey, PoolCounts]:
    """Instances per pool and state, as heartbeats report them."""
    pools: dict[PoolKey, PoolCounts] = {}
    for s in live(slots):
        counts = pools.setdefault(s.key, PoolCounts())
        if s.state is State.IDLE:
            counts.idle += 1
        elif s.state is State.BUSY:
            counts.busy += 1
        else:
            counts.starting += 1
    return pools
