"""Function uids: each agent on a host holds its own set, one uid per concurrent function.

Every uid is claimed with an exclusive ``flock`` on ``/run/hodei/uids/<uid>.lock`` held by
the agent's spawner for its whole life, so two agents on one host (two ``hodei dev``
stacks, a test run next to them) never share a uid, and a uid whose lock is free belongs to
nobody alive: whatever still runs under it was left by a dead agent and is killed on claim.
A function's uid signals and ptraces nothing but its own processes.

Stdlib only: the spawner imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import signal
import time

LOCK_DIR = "/run/hodei/uids"
SPAN_BLOCKS = 1024  # how many blocks of ``count`` uids from ``base`` agents may claim


def claim(base: int, count: int, preferred: int, lock_dir: str = LOCK_DIR) -> dict[int, int]:
    """``count`` free uids from ``base`` on, starting at ``preferred`` when it is in range;
    returns {uid: lock fd}. Raises OSError when fewer are free."""
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    span = count * SPAN_BLOCKS
    start = preferred if base <= preferred < base + span else base
    held: dict[int, int] = {}
    for offset in range(span):
        uid = base + (start - base + offset) % span
        fd = os.open(os.path.join(lock_dir, f"{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held[uid] = fd
        if len(held) == count:
            return held
    for fd in held.values():
        os.close(fd)
    raise OSError(f"fewer than {count} free function uids in {base}..{base + span - 1}")


def processes_of(uids: set[int]) -> dict[int, list[int]]:
    """{uid: pids} of the processes whose real uid is one of ``uids``."""
    found: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        uid = int(line.split()[1])
                        if uid in uids:
                            found.setdefault(uid, []).append(int(name))
                        break
        except (OSError, ValueError):
            continue
    return found


def kill_all_of(uid: int, within_s: float = 5.0) -> None:
    """In a child that becomes ``uid``: SIGKILL every process of ``uid``, and return once
    none is left. One ``kill(-1)`` is atomic with respect to fork (a process forking while
    it runs either is on the task list and gets the signal, or sees it pending and fails its
    fork). ``kill(-1)`` cannot tell whether it reached anyone, so "none left" is asked of
    RLIMIT_NPROC, which counts the uid's processes (zombies too, until the spawner reaps
    them): with a limit of 2, this child can fork only if it is the last. Never returns."""
    try:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        resource.setrlimit(resource.RLIMIT_NPROC, (2, 2))
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)
            try:
                probe = os.fork()
            except BlockingIOError:
                time.sleep(0.001)
                continue
            if probe == 0:
                os._exit(0)
            os.waitpid(probe, 0)
            os._exit(0)
    finally:
        os._exit(1)


def release(held: dict[int, int]) -> None:
    for fd in held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
