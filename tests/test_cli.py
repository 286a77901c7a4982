"""The CLI as a newcomer meets it: the whole lifecycle of an invocation, the gateway's
reasons in every failure, documented exit codes, no tracebacks, help on every argument."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import ROOT, AgentProcess, free_port, start_agent, wait_for
from test_gateway import gateway_settings

from hodei import views
from hodei.actions import _invoke_failed
from hodei.agent.settings import AgentSettings
from hodei.answers import InvokeResult
from hodei.api.app import create_app
from hodei.api.settings import GatewaySettings
from hodei.cli import build_parser
from hodei.exits import Exit
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings
from hodei.settings_help import help_for


async def hodei(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, within: float = 60
) -> tuple[int, str, str]:
    """``hodei ARGS`` as its own process: exit code, stdout, stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hodei.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), within)
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def url(settings: ServerSettings) -> AsyncIterator[str]:
    async with TestClient(TestServer(create_app(gateway_settings(settings)))) as http:
        yield str(http.make_url("")).rstrip("/")


async def test_an_async_invocation_followed_to_its_end(
    url: str, plane: ControlPlane, agents: list[AgentProcess], tmp_path: Path
) -> None:
    await start_agent(plane, agents, "w1")
    env = {"HODEI_URL": url}
    code, out, err = await hodei(
        "fn", "deploy", "slow", "--command", "sh -c 'read x; sleep 0.5; echo got $x'", env=env
    )
    assert code == 0 and "deployed slow" in out, err
    code, out, _ = await hodei("invoke", "slow", "--async", "-d", "hi", env=env)
    inv = out.strip()
    assert code == Exit.OK and len(inv) == 32
    # No stderr at all: following its logs still ends with the final status line.
    code, out, err = await hodei("logs", inv, "-f", env=env)
    assert code == Exit.OK and out == ""
    assert f"invocation {inv} succeeded" in err and "exit code 0" in err
    code, out, _ = await hodei("status", inv, env=env)
    assert code == Exit.OK and "status     succeeded" in out and "worker     w1" in out
    code, out, _ = await hodei("status", inv, "--json", env=env)
    assert json.loads(out)["status"] == "succeeded"
    code, out, _ = await hodei("result", inv, env=env)
    assert code == Exit.OK and out == "got hi\n"

    await hodei("fn", "deploy", "long", "--command", "sleep 60", env=env)
    code, out, _ = await hodei("invoke", "long", "--async", env=env)
    running = out.strip()
    code, out, err = await hodei("result", running, env=env)
    assert code == Exit.STILL_RUNNING and "hodei logs" in err
    code, out, _ = await hodei("cancel", running, env=env)
    assert code == Exit.OK and running in out
    await wait_for(lambda: _status_is(plane, running, "cancelled"), 15)
    code, out, _ = await hodei("status", running, env=env)
    assert code == Exit.FUNCTION_FAILED and "cancelled" in out

    code, out, _ = await hodei("ls", "--function", "slow", "--json", env=env)
    listed = json.loads(out)["invocations"]
    assert [i["id"] for i in listed] == [inv]
    code, out, _ = await hodei("ls", "--status", "cancelled", env=env)
    assert running in out and inv not in out
    code, out, err = await hodei("ls", "--limit", "1", env=env)
    assert len(out.strip().splitlines()) == 2 and running in out  # header + the newest
    cursor = err.split("--cursor ", 1)[1].split()[0]
    code, out, _ = await hodei("ls", "--limit", "1", "--cursor", cursor, env=env)
    assert inv in out and running not in out

    await hodei("fn", "deploy", "stuck", "--command", "true", "--label", "zone=nowhere", env=env)
    code, out, _ = await hodei("invoke", "stuck", "--async", env=env)
    stuck = out.strip()
    await wait_for(lambda: _parked(plane, stuck), 15)
    code, out, _ = await hodei("status", stuck, env=env)
    assert code == Exit.STILL_RUNNING and "waiting    parked: " in out and "zone" in out
    # A synchronous call that gives up waiting says why it waits (an audit: it said only
    # "still queued", and the reason took `hodei queue` to find).
    code, _, err = await hodei("invoke", "stuck", "--wait", "3", env=env)
    assert code == Exit.STILL_RUNNING and "still queued (no worker has label zone=nowhere)" in err
    code, out, _ = await hodei("queue", env=env)
    assert f"{stuck}  stuck: parked: " in out


async def _parked(plane: ControlPlane, invocation_id: str) -> bool:
    return (await plane.data.invocations.get(invocation_id)).parked


async def _status_is(plane: ControlPlane, invocation_id: str, status: str) -> bool:
    return str((await plane.data.invocations.get(invocation_id)).status) == status


async def test_failures_carry_the_gateways_reason_and_exit_codes(
    url: str, plane: ControlPlane, agents: list[AgentProcess], tmp_path: Path
) -> None:
    await start_agent(plane, agents, "w1")
    env = {"HODEI_URL": url}
    command = "sh -c 'echo bad >&2; exit 3'"
    await hodei("fn", "deploy", "three", "--command", command, "--retries", "0", env=env)
    code, out, err = await hodei("invoke", "three", env=env)
    assert code == Exit.FUNCTION_FAILED
    assert "function_failed: exit code 3" in err and "hodei logs" in err
    inv = err.split("invocation ")[1].split()[0]
    code, out, err = await hodei("logs", inv, "-f", env=env)
    assert out == "bad\n" and code == Exit.FUNCTION_FAILED
    assert f"invocation {inv} failed" in err and "exit code 3" in err
    code, out, err = await hodei("result", inv, env=env)
    assert code == Exit.FUNCTION_FAILED and "exit code 3" in err
    code, out, _ = await hodei("dead", "ls", env=env)
    assert inv in out and "exit code 3" in out
    code, out, _ = await hodei("dead", "replay", inv, env=env)
    assert code == Exit.OK and len(out.strip()) == 32 and out.strip() != inv

    await hodei("fn", "deploy", "nap", "--command", "sleep 5", env=env)
    code, _, err = await hodei("invoke", "nap", "--wait", "0.2", env=env)
    assert code == Exit.STILL_RUNNING and "wait_timeout" in err and "hodei status" in err

    code, _, err = await hodei("invoke", "missing", env=env)
    assert code == Exit.REFUSED and "not_found" in err and "HTTP 404" in err
    code, _, err = await hodei("fn", "deploy", "has space", "--command", "true", env=env)
    assert code == Exit.REFUSED and "invalid_spec" in err and "name" in err
    code, _, err = await hodei("invoke", "has space", env=env)
    assert code == Exit.REFUSED and "HTTP 404" in err and "does not exist" in err
    code, _, err = await hodei("fn", "deploy", "bad", "--command", "true", "--cpu", "-1", env=env)
    assert code == Exit.REFUSED and "resources.cpu_millicores" in err
    code, _, err = await hodei("cancel", inv, env=env)
    assert code == Exit.REFUSED and "conflict" in err and "already failed" in err
    code, out, _ = await hodei("drain", "w1", env=env)
    assert code == Exit.OK and out.strip() == "w1 is draining"
    code, out, _ = await hodei("workers", env=env)
    assert "w1" in out and "draining" in out


async def test_local_mistakes_are_usage_errors_without_tracebacks(url: str, tmp_path: Path) -> None:
    env = {"HODEI_URL": url}
    broken = tmp_path / "spec.json"
    broken.write_text('{"command": ["true"],}')
    code, _, err = await hodei("fn", "deploy", "f", "-f", str(broken), env=env)
    assert code == Exit.USAGE and "spec.json is not valid JSON" in err
    code, _, err = await hodei("fn", "deploy", "f", "-f", str(tmp_path / "none.json"), env=env)
    assert code == Exit.USAGE and "cannot read the spec file" in err
    code, _, err = await hodei("invoke", "f", "-d", "@big.txt", env=env)
    assert code == Exit.USAGE and "cannot read the payload file big.txt" in err
    assert "reach" not in err
    code, _, err = await hodei("fn", "deploy", "f", "--env", "NOEQUALS", env=env)
    assert code == Exit.USAGE and "KEY=VALUE" in err
    code, _, err = await hodei("status", env=env)
    assert code == Exit.USAGE


async def test_a_gateway_that_is_not_there_or_not_hodei(tmp_path: Path) -> None:
    code, _, err = await hodei("queue", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == Exit.UNREACHABLE and "cannot reach the gateway" in err

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", html)
    async with TestClient(TestServer(app)) as other:
        other_url = str(other.make_url("")).rstrip("/")
        for args in (("queue",), ("workers",), ("ls",), ("status", "x"), ("fn", "ls")):
            code, _, err = await hodei(*args, "--url", other_url)
            assert code == Exit.UNREACHABLE and "Hodei gateway" in err, (args, err)
        code, out, err = await hodei("invoke", "f", "--url", other_url)
        assert code == Exit.UNREACHABLE and "Hodei gateway" in err and out == ""
    # An SSH-like server: not even HTTP.
    server = await asyncio.start_server(_banner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        code, _, err = await hodei("queue", "--url", f"http://127.0.0.1:{port}")
    assert code == Exit.UNREACHABLE


async def _banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
    await writer.drain()
    writer.close()


async def test_deploy_flags_build_the_whole_spec(url: str) -> None:
    env = {"HODEI_URL": url}
    code, out, err = await hodei(
        "fn",
        "deploy",
        "full",
        "--command",
        "cat",
        "--cpu",
        "250",
        "--memory",
        "96",
        "--timeout",
        "7",
        "--retries",
        "1",
        "--concurrency",
        "4",
        "--priority",
        "high",
        "--queue-timeout",
        "30",
        "--env",
        "GREETING=hi there",
        "--env",
        "MODE=a=b",
        "--label",
        "zone=eu",
        "--network",
        "--json",
        env=env,
    )
    assert code == 0, err
    code, out, _ = await hodei("fn", "show", "full", env=env)
    spec = json.loads(out)
    assert spec["resources"] == {"cpu_millicores": 250, "memory_mb": 96, "gpus": 0}
    assert (spec["timeout_s"], spec["max_retries"], spec["concurrency"]) == (7, 1, 4)
    assert spec["env"] == {"GREETING": "hi there", "MODE": "a=b"}
    assert spec["labels"] == {"zone": "eu"} and spec["network"] is True
    assert spec["priority"] == "high" and spec["queue_timeout_s"] == 30
    code, out, _ = await hodei("fn", "ls", "--json", env=env)
    assert [f["name"] for f in json.loads(out)] == ["full"]
    code, out, _ = await hodei("fn", "rm", "full", env=env)
    assert code == 0
    code, out, _ = await hodei("fn", "ls", env=env)
    assert "full" not in out


async def test_every_read_command_speaks_json(
    url: str, plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    await start_agent(plane, agents, "w1")
    env = {"HODEI_URL": url}
    await hodei("fn", "deploy", "echo", "--command", "sh -c 'echo line >&2; cat'", env=env)
    code, out, _ = await hodei("invoke", "echo", "-d", "x", env=env)
    assert out == "x"
    code, out, _ = await hodei("ls", "--json", env=env)
    inv = json.loads(out)["invocations"][0]["id"]
    for args in (
        ("workers",),
        ("queue",),
        ("fn", "ls"),
        ("fn", "show", "echo"),
        ("status", inv),
        ("dead", "ls"),
        ("ls",),
    ):
        code, out, err = await hodei(*args, "--json", env=env)
        assert code == 0, (args, err)
        json.loads(out)
    code, out, _ = await hodei("logs", inv, "--json", env=env)
    assert json.loads(out.splitlines()[0])["line"] == "line"
    code, out, _ = await hodei("logs", inv, "-f", "--json", env=env)
    assert json.loads(out.splitlines()[-1])["end"]["status"] == "succeeded"


def _actions(parser: argparse.ArgumentParser, path: str = "hodei") -> list[tuple[str, str]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _actions(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            found.append((f"{path} {action.option_strings or action.dest}", action.help or ""))
    return found


def test_every_argument_and_setting_flag_has_help() -> None:
    actions = _actions(build_parser())
    assert len(actions) > 150
    missing = [name for name, text in actions if not text.strip()]
    assert missing == []


@pytest.mark.parametrize(
    ("process", "settings_cls"),
    [("server", ServerSettings), ("agent", AgentSettings), ("gateway", GatewaySettings)],
)
def test_every_settings_field_has_a_help_text(process: str, settings_cls: type) -> None:
    missing = [f.name for f in dataclasses.fields(settings_cls) if not help_for(process, f.name)]
    assert missing == [], f"add them to hodei/settings_help.py: {missing}"


async def test_help_shows_the_exit_codes_and_variables() -> None:
    code, out, _ = await hodei("--help")
    assert code == 0
    for exit_code in Exit:
        assert f"  {exit_code.value}  " in out
    code, out, _ = await hodei("server", "--help")
    assert "(HODEI_GRPC_PORT; default 7070)" in " ".join(out.split())


def test_the_user_commands_stay_light() -> None:
    """A user command imports neither aiohttp nor Redis nor the settings of the processes
    (together most of a second on a loaded machine)."""
    probe = (
        "import sys; from hodei.cli import build_parser; from hodei import actions; "
        "build_parser(['queue']).parse_args(['queue']); "
        "print(sorted(m for m in ('aiohttp', 'redis', 'grpc', 'hodei.api.settings') "
        "if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert found.stdout.strip() == "[]"


def test_a_records_view_says_how_an_instance_served_it() -> None:
    """`hodei status` of a lambda-interface invocation: a cold start and its init, or warm
    (a newcomer saw them only with --json)."""
    base = {"id": "i1", "function": "f", "status": "succeeded", "attempt": 1, "priority": "normal"}
    assert "instance" not in views.record(base)  # a stdio function's
    cold = views.record({**base, "cold_start": True, "init_ms": 85})
    assert "  instance   cold start, init 85 ms" in cold.splitlines()
    assert "  instance   warm" in views.record({**base, "cold_start": False}).splitlines()


def test_a_gateway_that_stops_waiting_leaves_the_invocation_running(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A newcomer's audit: Ctrl-C of `hodei dev` while `hodei invoke` waited made it exit 1,
    "the function did not succeed", though the invocation was still running (4)."""
    message = "this gateway is shutting down; the invocation goes on: fetch it at /v1/…"
    answer = InvokeResult(503, "abc123", "running", b"", {}, "shutting_down", message)
    assert _invoke_failed(answer) == Exit.STILL_RUNNING
    err = capsys.readouterr().err
    assert "shutting_down" in err and "abc123 is still running" in err and "hodei status" in err


def test_fn_ls_says_what_a_lambda_function_runs() -> None:
    """A newcomer's audit: `hodei fn ls` showed an empty RUNS column for a warm function."""
    spec = {"runtime": "process", "interface": "lambda", "handler": "app.handler"}
    listed = views.functions([{"name": "greet", **spec, "resources": {}}])
    assert "lambda app.handler" in listed.splitlines()[1]
    stdio = views.functions([{"name": "shout", "command": ["tr", "a-z", "A-Z"], "resources": {}}])
    assert "tr a-z A-Z" in stdio and "lambda" not in stdio


async def test_not_found_says_where_to_look(url: str) -> None:
    """A newcomer's audit: "function 'x' does not exist" left them to guess the next step."""
    env = {"HODEI_URL": url}
    for args, where in (
        (("invoke", "missing"), "hodei fn ls"),
        (("fn", "show", "missing"), "hodei fn ls"),
        (("status", "0" * 32), "hodei ls"),
        (("logs", "0" * 32), "hodei ls"),
        (("dead", "replay", "0" * 32), "hodei dead ls"),
        (("drain", "nobody"), "hodei workers"),
    ):
        code, _, err = await hodei(*args, env=env)
        assert code == Exit.REFUSED and "not_found" in err and where in err, (args, err)


async def test_ctrl_c_of_a_waiting_invoke_says_the_invocation_goes_on(
    url: str, plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    """A newcomer's audit: Ctrl-C of `hodei invoke` exited 130 without a word, as if the
    call had been cancelled; it runs on."""
    await start_agent(plane, agents, "w1")
    env = {"HODEI_URL": url}
    await hodei("fn", "deploy", "nap", "--command", "sleep 30", env=env)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hodei.cli",
        "invoke",
        "nap",
        "--idempotency-key",
        "k1",
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**environ, **env},
    )

    async def running() -> bool:
        _, out, _ = await hodei("ls", "--function", "nap", "--status", "running", env=env)
        return "nap" in out

    await wait_for(running, 30)
    proc.send_signal(2)  # SIGINT, as Ctrl-C
    err = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()  # type: ignore[union-attr]
    assert await proc.wait() == 130
    assert "goes on" in err and "hodei ls --function nap" in err
    assert "--idempotency-key k1" in err  # the same key waits for the same invocation
    assert "Traceback" not in err


def test_invoke_help_says_how_long_it_waits() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    wait = next(a for a in sub.choices["invoke"]._actions if "--wait" in a.option_strings)
    assert "30" in (wait.help or "")
