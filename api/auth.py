"""API tokens with scopes: ``admin`` (functions, workers), ``invoke``, ``read``."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from hodei.domain import bearer_token
from hodei.errors import ConfigError

SCOPES = frozenset({"admin", "invoke", "read"})


@dataclass(frozen=True, slots=True)
class Caller:
    id: str  # a digest of the token: what idempotency keys and stream caps belong to
    scopes: frozenset[str]


class TokenTable:
    def __init__(self, entries: list[str]) -> None:
        self.scopes: dict[str, frozenset[str]] = {}
        for entry in entries:
            entry = entry.strip()
            if not entry or entry.startswith("#"):
                continue
            token, sep, scopes = entry.partition(":")
            granted = frozenset(s.strip() for s in scopes.split("+") if s.strip())
            if not token or not sep or not granted or not granted <= SCOPES:
                raise ConfigError(
                    f"API token entry {entry[:8]}...: want token:scope+scope "
                    f"with scopes from {', '.join(sorted(SCOPES))}"
                )
            self.scopes[token] = granted

    @classmethod
    def load(cls, tokens: tuple[str, ...], tokens_file: str) -> TokenTable:
        entries = list(tokens)
        if tokens_file:
            entries += Path(tokens_file).read_text().splitlines()
        return cls(entries)

    @property
    def enabled(self) -> bool:
        return bool(self.scopes)

    def may_scrape(self, authorization: str, metrics_token: str) -> bool:
        """Whether an Authorization header may read /metrics: the metrics token, or an API
        token that may read."""
        token = bearer_token(authorization)
        if token and metrics_token and hmac.compare_digest(metrics_token.encode(), token.encode()):
            return True
        caller = self.identify(authorization)
        return caller is not None and bool(caller.scopes & {"read", "admin"})

    def identify(self, authorization: str) -> Caller | None:
        """Who the bearer token of an Authorization header is, None when unknown."""
        token = bearer_token(authorization)
        if not token:
            return None
        for known, scopes in self.scopes.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return Caller(hashlib.sha256(token.encode()).hexdigest()[:16], scopes)
        return None
