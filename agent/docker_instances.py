"""Lambda instances as containers (the ``docker`` runtime), hardened as the stdio ones.

Isolation: the agent creates a bridge network of its own with inter-container traffic off
(``enable_icc=false``), internal (nothing forwarded out) for ``network: false`` functions,
and listens on that network's gateway address, one port for all its instances: a request
goes to the endpoint of the instance whose address sent it (containers run without
capabilities and cannot take another's address), so an instance gets its own invocations
and nobody else's. The host's other services on that address (anything listening on all
addresses) are closed to the network by two firewall rules in the host's INPUT chain: accept
the listener's port from the bridge, drop the rest (when the agent runs as root with
``iptables``; otherwise it warns). So an instance reaches its endpoint and nothing else:
not another container, not the internet, not the host's loopback (its 127.0.0.1 is its own)
nor its other services.

The attached stdout/stderr stream is read by the loop and, when an invocation ends, until
it has been quiet for a few milliseconds: the engine relays the output, so a line written
just before the answer can arrive after it. Under load one can arrive later still: it then
misses its invocation's logs and lands in a later one's (process instances have no such
lag: their pipes are read to the end when the answer comes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import socket
from collections.abc import Callable
from typing import Any

import docker.errors
from aiohttp import web

from hodei.agent.docker_runtime import DockerRuntime
from hodei.agent.docker_spec import LABEL_FUNCTION, FrameReader, host_config
from hodei.agent.identity import LABEL_MARK
from hodei.agent.instance import PULL_FAILED, Output
from hodei.agent.lambda_api import Listener, RuntimeEndpoint, forbidden
from hodei.agent.lambda_env import function_arn, instance_env
from hodei.errors import ImagePullFailed
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)
LABEL_INSTANCE = "hodei.instance"
LABEL_REVISION = "hodei.revision"
ICC = "com.docker.network.bridge.enable_icc"
BRIDGE = "com.docker.network.bridge.name"
CHUNK = 64 * 1024
SETTLE_QUIET_S = 0.003
SETTLE_MAX_S = 0.03


def network_name(mark: str, outbound: bool) -> str:
    return f"hodei-lambda-{mark[:12]}" + ("-out" if outbound else "")


def bridge_name(mark: str, outbound: bool) -> str:
    """The host interface of the network (at most 15 characters)."""
    return f"hl{mark[:12]}" + ("o" if outbound else "")


async def _iptables(*args: str) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        "iptables", "-w", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode == 0, (out or err).decode(errors="replace")


def can_firewall() -> bool:
    return os.geteuid() == 0 and shutil.which("iptables") is not None


async def unguard(tag: str) -> None:
    """Delete the INPUT rules tagged ``tag`` (this or an earlier life's)."""
    ok, rules = await _iptables("-S", "INPUT")
    for rule in rules.splitlines() if ok else []:
        if rule.startswith("-A INPUT") and f"--comment {tag}" in rule:
            await _iptables("-D", *shlex.split(rule)[1:])


async def guard(bridge: str, gateway: str, port: int, tag: str) -> bool:
    """From the bridge, only the listener's port of the host is reachable."""
    await unguard(tag)
    comment = ["-m", "comment", "--comment", tag]
    dropped, error = await _iptables("-I", "INPUT", "1", "-i", bridge, *comment, "-j", "DROP")
    accepted, error2 = await _iptables(
        "-I", "INPUT", "1", "-i", bridge, "-p", "tcp", "-d", gateway, "--dport", str(port),
        *comment, "-j", "ACCEPT",
    )  # fmt: skip
    if not (dropped and accepted):
        log.warning("cannot add firewall rules for %s: %s", bridge, error or error2)
        await unguard(tag)
    return dropped and accepted


class InstanceNetwork:
    """One instance network: the agent's listener on its gateway, which hands each request
    to the endpoint of the container that sent it, and the firewall around the host."""

    def __init__(self, name: str, bridge: str, gateway: str, sock: socket.socket) -> None:
        self.name = name
        self.bridge = bridge
        self.gateway = gateway
        self.listener = Listener(sock, self.handle)
        self.port = int(sock.getsockname()[1])
        self.endpoints: dict[str, RuntimeEndpoint] = {}  # container address -> endpoint
        self.starting = 0  # containers started whose address is not known yet
        self._known = asyncio.Event()

    def register(self, address: str, endpoint: RuntimeEndpoint) -> None:
        self.endpoints[address] = endpoint
        self._known.set()
        self._known = asyncio.Event()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else None
        address = str(peer[0]) if peer else ""
        endpoint = self.endpoints.get(address)
        deadline = asyncio.get_running_loop().time() + 30
        # A container may ask before the engine told its address: wait for that.
        while endpoint is None and self.starting > 0:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._known.wait(), remaining)
            endpoint = self.endpoints.get(address)
        if endpoint is None:
            log.warning("runtime API %s: refused a request from %s", self.name, peer)
            return forbidden()
        return await endpoint.handle(request)


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
        self.forget: Callable[[], object] = lambda: None  # its address no longer routes here
        self.last_output = 0.0  # loop time
        self.start_error = ""

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
            self.last_output = asyncio.get_running_loop().time()
            if self.frames is not None:
                self.frames.feed(data)

    async def settle(self) -> None:
        """The engine relays the container's output: a line written just before the answer
        can arrive a moment after it. Wait until the stream has been quiet for
        ``SETTLE_QUIET_S`` (at most ``SETTLE_MAX_S``)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + SETTLE_MAX_S
        while not self.ended.done():
            quiet_until = max(self.last_output, loop.time() - SETTLE_QUIET_S) + SETTLE_QUIET_S
            wake = min(quiet_until, until)
            if wake <= loop.time():
                return
            await asyncio.sleep(wake - loop.time())
            self.drain()

    async def wait(self) -> int:
        await self.ended
        self.forget()
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
        self.networks: dict[bool, InstanceNetwork] = {}  # by outbound
        self._network_lock = asyncio.Lock()
        self._warned = False

    @property
    def available(self) -> bool:
        return self.runtime.available

    async def network(self, outbound: bool) -> InstanceNetwork:
        """The instance network (created on first use), its listener and firewall."""
        async with self._network_lock:
            if outbound in self.networks:
                return self.networks[outbound]
            mark = self.runtime.mark
            name = network_name(mark, outbound)
            call, api = self.runtime._call, self.runtime.api
            try:
                info = await call(api.inspect_network, name)
            except docker.errors.NotFound:
                await call(
                    api.create_network,
                    name,
                    driver="bridge",
                    internal=not outbound,
                    options={ICC: "false", BRIDGE: bridge_name(mark, outbound)},
                    labels={LABEL_MARK: mark},
                )
                info = await call(api.inspect_network, name)
            gateway = info["IPAM"]["Config"][0]["Gateway"].split("/")[0]
            bridge = (info.get("Options") or {}).get(BRIDGE) or f"br-{info['Id'][:12]}"
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((gateway, 0))
            sock.listen(64)
            network = InstanceNetwork(name, bridge, gateway, sock)
            await network.listener.start()
            if not (can_firewall() and await guard(bridge, gateway, network.port, name)):
                log.warning(
                    "lambda containers on %s can reach host services listening on %s "
                    "(firewall rules need root and iptables)",
                    name,
                    gateway,
                )
            self.networks[outbound] = network
            return network

    async def launch(
        self, job: pb.AssignJobRequest, instance_id: str, output: Output, for_invocation: bool
    ) -> tuple[RuntimeEndpoint, ContainerInstance]:
        runtime = self.runtime
        await self._image(job.image)
        network = await self.network(job.network)
        endpoint = RuntimeEndpoint(
            f"{network.gateway}:{network.port}",
            function_arn(job, self.region),
            self.output_cap_bytes,
        )
        network.starting += 1
        address = ""
        try:
            env = instance_env(job, endpoint.address, self.region, instance_id)
            request = instance_request(job, runtime, network.name, env, instance_id)
            try:
                created = await runtime._call(runtime.api.create_container, **request)
            except docker.errors.ImageNotFound:
                # Removed from the engine since it was seen: pull it again, once.
                runtime._present.discard(job.image)
                await self._image(job.image)
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
                address = info["NetworkSettings"]["Networks"][network.name]["IPAddress"]
            except BaseException:
                backend.kill()
                await backend.wait()
                raise
            network.register(address, endpoint)
            backend.forget = lambda: network.endpoints.pop(address, None)
        finally:
            network.starting -= 1
        return endpoint, backend

    async def _image(self, image: str) -> None:
        try:
            await self.runtime._ensure_image(image)
        except ImagePullFailed as exc:
            raise ImagePullFailed(f"{PULL_FAILED}: {image}: {exc}") from exc

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
        for network in self.networks.values():
            await network.listener.close()
            if can_firewall():
                await unguard(network.name)
            with contextlib.suppress(docker.errors.DockerException):
                await self.runtime._call(self.runtime.api.remove_network, network.name)
        self.networks.clear()
