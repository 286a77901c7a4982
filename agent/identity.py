"""This agent's mark: what tells the processes and containers an earlier life of *this*
agent started from those of any other agent on the host that uses the same worker id.

A worker id is a guessable name (two `hodei dev` stacks both have a `dev-agent-1`); the
mark is random, kept in the agent's state folder so that the agent finds it again after a
crash, and stamped on everything it starts (an environment variable on processes, a label
on containers). Leftover clean-up only ever touches what carries this mark.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

ENV_MARK = "HODEI_AGENT_MARK"
LABEL_MARK = "hodei.agent_mark"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hodei"


def agent_mark(state_dir: str, worker_id: str) -> str:
    """The mark of the agent ``worker_id`` keeping its state in ``state_dir`` ("" = the
    default), created on first use."""
    folder = Path(state_dir) if state_dir else default_state_dir()
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id)
    path = folder / f"agent-{safe}.mark"
    try:
        mark = path.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{32}", mark):
            return mark
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    mark = secrets.token_hex(16)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(mark + "\n")
    os.replace(temporary, path)
    return mark
