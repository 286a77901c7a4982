"""The event loop a process runs on: the choice, and what a wrong one says."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from conftest import IN_CI

from hodei import loops
from hodei.errors import ConfigError


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def _run(choice: str) -> str:
    return loops.run(_loop_module(), loops.factory(choice))


def test_asyncio_is_the_standard_library_loop() -> None:
    assert _run("asyncio") == "asyncio.unix_events"


def test_auto_and_uvloop_run_on_uvloop_when_installed() -> None:
    if loops.default_name() != "uvloop":
        if IN_CI:
            pytest.fail("uvloop is a dependency: CI must have it")
        pytest.skip("uvloop is not installed")
    assert _run("auto").startswith("uvloop")
    assert _run("uvloop").startswith("uvloop")


def test_auto_falls_back_when_uvloop_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop then fails
    assert loops.default_name() == "asyncio"
    assert _run("auto") == "asyncio.unix_events"
    with pytest.raises(ConfigError, match="uvloop cannot be imported"):
        loops.factory("uvloop")


def test_an_unknown_choice_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="'trio' is not one of auto, uvloop, asyncio"):
        loops.factory("trio")


@pytest.mark.parametrize("process", ["server", "agent", "gateway"])
def test_each_process_refuses_an_unknown_loop_before_anything_else(process: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hodei.cli", process, "--event-loop", "trio"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    # One line: nothing started, logged or left unawaited before the refusal.
    assert result.stderr.strip().splitlines() == [
        "hodei: event_loop: 'trio' is not one of auto, uvloop, asyncio"
    ]
