"""Batching the messages of a gRPC stream: what queued up while the previous write was in
flight goes out as one message (one write instead of many, on both ends)."""

from __future__ import annotations

import asyncio
from typing import Protocol, TypeVar

from hodei.domain import MAX_BATCH_BYTES


class Sized(Protocol):
    def ByteSize(self) -> int: ...


M = TypeVar("M", bound=Sized)


def drain(first: M, outbox: asyncio.Queue[M | None]) -> tuple[list[M], bool]:
    """``first`` and whatever else ``outbox`` holds now, up to MAX_BATCH_BYTES; and whether
    the end of the stream (None) was reached."""
    batch = [first]
    size = first.ByteSize()
    while size < MAX_BATCH_BYTES and not outbox.empty():
        message = outbox.get_nowait()
        if message is None:
            return batch, True
        batch.append(message)
        size += message.ByteSize()
    return batch, False
