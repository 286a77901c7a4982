"""Every error Hodei raises on purpose, under one root."""

from __future__ import annotations


class HodeiError(Exception):
    """Raised by Hodei itself; catch this to catch all of them."""


class ConfigError(HodeiError):
    """Raised when a setting (flag or HODEI_* variable) is missing or malformed."""


class InvalidSpec(HodeiError):
    """Raised when a function spec or job resources are invalid; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(HodeiError):
    """Raised when a function, invocation or worker does not exist."""


class Conflict(HodeiError):
    """Raised when an operation does not fit the current state (e.g. cancelling a final one)."""


class IdempotencyMismatch(HodeiError):
    """Raised when an idempotency key is used again with a different payload."""

    def __init__(self, message: str, invocation_id: str) -> None:
        super().__init__(message)
        self.invocation_id = invocation_id


class QueueFull(HodeiError):
    """Raised when the queue or a function's concurrency limit refuses more work."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CallbackRefused(HodeiError, OSError):
    """Raised when a callback would connect to an address callbacks may not reach
    (loopback, private, link-local, metadata...); an OSError, as a refused connection is."""


class StreamLagging(HodeiError):
    """Raised when a client of a server-sent event stream falls too far behind."""


class AgentRejected(HodeiError):
    """Raised in the agent when the server refuses it (bad token, stale session, failed)."""


class ApiError(HodeiError):
    """Raised by the Python client when the gateway answers with an error status."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, object]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class ProtocolError(HodeiError):
    """Raised when an agent sends a message that does not fit the protocol or its state."""


class StaleSession(ProtocolError):
    """Raised when a stream's session was superseded or its worker declared Failed."""


class ServerStopping(HodeiError):
    """Raised when an agent opens a stream on a server that is stopping."""


class Impersonation(ProtocolError):
    """Raised when an agent's stream speaks for a worker other than its own."""


class PinRefused(HodeiError):
    """Raised when an operator's pin cannot lease the invocation to the worker; ``refusal``
    says why (not_queued, not_schedulable, does_not_fit)."""

    def __init__(self, refusal: str, reason: str) -> None:
        super().__init__(reason)
        self.refusal = refusal


class NoServerFound(HodeiError):
    """Raised in the agent when Consul lists no passing hodei-server to connect to."""


class ImagePullFailed(HodeiError):
    """Raised when a function's container image is missing and cannot be pulled."""


class NomadError(HodeiError):
    """Raised when Nomad refuses a request (parse, plan, register) or cannot be reached."""


class SpawnerFailed(HodeiError):
    """Raised in the agent when its process spawner is gone or cannot do what was asked."""


class GatewayUnreachable(HodeiError):
    """Raised by the Python client when nothing answers at the gateway's URL, or what
    answers there does not speak Hodei's HTTP API."""


class UsageError(HodeiError):
    """Raised when the CLI cannot act on its command line: a spec file that is not JSON,
    a payload file that cannot be read, a malformed flag value."""
