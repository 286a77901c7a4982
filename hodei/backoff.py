"""Exponential backoff with full jitter, shared by retries and reconnects."""

from __future__ import annotations

import random


def delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Delay before try number ``attempt`` (1-based): uniform in [ceiling/2, ceiling].

    Half of the ceiling is kept fixed so a retry is never immediate; the other half is
    jitter so that many clients failing together do not come back together.
    """
    ceiling = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    r = rng.random() if rng is not None else random.random()
    return ceiling / 2 + r * ceiling / 2
