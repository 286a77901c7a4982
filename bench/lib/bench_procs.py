"""Processes for the benchmarks: start them in their own session, account their CPU, and
always stop them (process group by process group), whatever happens to the script.

Shared by bench/peers.py and bench/chaos.py (this folder is appended to ``sys.path`` by
them, never prepended, so a ``PYTHONPATH`` pointing at another Hodei checkout still wins).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import psutil

LIB = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_path(*extra: str) -> str:
    """PYTHONPATH for a child: the caller's own PYTHONPATH first (another Hodei checkout
    under A/B), then ``extra`` folders."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([*parts, *extra])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any HODEI_* variable of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env.update(extra)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Procs:
    """Every process a benchmark started. Each runs in its own session (process group), so
    stopping one also stops what it forked (prefork children, functions it spawned)."""

    log_dir: str = ""
    started: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Proc:
        log_path = ""
        out: int | None = subprocess.DEVNULL
        if self.log_dir:
            log_path = os.path.join(self.log_dir, f"{name}.log")
            out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        finally:
            if isinstance(out, int) and out >= 0 and self.log_dir:
                os.close(out)
        proc = Proc(name, popen, log_path)
        self.started.append(proc)
        return proc

    def hodei(self, name: str, *args: str, env: Mapping[str, str]) -> Proc:
        """``python -m hodei.cli …`` (the Hodei on the import path: this checkout, or the
        one ``PYTHONPATH`` names)."""
        return self.start(name, [sys.executable, "-m", "hodei.cli", *args], env=env)

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        """SIGTERM its process group, then SIGKILL what is left after ``timeout``."""
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout)
        _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)
        if proc in self.started:
            self.started.remove(proc)

    def kill(self, proc: Proc) -> None:
        """kill -9 of the process alone (a crash): what it forked stays, as after a real one."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)

    def stop_all(self) -> None:
        """Everything, Redis servers last (so the others can exit cleanly)."""
        last = [p for p in self.started if p.name.startswith("redis")]
        self.terminate([p for p in self.started if p not in last])
        self.terminate(last)
        self.started.clear()

    def terminate(self, procs: list[Proc], timeout: float = 10.0) -> dict[str, float]:
        """SIGTERM to each group at once; seconds each leader took to exit (-1: it was
        still running after ``timeout`` and got SIGKILL)."""
        started = time.monotonic()
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        took: dict[str, float] = {}
        waiting = [p for p in procs if p.alive()]
        for proc in procs:
            if proc not in waiting:
                took[proc.name] = 0.0
        while waiting and time.monotonic() - started < timeout:
            time.sleep(0.02)
            for proc in [p for p in waiting if not p.alive()]:
                took[proc.name] = time.monotonic() - started
                waiting.remove(proc)
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(5)
            took.setdefault(proc.name, -1.0)
            if proc in self.started:
                self.started.remove(proc)
        return took


def _signal_group(proc: Proc, sig: signal.Signals) -> None:
    # The group outlives its leader after a kill -9 of the leader alone: signal it anyway.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(ProcessLookupError):
        if proc.popen.poll() is None:
            os.kill(proc.pid, sig)


@contextlib.contextmanager
def supervised(log_dir: str = "") -> Iterator[Procs]:
    """Procs that are stopped on the way out: normal exit, exception, Ctrl-C, SIGTERM."""
    procs = Procs(log_dir)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_signal)
    atexit.register(procs.stop_all)
    try:
        yield procs
    finally:
        procs.stop_all()
        atexit.unregister(procs.stop_all)
        signal.signal(signal.SIGTERM, previous)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process, its reaped children and its live
    descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = process.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def own_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process alone: none of its children's."""
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return 0.0


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its live descendants, in MiB."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_info().rss
    return total / 2**20


def self_cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system
