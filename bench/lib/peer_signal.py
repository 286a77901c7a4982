"""How a peer's task says "done": one byte on a FIFO the benchmark reads (one write
system call, no Redis traffic, so the signal costs every peer the same and nothing)."""

from __future__ import annotations

import os

_fd = -1


def done() -> None:
    global _fd
    if _fd < 0:
        _fd = os.open(os.environ["BENCH_FIFO"], os.O_WRONLY)
    os.write(_fd, b".")


def run_true() -> None:
    """The spawn variant's work from a synchronous task: run /bin/true, wait for it."""
    import subprocess

    subprocess.run(["/bin/true"], check=True)


async def run_true_async() -> None:
    """The spawn variant's work from an asyncio task, as such a task would write it."""
    import asyncio

    process = await asyncio.create_subprocess_exec("/bin/true")
    if await process.wait() != 0:
        raise RuntimeError("/bin/true failed")
