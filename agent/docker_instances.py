"""Lambda instances as containers (the ``docker`` runtime), hardened as the stdio ones.

Isolation: the agent creates a bridge network of its own with inter-container traffic off
(``enable_icc=false``), internal (no route out) for ``network: false`` functions, and
listens for each instance on that network's gateway address, one port per instance. An
instance reaches its endpoint and nothing else: not another container (no inter-container
traffic), not the internet (an internal network has no route out), not the host's loopback
services (the container's 127.0.0.1 is its own). Other containers could reach the port of
another instance on the gateway, so each endpoint answers only the address the engine gave
its own container: containers run without capabilities and cannot take another address.

The attached stdout/stderr stream is read by the loop and, when an invocation ends, to its
current end, like the pipes of a process instance (the engine relays the output, so a line
written just before the answer can still arrive a moment after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import docker.errors

from hodei.agent.docker_runtime import DockerRuntime
from hodei.agent.docker_spec import LABEL_FUNCTION, FrameReader, host_config
from hodei.agent.identity import LABEL_MARK
from hodei.agent.lambda_api import RuntimeEndpoint
from hodei.agent.lambda_env import function_arn, instance_env
from hodei.errors import ImagePullFailed
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)
LABEL_INSTANCE = "hodei.instance"
LABEL_REVISION = "hodei.revision"
ICC = "com.docker.network.bridge.enable_icc"
CHUNK = 64 * 1024
Output = Callable[[str, bytes], None]


def network_name(mark: str, outbound: bool) -> str:
    return f"hodei-lambda-{mark[:12]}" + ("-out" if outbound else "")


def instance_request(
    job: pb.AssignJobRequest,
    runtime: DockerRuntime,
    network: str,
    environment: dict[str, str],
    instance_id: str,
) -> dict[str, Any]:
    """Keyword arguments of ``APIClient.create_container`` for one instance: the stdio
    container's hardening and limits, on the instance network. Without a command the image
    runs its own entrypoint with the handler as its argument, as Lambda runs an image (the
    handler replaces the image's CMD)."""
    config = host_config(job, runtime.options)
    config["network_mode"] = network
    command = list(job.command) or ([job.handler] if job.handler else None)
    return {
        "image": job.image,
        "command": command,
        "environment": environment,
        "user": runtime.options.user,
        "labels": {
            LABEL_INSTANCE: instance_id,
            LABEL_MARK: runtime.mark,
            LABEL_FUNCTION: job.function,
            LABEL_REVISION: job.revision,
        },
        "host_config": runtime.api.create_host_config(**config),
    }


class ContainerInstance:
    """The container behind one instance, followed through its attach stream."""

    def __init__(self, runtime: DockerRuntime, container_id: str, sock: socket.socket) -> None:
        self.runtime = runtime
        self.container_id = container_id
        self.sock = sock
        self.frames: FrameReader | None = None
        self.ended = asyncio.get_running_loop().create_future()
        self._removal: asyncio.Future[Any] | None = None

    def follow(self, output: Output) -> None:
        self.frames = FrameReader(lambda b: output("stdout", b), lambda b: output("stderr", b))
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self.drain)

    def drain(self) -> None:
        while not self.ended.done():
            try:
                data = self.sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
                self.ended.set_result(None)
                return
            if self.frames is not None:
                self.frames.feed(data)

    async def wait(self) -> int:
        await self.ended
        code = -9
        with contextlib.suppress(docker.errors.DockerException):
            for _ in range(40):  # the stream ends a moment before the engine notes the exit
                info = await self.runtime._call(
                    self.runtime.api.inspect_container, self.container_id
                )
                if not info["State"].get("Running"):
                    code = int(info["State"].get("ExitCode") or 0)
                    break
                await asyncio.sleep(0.05)
        self.sock.close()
        self.kill()
        if self._removal is not None:
            await asyncio.gather(self._removal, return_exceptions=True)
        return code

    def kill(self) -> None:
        if self._removal is None:
            self._removal = asyncio.ensure_future(
                self.runtime._call(self.runtime.api.remove_container, self.container_id, force=True)
            )


class DockerLauncher:
    name = "docker"

    def __init__(self, runtime: DockerRuntime, output_cap_bytes: int, region: str) -> None:
        self.runtime = runtime
        self.output_cap_bytes = output_cap_bytes
        self.region = region
        self.gateways: dict[bool, tuple[str, str]] = {}  # outbound? -> (network, gateway)
        self._network_lock = asyncio.Lock()

    @property
    def available(self) -> bool:
        return self.runtime.available

    async def network(self, outbound: bool) -> tuple[str, str]:
        """The instance network (created on first use) and its gateway address."""
        async with self._network_lock:
            if outbound in self.gateways:
                return self.gateways[outbound]
            name = network_name(self.runtime.mark, outbound)
            call, api = self.runtime._call, self.runtime.api
            try:
                info = await call(api.inspect_network, name)
            except docker.errors.NotFound:
                await call(
                    api.create_network,
                    name,
                    driver="bridge",
                    internal=not outbound,
                    options={ICC: "false"},
                    labels={LABEL_MARK: self.runtime.mark},
                )
                info = await call(api.inspect_network, name)
            gateway = info["IPAM"]["Config"][0]["Gateway"].split("/")[0]
            self.gateways[outbound] = (name, gateway)
            return name, gateway

    async def launch(
        self, job: pb.AssignJobRequest, instance_id: str, output: Output
    ) -> tuple[RuntimeEndpoint, ContainerInstance]:
        runtime = self.runtime
        try:
            await runtime._ensure_image(job.image)
        except ImagePullFailed as exc:
            raise ImagePullFailed(f"image_pull_failed: {job.image}: {exc}") from exc
        network, gateway = await self.network(job.network)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((gateway, 0))
        sock.listen(8)
        address: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def own_container(peer: tuple[str, int]) -> bool:
            return peer[0] == await asyncio.shield(address)

        endpoint = RuntimeEndpoint(
            sock, function_arn(job, self.region), self.output_cap_bytes, own_container
        )
        await endpoint.start()
        try:
            env = instance_env(job, endpoint.address, self.region, instance_id)
            request = instance_request(job, runtime, network, env, instance_id)
            created = await runtime._call(runtime.api.create_container, **request)
            container_id: str = created["Id"]
            attached = await runtime._call(
                runtime.api.attach_socket,
                container_id,
                params={"stdout": 1, "stderr": 1, "stream": 1},
            )
            backend = ContainerInstance(runtime, container_id, attached._sock)
            backend.follow(output)
            try:
                await runtime._call(runtime.api.start, container_id)
                info = await runtime._call(runtime.api.inspect_container, container_id)
            except BaseException:
                backend.kill()
                await backend.wait()
                raise
            address.set_result(info["NetworkSettings"]["Networks"][network]["IPAddress"])
        except BaseException:
            if not address.done():
                address.set_result("")
            await endpoint.close()
            raise
        return endpoint, backend

    async def leftovers(self) -> int:
        """Remove instance containers an earlier life of this agent left."""
        runtime = self.runtime
        found = await runtime._call(
            runtime.api.containers,
            all=True,
            filters={"label": [LABEL_INSTANCE, f"{LABEL_MARK}={runtime.mark}"]},
        )
        for container in found:
            with contextlib.suppress(docker.errors.DockerException):
                await runtime._call(runtime.api.remove_container, container["Id"], force=True)
        return len(found)

    async def close(self) -> None:
        """Remove the instance networks (once their containers are gone)."""
        for name, _ in self.gateways.values():
            with contextlib.suppress(docker.errors.DockerException):
                await self.runtime._call(self.runtime.api.remove_network, name)
        self.gateways.clear()
