"""The README as a newcomer follows it: a virtual environment in both fresh-machine
commands, every command and snippet runnable as written (run here against a real `hodei
dev` stack), no dead links, the exit codes as the CLI has them."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import ROOT
from test_dev import running_stack

from hodei.cli import build_parser
from hodei.exits import EXIT_CODES, Exit

README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README) if lang == kind]


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    end = README.find("\n## ", start + len(title) + 2)
    return README[start : end if end > 0 else len(README)]


def test_both_fresh_machine_commands_start_with_a_virtual_environment() -> None:
    for title in (
        "## Start Hodei on one machine (fresh machine)",
        "## Run the tests (fresh machine)",
    ):
        first = BLOCK.search(section(title))
        assert first, title
        commands = first[2]
        venv = commands.index("python3 -m venv .venv && . .venv/bin/activate")
        assert venv < commands.index("pip install"), title
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in section("## Run the tests (fresh machine)")


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def test_no_dead_links() -> None:
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", README, re.M)}
    for target in re.findall(r"\]\(([^)]+)\)", README):
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors, target
        else:
            assert (ROOT / target).exists(), target
    # Paths into the repository named in backticks (`plugin/keys.py`, `jobspecs/`...).
    tops = "api|plugin|agent|proto|hodei|jobspecs|terraform|dashboards|tests|bench|docs|\\.ci"
    for path in re.findall(rf"`((?:{tops})/[\w./-]*)`", README):
        if path != "hodei/leader":  # a Consul key, not a file
            assert (ROOT / path).exists(), path
    assert "../shared" not in README and "docs/" not in README


def _hodei_commands() -> list[list[str]]:
    """Every `hodei …` command of the README's shell blocks, wherever it stands in a line
    (after `;`, `&&`, inside `$(…)`), as its arguments."""
    found = []
    for body in blocks("sh"):
        for line in body.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            command: list[str] = []
            for token in [*lexer, ";"]:
                if token and set(token) <= set("();<>|&"):
                    if command[:1] == ["hodei"]:
                        found.append(command[1:])
                    command = []
                else:
                    command.append(token)
    return found


def test_every_hodei_command_in_the_readme_parses() -> None:
    commands = _hodei_commands()
    assert len(commands) >= 15
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"the README's `hodei {shlex.join(argv)}` does not parse")


def test_the_exit_codes_table_is_the_clis() -> None:
    table = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section("## The CLI"), re.M))
    assert sorted(int(code) for code in table) == sorted(code.value for code in Exit)
    for line in EXIT_CODES.splitlines():
        code = re.match(r"\s+(\d+)\s+(.+)", line)
        if code:
            assert table[code[1]].startswith(code[2].split(":")[0]), code[0]


@pytest.fixture
async def stack() -> AsyncIterator[str]:
    async with running_stack() as started:
        yield started.url


def _run(script: str, url: str, cwd: Path, *, strict: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env["HODEI_URL"] = url
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    script = script.replace("http://127.0.0.1:8080", url)
    head = "set -euo pipefail\n" if strict else ""
    return subprocess.run(
        ["bash", "-c", head + script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


async def test_the_walkthrough_and_the_snippets_run_as_written(stack: str, tmp_path: Path) -> None:
    try_it = blocks("sh")[1:3]
    assert try_it[0].startswith("hodei fn deploy shout") and "big.txt" in try_it[0]
    done = await asyncio.to_thread(_run, try_it[0], stack, tmp_path, strict=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "deployed shout\nHELLO" in done.stdout and "HODEI IS FAST\n" in done.stdout
    assert re.search(r"invocation \w+ succeeded", done.stderr)
    assert done.stdout.rstrip().endswith("HI")
    failing = await asyncio.to_thread(_run, try_it[1], stack, tmp_path, strict=False)
    assert "function_failed: exit code 3" in failing.stderr
    assert "exit status 1" in failing.stdout and "flaky" in failing.stdout

    snippets = [s for s in blocks("python") if "hodei.client" in s]
    assert len(snippets) == 2
    for snippet in snippets:
        ran = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", snippet],
            env={**os.environ, "HODEI_URL": stack},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stderr
        for expected in re.findall(r"^\s*print\(.*\)\s+# (.+)$", snippet, re.M):
            assert expected in ran.stdout, (expected, ran.stdout)
