"""Completion notices: one subscription per gateway (answers, completions and callbacks
due), fanned out to the requests waiting for a result and to the callback dispatcher.
A waited-on call's answer comes with its notice; any other notice lets the waiter read
the record. After an outage it subscribes again and lets every waiter look at its
invocation itself."""

from __future__ import annotations

import asyncio
import logging
import uuid

from hodei.plugin.data import DataLayer, records
from hodei.plugin.data.messages import Subscription
from hodei.plugin.data.records import Answer

log = logging.getLogger(__name__)

# Resolved with the answer when it came with the notice, else None (read the record).
Waiter = asyncio.Future[Answer | None]


class Completions:
    def __init__(self, data: DataLayer) -> None:
        self.waiters: dict[str, list[Waiter]] = {}
        self.callbacks_due = asyncio.Event()
        self.closing = False
        # Answers come only to the gateway their caller waits on.
        self.gateway_id = uuid.uuid4().hex
        keys = data.keys
        self._completed = keys.completed_channel
        self._answers = keys.answer_channel(self.gateway_id)
        self.subscription = Subscription(
            data.blocking,
            [self._answers, keys.completed_channel, keys.callback_channel],
            self._on_message,
            self._resubscribed,
            log,
        )

    def expect(self, invocation_id: str) -> Waiter:
        future: Waiter = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(invocation_id, []).append(future)
        return future

    def forget(self, invocation_id: str, future: Waiter) -> None:
        futures = self.waiters.get(invocation_id, [])
        if future in futures:
            futures.remove(future)
        if not futures:
            self.waiters.pop(invocation_id, None)

    def _notify(self, invocation_id: str, answer: Answer | None = None) -> None:
        """Wake the waiters of an id, with its answer when the notice brought it."""
        for future in self.waiters.pop(invocation_id, []):
            if not future.done():
                future.set_result(answer)

    def _on_message(self, channel: str, data: bytes) -> None:
        if channel == self._answers:
            invocation_id = records.answer_id(data)
            if invocation_id in self.waiters:
                try:
                    answer = records.answer(data)
                except ValueError:  # let its waiters read the record instead
                    log.warning("invocation %s: unreadable answer", invocation_id)
                    answer = None
                self._notify(invocation_id, answer)
        elif channel == self._completed:
            self._notify(data.decode())
        else:
            self.callbacks_due.set()

    def _resubscribed(self) -> None:
        # Whatever finished while we were not subscribed: let everyone look again.
        for invocation_id in list(self.waiters):
            self._notify(invocation_id)
        self.callbacks_due.set()

    def close(self) -> None:
        """The gateway is shutting down: waiting requests answer now."""
        self.closing = True
        for invocation_id in list(self.waiters):
            self._notify(invocation_id)

    async def run(self) -> None:
        await self.subscription.run()
