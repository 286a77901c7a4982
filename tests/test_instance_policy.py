"""The instance pool's decisions on their own: reuse, claim, start or wait; reaping;
eviction under memory pressure; what a heartbeat reports."""

from __future__ import annotations

from dataclasses import dataclass

from hodei.agent.instance_policy import (
    Choice,
    PoolKey,
    State,
    choose,
    evictions,
    expired,
    held_memory,
    next_expiry,
    stale,
    startable,
    summary,
)

A1 = PoolKey("a", "1")
A2 = PoolKey("a", "2")
B1 = PoolKey("b", "1")


@dataclass
class Fake:
    id: str
    key: PoolKey
    state: State = State.IDLE
    memory_mb: int = 128
    last_used: float = 0.0
    claimed: bool = False


def test_the_most_recently_used_idle_instance_serves() -> None:
    slots = [
        Fake("old", A1, last_used=1),
        Fake("new", A1, last_used=5),
        Fake("busy", A1, State.BUSY, last_used=9),
        Fake("other", B1, last_used=10),
        Fake("gone", A1, State.STOPPING, last_used=20),
    ]
    decision = choose(slots, A1, max_instances=0)
    assert decision.choice is Choice.REUSE and decision.instance_id == "new"


def test_an_unclaimed_starting_instance_is_claimed_before_starting_another() -> None:
    slots = [
        Fake("s1", A1, State.STARTING, claimed=True),
        Fake("s2", A1, State.STARTING),
    ]
    assert choose(slots, A1, 0).instance_id == "s2"
    slots[1].claimed = True
    assert choose(slots, A1, 0).choice is Choice.START


def test_the_maximum_makes_invocations_wait_and_stopping_ones_do_not_count() -> None:
    slots = [Fake("b1", A1, State.BUSY), Fake("b2", A1, State.BUSY)]
    assert choose(slots, A1, max_instances=2).choice is Choice.WAIT
    assert choose(slots, A1, max_instances=3).choice is Choice.START
    slots[1].state = State.STOPPING
    assert choose(slots, A1, max_instances=2).choice is Choice.START
    # Another revision is another pool.
    assert choose(slots, A2, max_instances=1).choice is Choice.START


def test_prewarm_starts_up_to_what_is_wanted_within_the_maximum() -> None:
    slots = [Fake("i", A1), Fake("b", A1, State.BUSY), Fake("x", B1)]
    assert startable(slots, A1, max_instances=0, wanted=5) == 3
    assert startable(slots, A1, max_instances=4, wanted=5) == 2
    assert startable(slots, A1, max_instances=0, wanted=1) == 0


def test_other_revisions_idle_instances_are_stale() -> None:
    slots = [
        Fake("old-idle", A1),
        Fake("old-busy", A1, State.BUSY),
        Fake("old-starting", A1, State.STARTING),
        Fake("old-claimed", A1, State.STARTING, claimed=True),
        Fake("new", A2),
        Fake("other", B1),
    ]
    assert sorted(stale(slots, A2)) == ["old-idle", "old-starting"]
    assert stale(slots, A1) == ["new"]


def test_idle_instances_are_reaped_after_their_idle_limit_down_to_the_floor() -> None:
    slots = [
        Fake("a-old", A1, last_used=0),
        Fake("a-mid", A1, last_used=50),
        Fake("a-new", A1, last_used=95),
        Fake("a-busy", A1, State.BUSY, last_used=0),
        Fake("b", B1, last_used=0),
    ]
    limits = {A1: 30.0, B1: 200.0}
    assert expired(slots, 100, limits) == ["a-old", "a-mid"]
    # A floor of 3 keeps three a instances (the busy one counts): only the oldest goes.
    assert expired(slots, 100, limits, {A1: 3}) == ["a-old"]
    assert expired(slots, 100, limits, {A1: 4}) == []
    assert next_expiry(slots, limits) == 30.0
    assert next_expiry([Fake("b", B1, State.BUSY)], limits) is None


def test_eviction_takes_least_recently_used_idle_instances_until_the_job_fits() -> None:
    slots = [
        Fake("busy", A1, State.BUSY, memory_mb=512, last_used=0),
        Fake("lru", B1, memory_mb=256, last_used=1),
        Fake("mid", A1, memory_mb=256, last_used=2),
        Fake("mru", A1, memory_mb=256, last_used=3),
    ]
    assert evictions(slots, needed_mb=100, free_mb=100) == []
    assert evictions(slots, needed_mb=300, free_mb=100) == ["lru"]
    assert evictions(slots, needed_mb=700, free_mb=100) == ["lru", "mid", "mru"]
    # Beyond what all idle instances hold: stopping them would not help, none is stopped.
    assert evictions(slots, needed_mb=1000, free_mb=100) == []


def test_summary_counts_per_pool_and_held_memory() -> None:
    slots = [
        Fake("1", A1),
        Fake("2", A1, State.BUSY),
        Fake("3", A1, State.STARTING),
        Fake("4", B1, memory_mb=64),
        Fake("5", B1, State.STOPPING),
    ]
    pools = summary(slots)
    assert (pools[A1].idle, pools[A1].busy, pools[A1].starting) == (1, 1, 1)
    assert (pools[B1].idle, pools[B1].busy, pools[B1].starting) == (1, 0, 0)
    assert held_memory(slots) == 3 * 128 + 64
