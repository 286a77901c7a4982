"""Turning Redis replies into typed values. The clients never decode (replies are bytes);
redis-py types them as unions of bytes and str, so every reply is narrowed here."""

from __future__ import annotations

from collections.abc import Iterable


def text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string reply, got {type(value).__name__}")


def maybe_text(value: object) -> str | None:
    return None if value is None else text(value)


def raw(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"expected a string reply, got {type(value).__name__}")


def maybe_raw(value: object) -> bytes | None:
    return None if value is None else raw(value)


def texts(values: Iterable[object]) -> list[str]:
    return [text(v) for v in values]


def raws(values: Iterable[object]) -> list[bytes | None]:
    return [maybe_raw(v) for v in values]


def mapping(values: object) -> dict[bytes, bytes]:
    if not isinstance(values, dict):
        raise TypeError(f"expected a hash reply, got {type(values).__name__}")
    return {raw(k): raw(v) for k, v in values.items()}


def scored(values: object) -> list[tuple[str, float]]:
    """A sorted-set reply WITHSCORES: (member, score) pairs."""
    assert isinstance(values, list)
    return [(text(member), float(score)) for member, score in values]
