"""The bin-packing engine on its own: feasibility, score, the target band, bounded cost."""

from __future__ import annotations

import random

import pytest

from hodei.plugin import placement
from hodei.plugin.placement import Demand, Fleet, Pending, WorkerView


def fleet_of(n: int, cpu: int = 4000, mem: int = 8192, slots: int = 8, **kw: object) -> Fleet:
    fleet = Fleet()
    for i in range(n):
        fleet.upsert(WorkerView(f"w{i}", cpu, mem, 0, slots, **kw))  # type: ignore[arg-type]
    return fleet


def test_capacity_is_never_exceeded_under_random_load() -> None:
    rng = random.Random(1)
    fleet = fleet_of(20)
    running: list[tuple[str, Demand]] = []
    for _ in range(5000):
        d = Demand(rng.choice([100, 250, 500, 1000, 3000]), rng.choice([64, 512, 2048, 6000]))
        choice = fleet.place(d)
        if isinstance(choice, WorkerView):
            fleet.reserve(choice.id, d)
            running.append((choice.id, d))
        if running and rng.random() < 0.45:
            wid, old = running.pop(rng.randrange(len(running)))
            fleet.release(wid, old)
        for w in fleet.workers.values():
            assert w.cpu_used <= w.cpu_total and w.mem_used <= w.mem_total
            assert w.slots_used <= w.slots_total


def test_feasibility_checks_every_dimension() -> None:
    fleet = Fleet()
    fleet.upsert(WorkerView("cpu", 1000, 8192, 0, 4))
    fleet.upsert(WorkerView("gpu", 8000, 8192, 2, 4, runtimes=frozenset({"docker"})))
    fleet.upsert(WorkerView("eu", 8000, 8192, 0, 4, labels={"zone": "eu"}))
    fleet.upsert(WorkerView("sick", 64000, 65536, 8, 64, schedulable=False))
    assert fleet.place(Demand(4000, 100)).id == "eu"  # type: ignore[union-attr]
    assert fleet.place(Demand(100, 100, gpu=1, runtime="docker")).id == "gpu"  # type: ignore[union-attr]
    assert fleet.place(Demand(100, 100, labels=(("zone", "eu"),))).id == "eu"  # type: ignore[union-attr]
    assert fleet.place(Demand(100, 100, runtime="wasm")) == Pending(
        "no worker offers the wasm runtime", structural=True
    )
    assert fleet.place(Demand(100, 100, labels=(("zone", "us"),))) == Pending(
        "no worker has label zone=us", structural=True
    )
    reason = fleet.place(Demand(9000, 100))
    assert isinstance(reason, Pending) and "fits nowhere" in reason.reason


def test_band_first_then_pack_below_then_overfill() -> None:
    w = WorkerView("w", 1000, 1000, 0, 10)
    in_band = placement.score(w, Demand(700, 700))
    below = placement.score(w, Demand(300, 300))
    above = placement.score(w, Demand(950, 950))
    assert in_band > below > above
    # Within the band, fuller is better (packing).
    assert placement.score(w, Demand(800, 800)) > placement.score(w, Demand(650, 650))


def test_fills_workers_into_the_band_before_opening_new_ones() -> None:
    fleet = fleet_of(4, cpu=4000, mem=4000, slots=20)
    for _ in range(11):  # 11 x 750m = 8250m: two workers in the band, one started
        d = Demand(750, 750)
        choice = fleet.place(d)
        assert isinstance(choice, WorkerView)
        fleet.reserve(choice.id, d)
    used = sorted(w.cpu_used / w.cpu_total for w in fleet.workers.values())
    assert used[0] == 0
    assert all(0.60 <= u <= 0.85 for u in used[2:]), used


def test_waiting_for_capacity_then_placed_when_freed() -> None:
    fleet = fleet_of(1, cpu=1000, mem=1000, slots=4)
    fleet.reserve("w0", Demand(800, 100))
    pending = fleet.place(Demand(500, 100))
    assert isinstance(pending, Pending) and pending.reason.startswith("waiting for capacity")
    assert not pending.structural
    assert fleet.place(Demand(500, 100)) == pending  # remembered, no rescan
    fleet.release("w0", Demand(800, 100))
    assert isinstance(fleet.place(Demand(500, 100)), WorkerView)


def test_full_slots_and_no_workers_reasons() -> None:
    assert Fleet().place(Demand(1, 1)) == Pending("no schedulable workers", structural=True)
    fleet = fleet_of(1, slots=1)
    fleet.reserve("w0", Demand(1, 1))
    assert fleet.place(Demand(1, 1)) == Pending(
        "every eligible worker has all its job slots in use"
    )


@pytest.mark.parametrize("size", [1_000, 10_000])
def test_a_decision_looks_at_a_bounded_number_of_workers(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fleet_of(size)
    calls = 0
    real = placement.fits

    def counting(w: WorkerView, d: Demand) -> bool:
        nonlocal calls
        calls += 1
        return real(w, d)

    monkeypatch.setattr(placement, "fits", counting)
    for _ in range(100):
        choice = fleet.place(Demand(100, 100))
        assert isinstance(choice, WorkerView)
        fleet.reserve(choice.id, Demand(100, 100))
    assert calls == 100 * fleet.max_candidates


def test_removed_and_unschedulable_workers_leave_the_open_set() -> None:
    fleet = fleet_of(3)
    fleet.remove("w1")
    fleet.upsert(WorkerView("w2", 4000, 8192, 0, 8, schedulable=False))
    for _ in range(20):
        choice = fleet.place(Demand(10, 10))
        assert isinstance(choice, WorkerView) and choice.id == "w0"


def test_a_worker_with_an_idle_instance_goes_first_then_the_score() -> None:
    fleet = fleet_of(4)
    warm = Demand(500, 512, warm="thumb:abc")
    # w3 is the worst fit by score (empty, while w0 is already half full)...
    fleet.reserve("w0", Demand(2000, 4096))
    assert isinstance(best := fleet.place(Demand(500, 512)), WorkerView) and best.id == "w0"
    fleet.upsert(WorkerView("w3", 4000, 8192, 0, 8, idle={"thumb:abc": 2}))
    # ...but it holds two idle instances of the revision: it takes the first two calls.
    for _ in range(2):
        choice = fleet.place(warm)
        assert isinstance(choice, WorkerView) and choice.id == "w3"
        fleet.reserve(choice.id, warm)
    assert fleet.workers["w3"].idle == {}
    # No idle instance left anywhere: back to bin-packing (a cold start).
    choice = fleet.place(warm)
    assert isinstance(choice, WorkerView) and choice.id == "w0"
    # Another revision's instances do not count.
    fleet.upsert(WorkerView("w2", 4000, 8192, 0, 8, idle={"thumb:old": 3}))
    choice = fleet.place(warm)
    assert isinstance(choice, WorkerView) and choice.id == "w0"


def test_an_idle_instance_on_a_worker_without_room_is_passed_over() -> None:
    fleet = fleet_of(2)
    fleet.upsert(WorkerView("w1", 1000, 8192, 0, 8, cpu_used=900, idle={"f:r": 1}))
    choice = fleet.place(Demand(500, 128, warm="f:r"))
    assert isinstance(choice, WorkerView) and choice.id == "w0"
    fleet.upsert(WorkerView("w1", 1000, 8192, 0, 8, schedulable=False, idle={"f:r": 1}))
    choice = fleet.place(Demand(10, 128, warm="f:r"))
    assert isinstance(choice, WorkerView) and choice.id == "w0"
