"""How the CLI shows what the gateway answers: tables, records, status lines."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any


def dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    all_rows = [header, *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in all_rows
    )


def clock(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def waiting(inv: dict[str, Any]) -> str:
    """Why a queued invocation waits: parked (no worker of the fleet can take it) or not."""
    reason = inv.get("pending_reason") or ""
    if inv.get("parked"):
        return f"parked: {reason}" if reason else "parked"
    return reason


def status_line(inv: dict[str, Any]) -> str:
    """One line: what became of an invocation (or where it stands)."""
    status = inv.get("status", "")
    text = f"invocation {inv.get('id')} {status}"
    details = []
    if inv.get("duration_ms") is not None:
        details.append(duration(inv["duration_ms"]))
    if inv.get("exit_code") is not None:
        details.append(f"exit code {inv['exit_code']}")
    if (inv.get("attempt") or 1) > 1:
        details.append(f"attempt {inv['attempt']}")
    if inv.get("worker_id"):
        details.append(f"on {inv['worker_id']}")
    if details:
        text += f" ({', '.join(details)})"
    if inv.get("error"):
        text += f": {inv['error']}"
    elif status == "queued" and waiting(inv):
        text += f": {waiting(inv)}"
    return text


def record(inv: dict[str, Any]) -> str:
    rows = [
        ("function", inv.get("function")),
        ("status", inv.get("status")),
        ("waiting", waiting(inv) if inv.get("status") == "queued" else ""),
        ("attempt", f"{inv.get('attempt')} (priority {inv.get('priority')})"),
        ("worker", inv.get("worker_id")),
        ("exit code", inv.get("exit_code")),
        ("error", inv.get("error")),
        ("created", clock(inv.get("created_at"))),
        ("started", clock(inv.get("started_at"))),
        ("finished", clock(inv.get("finished_at"))),
        ("duration", duration(inv.get("duration_ms"))),
        ("instance", instance(inv)),
        ("trace", inv.get("trace_id")),
    ]
    lines = [f"invocation {inv.get('id')}"]
    lines += [f"  {k:<10} {v}" for k, v in rows if v not in (None, "", "-")]
    return "\n".join(lines)


def instance(inv: dict[str, Any]) -> str:
    """How a lambda-interface function's instance served it ("" for a stdio function)."""
    if inv.get("cold_start") is None:
        return ""
    if not inv["cold_start"]:
        return "warm"
    init = inv.get("init_ms")
    return f"cold start, init {duration(init)}" if init is not None else "cold start"


def invocations(items: list[dict[str, Any]]) -> str:
    return table(
        ["ID", "FUNCTION", "STATUS", "ATTEMPT", "WORKER", "DURATION", "CREATED", "ERROR"],
        (
            [
                i["id"],
                i["function"],
                i["status"] + (" (parked)" if i.get("parked") else ""),
                str(i.get("attempt", "")),
                i.get("worker_id") or "-",
                duration(i.get("duration_ms")),
                clock(i.get("created_at")),
                i.get("error") or waiting(i) or "",
            ]
            for i in items
        ),
    )


def functions(items: list[dict[str, Any]]) -> str:
    rows = []
    for f in items:
        r = f.get("resources", {})
        runs = f.get("image") or " ".join(f.get("command", []))
        if f.get("interface") == "lambda":
            runs = f"{runs} lambda {f.get('handler', '')}".strip()
        rows.append(
            [
                f["name"],
                f.get("runtime", ""),
                runs,
                f"{r.get('cpu_millicores')}m",
                f"{r.get('memory_mb')}MB",
                f"{f.get('timeout_s', 0):g}s",
            ]
        )
    return table(["NAME", "RUNTIME", "RUNS", "CPU", "MEMORY", "TIMEOUT"], rows)


def workers(items: list[dict[str, Any]]) -> str:
    rows = []
    for w in items:
        cap, used = w["capacity"], w["allocated"]
        rows.append(
            [
                w["id"],
                w["state"],
                f"{used['cpu_millicores']}/{cap['cpu_millicores']}m",
                f"{used['memory_mb']}/{cap['memory_mb']}MB",
                f"{used['job_slots']}/{cap['job_slots']}",
                f"{w.get('cpu_usage_percent', 0):.0f}%",
                ",".join(w.get("runtimes", [])),
            ]
        )
    return table(["ID", "STATE", "CPU", "MEMORY", "SLOTS", "LOAD", "RUNTIMES"], rows)


def queue(q: dict[str, Any]) -> str:
    depth = q["depth"]
    lines = [
        f"high {depth.get('high', 0)}  normal {depth.get('normal', 0)}  low {depth.get('low', 0)}"
        f"  retrying {q.get('retrying', 0)}  oldest {q.get('oldest_age_s', 0):.1f}s"
    ]
    for p in q.get("pending", []):
        lines.append(f"  {p['id']}  {p['function']}: {waiting(p)}")
    return "\n".join(lines)


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
