"""The user commands of the CLI: ``hodei fn|invoke|logs|workers|queue``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hodei.api.client import HodeiClient
from hodei.errors import ApiError


def _connection_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--url",
        default=os.environ.get("HODEI_URL", "http://127.0.0.1:8080"),
        help="the gateway (HODEI_URL)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("HODEI_API_TOKEN", ""), help="API token (HODEI_API_TOKEN)"
    )
    return parser


def add_commands(sub: Any) -> None:
    def client_parser(name: str, help_text: str, parent: Any = sub) -> argparse.ArgumentParser:
        return _connection_flags(parent.add_parser(name, help=help_text))

    fn = sub.add_parser("fn", help="manage functions")
    fn_sub = fn.add_subparsers(dest="fn_command", required=True)
    deploy = client_parser("deploy", "create or replace a function", fn_sub)
    deploy.add_argument("name")
    deploy.add_argument("-f", "--file", help="JSON spec file")
    deploy.add_argument("--command", dest="cmd", help="process command line (shell words)")
    deploy.add_argument("--image")
    deploy.add_argument("--runtime")
    deploy.add_argument("--cpu", type=int, help="millicores")
    deploy.add_argument("--memory", type=int, help="MB")
    deploy.add_argument("--timeout", type=float, help="seconds")
    client_parser("ls", "list functions", fn_sub)
    rm = client_parser("rm", "delete a function", fn_sub)
    rm.add_argument("name")

    invoke = client_parser("invoke", "invoke a function")
    invoke.add_argument("name")
    invoke.add_argument(
        "-d", "--data", default="", help="payload: text, @file, or - for standard input"
    )
    invoke.add_argument("--async", dest="asynchronous", action="store_true")
    invoke.add_argument("--wait", type=float)
    invoke.add_argument("--priority", choices=("high", "normal", "low"))

    logs = client_parser("logs", "show an invocation's logs")
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true")
    dead = sub.add_parser("dead", help="failed invocations whose retries are exhausted")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    client_parser("ls", "list them, newest first", dead_sub)
    replay = client_parser("replay", "run one again (as a new invocation)", dead_sub)
    replay.add_argument("id")
    client_parser("workers", "list the workers")
    client_parser("queue", "show the queue")


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(Path(args.file).read_text()) if args.file else {}
    if args.cmd:
        spec["command"] = shlex.split(args.cmd)
    for key, value in (
        ("image", args.image),
        ("runtime", args.runtime),
        ("timeout_s", args.timeout),
    ):
        if value is not None:
            spec[key] = value
    if args.image and "runtime" not in spec:
        spec["runtime"] = "docker"
    resources = spec.setdefault("resources", {})
    if args.cpu is not None:
        resources["cpu_millicores"] = args.cpu
    if args.memory is not None:
        resources["memory_mb"] = args.memory
    if not resources:
        del spec["resources"]
    return spec


def _payload(data: str) -> bytes:
    if data == "-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        return Path(data[1:]).read_bytes()
    return data.encode()


class Progress:
    """A ticking "waiting…" line on stderr while a call takes long (terminals only)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
            sys.stderr.write("\r\033[K")

    def _tick(self) -> None:
        started = time.monotonic()
        while not self.done.wait(0.5):
            sys.stderr.write(f"\r{self.label}… {time.monotonic() - started:.0f}s")
            sys.stderr.flush()


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def run(args: argparse.Namespace) -> int:
    client = HodeiClient(args.url, args.token)
    try:
        return _run(client, args)
    except ApiError as exc:
        print(f"hodei: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hodei: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


def _run(client: HodeiClient, args: argparse.Namespace) -> int:
    if args.command == "fn":
        if args.fn_command == "deploy":
            print(json.dumps(client.deploy(args.name, _spec(args)), indent=2))
        elif args.fn_command == "ls":
            rows = [["NAME", "RUNTIME", "CPU", "MEMORY", "TIMEOUT"]]
            for f in client.functions():
                r = f["resources"]
                rows.append(
                    [
                        f["name"],
                        f["runtime"],
                        f"{r['cpu_millicores']}m",
                        f"{r['memory_mb']}MB",
                        f"{f['timeout_s']:g}s",
                    ]
                )
            print(_table(rows))
        else:
            client.delete(args.name)
        return 0
    if args.command == "invoke":
        payload = _payload(args.data)
        with Progress(f"invoking {args.name}"):
            result = client.invoke(
                args.name,
                payload,
                asynchronous=args.asynchronous,
                wait=args.wait,
                priority=args.priority,
            )
        if result.status_code == 202:
            print(result.invocation_id)
            return 0
        if result.status_code == 200:
            sys.stdout.buffer.write(result.output)
            sys.stdout.flush()
            return 0
        print(
            f"hodei: invocation {result.invocation_id} {result.status or 'did not finish'} "
            f"(HTTP {result.status_code})",
            file=sys.stderr,
        )
        return 1
    if args.command == "logs":
        lines = client.follow_logs(args.id) if args.follow else iter(client.logs(args.id))
        for line in lines:
            print(line["line"])
        return 0
    if args.command == "dead":
        if args.dead_command == "replay":
            print(client.replay(args.id))
            return 0
        rows = [["ID", "FUNCTION", "ATTEMPTS", "ERROR"]]
        for inv in client.dead_letters():
            rows.append([inv["id"], inv["function"], str(inv["attempt"]), inv["error"] or ""])
        print(_table(rows))
        return 0
    if args.command == "workers":
        rows = [["ID", "STATE", "CPU", "MEMORY", "SLOTS", "LOAD"]]
        for w in client.workers():
            cap, used = w["capacity"], w["allocated"]
            rows.append(
                [
                    w["id"],
                    w["state"],
                    f"{used['cpu_millicores']}/{cap['cpu_millicores']}m",
                    f"{used['memory_mb']}/{cap['memory_mb']}MB",
                    f"{used['job_slots']}/{cap['job_slots']}",
                    f"{w['cpu_usage_percent']:.0f}%",
                ]
            )
        print(_table(rows))
        return 0
    if args.command == "queue":
        q = client.queue()
        depth = q["depth"]
        print(
            f"high {depth['high']}  normal {depth['normal']}  low {depth['low']}  "
            f"retrying {q['retrying']}  oldest {q['oldest_age_s']:.1f}s"
        )
        for p in q["pending"]:
            print(f"  {p['id']}  {p['function']}: {p['pending_reason']}")
        return 0
    return 2
