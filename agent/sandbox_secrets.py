"""What the agent keeps from the functions it runs: its secrets.

Secrets come from files (``token_file``) or, if the operator insists, from variables that
are read once and removed from ``os.environ``, so no process the agent starts inherits
them. The agent is made non-dumpable: its ``/proc/<pid>/environ`` (where the initial
environment stays, whatever ``os.environ`` says), ``mem`` and ``fd`` are root's alone,
and no process of the same user may ptrace it. That matters most for an unsandboxed
process runtime, whose functions run as the agent's user.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import replace
from pathlib import Path

from hodei.agent.settings import AgentSettings
from hodei.errors import ConfigError

log = logging.getLogger(__name__)

SECRET_VARIABLES = ("HODEI_TOKEN", "HODEI_CONSUL_TOKEN", "CONSUL_HTTP_TOKEN")
_PR_SET_DUMPABLE = 4


def read_secret(path: str, setting: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def protect_agent(settings: AgentSettings) -> AgentSettings:
    """The settings with the secrets read from files and the environment; removes secret
    variables from ``os.environ`` and makes this process non-dumpable."""
    if settings.token_file:
        settings = replace(settings, token=read_secret(settings.token_file, "token_file"))
    elif os.environ.get("HODEI_TOKEN"):
        log.warning(
            "the agent token came from HODEI_TOKEN; prefer --token-file (a variable stays in "
            "this process's initial environment, readable by root)"
        )
    if not settings.consul_token and os.environ.get("CONSUL_HTTP_TOKEN"):
        settings = replace(settings, consul_token=os.environ["CONSUL_HTTP_TOKEN"])
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
    make_undumpable()
    return settings


def make_undumpable() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("cannot make the agent non-dumpable: %s", os.strerror(ctypes.get_errno()))
