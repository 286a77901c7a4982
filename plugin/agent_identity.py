"""Who is calling the WorkerService, and what it may do: agents are who they say.

An agent is identified by its client certificate (TLS: the subject's common name is the
worker id) or by its token (``token:worker-id`` entries bind each token to one worker).
A worker can only register, beat, stream and report as itself. The operator RPCs
(``AssignJob``, and ``GetWorkerStatus`` of another worker) need an operator certificate
(its common name listed in ``operator_names``) or an operator token.

A fleet token (``token:*``, an explicit operator choice for fleets whose agents cannot
each be given their own credential) may act as any worker id, but never takes over one
that is somebody else's: not an id bound to its own token, and not a worker that is alive
or still holds leases, unless the caller presents that worker's current session (sent as
``hodei-session`` metadata; only the agent that registered it was told). So an impostor
with the fleet token cannot re-register a working agent's id with its leases.

With neither TLS nor agent tokens, agents are not authenticated (a development setup on
loopback): every caller may act as any worker, and as operator unless operator tokens
are set.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from hodei.domain import WorkerState, bearer_token
from hodei.errors import ConfigError
from hodei.plugin.data.records import WorkerRecord
from hodei.plugin.settings import ServerSettings
from hodei.proto import hodei_pb2 as pb

ANY_WORKER = "*"
SESSION_HEADER = "hodei-session"
# A fleet caller may take over a worker id in these states (if it holds no leases).
GONE = frozenset({WorkerState.UNHEALTHY, WorkerState.FAILED, WorkerState.TERMINATED})


@dataclass(frozen=True, slots=True)
class Caller:
    worker: str = ""  # the worker id it may act as; "*" = any (fleet token, or no auth)
    operator: bool = False
    via: str = "none"  # how it was identified, for logs (never the secret itself)
    fleet: bool = False  # a fleet token: acting as a worker needs that worker's session
    session: str = ""  # the session it presents (hodei-session metadata)


@dataclass(frozen=True, slots=True)
class Refusal:
    code: grpc.StatusCode
    message: str


def read_entries(values: Sequence[str], path: str, setting: str) -> list[str]:
    """Entries given inline and in a file (one a line; blank lines and ``#`` comments
    skipped)."""
    entries = [v.strip() for v in values]
    if path:
        try:
            entries += Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"{setting}_file: cannot read {path}: {exc.strerror}") from None
    return [e.strip() for e in entries if e.strip() and not e.strip().startswith("#")]


def bind_tokens(entries: Iterable[str]) -> dict[str, str]:
    """``token:worker-id`` (or ``token:*``) entries: token -> worker id."""
    bound: dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        token, sep, worker = entry.partition(":")
        token, worker = token.strip(), worker.strip()
        if not token or not sep or not worker:
            # Never echo the entry: it is a secret.
            raise ConfigError(
                f"agent_tokens: entry {number} is not token:worker-id (a token is bound to "
                f"the worker it identifies; token:{ANY_WORKER} for a fleet token)"
            )
        bound[token] = worker
    return bound


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def _lookup(table: Mapping[str, str], token: str) -> str | None:
    found = None
    for known, value in table.items():  # compared in constant time, every entry
        if hmac.compare_digest(known.encode(), token.encode()):
            found = value
    return found


class AgentIdentities:
    """The credentials a server accepts, and the rules that follow from them."""

    def __init__(
        self,
        agent_tokens: Mapping[str, str],
        operator_tokens: Sequence[str] = (),
        operator_names: Sequence[str] = (),
        tls: bool = False,
    ) -> None:
        self.agent_tokens = dict(agent_tokens)
        self.operator_tokens = {t: "operator" for t in operator_tokens}
        self.operator_names = frozenset(operator_names)
        self.tls = tls
        self.bound_workers = frozenset(w for w in self.agent_tokens.values() if w != ANY_WORKER)

    @classmethod
    def from_settings(cls, s: ServerSettings) -> AgentIdentities:
        agent_entries = read_entries(s.agent_tokens, s.agent_tokens_file, "agent_tokens")
        operator_tokens = read_entries(s.operator_tokens, s.operator_tokens_file, "operator_tokens")
        tls = bool(s.tls_ca_file or s.tls_cert_file or s.tls_key_file)
        return cls(bind_tokens(agent_entries), operator_tokens, s.operator_names, tls)

    @property
    def authenticated(self) -> bool:
        """Whether agents must prove who they are."""
        return self.tls or bool(self.agent_tokens)

    def identify(
        self, metadata: Iterable[tuple[str, str | bytes]], auth: Mapping[str, Iterable[bytes]]
    ) -> Caller | None:
        """The caller, from its certificate (``auth``: the peer's auth context) and its
        ``authorization``/``hodei-session`` metadata; None when its credentials are refused."""
        headers = {k: v if isinstance(v, str) else v.decode(errors="replace") for k, v in metadata}
        token = bearer_token(headers.get("authorization", ""))
        session = headers.get(SESSION_HEADER, "")
        operator = bool(token) and _lookup(self.operator_tokens, token) is not None
        if not self.authenticated:
            return Caller(ANY_WORKER, operator or not self.operator_tokens, "none", False, session)
        named = ""
        via: list[str] = []
        if self.tls:
            common_names = list(auth.get("x509_common_name") or ())
            if len(common_names) != 1 or common_names[0] in (b"", ANY_WORKER.encode()):
                return None  # a certificate names one worker, never "any"
            named = common_names[0].decode(errors="replace")
            via.append(f"certificate {named}")
            if named in self.operator_names:
                operator, named = True, ""
        if self.agent_tokens and named:
            # With TLS and tokens both on, an agent needs both, naming the same worker; an
            # operator's token with a worker's certificate makes an operator, not the worker.
            bound = _lookup(self.agent_tokens, token) if token else None
            if bound in (named, ANY_WORKER):
                via.append(f"token {fingerprint(token)}")
            elif operator:
                named = ""
            else:
                return None
        elif self.agent_tokens and not self.tls:
            named = (_lookup(self.agent_tokens, token) if token else None) or ""
            if named:
                via.append(f"token {fingerprint(token)}")
        if operator and token and not via:
            via.append(f"operator token {fingerprint(token)}")
        if not named and not operator:
            return None
        fleet = named == ANY_WORKER
        return Caller(named, operator, ", ".join(via), fleet, session)

    # -- rules ---------------------------------------------------------------------------
    def acts_as(self, caller: Caller, worker_id: str) -> Refusal | None:
        """May ``caller`` speak for ``worker_id`` (heartbeats, streams: the session named
        in the message is checked against the worker's own afterwards)?"""
        if caller.worker == ANY_WORKER and not (caller.fleet and worker_id in self.bound_workers):
            return None
        if caller.worker and caller.worker == worker_id:
            return None
        return Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{caller.via or 'this caller'} may not act as worker {worker_id}",
        )

    def registers(
        self, caller: Caller, worker_id: str, record: WorkerRecord | None, holds_leases: bool
    ) -> Refusal | None:
        """May ``caller`` register ``worker_id`` (starting a new session of it)?"""
        refusal = self.acts_as(caller, worker_id)
        if refusal is not None or not caller.fleet or record is None:
            return refusal
        if caller.session and hmac.compare_digest(caller.session, record.session_id):
            return None  # its own agent, reconnecting
        if record.state in GONE and not holds_leases:
            return None
        return Refusal(
            grpc.StatusCode.ALREADY_EXISTS,
            f"worker {worker_id} is {record.state} with another session: a fleet token "
            "takes over a worker id only once that worker is gone and holds no leases",
        )

    def reads_status(self, caller: Caller, worker_id: str, record: WorkerRecord | None) -> bool:
        """GetWorkerStatus: operators any worker, agents their own."""
        if caller.operator or (caller.worker == worker_id and not caller.fleet):
            return True
        if caller.fleet and worker_id not in self.bound_workers:
            return (
                record is not None
                and bool(caller.session)
                and hmac.compare_digest(caller.session, record.session_id)
            )
        return False


def foreign_worker(message: pb.AgentMessage, worker_id: str) -> str:
    """A worker id other than ``worker_id`` that a stream message speaks for ("" if none):
    a stream carries the messages of its own worker only."""
    messages = message.batch.messages if message.HasField("batch") else [message]
    for m in messages:
        kind = m.WhichOneof("kind")
        named = ""
        if kind == "status":
            named = m.status.worker_id
        elif kind == "heartbeat":
            named = m.heartbeat.worker_id
        elif kind == "accepted":
            named = m.accepted.worker_id
        if named and named != worker_id:
            return named
    return ""
