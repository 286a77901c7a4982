"""Function specs: validation names the offending field."""

from __future__ import annotations

from typing import Any

import pytest

from hodei.errors import InvalidSpec
from hodei.plugin.models import FunctionSpec, Priority


def test_lambda_spec_round_trips_and_revisions_follow_the_spec() -> None:
    raw = {
        "command": ["python", "-m", "awslambdaric"],
        "interface": "lambda",
        "handler": "app.handler",
        "warm": {"min": 1, "max": 4, "idle_s": 30},
    }
    spec = FunctionSpec.from_dict("warm-one", raw)
    assert spec.warm.max == 4 and spec.handler == "app.handler"
    data = spec.to_dict()
    data.pop("name")
    again = FunctionSpec.from_dict("warm-one", data)
    assert again == spec and again.revision == spec.revision
    changed = FunctionSpec.from_dict("warm-one", {**raw, "handler": "app.other"})
    assert changed.revision != spec.revision


def test_defaults_and_round_trip() -> None:
    spec = FunctionSpec.from_dict("resize-image", {"command": ["convert", "-"]})
    assert spec.runtime == "process" and spec.priority is Priority.NORMAL
    assert spec.resources.cpu_millicores > 0 and spec.max_retries == 3
    data = spec.to_dict()
    data.pop("name")
    assert FunctionSpec.from_dict("resize-image", data) == spec


@pytest.mark.parametrize(
    ("name", "raw", "field"),
    [
        ("Bad_Name", {"command": ["x"]}, "name"),
        ("ok", {"command": ["x"], "resources": {"cpu_millicores": 0}}, "resources.cpu_millicores"),
        ("ok", {"command": ["x"], "resources": {"memory_mb": -1}}, "resources.memory_mb"),
        ("ok", {"command": ["x"], "resources": {"gpus": -1}}, "resources.gpus"),
        (
            "ok",
            {"command": ["x"], "resources": {"cpu_millicores": "1"}},
            "resources.cpu_millicores",
        ),
        ("ok", {"command": ["x"], "resources": {"disk": 1}}, "resources.disk"),
        ("ok", {"runtime": "docker"}, "image"),
        ("ok", {"runtime": "process"}, "command"),
        ("ok", {"runtime": "wasm", "command": ["x"]}, "runtime"),
        ("ok", {"command": "x"}, "command"),
        ("ok", {"command": ["x"], "timeout_s": 0}, "timeout_s"),
        ("ok", {"command": ["x"], "max_retries": 1.5}, "max_retries"),
        ("ok", {"command": ["x"], "priority": "urgent"}, "priority"),
        ("ok", {"command": ["x"], "env": {"A": 1}}, "env.A"),
        ("ok", {"command": ["x"], "env": {"A=B": "1"}}, "env"),
        ("abc\n", {"command": ["x"]}, "name"),
        ("ok", {"command": ["x"], "timeout_s": float("nan")}, "timeout_s"),
        ("ok", {"command": ["x"], "timeout_s": float("inf")}, "timeout_s"),
        ("ok", {"command": ["x"], "timeout_s": 10**400}, "timeout_s"),
        ("ok", {"command": ["x"], "queue_timeout_s": 10**6}, "queue_timeout_s"),
        ("ok", {"command": ["x"], "max_retries": 21}, "max_retries"),
        ("ok", {"command": ["x"], "concurrency": 10**9}, "concurrency"),
        ("ok", {"command": ["x"], "resources": {"memory_mb": 10**12}}, "resources.memory_mb"),
        ("ok", {"command": ["x"], "resources": {"gpus": 65}}, "resources.gpus"),
        ("ok", {"command": ["x"] * 300}, "command"),
        ("ok", {"command": ["x"], "interface": "grpc"}, "interface"),
        ("ok", {"command": ["x"], "interface": "lambda"}, "handler"),
        ("ok", {"command": ["x"], "handler": "app.handler"}, "handler"),
        ("ok", {"command": ["x"], "warm": {"min": 1}}, "warm"),
        (
            "ok",
            {
                "command": ["x"],
                "interface": "lambda",
                "handler": "a.b",
                "warm": {"min": -1},
            },
            "warm.min",
        ),
        (
            "ok",
            {"command": ["x"], "interface": "lambda", "handler": "a.b", "warm": {"idle_s": 0}},
            "warm.idle_s",
        ),
        ("ok", {"command": ["x"], "network": "yes"}, "network"),
        ("ok", {"command": ["x"], "colour": "red"}, "colour"),
    ],
)
def test_invalid_specs_name_the_field(name: str, raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        FunctionSpec.from_dict(name, raw)
    assert info.value.field == field
