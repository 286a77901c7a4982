"""Lambda instances as processes (the ``process`` runtime): the function's command, left
running between invocations, with its Runtime API endpoint on a socket of its own.

The instance's stdout and stderr come through pipes the agent reads itself, so that when an
invocation ends the agent can take everything the instance wrote before answering (a
non-blocking read to the end of the pipe) and give it to that invocation's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sys

import psutil

from hodei.agent.identity import ENV_MARK
from hodei.agent.instance import Output
from hodei.agent.lambda_api import RuntimeEndpoint
from hodei.agent.lambda_env import function_arn, instance_env
from hodei.agent.process_runtime import PASSED_THROUGH
from hodei.proto import hodei_pb2 as pb

CHUNK = 64 * 1024


def listen_socket(job: pb.AssignJobRequest) -> socket.socket:
    """The instance's own listening socket, on loopback and a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


async def spawn(
    argv: list[str], env: dict[str, str], cwd: str, stdout: int, stderr: int
) -> asyncio.subprocess.Process:
    """Start the instance's process in a session (process group) of its own."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def command_of(job: pb.AssignJobRequest) -> list[str]:
    """The spec's command; without one, the Python runtime client of the agent's own
    interpreter loads the handler (``pip install 'hodei[lambda]'`` provides it)."""
    if job.command:
        return list(job.command)
    return [sys.executable, "-m", "awslambdaric", job.handler]


def _proc_address(ip: str, port: int) -> str:
    """An IPv4 address as /proc/net/tcp writes it (the address bytes little-endian)."""
    return f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"


def connection_owner(pid: int, peer: tuple[str, int], endpoint: tuple[str, int]) -> bool:
    """Whether the connection from ``peer`` to ``endpoint`` was opened by process ``pid`` or
    one of its descendants: its socket's inode, found in the TCP table of pid's network
    namespace, among their open files."""
    local, remote = _proc_address(*peer), _proc_address(*endpoint)
    inode = ""
    try:
        with open(f"/proc/{pid}/net/tcp") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 9 and fields[1] == local and fields[2] == remote:
                    inode = fields[9]
                    break
        if not inode or inode == "0":
            return False
        wanted = f"socket:[{inode}]"
        owners = [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except (OSError, psutil.Error):
        return False
    for owner in owners:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{owner}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{owner}/fd/{fd}") == wanted:
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
    """The process behind one instance."""

    def __init__(self, proc: asyncio.subprocess.Process, pipes: list[PipeReader]) -> None:
        self.proc = proc
        self.pipes = pipes

    async def wait(self) -> int:
        code = await self.proc.wait()
        self.kill()  # whatever it left behind in its process group goes with it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.closed for p in self.pipes)), 2.0)
        for pipe in self.pipes:
            pipe.close()
        return code

    def drain(self) -> None:
        for pipe in self.pipes:
            pipe.read()

    async def settle(self) -> None:
        """Nothing on its way: what the process wrote is in its pipes (``drain`` reads it)."""

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class ProcessLauncher:
    name = "process"
    available = True

    def __init__(self, mark: str, output_cap_bytes: int, region: str, workdir: str = "/tmp"):
        self.mark = mark
        self.output_cap_bytes = output_cap_bytes
        self.region = region
        self.workdir = workdir

    async def launch(
        self, job: pb.AssignJobRequest, instance_id: str, output: Output
    ) -> tuple[RuntimeEndpoint, ProcessInstance]:
        sock = listen_socket(job)
        address = sock.getsockname()[:2]
        pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def own_process(peer: tuple[str, int]) -> bool:
            # Loopback is shared by every process of the host: only the instance's own
            # processes may take its invocations.
            owner = await asyncio.shield(pid)
            return owner > 0 and await asyncio.to_thread(connection_owner, owner, peer, address)

        endpoint = RuntimeEndpoint(
            f"{address[0]}:{address[1]}",
            function_arn(job, self.region),
            self.output_cap_bytes,
            own_process,
        )
        await endpoint.serve(sock)
        env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
        env.update(instance_env(job, endpoint.address, self.region, instance_id, self.workdir))
        env[ENV_MARK] = self.mark
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = await spawn(command_of(job), env, self.workdir, out_w, err_w)
        except BaseException:
            pid.set_result(0)
            for fd in (out_r, err_r):
                os.close(fd)
            await endpoint.close()
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        pid.set_result(proc.pid)
        if job.resources.memory_mb > 0:
            limit = job.resources.memory_mb << 20
            with contextlib.suppress(ProcessLookupError, PermissionError):
                resource.prlimit(proc.pid, resource.RLIMIT_DATA, (limit, limit))
        pipes = [PipeReader(out_r, "stdout", output), PipeReader(err_r, "stderr", output)]
        return endpoint, ProcessInstance(proc, pipes)
