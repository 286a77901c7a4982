"""The user commands of the CLI: functions, invocations and their lifecycle, the fleet.
Their exit codes are ``hodei.exits.EXIT_CODES``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from hodei import actions
from hodei.client import HodeiClient
from hodei.errors import ApiError, GatewayUnreachable, UsageError
from hodei.exits import Exit

STATUSES = ("queued", "running", "succeeded", "failed", "timed_out", "cancelled")


def _connection_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--url",
        default=os.environ.get("HODEI_URL", "http://127.0.0.1:8080"),
        help="the gateway's URL (HODEI_URL; default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("HODEI_API_TOKEN", ""),
        help="API token sent as a bearer token (HODEI_API_TOKEN)",
    )
    return parser


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the gateway's JSON answer instead of text"
    )


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"want KEY=VALUE, got {text!r}")
    return key, value


def add_commands(sub: Any) -> None:
    def command(name: str, help_text: str, parent: Any = sub) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, help=help_text, description=help_text)
        return _connection_flags(parser)

    fn = sub.add_parser("fn", help="manage functions", description="manage functions")
    fn_sub = fn.add_subparsers(dest="fn_command", required=True, metavar="COMMAND")
    deploy = command("deploy", "create or replace a function", fn_sub)
    deploy.add_argument("name", help="the function's name (a-z, 0-9 and -)")
    deploy.add_argument("-f", "--file", help="a JSON spec file; the flags below override it")
    deploy.add_argument(
        "--command", dest="cmd", help="the process to run, as shell words ('tr a-z A-Z')"
    )
    deploy.add_argument("--image", help="a container image (implies --runtime docker)")
    deploy.add_argument("--runtime", choices=("process", "docker"), help="where it runs")
    deploy.add_argument(
        "--interface",
        choices=("stdio", "lambda"),
        help="stdio: one process per invocation (default); lambda: long-lived instances "
        "speaking the AWS Lambda Runtime API",
    )
    deploy.add_argument("--handler", help="lambda: the handler (_HANDLER), e.g. app.handler")
    deploy.add_argument("--warm-min", type=int, help="lambda: instances kept warm at least")
    deploy.add_argument("--warm-max", type=int, help="lambda: instances at most")
    deploy.add_argument("--warm-idle", type=float, help="lambda: seconds an idle instance lives")
    deploy.add_argument("--cpu", type=int, help="CPU reserved per invocation, in millicores")
    deploy.add_argument("--memory", type=int, help="memory reserved per invocation, in MB")
    deploy.add_argument("--gpus", type=int, help="GPUs per invocation")
    deploy.add_argument("--timeout", type=float, help="seconds an invocation may run")
    deploy.add_argument("--retries", type=int, help="attempts after a failure (max_retries)")
    deploy.add_argument(
        "--concurrency", type=int, help="invocations running at once at most (0 = unlimited)"
    )
    deploy.add_argument("--priority", choices=("high", "normal", "low"), help="default priority")
    deploy.add_argument(
        "--queue-timeout", type=float, help="seconds an invocation may wait for a worker"
    )
    deploy.add_argument(
        "--env",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="an environment variable for the function (repeatable)",
    )
    deploy.add_argument(
        "--label",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="run only on workers with this label (repeatable)",
    )
    deploy.add_argument(
        "--network",
        action=argparse.BooleanOptionalAction,
        help="give the function network access (default: none)",
    )
    _json_flag(deploy)
    _json_flag(command("ls", "list the functions", fn_sub))
    show = command("show", "show a function's spec", fn_sub)
    show.add_argument("name", help="the function's name")
    _json_flag(show)
    rm = command("rm", "delete a function", fn_sub)
    rm.add_argument("name", help="the function's name")

    invoke = command("invoke", "invoke a function; its output goes to standard output")
    invoke.add_argument("name", help="the function's name")
    invoke.add_argument(
        "-d", "--data", default="", help="the payload: text, @file, or - for standard input"
    )
    invoke.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="do not wait: print the invocation id (follow it with status, logs, result)",
    )
    invoke.add_argument(
        "--wait",
        type=float,
        help="seconds to wait for the output (default: the gateway's, 30 s unless set; exit 4 "
        "after, the invocation still running)",
    )
    invoke.add_argument("--priority", choices=("high", "normal", "low"), help="queue priority")
    invoke.add_argument(
        "--idempotency-key", help="the same key returns the first invocation instead of a new one"
    )

    status = command("status", "show an invocation's record (exit 4 while it runs)")
    status.add_argument("id", help="the invocation id")
    _json_flag(status)
    result = command("result", "print a finished invocation's output")
    result.add_argument("id", help="the invocation id")
    cancel = command("cancel", "cancel an invocation (a running one is killed)")
    cancel.add_argument("id", help="the invocation id")
    _json_flag(cancel)
    ls = command("ls", "list recent invocations, newest first")
    ls.add_argument("--function", help="only those of this function")
    ls.add_argument("--status", choices=STATUSES, help="only those in this status")
    ls.add_argument("--limit", type=int, default=25, help="how many (default %(default)s)")
    ls.add_argument("--cursor", help="the next page: the cursor a previous ls printed")
    _json_flag(ls)
    logs = command("logs", "print an invocation's log lines (its stderr)")
    logs.add_argument("id", help="the invocation id")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="follow new lines until it ends, then print its final status (exit 1 if it failed)",
    )
    _json_flag(logs)

    dead = sub.add_parser(
        "dead",
        help="failed invocations whose retries ran out",
        description="failed invocations whose retries ran out",
    )
    dead_sub = dead.add_subparsers(dest="dead_command", required=True, metavar="COMMAND")
    dead_ls = command("ls", "list them, newest first", dead_sub)
    dead_ls.add_argument("--limit", type=int, default=100, help="how many (default %(default)s)")
    _json_flag(dead_ls)
    replay = command("replay", "run one again, as a new invocation", dead_sub)
    replay.add_argument("id", help="the dead-lettered invocation's id")
    _json_flag(replay)
    _json_flag(command("workers", "list the workers, their reservations and load"))
    drain = command("drain", "drain a worker: no new work, running work finishes")
    drain.add_argument("worker", help="the worker id")
    _json_flag(drain)
    _json_flag(command("queue", "show the queue: depth, oldest age, why work waits"))


def _fail(message: str, code: Exit) -> int:
    print(f"hodei: {message}", file=sys.stderr)
    return int(code)


def run(args: argparse.Namespace) -> int:
    client = HodeiClient(args.url, args.token)
    try:
        return int(actions.run(client, args))
    except UsageError as exc:
        return _fail(str(exc), Exit.USAGE)
    except GatewayUnreachable as exc:
        return _fail(str(exc), Exit.UNREACHABLE)
    except ApiError as exc:
        where = f"; {_where_to_look(args)}" if exc.status == 404 else ""
        return _fail(f"{exc.code}: {exc.message} (HTTP {exc.status}){where}", Exit.REFUSED)
    except KeyboardInterrupt:
        if args.command == "invoke" and not args.asynchronous:
            return _fail(f"interrupted; the invocation goes on: {_find_it(args)}", Exit.INTERRUPTED)
        return int(Exit.INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (| head): not an error of ours.
        sys.stderr.close()
        return 0


def _where_to_look(args: argparse.Namespace) -> str:
    """What lists what a command did not find."""
    if args.command in ("invoke", "fn"):
        return "hodei fn ls lists the functions"
    if args.command == "dead":
        return "hodei dead ls lists the dead letters"
    if args.command == "drain":
        return "hodei workers lists the workers"
    return "hodei ls lists recent invocations"


def _find_it(args: argparse.Namespace) -> str:
    found = f"hodei ls --function {args.name} finds it"
    if args.idempotency_key:
        key = shlex.quote(args.idempotency_key)
        return f"{found}; hodei invoke {args.name} --idempotency-key {key} waits for it again"
    return found
