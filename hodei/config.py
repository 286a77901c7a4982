"""Reading typed settings dataclasses from ``HODEI_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, Self

from hodei.errors import ConfigError


class EnvSettings:
    """Base of the settings dataclasses: ``from_env`` builds one from its defaults, then
    ``HODEI_*`` variables, then explicit overrides (the CLI flags)."""

    __slots__ = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        settings: Self = from_env(cls(), env if env is not None else os.environ, overrides)
        return settings


def from_env(base: Any, env: Mapping[str, str], overrides: Mapping[str, Any]) -> Any:
    values: dict[str, Any] = {}
    for f in fields(base):
        raw = env.get(f"HODEI_{f.name.upper()}")
        if raw is None:
            continue
        values[f.name] = _parse(f.name, type(getattr(base, f.name)), raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(base, **values)


def _parse(name: str, kind: type, raw: str) -> Any:
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind is tuple:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        return kind(raw)
    except ValueError:
        raise ConfigError(f"HODEI_{name.upper()}: cannot read {raw!r} as {kind.__name__}") from None
