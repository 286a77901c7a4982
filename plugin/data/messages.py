"""Messages between processes: each server's inbox (assignments and cancels for the agents
connected to it, kept in Redis until read, so an outage or a restart of Redis does not
lose them) and the pub/sub notices (completions, callbacks due) that gateways wait on,
resubscribed after every outage."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from redis.asyncio import Redis

from hodei.plugin.data import records
from hodei.plugin.data.connection import Outage, keep_running
from hodei.plugin.data.keys import Keys
from hodei.plugin.data.records import InboxMessage
from hodei.tasks import raise_if_cancelled

INBOX_TTL_S = 3600  # the inbox of a server gone for good disappears
INBOX_BATCH = 500


class Inboxes:
    def __init__(self, redis: Redis, blocking: Redis, keys: Keys) -> None:
        self.redis = redis
        self.blocking = blocking
        self.keys = keys

    async def deliver(self, deliveries: Sequence[tuple[str, str, bytes]]) -> None:
        """Put (server, worker, ServerMessage bytes) in each server's inbox."""
        if not deliveries:
            return
        pipe = self.redis.pipeline(transaction=False)
        for server_id, worker_id, message in deliveries:
            inbox = self.keys.inbox(server_id)
            pipe.rpush(inbox, records.server_message(worker_id, message))
            pipe.expire(inbox, INBOX_TTL_S)
        await pipe.execute()

    async def cancel(
        self, server_id: str, worker_id: str, invocation_id: str, attempt: int, reason: str
    ) -> None:
        inbox = self.keys.inbox(server_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(inbox, records.cancel_message(worker_id, invocation_id, attempt, reason))
        pipe.expire(inbox, INBOX_TTL_S)
        await pipe.execute()

    async def receive(self, server_id: str, wait_s: float) -> list[InboxMessage]:
        """What this server's inbox holds, waiting up to ``wait_s`` for something."""
        inbox = self.keys.inbox(server_id)
        first = await self.blocking.blpop([inbox], timeout=wait_s)
        if first is None:
            return []
        more = await self.redis.lpop(inbox, INBOX_BATCH) or []
        return [records.inbox_message(raw) for raw in [first[1], *more]]


class Subscription:
    """One pub/sub connection listening to some channels for as long as the process lives.

    After an outage it subscribes again and calls ``resubscribed``: notices published
    meanwhile are gone, so listeners must look at the state themselves then.
    """

    def __init__(
        self,
        redis: Redis,
        channels: Sequence[str],
        on_message: Callable[[str, bytes], None],
        resubscribed: Callable[[], None],
        logger: logging.Logger,
    ) -> None:
        self.redis = redis
        self.channels = list(channels)
        self.on_message = on_message
        self.resubscribed = resubscribed
        self.log = logger
        self.subscribed = False

    async def run(self) -> None:
        await keep_running("subscription", self._listen, self.log)

    async def _listen(self, outage: Outage) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(*self.channels)
            self.subscribed = True
            outage.recovered()
            self.resubscribed()
            while True:
                raise_if_cancelled()
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None and message["type"] == "message":
                    self.on_message(message["channel"].decode(), message["data"])
        finally:
            self.subscribed = False
            await pubsub.aclose()  # type: ignore[no-untyped-call]
