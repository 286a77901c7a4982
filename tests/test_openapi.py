"""The OpenAPI document says what the gateway enforces (issue 12): 401/403 on every
protected operation, patterns on path parameters, and bounds that are the validation's own
(both read ``plugin/models.py``), checked here against the validation itself."""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis

from hodei.api.openapi import document
from hodei.api.requests import ID_RE
from hodei.api.routes import ROUTES
from hodei.errors import InvalidSpec
from hodei.plugin.models import BOUNDS, FunctionSpec, valid_name

DOC = document()
SPEC = DOC["components"]["schemas"]["FunctionSpec"]


def test_the_document_is_valid_openapi() -> None:
    schemathesis.openapi.from_dict(DOC).validate()


def test_every_protected_operation_declares_401_and_403() -> None:
    for route in ROUTES:
        op = DOC["paths"][route.path][route.method.lower()]
        if not route.scope:
            assert "security" not in op or {} in op["security"], route.path
            continue
        assert "401" in op["responses"], (route.method, route.path)
        if route.scope != "any":
            assert "403" in op["responses"], (route.method, route.path)
            assert op["security"] == [{"bearer": [route.scope]}]
    assert "401" in DOC["paths"]["/metrics"]["get"]["responses"]  # with a metrics_token


def _schema_of(path: str) -> dict[str, Any]:
    node = SPEC
    for part in path.split("."):
        node = node["properties"][part]
    return dict(node)


def _spec_with(path: str, value: float) -> dict[str, Any]:
    """The smallest valid spec with ``path`` set to ``value``."""
    spec: dict[str, Any] = {"command": ["true"]}
    if path.startswith("warm."):
        spec = {"interface": "lambda", "handler": "app.handler"}
    node = spec
    *parents, key = path.split(".")
    for parent in parents:
        node = node.setdefault(parent, {})
    node[key] = value
    return spec


@pytest.mark.parametrize("path", sorted(BOUNDS))
def test_the_documented_bounds_are_the_validated_ones(path: str) -> None:
    bound = BOUNDS[path]
    schema = _schema_of(path)
    assert schema["type"] == ("integer" if bound.integer else "number")
    assert (schema["minimum"], schema["maximum"]) == (bound.minimum, bound.maximum)
    # The document's limits are where validation changes its answer.
    step = 1 if bound.integer else bound.minimum / 10 or 0.001
    for inside in (schema["minimum"], schema["maximum"]):
        FunctionSpec.from_dict("f", _spec_with(path, inside))
    for outside in (schema["minimum"] - step, schema["maximum"] + step):
        with pytest.raises(InvalidSpec) as refused:
            FunctionSpec.from_dict("f", _spec_with(path, outside))
        assert refused.value.field == path
    if bound.integer:
        with pytest.raises(InvalidSpec):
            FunctionSpec.from_dict("f", _spec_with(path, schema["minimum"] + 0.5))


def test_the_documented_fields_are_the_validated_ones() -> None:
    documented = set(SPEC["properties"]) - {"name"}
    assert documented == set(FunctionSpec.__dataclass_fields__) - {"name"}
    assert SPEC["additionalProperties"] is False
    with pytest.raises(InvalidSpec):
        FunctionSpec.from_dict("f", {"command": ["true"], "undocumented": 1})


def test_path_patterns_accept_what_the_gateway_accepts() -> None:
    params = {
        p["name"]: p["schema"]["pattern"]
        for p in DOC["paths"]["/v1/functions/{name}/invoke"]["post"]["parameters"]
        if p["in"] == "path"
    }
    params["id"] = next(
        p["schema"]["pattern"]
        for p in DOC["paths"]["/v1/invocations/{id}"]["get"]["parameters"]
        if p["name"] == "id"
    )
    samples = ["f", "abc-1", "Bad", "-x", "a" * 63, "a" * 64, "x:jobs", "a b", "", "é"]
    for sample in samples:
        assert bool(re.search(params["name"], sample)) == valid_name(sample), sample
        assert bool(re.search(params["id"], sample)) == bool(ID_RE.fullmatch(sample)), sample
