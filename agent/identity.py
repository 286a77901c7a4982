"""This agent's mark: what tells the processes and containers an earlier life of *this*
agent started from those of any other agent on the host that uses the same worker id.

A worker id is a guessable name (two `hodei dev` stacks both have a `dev-agent-1`); the
mark is random, kept in the agent's state folder so that the agent finds it again after a
crash, and stamped on everything it starts (an environment variable on processes, a label
on containers, the name of its cgroup folder). Leftover clean-up only ever touches what
carries this mark. The state folder also remembers the function uids the agent held, so
that its next life claims them again and ends what still runs under them.
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


def _state_file(state_dir: str, worker_id: str, kind: str) -> Path:
    folder = Path(state_dir) if state_dir else default_state_dir()
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id)
    return folder / f"agent-{safe}.{kind}"


def _write_state(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(value + "\n")
    os.replace(temporary, path)


def agent_mark(state_dir: str, worker_id: str) -> str:
    """The mark of the agent ``worker_id`` keeping its state in ``state_dir`` ("" = the
    default), created on first use."""
    path = _state_file(state_dir, worker_id, "mark")
    try:
        mark = path.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{32}", mark):
            return mark
    except FileNotFoundError:
        pass
    mark = secrets.token_hex(16)
    _write_state(path, mark)
    return mark


def remembered_uid(state_dir: str, worker_id: str) -> int:
    """The first function uid this agent held in its previous life (0 = none): claiming
    the same uids again finds and kills what that life left running under them."""
    try:
        return int(_state_file(state_dir, worker_id, "uid").read_text().strip())
    except (OSError, ValueError):
        return 0


def remember_uid(state_dir: str, worker_id: str, uid: int) -> None:
    _write_state(_state_file(state_dir, worker_id, "uid"), str(uid))
