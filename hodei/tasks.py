"""What long-lived asyncio loops need, in every process."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise CancelledError when the current task is being cancelled although no await
    said so: on Python 3.11, ``asyncio.wait_for`` (which redis-py uses while it connects)
    returns normally when the cancellation arrives as its inner wait completes, and a loop
    would go on for ever. Every background loop checks this once per turn."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
