"""A worker's pool of lambda instances: long-lived processes or containers that speak the
AWS Lambda Runtime API and serve one invocation at a time.

An invocation reuses an idle instance of its function's revision (a warm start) or starts
one (a cold start: the instance is ready when its runtime first asks for work). An instance
that outlives its function's ``warm.idle_s`` unused is reaped; idle ones are evicted, least
recently used first, when the worker needs their memory; a timeout or a cancel kills the
instance serving it. What to reuse, reap and evict is decided by ``instance_policy``; the
pre-warmed floors are kept by ``instance_floors``; one invocation's exchange with its
instance is ``instance_calls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from hodei.agent import instance_policy as policy
from hodei.agent.instance import PULL_FAILED, Instance, Launcher, exit_text
from hodei.agent.instance_calls import invoke, remaining, until_up
from hodei.agent.instance_floors import Floors
from hodei.agent.instance_policy import Choice, PoolKey, State
from hodei.agent.lambda_api import Reply
from hodei.agent.runtime import LogSink, Outcome, now_ms
from hodei.domain import is_job
from hodei.logs import inv
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)


class InstancePool:
    def __init__(
        self,
        launchers: dict[str, Launcher],
        capacity_mb: int,
        reserved_mb: Callable[[], int],
        default_idle_s: float = 600.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.launchers = launchers
        self.capacity_mb = capacity_mb
        self.reserved_mb = reserved_mb  # what running stdio jobs hold
        self.default_idle_s = default_idle_s
        self.on_change = on_change  # an instance came or went
        self.instances: dict[str, Instance] = {}
        self.idle_s: dict[PoolKey, float] = {}
        self.max: dict[PoolKey, int] = {}
        self.floors = Floors(self._refill)  # pre-warmed: kept however long they idle
        self.resources: dict[PoolKey, pb.Resources] = {}
        self._changed = asyncio.Event()
        self._reap_wake = asyncio.Event()
        self._reap_at: float | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the agent calls ----------------------------------------------------------
    def runtime(self, name: str) -> LambdaRuntime:
        return LambdaRuntime(self, name)

    def pools(self) -> list[pb.InstancePool]:
        return [
            pb.InstancePool(
                function=key.function,
                revision=key.revision,
                idle=counts.idle,
                busy=counts.busy,
                starting=counts.starting,
                resources=self.resources.get(key),
            )
            for key, counts in policy.summary(self.instances.values()).items()
        ]

    def prewarm(self, request: pb.PrewarmRequest) -> None:
        """Have ``count`` instances of the function here, and keep them however long they
        idle (until a later pre-warm lowers the count, or memory is needed)."""
        job = request.function
        launcher = self.launchers.get(job.runtime)
        if launcher is None or not launcher.available:
            log.warning("pre-warm of %s: runtime %r not available", job.function, job.runtime)
            return
        key = self._learn(job)
        self.floors.set(key, job, max(0, request.count))
        self._retire(policy.stale(list(self.instances.values()), key), "another revision")
        self._fill(key, job, launcher, request.count)

    def _refill(self, key: PoolKey, job: pb.AssignJobRequest, floor: int) -> None:
        launcher = self.launchers.get(job.runtime)
        if launcher is not None and launcher.available:
            self._fill(key, job, launcher, floor)

    def _fill(
        self, key: PoolKey, job: pb.AssignJobRequest, launcher: Launcher, wanted: int
    ) -> None:
        count = policy.startable(list(self.instances.values()), key, self.max[key], wanted)
        for _ in range(count):
            if not self._make_room(job.resources.memory_mb):
                log.warning("pre-warm of %s: no memory for more instances", job.function)
                break
            self._spawn(job, launcher, claimed=False)

    def stop_idle(self, runtime: str) -> bool:
        """Stop the least recently used idle instance of ``runtime`` (what it holds is
        needed); False when none idles."""
        of_runtime = [i for i in self.instances.values() if i.runtime == runtime]
        chosen = policy.least_recently_used_idle(of_runtime)
        if chosen is None:
            return False
        self._retire([chosen], "its function uid is needed")
        return True

    def make_room(self, memory_mb: int) -> bool:
        """Stop idle instances (least recently used first) until ``memory_mb`` more fits in
        the worker's capacity; False when it cannot fit even then."""
        return self._make_room(memory_mb)

    async def close(self) -> None:
        self.floors.close()
        if self._reaper is not None:
            self._reaper.cancel()
        for instance in list(self.instances.values()):
            instance.kill()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reaper is not None:
            await asyncio.gather(self._reaper, return_exceptions=True)

    # -- one invocation ----------------------------------------------------------------
    async def run(
        self, job: pb.AssignJobRequest, runtime: str, logs: LogSink, cancel: asyncio.Event
    ) -> Outcome:
        started = now_ms()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + job.timeout_s if job.timeout_s > 0 else None
        deadline_ms = started + int(job.timeout_s * 1000) if job.timeout_s > 0 else 0
        launcher = self.launchers[runtime]
        key = self._learn(job)
        self._retire(policy.stale(list(self.instances.values()), key), "another revision")

        def ended(
            outcome: pb.JobOutcome.ValueType,
            error: str,
            exit_code: int,
            reply: Reply | None = None,
            cold_start: bool = False,
            init_ms: int = 0,
        ) -> Outcome:
            return Outcome(
                outcome,
                exit_code=exit_code,
                error=error,
                output=reply.body if reply else b"",
                truncated=reply.truncated if reply else False,
                started_ms=started,
                finished_ms=now_ms(),
                # As for stdio containers: retrying an image that cannot be pulled is vain.
                final=error.startswith(f"cannot start: {PULL_FAILED}"),
                cold_start=cold_start,
                init_ms=init_ms,
            )

        instance: Instance | None = None
        cold = False
        while instance is None:
            decision = policy.choose(list(self.instances.values()), key, self.max[key])
            if decision.choice is Choice.REUSE:
                instance = self.instances[decision.instance_id]
                instance.state = State.BUSY
            elif decision.choice is Choice.CLAIM:
                instance = self.instances[decision.instance_id]
                instance.claimed = cold = True
            elif decision.choice is Choice.START:
                if not self._make_room(job.resources.memory_mb):
                    log.warning(
                        "invocation %s attempt %d: starting an instance beyond free memory",
                        job.invocation_id,
                        job.attempt,
                        extra=inv(job.invocation_id, job.attempt),
                    )
                instance = self._spawn(job, launcher, claimed=True)
                cold = True
            else:
                waited = await self._wait_change(cancel, deadline)
                if waited is not None:
                    return ended(*waited, exit_code=-1)
        instance.sink = logs
        instance.invocation = job.invocation_id
        try:
            if cold:
                failure = await until_up(instance, cancel, deadline)
                if failure is not None:
                    return ended(*failure, exit_code=-1, cold_start=True)
                instance.state = State.BUSY
            kind, reply = await invoke(instance, job, deadline_ms, cancel, deadline)
            await instance.settle()
        except BaseException:
            instance.kill()  # abandoned mid-way (the agent stops): it cannot serve again
            raise
        finally:
            instance.take_output()
            instance.sink = None
            instance.invocation = ""
        self._release(instance)
        init_ms = instance.init_ms if cold else 0
        return ended(kind, reply.error, 0 if reply.ok else 1, reply, cold, init_ms)

    # -- the instances' lives ----------------------------------------------------------
    def _learn(self, job: pb.AssignJobRequest) -> PoolKey:
        key = PoolKey(job.function, job.revision)
        self.idle_s[key] = job.warm.idle_s if job.warm.idle_s > 0 else self.default_idle_s
        self.max[key] = max(0, job.warm.max)
        self.resources[key] = job.resources
        return key

    def _spawn(self, job: pb.AssignJobRequest, launcher: Launcher, claimed: bool) -> Instance:
        instance = Instance(job, launcher.name, claimed)
        self.instances[instance.id] = instance
        task = asyncio.create_task(self._live(instance, job, launcher))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.on_change()
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap())
        return instance

    async def _live(self, instance: Instance, job: pb.AssignJobRequest, launcher: Launcher) -> None:
        """Start the instance, follow it until it exits, and forget it."""
        on_its_own = True  # not stopped by the pool: a floor it counted in is short now
        try:
            try:
                instance.endpoint, instance.backend = await launcher.launch(
                    job, instance.id, instance.output, instance.claimed
                )
            except Exception as exc:
                log.warning("instance %s (%s) cannot start: %s", instance.id, job.function, exc)
                instance.up.set_exception(RuntimeError(f"cannot start: {exc}"))
                return
            if instance.state is State.STOPPING:
                instance.backend.kill()
            endpoint = instance.endpoint
            exited = asyncio.ensure_future(instance.backend.wait())
            waits: set[asyncio.Future[Any]] = {endpoint.ready, endpoint.init_error, exited}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if endpoint.init_error.done():
                error = endpoint.init_error.result()
                # A pre-warmed instance has no invocation to fail with the runtime's message.
                log.warning(
                    "instance %s (%s) failed to initialise%s: %s",
                    instance.id,
                    job.function,
                    f" for invocation {instance.invocation}" if instance.invocation else "",
                    error,
                    extra=inv(instance.invocation) if instance.invocation else None,
                )
                instance.up.set_exception(RuntimeError(error))
                instance.kill()
            elif endpoint.ready.done() and not exited.done():
                instance.init_ms = int((time.monotonic() - instance.spawned) * 1000)
                instance.up.set_result(None)
                if instance.state is State.STARTING and not instance.claimed:
                    self._release(instance)
            code = await exited
            was_stopping = instance.state is State.STOPPING
            on_its_own = not was_stopping
            instance.state = State.STOPPING  # never chosen again
            instance.exit_code.set_result(code)
            if not instance.up.done():
                why = instance.backend.start_error
                instance.up.set_exception(
                    RuntimeError(
                        f"cannot start: {why}"
                        if why
                        else f"the instance exited while starting ({exit_text(instance)})"
                    )
                )
            if not was_stopping:
                log.warning(
                    "instance %s (%s) exited (%s)", instance.id, job.function, exit_text(instance)
                )
            await endpoint.close()
        finally:
            instance.state = State.STOPPING
            if not instance.up.done():
                instance.up.set_exception(RuntimeError("the instance stopped"))
            instance.up.exception()  # retrieved: nobody may be waiting for it
            self.instances.pop(instance.id, None)
            self.on_change()
            self._notify()
            if on_its_own:
                self.floors.lost(instance.key, time.monotonic() - instance.spawned)

    def _release(self, instance: Instance) -> None:
        """Back to idle after an invocation (or a pre-warmed start), if it still lives."""
        if instance.state is State.STOPPING or instance.exit_code.done():
            return
        if is_job(instance.key.revision):
            # Nothing calls a one-off job again: kept idle, its runtime would run on for
            # warm.idle_s (the spec's to choose), beyond the job's own timeout.
            self._retire([instance.id], "its one-off job is done")
            return
        instance.state = State.IDLE
        instance.claimed = False
        instance.last_used = time.monotonic()
        self._notify()
        self._wake_reaper(instance.last_used + self.idle_s.get(instance.key, 0.0))

    def _retire(self, ids: list[str], why: str) -> None:
        for instance_id in ids:
            instance = self.instances.get(instance_id)
            if instance is not None:
                log.info("instance %s (%s) stopped: %s", instance_id, instance.key.function, why)
                instance.kill()

    def _make_room(self, memory_mb: int) -> bool:
        if memory_mb <= 0:
            return True
        slots = list(self.instances.values())
        free = self.capacity_mb - self.reserved_mb() - policy.held_memory(slots)
        evicted = policy.evictions(slots, memory_mb, free)
        self._retire(evicted, "evicted: the worker needs its memory")
        return memory_mb <= free + sum(self.instances[i].memory_mb for i in evicted)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(
        self, cancel: asyncio.Event, deadline: float | None
    ) -> tuple[pb.JobOutcome.ValueType, str] | None:
        changed = asyncio.ensure_future(self._changed.wait())
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait(
                {changed, cancelled},
                timeout=remaining(deadline),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            changed.cancel()
            cancelled.cancel()
        if cancel.is_set():
            return pb.JOB_OUTCOME_CANCELLED, "cancelled"
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            return pb.JOB_OUTCOME_TIMED_OUT, "timed out waiting for a free instance"
        return None

    def _wake_reaper(self, at: float) -> None:
        """The reaper sleeps until the earliest expiry it knows of: wake it when an
        instance now expires earlier (rarely: usually later than the others)."""
        if self._reap_at is None or at < self._reap_at:
            self._reap_wake.set()

    async def _reap(self) -> None:
        while True:
            slots = list(self.instances.values())
            now = time.monotonic()
            self._retire(policy.expired(slots, now, self.idle_s, self.floors.counts()), "idle")
            expiry = policy.next_expiry(list(self.instances.values()), self.idle_s)
            self._reap_wake.clear()
            self._reap_at = expiry
            timeout = None if expiry is None else max(0.0, expiry - time.monotonic()) + 0.01
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reap_wake.wait(), timeout)


class LambdaRuntime:
    """The pool as a ``Runtime`` for lambda-interface jobs of one kind of instance."""

    def __init__(self, pool: InstancePool, name: str) -> None:
        self.pool = pool
        self.name = name

    @property
    def available(self) -> bool:
        launcher = self.pool.launchers.get(self.name)
        return launcher is not None and launcher.available

    async def run(self, job: pb.AssignJobRequest, logs: LogSink, cancel: asyncio.Event) -> Outcome:
        return await self.pool.run(job, self.name, logs, cancel)
