"""What each user command of the CLI does, against the gateway (``hodei.commands`` holds
their arguments)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from hodei import views
from hodei.client import HodeiClient, InvokeResult
from hodei.errors import UsageError
from hodei.exits import Exit

FAILED = ("failed", "timed_out", "cancelled")


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if args.file:
        try:
            spec = json.loads(Path(args.file).read_text())
        except OSError as exc:
            raise UsageError(f"cannot read the spec file {args.file}: {exc.strerror}") from None
        except ValueError as exc:
            raise UsageError(f"{args.file} is not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise UsageError(f"{args.file} must hold a JSON object (the function spec)")
    if args.cmd:
        try:
            spec["command"] = shlex.split(args.cmd)
        except ValueError as exc:
            raise UsageError(f"--command: {exc}") from None
    for key, value in (
        ("image", args.image),
        ("runtime", args.runtime),
        ("timeout_s", args.timeout),
        ("max_retries", args.retries),
        ("concurrency", args.concurrency),
        ("priority", args.priority),
        ("queue_timeout_s", args.queue_timeout),
        ("network", args.network),
        ("interface", args.interface),
        ("handler", args.handler),
    ):
        if value is not None:
            spec[key] = value
    if args.image and "runtime" not in spec:
        spec["runtime"] = "docker"
    for key, pairs in (("env", args.env), ("labels", args.label)):
        if pairs:
            spec[key] = {**spec.get(key, {}), **dict(pairs)}
    warm = dict(spec.get("warm") or {})
    for key, value in (("min", args.warm_min), ("max", args.warm_max), ("idle_s", args.warm_idle)):
        if value is not None:
            warm[key] = value
    if warm:
        spec["warm"] = warm
    resources = dict(spec.get("resources") or {})
    for key, value in (
        ("cpu_millicores", args.cpu),
        ("memory_mb", args.memory),
        ("gpus", args.gpus),
    ):
        if value is not None:
            resources[key] = value
    if resources:
        spec["resources"] = resources
    return spec


def _payload(data: str) -> bytes:
    if data == "-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the payload file {data[1:]}: {exc.strerror}") from None
    return data.encode()


def _out(text: str) -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(f"hodei: {text}", file=sys.stderr, flush=True)


def _exit_for(inv: dict[str, Any]) -> Exit:
    status = inv.get("status")
    if status == "succeeded":
        return Exit.OK
    if status in FAILED:
        return Exit.FUNCTION_FAILED
    return Exit.STILL_RUNNING


def run(client: HodeiClient, args: argparse.Namespace) -> Exit:
    handler = {
        "fn": _functions,
        "invoke": _invoke,
        "status": _status,
        "result": _result,
        "cancel": _cancel,
        "ls": _list,
        "logs": _logs,
        "dead": _dead,
        "workers": _workers,
        "drain": _drain,
        "queue": _queue,
    }[args.command]
    return handler(client, args)


def _functions(client: HodeiClient, args: argparse.Namespace) -> Exit:
    if args.fn_command == "deploy":
        stored = client.deploy(args.name, _spec(args))
        _out(views.dump(stored) if args.json else f"deployed {stored.get('name', args.name)}")
    elif args.fn_command == "ls":
        found = client.functions()
        _out(views.dump(found) if args.json else views.functions(found))
    elif args.fn_command == "show":
        spec = client.function(args.name)
        _out(views.dump(spec))
    else:
        client.delete(args.name)
        _out(f"deleted {args.name}")
    return Exit.OK


def _invoke(client: HodeiClient, args: argparse.Namespace) -> Exit:
    payload = _payload(args.data)
    with views.Progress(f"invoking {args.name}"):
        result = client.invoke(
            args.name,
            payload,
            asynchronous=args.asynchronous,
            wait=args.wait,
            priority=args.priority,
            idempotency_key=args.idempotency_key,
        )
    if result.status_code == 202:
        _out(result.invocation_id)
        return Exit.OK
    if result.status_code == 200:
        sys.stdout.buffer.write(result.output)
        sys.stdout.flush()
        return Exit.OK
    return _invoke_failed(result)


def _invoke_failed(result: InvokeResult) -> Exit:
    inv = result.invocation_id
    if not result.finished:
        # The gateway stopped waiting (its wait ran out, or it is stopping): the
        # invocation itself goes on.
        why = "the gateway is shutting down; " if result.error_code == "shutting_down" else ""
        waits = f" ({result.pending_reason})" if result.pending_reason else ""
        _err(
            f"{result.error_code}: {why}invocation {inv} is still {result.status or 'running'}"
            f"{waits}; follow it with `hodei logs {inv} -f` or `hodei status {inv}`"
        )
        return Exit.STILL_RUNNING
    exit_code = f", exit code {result.exit_code}" if result.exit_code is not None else ""
    _err(
        f"{result.error_code}: {result.error} (invocation {inv} {result.status}{exit_code}; "
        f"its logs: `hodei logs {inv}`)"
    )
    return Exit.FUNCTION_FAILED


def _status(client: HodeiClient, args: argparse.Namespace) -> Exit:
    inv = client.invocation(args.id)
    _out(views.dump(inv) if args.json else views.record(inv))
    return _exit_for(inv)


def _result(client: HodeiClient, args: argparse.Namespace) -> Exit:
    inv = client.invocation(args.id)
    if inv["status"] not in ("succeeded", *FAILED):
        _err(f"{views.status_line(inv)}; `hodei logs {args.id} -f` follows it to its end")
        return Exit.STILL_RUNNING
    sys.stdout.buffer.write(client.result(args.id))
    sys.stdout.flush()
    if inv["status"] != "succeeded":
        _err(views.status_line(inv))
    return _exit_for(inv)


def _cancel(client: HodeiClient, args: argparse.Namespace) -> Exit:
    answer = client.cancel(args.id)
    if args.json:
        _out(views.dump(answer))
    elif answer.get("status") == "running":
        _out(f"cancelling {args.id}: its worker is told to kill it")
    else:
        _out(f"cancelled {args.id}")
    return Exit.OK


def _list(client: HodeiClient, args: argparse.Namespace) -> Exit:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    page = client.invocations(args.function, args.status, args.limit, args.cursor)
    if args.json:
        _out(views.dump({"invocations": page.invocations, "next_cursor": page.next_cursor}))
        return Exit.OK
    if page.invocations:
        _out(views.invocations(page.invocations))
    else:
        _err("no invocations match")
    if page.next_cursor:
        _err(f"more: hodei ls --cursor {shlex.quote(page.next_cursor)}")
    return Exit.OK


def _logs(client: HodeiClient, args: argparse.Namespace) -> Exit:
    if not args.follow:
        for line in client.logs(args.id):
            _out(json.dumps(line) if args.json else str(line.get("line", "")))
        return Exit.OK
    for line in client.follow_logs(args.id):
        _out(json.dumps(line) if args.json else str(line.get("line", "")))
    inv = client.invocation(args.id)
    if args.json:
        _out(json.dumps({"end": inv}))
    else:
        print(views.status_line(inv), file=sys.stderr, flush=True)
    return _exit_for(inv)


def _dead(client: HodeiClient, args: argparse.Namespace) -> Exit:
    if args.dead_command == "replay":
        new_id = client.replay(args.id)
        _out(views.dump({"id": new_id}) if args.json else new_id)
        return Exit.OK
    found = client.dead_letters(args.limit)
    _out(views.dump(found) if args.json else views.invocations(found))
    return Exit.OK


def _workers(client: HodeiClient, args: argparse.Namespace) -> Exit:
    found = client.workers()
    _out(views.dump(found) if args.json else views.workers(found))
    return Exit.OK


def _drain(client: HodeiClient, args: argparse.Namespace) -> Exit:
    worker = client.drain(args.worker)
    _out(views.dump(worker) if args.json else f"{worker['id']} is {worker['state']}")
    return Exit.OK


def _queue(client: HodeiClient, args: argparse.Namespace) -> Exit:
    q = client.queue()
    _out(views.dump(q) if args.json else views.queue(q))
    return Exit.OK
