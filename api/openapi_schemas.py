"""The JSON schemas of the OpenAPI document, derived from what the gateway validates:
the names, bounds and limits come from ``plugin/models.py`` and ``api/requests.py``."""

from __future__ import annotations

import re
from typing import Any

from hodei.api.requests import CURSOR_RE, ID_RE
from hodei.api.scopes import ENV_REDACTED, HIDDEN
from hodei.plugin.models import (
    BOUNDS,
    ENV_NAME_RE,
    INTERFACES,
    LABEL_RE,
    MAX_ENV_VALUE,
    MAX_ITEMS,
    MAX_TEXT,
    NAME_RE,
    RUNTIMES,
    Priority,
    Status,
)


def pattern(regex: re.Pattern[str]) -> str:
    """A regular expression the gateway matches whole, as a JSON Schema pattern (which
    matches anywhere): anchored (ECMA-262's ``$`` is the end, newline or not)."""
    return f"^(?:{regex.pattern})$"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


NAME = {"type": "string", "pattern": pattern(NAME_RE)}
INVOCATION_ID = {"type": "string", "pattern": pattern(ID_RE)}
CURSOR = {"type": "string", "pattern": pattern(CURSOR_RE)}
TEXT = {"type": "string", "maxLength": MAX_TEXT, "pattern": "^[^\\u0000]*$"}
PRIORITY = {"enum": [str(p) for p in Priority]}
STATUS = {"enum": [str(s) for s in Status]}


def bounded(path: str) -> dict[str, Any]:
    """The schema of a number of a spec, from its bounds in plugin/models.py."""
    bound = BOUNDS[path]
    if bound.integer:
        return {"type": "integer", "minimum": int(bound.minimum), "maximum": int(bound.maximum)}
    return {"type": "number", "minimum": bound.minimum, "maximum": bound.maximum}


def _numbers(prefix: str) -> dict[str, Any]:
    return {
        path.removeprefix(prefix): bounded(path)
        for path in BOUNDS
        if path.startswith(prefix) and "." not in path.removeprefix(prefix)
    }


def _string_map(names: re.Pattern[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "maxProperties": MAX_ITEMS,
        "propertyNames": {"pattern": pattern(names)},
        "additionalProperties": {
            "type": "string",
            "maxLength": MAX_ENV_VALUE,
            "pattern": "^[^\\u0000]*$",
        },
    }


def _closed(properties: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False, **more}


def _env_given() -> dict[str, Any]:
    """The env of a spec sent: any value but the marker of a hidden one (api/scopes.py)."""
    env = _string_map(ENV_NAME_RE)
    env["additionalProperties"]["not"] = {"const": HIDDEN}
    env["description"] = (
        f"the function's environment; a value {HIDDEN!r} (what a read without the admin "
        "scope shows) is refused: 422"
    )
    return env


SPEC_PROPERTIES: dict[str, Any] = {
    "runtime": {"enum": list(RUNTIMES), "default": "process"},
    "interface": {"enum": list(INTERFACES), "default": "stdio"},
    "handler": TEXT,
    "warm": _closed(_numbers("warm.")),
    "image": TEXT,
    "command": {"type": "array", "maxItems": MAX_ITEMS, "items": TEXT},
    "env": _env_given(),
    "labels": _string_map(LABEL_RE),
    "resources": _closed(_numbers("resources.")),
    "priority": PRIORITY,
    "network": {"type": "boolean", "default": False},
    **_numbers(""),
}


def _when(field: str, value: str) -> dict[str, Any]:
    return {"required": [field], "properties": {field: {"const": value}}}


# What each runtime and interface needs, as validation says (plugin/models.py FunctionSpec).
SPEC_RULES: list[dict[str, Any]] = [
    {
        "if": _when("runtime", "docker"),
        "then": {"required": ["image"], "properties": {"image": {"minLength": 1}}},
    },
    {
        "if": _when("interface", "lambda"),
        "then": {"required": ["handler"], "properties": {"handler": {"minLength": 1}}},
        "else": {"properties": {"handler": {"maxLength": 0}}, "not": {"required": ["warm"]}},
    },
    {
        "if": {"not": {"anyOf": [_when("runtime", "docker"), _when("interface", "lambda")]}},
        "then": {"required": ["command"], "properties": {"command": {"minItems": 1}}},
    },
]
# A function as read: env values only for the admin scope (or a gateway without tokens).
READ_PROPERTIES: dict[str, Any] = {
    **SPEC_PROPERTIES,
    "env": {
        **_string_map(ENV_NAME_RE),
        "description": "the function's environment; without the admin scope, each value "
        f"reads {HIDDEN!r} (the names stay)",
    },
    ENV_REDACTED: {
        "const": True,
        "description": "present when env values are hidden from this caller",
    },
}
NULLABLE_NUMBER = {"type": ["number", "null"]}
INVOCATION_FIELDS: dict[str, Any] = {
    "id": {"type": "string"},
    "function": {"type": "string"},
    "job": {
        "type": "boolean",
        "description": "a one-off job (POST /v1/jobs), not an invocation of a registered function",
    },
    "status": STATUS,
    "attempt": {"type": "integer"},
    "priority": PRIORITY,
    "worker_id": {"type": ["string", "null"]},
    "exit_code": {"type": ["integer", "null"]},
    "error": {"type": ["string", "null"]},
    "pending_reason": {"type": ["string", "null"]},
    "parked": {"type": "boolean"},
    "created_at": {"type": "number"},
    "started_at": NULLABLE_NUMBER,
    "finished_at": NULLABLE_NUMBER,
    "duration_ms": {"type": ["integer", "null"]},
    "cold_start": {"type": ["boolean", "null"]},
    "init_ms": {"type": ["integer", "null"]},
    "result_truncated": {"type": "boolean"},
    "log_truncated": {"type": "boolean"},
    "trace_id": {"type": ["string", "null"], "description": "W3C trace id of the invocation"},
}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "field": {"type": "string", "description": "the invalid field (422 invalid_spec)"},
            "id": {"type": "string", "description": "the invocation that goes on (504, 503)"},
            "status": STATUS,
            "pending_reason": {
                "type": ["string", "null"],
                "description": "why the invocation that goes on still waits",
            },
        },
    },
    "FunctionSpec": {
        **_closed(SPEC_PROPERTIES),
        "description": "The name is the path's; a name in the body is ignored.",
        "properties": {"name": {"type": "string"}, **SPEC_PROPERTIES},
        "allOf": SPEC_RULES,
    },
    "Function": {
        "type": "object",
        "required": ["name", *SPEC_PROPERTIES],
        "properties": {"name": NAME, **READ_PROPERTIES},
    },
    "JobSpec": {
        **_closed(
            {
                "name": {**NAME, "default": "job"},
                "payload": {"type": "string", "description": "stdin, as UTF-8 text"},
                "payload_base64": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "description": "stdin, base64 (instead of payload)",
                },
                **SPEC_PROPERTIES,
            }
        ),
        "allOf": SPEC_RULES,
    },
    "FunctionList": {
        "type": "object",
        "required": ["functions"],
        "properties": {"functions": {"type": "array", "items": ref("Function")}},
    },
    "Accepted": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {"id": {"type": "string"}, "status": STATUS},
    },
    "Invocation": {
        "type": "object",
        "required": ["id", "function", "status", "attempt", "priority", "created_at"],
        "properties": INVOCATION_FIELDS,
    },
    "InvocationList": {
        "type": "object",
        "required": ["invocations"],
        "properties": {
            "invocations": {"type": "array", "items": ref("Invocation")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "Logs": {
        "type": "object",
        "required": ["id", "lines", "next_offset", "truncated"],
        "properties": {
            "id": {"type": "string"},
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "ts": {"type": "integer"},
                        "stream": {"type": "string"},
                        "line": {"type": "string"},
                        "attempt": {"type": "integer"},
                    },
                },
            },
            "next_offset": {"type": "integer"},
            "truncated": {"type": "boolean"},
        },
    },
    "Worker": {
        "type": "object",
        "required": ["id", "state"],
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string"},
            "labels": {"type": "object"},
            "runtimes": {"type": "array", "items": {"type": "string"}},
            "capacity": {"type": "object"},
            "allocated": {"type": "object"},
            "utilisation": {"type": "object"},
            "instances": {"type": "array"},
            "jobs": {"type": "array"},
        },
    },
    "WhoAmI": {
        "type": "object",
        "required": ["scopes", "auth"],
        "properties": {
            "scopes": {"type": "array", "items": {"enum": ["admin", "invoke", "read"]}},
            "auth": {"type": "boolean"},
        },
    },
    "WorkerList": {
        "type": "object",
        "required": ["workers"],
        "properties": {"workers": {"type": "array", "items": ref("Worker")}},
    },
    "Queue": {
        "type": "object",
        "required": ["depth", "retrying", "oldest_age_s", "pending"],
        "properties": {
            "depth": {"type": "object"},
            "retrying": {"type": "integer"},
            "payload_bytes": {"type": "integer"},
            "oldest_age_s": {"type": "number"},
            "pending": {"type": "array"},
        },
    },
}
