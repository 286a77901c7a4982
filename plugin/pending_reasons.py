"""Why queued invocations wait, as the scheduler publishes it: in batches, a few times a
second at most.

Under a deep queue every placement slides a new invocation into the scheduler's window and
gives it a reason; writing each one as it comes cost a Redis script call per job, more than
the placement itself. What /v1/queue shows may lag by up to ``every_s``; the record's
reason is only ever written while the invocation is still queued (``pending.lua``).
"""

from __future__ import annotations

import time

from hodei.plugin.data.queue import Queue

PUBLISH_EVERY_S = 0.25


class PendingReasons:
    def __init__(self, queue: Queue, every_s: float = PUBLISH_EVERY_S) -> None:
        self.queue = queue
        self.every_s = every_s
        self._unpublished: dict[str, str] = {}
        self._due = 0.0

    def note(self, invocation_id: str, reason: str) -> None:
        if not self._unpublished:
            self._due = max(self._due, time.monotonic())
        self._unpublished[invocation_id] = reason

    def forget(self, invocation_id: str) -> None:
        """It left the queue (placed, parked): its reason no longer matters."""
        self._unpublished.pop(invocation_id, None)

    def clear(self) -> None:
        self._unpublished.clear()

    def wait_ms(self) -> int | None:
        """How long until the next batch is due, when one waits."""
        if not self._unpublished:
            return None
        return max(1, int((self._due - time.monotonic()) * 1000))

    async def publish_due(self) -> None:
        """Write the waiting reasons when their batch is due."""
        if not self._unpublished or time.monotonic() < self._due:
            return
        batch, self._unpublished = self._unpublished, {}
        self._due = time.monotonic() + self.every_s
        await self.queue.note_pending(batch)
