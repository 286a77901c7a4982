"""The pre-warmed floors of a worker's instance pool, kept up when instances die.

The server asks a worker to keep ``count`` instances of a function (``PrewarmRequest``) and
only says so again when the number changes; an instance that crashes, is killed from
outside or runs out of memory would otherwise leave the floor short for good. When one
exits on its own, the floor is filled again: at once after a long life, after a growing
delay (``REFILL_BASE_S`` doubling up to ``REFILL_CAP_S``) when instances keep dying young,
so that a function that cannot start costs a few spawns a minute, not a busy loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from hodei.agent.instance_policy import PoolKey
from hodei.proto import hodei_pb2 as pb

REFILL_BASE_S = 0.5
REFILL_CAP_S = 60.0
STABLE_S = 10.0  # an instance that lived this long was not crash-looping


def refill_delay(young_deaths: int) -> float:
    """How long to wait before filling a floor again after ``young_deaths`` instances in
    a row died young (0: the last one had lived long)."""
    if young_deaths <= 0:
        return 0.0
    return min(REFILL_CAP_S, REFILL_BASE_S * 2.0 ** (young_deaths - 1))


@dataclass
class Floor:
    count: int
    template: pb.AssignJobRequest
    young_deaths: int = 0
    timer: asyncio.TimerHandle | None = None


class Floors:
    """Per function revision: how many instances to keep, and what starts one."""

    def __init__(self, refill: Callable[[PoolKey, pb.AssignJobRequest, int], None]) -> None:
        self.refill = refill  # (key, template, floor): start what the floor lacks
        self.floors: dict[PoolKey, Floor] = {}
        self.closed = False

    def count(self, key: PoolKey) -> int:
        floor = self.floors.get(key)
        return floor.count if floor is not None else 0

    def counts(self) -> dict[PoolKey, int]:
        return {key: floor.count for key, floor in self.floors.items()}

    def set(self, key: PoolKey, template: pb.AssignJobRequest, count: int) -> None:
        old = self.floors.pop(key, None)
        if old is not None and old.timer is not None:
            old.timer.cancel()
        if count > 0:
            self.floors[key] = Floor(count, template)

    def lost(self, key: PoolKey, lived_s: float) -> None:
        """An instance of ``key`` exited on its own after ``lived_s`` seconds."""
        floor = self.floors.get(key)
        if floor is None or self.closed or floor.timer is not None:
            return
        floor.young_deaths = 0 if lived_s >= STABLE_S else floor.young_deaths + 1
        delay = refill_delay(floor.young_deaths)
        floor.timer = asyncio.get_running_loop().call_later(delay, self._due, key, floor)

    def _due(self, key: PoolKey, floor: Floor) -> None:
        floor.timer = None
        if not self.closed and self.floors.get(key) is floor:
            self.refill(key, floor.template, floor.count)

    def close(self) -> None:
        self.closed = True
        for floor in self.floors.values():
            if floor.timer is not None:
                floor.timer.cancel()
