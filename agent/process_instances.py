"""Lambda instances as processes (the ``process`` runtime): the function's command, started
through the agent's sandbox and left running between invocations, with its Runtime API
endpoint on a listening socket of its own.

Sandboxed without network, the endpoint's socket lives in a network namespace made for the
instance, whose only interface is loopback: the instance reaches its endpoint and nothing
else. Otherwise the socket is on the host's loopback, which every local process shares, so
the endpoint answers only connections opened by the instance: its uid when sandboxed (each
function process has one of its own), its environment's instance id otherwise.

The instance's stdout and stderr come through pipes the agent reads itself, so that when an
invocation ends the agent can take everything the instance wrote before answering (a
non-blocking read to the end of the pipe) and give it to that invocation's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys

from hodei.agent.identity import ENV_MARK
from hodei.agent.instance import Output
from hodei.agent.instances import InstancePool
from hodei.agent.lambda_api import RuntimeEndpoint
from hodei.agent.lambda_env import function_arn, instance_env
from hodei.agent.process_runtime import PASSED_THROUGH
from hodei.agent.sandbox import Child, Endpoint, Limits, Sandbox, SpawnRequest
from hodei.proto import hodei_pb2 as pb

CHUNK = 64 * 1024
TASK_ROOT = "/tmp"  # the sandbox's working directory (a private /tmp when sandboxed)


def command_of(job: pb.AssignJobRequest) -> list[str]:
    """The spec's command; without one, the Python runtime client of the agent's own
    interpreter loads the handler (``pip install 'hodei[lambda]'`` provides it)."""
    if job.command:
        return list(job.command)
    return [sys.executable, "-m", "awslambdaric", job.handler]


def _proc_address(ip: str, port: int) -> str:
    """An IPv4 address as /proc/net/tcp writes it (the address bytes little-endian)."""
    return f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"


def tcp_socket(peer: tuple[str, int], endpoint: tuple[str, int]) -> tuple[int, str] | None:
    """The (uid, inode) of the socket that connected from ``peer`` to ``endpoint`` on this
    network namespace's loopback."""
    local, remote = _proc_address(*peer), _proc_address(*endpoint)
    with contextlib.suppress(OSError), open("/proc/self/net/tcp") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 9 and fields[1] == local and fields[2] == remote:
                return int(fields[7]), fields[9]
    return None


def socket_holder_env(inode: str, name: str) -> set[str]:
    """The values of the variable ``name`` in the environment of the processes that hold
    the socket ``inode`` open."""
    wanted, found = f"socket:[{inode}]", set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if not _holds(pid, wanted):
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as environ:
            for item in environ.read().split(b"\0"):
                key, _, value = item.partition(b"=")
                if key.decode(errors="replace") == name:
                    found.add(value.decode(errors="replace"))
    return found


def _holds(pid: str, target: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
    return False


class PipeReader:
    """One of the instance's output pipes, read by the loop as data comes and, on demand,
    synchronously to its current end."""

    def __init__(self, fd: int, stream: str, output: Output) -> None:
        self.fd = fd
        self.stream = stream
        self.output = output
        self.closed = asyncio.get_running_loop().create_future()
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self.read)

    def read(self) -> None:
        while self.fd >= 0:
            try:
                data = os.read(self.fd, CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            self.output(self.stream, data)

    def close(self) -> None:
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if not self.closed.done():
            self.closed.set_result(None)


class ProcessInstance:
    """The sandboxed process behind one instance."""

    def __init__(self, child: Child, endpoint: Endpoint, output: Output) -> None:
        self.child = child
        self.endpoint = endpoint
        self.pipes = [
            PipeReader(child.stdout, "stdout", output),
            PipeReader(child.stderr, "stderr", output),
        ]
        self.start_error = ""

    async def wait(self) -> int:
        ended = await self.child.wait()
        self.start_error = ended.start_error
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.closed for p in self.pipes)), 2.0)
        for pipe in self.pipes:
            pipe.close()
        if self.endpoint.netns_fd >= 0:  # the listener goes with the Runtime API server
            with contextlib.suppress(OSError):
                os.close(self.endpoint.netns_fd)
        return ended.code

    def drain(self) -> None:
        for pipe in self.pipes:
            pipe.read()

    async def settle(self) -> None:
        """Nothing on its way: what the process wrote is in its pipes (``drain`` reads it)."""

    def kill(self) -> None:
        self.child.kill()


class ProcessLauncher:
    name = "process"
    available = True

    def __init__(self, sandbox: Sandbox, mark: str, output_cap_bytes: int, region: str):
        self.sandbox = sandbox
        self.mark = mark
        self.output_cap_bytes = output_cap_bytes
        self.region = region
        self.base_env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}

    async def launch(
        self, job: pb.AssignJobRequest, instance_id: str, output: Output, for_invocation: bool
    ) -> tuple[RuntimeEndpoint, ProcessInstance]:
        listening = await self.sandbox.endpoint(network=job.network)
        private = listening.netns_fd >= 0
        host, port = listening.listener.getsockname()[:2]
        uid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def own_process(peer: tuple[str, int]) -> bool:
            found = await asyncio.to_thread(tcp_socket, peer, (host, port))
            if found is None:
                return False
            if self.sandbox.sandboxed:
                return found[0] == await asyncio.shield(uid)
            holders = await asyncio.to_thread(socket_holder_env, found[1], "HODEI_INSTANCE")
            return holders == {instance_id}

        endpoint = RuntimeEndpoint(
            listening.address,
            function_arn(job, self.region),
            self.output_cap_bytes,
            None if private else own_process,
        )
        await endpoint.serve(listening.listener)
        env = dict(self.base_env)
        env.update(instance_env(job, listening.address, self.region, instance_id, TASK_ROOT))
        env[ENV_MARK] = self.mark
        request = SpawnRequest(
            command_of(job),
            env,
            network=job.network,
            limits=Limits(job.resources.memory_mb, job.resources.cpu_millicores),
            endpoint=listening if private else None,
            stdin=False,
        )
        try:
            # A pre-warm takes no uid from another instance (they would take turns).
            child = await self.sandbox.spawn(request, may_reclaim=for_invocation)
        except BaseException:
            uid.set_result(-1)
            await endpoint.close()
            listening.close()  # the namespace too
            raise
        uid.set_result(self.sandbox.uids[child.slot] if child.slot >= 0 else -1)
        return endpoint, ProcessInstance(child, listening, output)


def share_uids(sandbox: Sandbox, pool: InstancePool) -> None:
    """Stdio jobs and lambda instances draw function uids from one sandbox, and idle
    instances are not bounded by job slots: a job that finds every uid taken stops the
    least recently used idle instance for its uid rather than fail."""
    sandbox.reclaim = lambda: pool.stop_idle(ProcessLauncher.name)
