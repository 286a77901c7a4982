"""A/B: one bench script run alternately against two versions of Hodei in one run, so
both see the same machine and the same load.

"new" is this checkout (its working tree, uncommitted changes included); "old" is a commit
(default 97287c6, main when this session began) checked out into a temporary
``git worktree``. No version is installed: each run gets ``PYTHONPATH=<its checkout>``, so
``import hodei`` (and every ``python -m hodei.cli`` the script starts, which inherits the
variable) loads that checkout's sources through its ``hodei/`` symlinks. Before measuring,
ab.py checks in a child process that each checkout is the one imported.

Runs go in ABBA order (new old old new …) so that a slow drift of the machine weighs on
both alike. The script is the version's own copy when it has one (bench/e2e.py reads
Hodei's internals, which change between versions), else this checkout's (``--script-from
new`` forces this checkout's for both). Every ``key=value`` line with a number is
collected.

Run: python bench/ab.py [--old REV] [--pairs 3] SCRIPT [-- SCRIPT ARGS…]
  e.g. python bench/ab.py bench/e2e.py -- --jobs 3000 --rounds 1 --redis-url redis://127.0.0.1:6379/11
       python bench/ab.py bench/peers.py -- --systems hodei --variants spawn --rounds 1
Prints per key `new.KEY=` and `old.KEY=` (medians, with `_spread=` min-max) and
`ratio.KEY=` new/old.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LINE = re.compile(r"^([A-Za-z_][\w.\[\]/-]*)=(-?[0-9][0-9.eE+-]*)\s*(#.*)?$")


def git(*args: str, cwd: str = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def imported_from(checkout: str) -> str:
    """Where a child with PYTHONPATH=checkout imports hodei's packages from."""
    code = (
        "import hodei, hodei.cli, hodei.plugin.server, hodei.api.app, hodei.agent.agent;"
        "print(hodei.plugin.server.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": checkout}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"ab: cannot import hodei from {checkout}:\n{out.stderr}")
    return os.path.realpath(out.stdout.strip())


def run_once(script: str, checkout: str, script_args: list[str], log: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": checkout}
    started = time.monotonic()
    with open(log, "a") as out:
        out.write(f"\n### {script} {' '.join(script_args)} (PYTHONPATH={checkout})\n")
        out.flush()
        proc = subprocess.run(
            [sys.executable, script, *script_args],
            env=env,
            cwd=checkout,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
        )
        out.write(proc.stdout)
    values = {}
    for line in proc.stdout.splitlines():
        match = LINE.match(line.strip())
        if match and not match.group(1).endswith(("_spread", "_spread_ms")):
            with contextlib.suppress(ValueError):  # a range such as 4.79-6.29
                values[match.group(1)] = float(match.group(2))
    took = time.monotonic() - started
    inside = script.startswith(checkout + os.sep)
    name = os.path.relpath(script, checkout) if inside else script
    print(f"# {name} in {checkout}: exit {proc.returncode}, {took:.0f}s")
    if proc.returncode != 0:
        print(f"# (non-zero exit: see {log})")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", help="a bench script, e.g. bench/e2e.py")
    parser.add_argument("script_args", nargs="*", help="after --: the script's own arguments")
    parser.add_argument("--old", default="97287c6", help="the commit to compare against")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each version")
    parser.add_argument("--script-from", choices=("own", "new"), default="own")
    parser.add_argument("--log", default="", help="full output (default: a temp file)")
    args = parser.parse_args()

    old_commit = git("rev-parse", "--verify", f"{args.old}^{{commit}}")
    relative = os.path.relpath(os.path.abspath(args.script), REPO)
    log = args.log or os.path.join(tempfile.gettempdir(), f"hodei-ab-{os.getpid()}.log")
    folder = tempfile.mkdtemp(prefix="hodei-ab-")
    old_checkout = os.path.join(folder, "old")
    git("worktree", "add", "--detach", "--quiet", old_checkout, old_commit)
    try:
        checkouts = {"new": REPO, "old": old_checkout}
        for name, checkout in checkouts.items():
            found = imported_from(checkout)
            if not found.startswith(os.path.realpath(checkout) + os.sep):
                raise SystemExit(f"ab: {name} imports hodei from {found}, not {checkout}")
            print(
                f"# {name}: {checkout} ({git('rev-parse', '--short', 'HEAD', cwd=checkout)}"
                f"{'+ working tree' if name == 'new' else ''}), hodei from {found}"
            )
        scripts = {}
        for name, checkout in checkouts.items():
            own = os.path.join(checkout, relative)
            use_own = args.script_from == "own" and os.path.exists(own)
            scripts[name] = own if use_own else os.path.join(REPO, relative)
            print(f"# {name} runs {scripts[name]}")
        print(f"# log: {log}", flush=True)

        results: dict[str, list[dict[str, float]]] = {"new": [], "old": []}
        order = ["new", "old", "old", "new"] * ((args.pairs + 1) // 2)
        for name in order[: 2 * args.pairs]:
            values = run_once(scripts[name], checkouts[name], args.script_args, log)
            results[name].append(values)
            sys.stdout.flush()
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", old_checkout], cwd=REPO)
        shutil.rmtree(folder, ignore_errors=True)

    print(f"# A/B: {args.pairs} runs each, new = this checkout, old = {old_commit[:9]}")
    keys = [k for k in results["new"][0] if k in results["old"][0]] if results["new"] else []
    if not keys:
        print("# no key=value line common to both versions' output")
        return 1
    for key in keys:
        medians: dict[str, float] = {}
        for name in ("new", "old"):
            runs = [r[key] for r in results[name] if key in r]
            medians[name] = statistics.median(runs)
            print(f"{name}.{key}={medians[name]:g}")
            print(f"{name}.{key}_spread={min(runs):g}-{max(runs):g}")
        if medians["old"]:
            print(f"ratio.{key}={medians['new'] / medians['old']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
