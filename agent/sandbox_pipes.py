"""Feeding and draining a function's pipes from the event loop, without asyncio's stream
machinery (a reader callback and ``os.read``: the cheapest the loop offers)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

CHUNK = 64 * 1024


def feed(fd: int, data: bytes) -> asyncio.Future[None]:
    """Write ``data`` to the pipe ``fd`` and close it; a reader that went away is no error."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    view = memoryview(data)

    def finish() -> None:
        os.close(fd)
        if not done.done():
            done.set_result(None)

    def writable() -> None:
        nonlocal view
        try:
            while view:
                view = view[os.write(fd, view) :]
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_writer(fd)
        finish()

    def abandoned(future: asyncio.Future[None]) -> None:
        if future.cancelled():
            loop.remove_writer(fd)
            os.close(fd)

    try:
        while view:
            view = view[os.write(fd, view) :]
    except BlockingIOError:
        loop.add_writer(fd, writable)
        done.add_done_callback(abandoned)
        return done
    except OSError:
        pass
    finish()
    return done


def drain(fd: int, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
    """Hand everything read from the pipe ``fd`` to ``sink`` until EOF, then close it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                sink(chunk)
                if len(chunk) < CHUNK:
                    return
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(fd)
        os.close(fd)
        if not done.done():
            done.set_result(None)

    def abandoned(future: asyncio.Future[None]) -> None:
        if future.cancelled():
            loop.remove_reader(fd)
            os.close(fd)

    loop.add_reader(fd, readable)
    done.add_done_callback(abandoned)
    return done
