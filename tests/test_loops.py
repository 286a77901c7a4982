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


def test_asyncio_is_the_standard_library_loop() -> None:
    assert loops.run(_loop_module(), "asyncio") == "asyncio.unix_events"


def test_auto_and_uvloop_run_on_uvloop_when_installed() -> None:
    if not loops.uvloop_installed():
        if IN_CI:
            pytest.fail("uvloop is a dependency: CI must have it")
        pytest.skip("uvloop is not installed")
    assert loops.run(_loop_module(), "auto").startswith("uvloop")
    assert loops.run(_loop_module(), "uvloop").startswith("uvloop")
    assert loops.default_name() == "uvloop"


def test_auto_falls_back_when_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loops, "uvloop_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop then fails
    assert loops.run(_loop_module(), "auto") == "asyncio.unix_events"
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loops.factory("uvloop")


def test_an_unknown_choice_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="'trio' is not one of auto, uvloop, asyncio"):
        loops.factory("trio")


@pytest.mark.parametrize("process", ["server", "agent", "gateway"])
def test_each_process_refuses_an_unknown_loop(process: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hodei.cli", process, "--event-loop", "trio"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "event_loop: 'trio' is not one of auto, uvloop, asyncio" in result.stderr
