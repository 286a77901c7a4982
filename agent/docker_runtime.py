"""The ``docker`` runtime: each attempt in its own hardened container, through the docker SDK.

The SDK is synchronous; its calls run on a small thread pool of their own so that slow
engine calls never starve the loop's default executor. The container's stdin, stdout and
stderr go over one attached socket that the loop reads and writes without threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
import docker.errors
from docker.utils import kwargs_from_env

from hodei.agent.docker_spec import (
    API_VERSION,
    LABEL_WORKER,
    DockerOptions,
    FrameReader,
    container_request,
    job_of,
)
from hodei.agent.identity import LABEL_MARK
from hodei.agent.runtime import CappedBuffer, LineSplitter, LogSink, Outcome, ended, now_ms
from hodei.errors import ImagePullFailed
from hodei.logs import inv
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK = 64 * 1024
POLL_S = 0.25


@dataclass(frozen=True, slots=True)
class Leftover:
    """A container an earlier life of this worker started."""

    container_id: str
    job: pb.AssignJobRequest


class DockerRuntime:
    name = "docker"

    def __init__(
        self, worker_id: str, mark: str, output_cap_bytes: int, options: DockerOptions
    ) -> None:
        self.worker_id = worker_id
        self.mark = mark
        self.output_cap_bytes = output_cap_bytes
        self.options = options
        env = kwargs_from_env()
        if options.host:
            env["base_url"] = options.host
        self.api = docker.APIClient(version=API_VERSION, timeout=30, **env)
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="docker")
        self._available = False
        self._present: set[str] = set()
        self._pull_failures: dict[str, tuple[float, str]] = {}
        self._pulls: dict[str, asyncio.Lock] = {}

    @property
    def available(self) -> bool:
        return self._available

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    # -- engine health -----------------------------------------------------------------
    async def probe(self) -> bool:
        """Ask the engine whether it answers; updates ``available``."""
        try:
            await asyncio.wait_for(self._call(self.api.ping), timeout=2.0)
            ok = True
        except Exception:
            ok = False
        if ok != self._available:
            log.log(
                logging.INFO if ok else logging.WARNING,
                "docker engine %s",
                "answers" if ok else "does not answer",
            )
            self._present.clear()
        self._available = ok
        return ok

    async def watch(self, changed: Callable[[], None]) -> None:
        """Probe the engine forever; ``changed`` is called when availability flips."""
        while True:
            before = self._available
            if await self.probe() != before:
                changed()
            await asyncio.sleep(self.options.ping_interval_s)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.api.close()

    # -- images ------------------------------------------------------------------------
    async def _ensure_image(self, image: str) -> None:
        if image in self._present:
            return
        lock = self._pulls.setdefault(image, asyncio.Lock())
        async with lock:
            if image in self._present:
                return
            failed = self._pull_failures.get(image)
            if failed and failed[0] > time.monotonic():
                # A recent pull failed: fail fast rather than hammer the registry.
                raise ImagePullFailed(failed[1])
            try:
                await self._call(self.api.inspect_image, image)
            except docker.errors.ImageNotFound:
                await self._pull(image)
            self._present.add(image)

    async def _pull(self, image: str) -> None:
        repository, _, tag = image.partition("@")[0].rpartition(":")
        if not repository or "/" in tag:
            repository, tag = image, "latest"
        log.info("pulling image %s", image)
        try:
            await self._call(self.api.pull, repository, tag=tag)
            await self._call(self.api.inspect_image, image)
        except docker.errors.DockerException as exc:
            reason = str(getattr(exc, "explanation", None) or exc)
            self._pull_failures[image] = (
                time.monotonic() + self.options.pull_failure_ttl_s,
                reason,
            )
            raise ImagePullFailed(reason) from exc

    # -- one attempt -------------------------------------------------------------------
    async def run(self, job: pb.AssignJobRequest, logs: LogSink, cancel: asyncio.Event) -> Outcome:
        return await self._run(job, logs, cancel, may_pull_again=True)

    async def _run(
        self,
        job: pb.AssignJobRequest,
        logs: LogSink,
        cancel: asyncio.Event,
        may_pull_again: bool,
    ) -> Outcome:
        started = now_ms()
        if not self._available:
            return Outcome(
                pb.JOB_OUTCOME_FAILED,
                exit_code=-1,
                error="docker engine unavailable",
                started_ms=started,
                finished_ms=now_ms(),
            )
        try:
            await self._ensure_image(job.image)
        except ImagePullFailed as exc:
            return Outcome(
                pb.JOB_OUTCOME_FAILED,
                exit_code=-1,
                error=f"image_pull_failed: {job.image}: {exc}",
                started_ms=started,
                finished_ms=now_ms(),
                final=True,
            )
        deadline = started + int(job.timeout_s * 1000) if job.timeout_s > 0 else 0
        request = container_request(
            job, self.worker_id, self.mark, self.options, deadline, self.api.create_host_config
        )
        try:
            created = await self._call(self.api.create_container, **request)
        except docker.errors.ImageNotFound:
            if not may_pull_again:
                raise
            # Removed from the engine since we last saw it: pull it again, once.
            self._present.discard(job.image)
            return await self._run(job, logs, cancel, may_pull_again=False)
        container_id: str = created["Id"]
        try:
            attached = await self._call(
                self.api.attach_socket,
                container_id,
                params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1},
            )
            sock: socket.socket = attached._sock
            try:
                try:
                    await self._call(self.api.start, container_id)
                except docker.errors.APIError as exc:
                    # The command cannot be run (not found, not executable): as a process
                    # that cannot be spawned, exit code 127.
                    return Outcome(
                        pb.JOB_OUTCOME_FAILED,
                        exit_code=127,
                        error=f"cannot start: {exc.explanation or exc}",
                        started_ms=started,
                        finished_ms=now_ms(),
                    )
                return await self._supervise(container_id, sock, job, logs, cancel, started)
            finally:
                sock.close()
        finally:
            await self._remove(container_id)

    async def _supervise(
        self,
        container_id: str,
        sock: socket.socket,
        job: pb.AssignJobRequest,
        logs: LogSink,
        cancel: asyncio.Event,
        started: int,
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        stdout = CappedBuffer(self.output_cap_bytes)
        stderr = LineSplitter("stderr", logs)
        frames = FrameReader(stdout.write, stderr.feed)

        async def feed() -> None:
            with contextlib.suppress(OSError):
                if job.payload:
                    await loop.sock_sendall(sock, job.payload)
                sock.shutdown(socket.SHUT_WR)

        async def read() -> None:
            while data := await loop.sock_recv(sock, CHUNK):
                frames.feed(data)

        feeder = asyncio.ensure_future(feed())
        reader = asyncio.ensure_future(read())
        stopped = await self._until_done(container_id, reader, job, cancel)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(reader, feeder), timeout=5.0)
        stderr.close()
        return await self._outcome(container_id, stdout, stopped, job, cancel, started)

    async def _until_done(
        self,
        container_id: str,
        done: asyncio.Future[Any],
        job: pb.AssignJobRequest,
        cancel: asyncio.Event,
    ) -> bool:
        """Wait for ``done``; on timeout or cancel kill the container. True if killed."""
        cancelled = asyncio.ensure_future(cancel.wait())
        timeout = job.timeout_s if job.timeout_s > 0 else None
        finished, _ = await asyncio.wait(
            {done, cancelled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        cancelled.cancel()
        if done in finished:
            return False
        with contextlib.suppress(docker.errors.DockerException):
            await self._call(self.api.kill, container_id)
        return True

    async def _outcome(
        self,
        container_id: str,
        stdout: CappedBuffer,
        killed: bool,
        job: pb.AssignJobRequest,
        cancel: asyncio.Event,
        started: int,
    ) -> Outcome:
        state = await self._wait_exited(container_id)
        code = int(state.get("ExitCode") or 0)
        if killed:
            outcome = pb.JOB_OUTCOME_CANCELLED if cancel.is_set() else pb.JOB_OUTCOME_TIMED_OUT
            error = "cancelled" if cancel.is_set() else f"timed out after {job.timeout_s:g}s"
        else:
            outcome, error = ended(code, bool(state.get("OOMKilled")))
        return Outcome(
            outcome,
            exit_code=code,
            error=error,
            output=stdout.getvalue(),
            truncated=stdout.truncated,
            started_ms=started,
            finished_ms=now_ms(),
        )

    async def _wait_exited(self, container_id: str) -> dict[str, Any]:
        # The attach stream ends a moment before the engine records the exit.
        for _ in range(40):
            info = await self._call(self.api.inspect_container, container_id)
            state: dict[str, Any] = info["State"]
            if not state.get("Running"):
                return state
            await asyncio.sleep(0.05)
        return state

    async def _remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            await self._call(self.api.remove_container, container_id, force=True)

    # -- crash recovery ----------------------------------------------------------------
    def resumer(self, leftover: Leftover) -> Callable[[LogSink, asyncio.Event], Awaitable[Outcome]]:
        return lambda logs, cancel: self.resume(leftover.container_id, leftover.job, logs, cancel)

    async def leftovers(self) -> list[Leftover]:
        """Containers an earlier life of this agent started (its worker id and its mark),
        running or exited."""
        labels = [f"{LABEL_WORKER}={self.worker_id}", f"{LABEL_MARK}={self.mark}"]
        found = await self._call(self.api.containers, all=True, filters={"label": labels})
        now = now_ms()
        return [
            Leftover(c["Id"], job_of(c.get("Labels") or {}, c.get("Image", ""), now)) for c in found
        ]

    async def resume(
        self, container_id: str, job: pb.AssignJobRequest, logs: LogSink, cancel: asyncio.Event
    ) -> Outcome:
        """Follow a leftover container to its end and collect its result, as ``run`` would
        have (stdout from the engine's log, stderr from now on)."""
        started = now_ms()
        since = int(time.time())
        log.info(
            "invocation %s attempt %d: resuming container %s",
            job.invocation_id,
            job.attempt,
            container_id[:12],
            extra=inv(job.invocation_id, job.attempt),
        )
        exited = asyncio.ensure_future(self._poll_exit(container_id))
        try:
            killed = await self._until_done(container_id, exited, job, cancel)
            stdout = CappedBuffer(self.output_cap_bytes)
            stdout.write(await self._call(self.api.logs, container_id, stdout=True, stderr=False))
            stderr = LineSplitter("stderr", logs)
            stderr.feed(
                await self._call(
                    self.api.logs, container_id, stdout=False, stderr=True, since=since
                )
            )
            stderr.close()
            return await self._outcome(container_id, stdout, killed, job, cancel, started)
        finally:
            exited.cancel()
            await self._remove(container_id)

    async def _poll_exit(self, container_id: str) -> None:
        while True:
            info = await self._call(self.api.inspect_container, container_id)
            if not info["State"].get("Running"):
                return
            await asyncio.sleep(POLL_S)
