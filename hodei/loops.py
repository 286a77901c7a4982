"""The event loop a Hodei process runs on.

uvloop (libuv) where it is installed: most of the control plane's work is socket reads and
writes and callbacks, each of which costs a fraction of what asyncio's selector loop
spends on it. ``asyncio`` picks the standard library's loop (its debug mode and tools know
only that one); ``uvloop`` insists on uvloop and fails when it is missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hodei.errors import ConfigError

CHOICES = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the loop ``choice`` (one of ``CHOICES``) names."""
    if choice not in CHOICES:
        raise ConfigError(f"event_loop: {choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed()):
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        raise ConfigError("event_loop: uvloop is not installed") from None
    new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return new_loop


def default_name() -> str:
    """The loop "auto" picks."""
    return "uvloop" if uvloop_installed() else "asyncio"


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    with asyncio.Runner(loop_factory=factory(choice)) as runner:
        return runner.run(main)


def is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")
