"""The event loop a Hodei process runs on.

uvloop (libuv) where it is installed: most of the control plane's work is socket reads and
writes and callbacks, each of which costs a fraction of what asyncio's selector loop
spends on it. ``asyncio`` picks the standard library's loop (its debug mode and tools know
only that one); ``uvloop`` insists on uvloop and fails when it cannot be imported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hodei.errors import ConfigError

CHOICES = ("auto", "uvloop", "asyncio")
T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def factory(choice: str) -> LoopFactory | None:
    """What makes the loop ``choice`` (one of ``CHOICES``) names; None for asyncio's own,
    which ``asyncio.run`` makes."""
    if choice not in CHOICES:
        raise ConfigError(f"event_loop: {choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "auto":
            return None
        raise ConfigError(f"event_loop: uvloop cannot be imported ({exc})") from None
    new_loop: LoopFactory = uvloop.new_event_loop
    return new_loop


def default_name() -> str:
    """The loop "auto" picks."""
    return "asyncio" if factory("auto") is None else "uvloop"


def run(main: Coroutine[Any, Any, T], new_loop: LoopFactory | None) -> T:
    """``asyncio.run(main)``, on the loop ``new_loop`` makes (from ``factory``)."""
    if new_loop is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)


def is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")
