"""The processes of one ``hodei dev`` stack: started, watched, explained when they die,
stopped in order; and their logs echoed to the terminal."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hodei.logs import render_human


class StartFailed(Exception):
    """Raised when a process of the stack cannot start or dies; the message is one line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something holds the port, as the gateway's bind would find it: connections
    left in TIME-WAIT by a stack that just stopped do not count (SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _last_words(text: str) -> str:
    """What a dead process said last that explains it, as one line."""
    lines = [line for line in text.splitlines() if line.strip()]
    bind = re.search(
        r"(?:address \(?'?[\d.]+'?, ?(\d+)\)?.*address already in use|"
        r"[Ff]ailed to bind to address [\d.]*:(\d+)|Address already in use.*?port (\d+))",
        text,
    )
    if bind:
        port = next(p for p in bind.groups() if p)
        return f"port {port} is already in use"
    if "address already in use" in text.lower():
        return "a port it needs is already in use"
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            exception = str(entry.get("exception", "")).strip().splitlines()
            return str(entry.get("message")) + (f" ({exception[-1]})" if exception else "")
    for line in reversed(lines):
        if not line.lstrip().startswith(("File ", "^", "~")):
            return line.strip()[:300]
    return "no output"


class Process:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log
        self.told = False  # its end was reported


class Stack:
    """The stack's processes; each logs to ``<workdir>/<name>.log``."""

    def __init__(self) -> None:
        self.processes: list[Process] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="hodei-dev-"))

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        path = self.workdir / f"{name}.log"
        with path.open("ab") as log:
            try:
                popen = subprocess.Popen(
                    args,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **env},
                    start_new_session=True,
                )
            except OSError as exc:
                raise StartFailed(f"cannot start {name}: {args[0]}: {exc.strerror}") from None
        self.processes.append(Process(name, popen, path))

    def check(self) -> None:
        for process in self.processes:
            code = process.popen.poll()
            if code is not None:
                process.told = True
                said = _last_words(process.log.read_text(errors="replace"))
                raise StartFailed(
                    f"{process.name} exited with code {code}: {said} (its log: {process.log})"
                )

    def stop(self, agent_patience_s: float = 45.0) -> list[str]:
        """SIGTERM in order: gateway, agents (together), server, Redis; SIGKILL stragglers
        (agents have ``agent_patience_s``: their drain grace to finish what runs, and the
        hand-back). Returns what went wrong: a process that had to be killed, or that
        exited with an error (each exits 0 on SIGTERM)."""
        patience = {"gateway": 5.0, "agent": agent_patience_s, "server": 15.0, "redis": 15.0}
        wrong = []
        for kind, seconds in patience.items():
            group = [p for p in self.processes if p.name.split("-")[0] == kind]
            for process in group:
                if process.popen.poll() is None:
                    process.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + seconds
            for process in group:
                try:
                    code = process.popen.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _kill(process)
                    wrong.append(
                        f"{process.name} did not stop within {seconds:g}s and was killed "
                        f"(its log: {process.log})"
                    )
                    continue
                if code != 0 and not process.told:
                    wrong.append(f"{process.name} exited with code {code} (its log: {process.log})")
        return wrong

    def remove_workdir(self) -> None:
        """Once every process has stopped: nothing in the folder serves another stack."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL whatever still runs, with what it started (each leads its own group)."""
        for process in self.processes:
            if process.popen.poll() is None:
                _kill(process)


def _kill(process: Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.popen.pid, signal.SIGKILL)
    process.popen.wait()


class LogFollower:
    """Echoes the processes' log files to our stderr as they grow (Redis's own log stays
    in its file: it is reported only if Redis dies)."""

    def __init__(self, folder: Path, style: str) -> None:
        self.folder = folder
        self.style = style
        self.offsets: dict[Path, int] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dev-logs", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> bool:
        """False when the echoing thread is still at work (a slow terminal)."""
        self.stopping.set()
        self.thread.join(5)
        if self.thread.is_alive():
            return False
        self.drain()
        return True

    def _run(self) -> None:
        while not self.stopping.wait(0.2):
            self.drain()

    def drain(self) -> None:
        for path in sorted(self.folder.glob("*.log")):
            if path.stem == "redis":
                continue
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for raw in complete.decode(errors="replace").splitlines():
                print(self.render(path.stem, raw), file=sys.stderr, flush=True)

    def render(self, process: str, raw: str) -> str:
        if self.style == "json":
            return raw
        try:
            entry = json.loads(raw)
        except ValueError:
            return f"{process}: {raw}"
        return render_human(entry) if isinstance(entry, dict) else f"{process}: {raw}"
