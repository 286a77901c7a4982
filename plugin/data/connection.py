"""Connections to Redis, and loops that outlive a Redis outage.

Two clients per process: one for requests (short timeouts, so a caller gets an answer
quickly while Redis is away) and one for blocking reads (XREAD/BLPOP wait longer than any
request timeout; dead peers are found by TCP keepalive instead). Both reconnect by
themselves; a background loop that hits an outage logs it once, backs off, and logs
again when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hodei import backoff
from hodei.tasks import raise_if_cancelled

# What an unreachable or restarting Redis raises (a refused or reset socket is an OSError
# below redis-py when it happens between commands).
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

# Dead peers are found within ~11 s: 5 s idle, then 3 probes 2 s apart.
KEEPALIVE = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 5),
        (getattr(socket, "TCP_KEEPINTVL", None), 2),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if option is not None
}


def connect(url: str, name: str, *, blocking: bool = False) -> Redis:
    """A client for ``url``; ``blocking`` for one that waits in XREAD/BLPOP."""
    return Redis.from_url(
        url,
        client_name=name,
        socket_connect_timeout=2,
        socket_timeout=None if blocking else 5,
        socket_keepalive=True,
        socket_keepalive_options=KEEPALIVE,
        health_check_interval=10,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
    )


OLDEST_REDIS = (6, 2)  # the scripts use ZADD GT, LPOP with a count...


def unsupported_version(version: str) -> str:
    """Why a Redis of ``version`` ("7.0.15", as INFO and --version say) cannot serve Hodei;
    "" when it can."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        found = ()
    oldest = ".".join(map(str, OLDEST_REDIS))
    if len(found) != 2:
        return f"cannot tell the version of this Redis ({version!r}): Hodei needs {oldest} or later"
    if found < OLDEST_REDIS:
        return f"Redis {version} is too old: Hodei needs Redis {oldest} or later"
    return ""


def redis_problem(url: str, timeout_s: float = 2.0) -> str:
    """Why the Redis at ``url`` cannot serve Hodei: it does not answer, or it is too old
    ("" when it can). A one-off check for tools that start processes against it."""
    import redis

    try:
        with redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        ) as client:
            client.ping()
            version = str(client.info("server")["redis_version"])
    except (redis.RedisError, OSError, ValueError) as exc:
        return f"it does not answer ({str(exc) or type(exc).__name__})"
    return unsupported_version(version)


class Outage:
    """Logs an outage once when it starts and once when it ends."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.log = logger
        self.since: float | None = None
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Note a failure; the delay before trying again."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s: Redis unavailable (%s); retrying", self.what, exc)
        return backoff.delay(self.failures, 0.1, 5.0)

    def recovered(self) -> None:
        if self.since is not None:
            self.log.info("%s: Redis is back after %.1fs", self.what, time.monotonic() - self.since)
        self.since = None
        self.failures = 0


async def keep_running(
    what: str, body: Callable[[Outage], Awaitable[None]], logger: logging.Logger
) -> None:
    """Run ``body`` for ever: through Redis outages (logged once, retried with backoff) and
    unexpected errors (logged with their traceback, retried); only cancellation ends it.
    ``body`` returning normally is run again at once; a body that runs long calls
    ``outage.recovered()`` once it is working again."""
    outage = Outage(what, logger)
    failures = 0
    while True:
        raise_if_cancelled()
        try:
            await body(outage)
            outage.recovered()
            failures = 0
        except asyncio.CancelledError:
            raise
        except REDIS_DOWN as exc:
            raise_if_cancelled()
            await asyncio.sleep(outage.failed(exc))
        except Exception:
            raise_if_cancelled()
            failures += 1
            logger.exception("%s failed; starting it again", what)
            await asyncio.sleep(backoff.delay(failures, 0.5, 10.0))
