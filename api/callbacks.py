"""Delivery of ``X-Callback-Url`` callbacks: a POST of the result, retried with backoff.

Finishing an invocation that has a callback puts it in a due set (atomically, in the same
script that records the result), so a callback survives the gateway that accepted the
call. Any gateway claims due callbacks with a short lease and delivers each in its own
task, so one slow receiver never holds up the others. Deliveries connect only where the
``CallbackPolicy`` allows (public addresses; see ``callback_guard``) and never follow a
redirect: a refused address or a redirect ends the delivery at once, recorded as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from urllib.parse import urlsplit

import aiohttp

from hodei import backoff
from hodei.api.callback_guard import DELIVERY, CallbackPolicy, Delivery
from hodei.api.settings import GatewaySettings
from hodei.api.waiter import Completions
from hodei.errors import NotFound
from hodei.logs import inv
from hodei.plugin.data import DataLayer
from hodei.plugin.data.connection import Outage, keep_running
from hodei.tasks import raise_if_cancelled

log = logging.getLogger(__name__)
CLAIM_MS = 60_000
MAX_PARALLEL = 64
POLL_S = 1.0  # retries come due without a notice


class CallbackDispatcher:
    def __init__(
        self,
        data: DataLayer,
        completions: Completions,
        settings: GatewaySettings,
        policy: CallbackPolicy | None = None,
    ) -> None:
        self.data = data
        self.completions = completions
        self.settings = settings
        self.policy = policy or CallbackPolicy.parse(settings.callback_allow)
        self.slots = asyncio.Semaphore(MAX_PARALLEL)
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.callback_timeout_s)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=self.policy.connector()
        ) as session:
            try:
                await keep_running("callbacks", lambda outage: self._claim(session, outage), log)
            finally:
                for task in self.tasks:
                    task.cancel()
                await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _claim(self, session: aiohttp.ClientSession, outage: Outage) -> None:
        while True:
            raise_if_cancelled()
            self.completions.callbacks_due.clear()
            for invocation_id in await self.data.callbacks.claim(CLAIM_MS, MAX_PARALLEL):
                task = asyncio.create_task(self._deliver(session, invocation_id))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            outage.recovered()
            # (asyncio.timeout, not wait_for: on Python 3.11, wait_for loses a cancellation
            # that arrives as the event is set, and this loop would then never end)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self.completions.callbacks_due.wait()

    async def _deliver(self, session: aiohttp.ClientSession, invocation_id: str) -> None:
        async with self.slots:
            try:
                url = await self.data.invocations.callback_url(invocation_id)
                record, output = await self.data.invocations.result(invocation_id)
            except NotFound:
                await self.data.callbacks.done(invocation_id, "expired")
                return
            headers = {
                "Content-Type": "application/octet-stream",
                "X-Hodei-Invocation-Id": invocation_id,
                "X-Hodei-Status": str(record.status),
                "X-Hodei-Function": record.function,
            }
            if record.exit_code is not None:
                headers["X-Hodei-Exit-Code"] = str(record.exit_code)
            delivered, detail, final = await self._post(session, url, output, headers)
            if final:
                await self.data.callbacks.done(invocation_id, final)
                log.warning(
                    "invocation %s: callback to %s not delivered: %s",
                    invocation_id,
                    url,
                    final,
                    extra=inv(invocation_id),
                )
                return
            if delivered:
                await self.data.callbacks.done(invocation_id, "delivered")
                log.info(
                    "invocation %s: callback delivered to %s",
                    invocation_id,
                    url,
                    extra=inv(invocation_id),
                )
                return
            attempts = await self.data.callbacks.failed(invocation_id)
            if attempts >= self.settings.callback_attempts:
                await self.data.callbacks.done(
                    invocation_id, f"gave up after {attempts} attempts: {detail}"
                )
                log.warning(
                    "invocation %s: callback to %s abandoned: %s",
                    invocation_id,
                    url,
                    detail,
                    extra=inv(invocation_id),
                )
                return
            delay = backoff.delay(
                attempts,
                self.settings.callback_base_s,
                self.settings.callback_cap_s,
                random.Random(),
            )
            await self.data.callbacks.retry_in(invocation_id, int(delay * 1000))
            log.info(
                "invocation %s: callback to %s failed (%s), retry in %.1fs",
                invocation_id,
                url,
                detail,
                delay,
                extra=inv(invocation_id),
            )

    async def _post(
        self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[bool, str, str]:
        """One attempt: delivered?, what happened, and why trying again is pointless (a
        refused address, a redirect) or "" when it may succeed later."""
        delivery = Delivery(host_allowed=self.policy.allows_host(urlsplit(url).hostname))
        DELIVERY.set(delivery)  # this task's own: the socket factory records into it
        try:
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if 300 <= response.status < 400:
                    return False, "", f"HTTP {response.status}: redirects are not followed"
                return response.status < 300, f"HTTP {response.status}", ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            if delivery.only_refused:
                return False, "", "refused: " + "; ".join(delivery.refused)
            return False, f"{type(exc).__name__}: {exc}", ""
