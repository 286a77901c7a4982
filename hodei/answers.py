"""How the gateway's answers are read: ``Answer`` (status, headers, body) and the readers
``hodei.calls`` pairs with each request, which turn an answer into a method's result or
raise the error it carries (``ApiError``, or ``GatewayUnreachable`` when it did not come
from a Hodei gateway)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hodei.errors import ApiError, GatewayUnreachable

FINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled"})


@dataclass(frozen=True)
class Answer:
    """The gateway's answer to a ``Call``."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes

    def error(self) -> ApiError | GatewayUnreachable:
        """The error the gateway sent, in the contract's ``{"error": {code, message}}``;
        an answer without it did not come from a Hodei gateway."""
        try:
            data = json.loads(self.body)
            err = data["error"]
            return ApiError(self.status, str(err["code"]), str(err.get("message", "")), data)
        except (ValueError, TypeError, KeyError):
            text = " ".join(self.body.decode(errors="replace").split())[:120]
            return GatewayUnreachable(
                f"HTTP {self.status} without Hodei's error body ({text or 'empty'}): "
                "is this a Hodei gateway?"
            )

    def expect(self, *statuses: int) -> Answer:
        if self.status not in statuses:
            raise self.error()
        return self

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            raise GatewayUnreachable(
                f"the answer (HTTP {self.status}) is not JSON: is this a Hodei gateway?"
            ) from None


def _field(answer: Answer, key: str) -> Any:
    data = answer.json()
    if not isinstance(data, dict) or key not in data:
        raise GatewayUnreachable(f"the answer has no {key!r}: is this a Hodei gateway?")
    return data[key]


def read_object(*statuses: int) -> Callable[[Answer], dict[str, Any]]:
    def read(answer: Answer) -> dict[str, Any]:
        data = answer.expect(*statuses).json()
        if not isinstance(data, dict):
            raise GatewayUnreachable("the answer is not a JSON object: is this a Hodei gateway?")
        return data

    return read


def read_list(key: str) -> Callable[[Answer], list[dict[str, Any]]]:
    def read(answer: Answer) -> list[dict[str, Any]]:
        return list(_field(answer.expect(200), key))

    return read


def read_id(answer: Answer) -> str:
    return str(_field(answer.expect(202), "id"))


def read_nothing(answer: Answer) -> None:
    answer.expect(204)


def read_bytes(answer: Answer) -> bytes:
    return answer.expect(200).body


@dataclass(frozen=True)
class InvokeResult:
    """The answer to an invoke: the output, or where to find it later and why it failed.

    ``status`` is the invocation's (``succeeded``, ``failed``, ``queued``...); on failure
    ``error_code`` is the gateway's (``function_failed``, ``function_timed_out``,
    ``wait_timeout``...), ``error`` the reason (``exit code 3``, ``image_pull_failed: …``)."""

    status_code: int
    invocation_id: str
    status: str
    output: bytes
    headers: Mapping[str, str]
    error_code: str = ""
    error: str = ""
    exit_code: int | None = None
    pending_reason: str = ""  # why a call that stopped waiting is still queued

    @property
    def ok(self) -> bool:
        return self.status_code in (200, 202)

    @property
    def finished(self) -> bool:
        return self.status in FINAL


def read_invoke_result(answer: Answer) -> InvokeResult:
    if "X-Hodei-Invocation-Id" not in answer.headers:
        if answer.status in (200, 202):
            raise GatewayUnreachable("the answer names no invocation: is this a Hodei gateway?")
        raise answer.error()
    exit_code = answer.headers.get("X-Hodei-Exit-Code")
    code = error = pending = ""
    if answer.status not in (200, 202):
        err = answer.error()
        if not isinstance(err, ApiError):
            raise err
        code, error = err.code, err.message
        pending = str(err.body.get("pending_reason") or "")
    return InvokeResult(
        answer.status,
        answer.headers.get("X-Hodei-Invocation-Id", ""),
        answer.headers.get("X-Hodei-Status", ""),
        answer.body if answer.status == 200 else b"",
        answer.headers,
        code,
        error,
        int(exit_code) if exit_code else None,
        pending,
    )


@dataclass(frozen=True)
class InvocationPage:
    """One page of invocations, newest first; ``next_cursor`` asks for the next one."""

    invocations: list[dict[str, Any]]
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.invocations)

    def __len__(self) -> int:
        return len(self.invocations)


def read_page(answer: Answer) -> InvocationPage:
    found = read_list("invocations")(answer)
    return InvocationPage(found, answer.json().get("next_cursor"))


class LogEvents:
    """Reads the server-sent events of ``logs?follow=true``: log lines, then the end."""

    def __init__(self) -> None:
        self.event = ""
        self.ended = False
        self.status = ""

    def feed(self, raw: bytes) -> dict[str, Any] | None:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            data = json.loads(line[5:])
            if self.event == "log":
                return dict(data)
            if self.event == "end":
                self.ended = True
                self.status = str(data.get("status", ""))
        return None


def read_ready(answer: Answer) -> bool:
    if answer.status == 200:
        return bool(answer.json() == {"status": "ready"})
    if answer.status == 503:
        return False
    raise answer.error()
