"""The values of the spawn API (``sandbox``): how the sandbox is configured, what a spawn
asks for, how a process ended, an instance's endpoint."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hodei.agent.settings import DEFAULT_HIDDEN


def own_installation() -> tuple[str, ...]:
    """The agent's interpreter, its environment and the folder Hodei is imported from."""
    import hodei

    project = os.path.dirname(os.path.dirname(os.path.realpath(hodei.__file__)))
    return (sys.base_prefix, sys.prefix, project)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the agent's function processes are confined (settings ``process_*``)."""

    sandboxed: bool = True
    mark: str = "hodei"  # names the agent's cgroup folder; see identity.agent_mark
    uid_base: int = 2_147_000_000  # above the ranges useradd, systemd and Docker hand out
    uid_count: int = 64  # concurrent functions (and instances) at most
    uid_preferred: int = 0  # the uid this agent held in its previous life
    allow_root: bool = False
    pids_max: int = 256
    tmpfs_mb: int = 64
    private_dirs: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
    hidden_paths: tuple[str, ...] = DEFAULT_HIDDEN
    hide_processes: bool = True
    cgroup_root: str = ""  # "" = <cgroup2 mount>/hodei; "off" = no cgroups
    cwd: str = "/tmp"
    # Folders functions may read even where an ancestor is closed to their uid: the
    # agent's own Python and Hodei (a Python runtime client runs from them).
    exposed_paths: tuple[str, ...] = field(default_factory=lambda: own_installation())


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int = 0  # 0 = none; RLIMIT_DATA (MemoryError) and cgroup memory.max
    cpu_millicores: int = 0  # 0 = none; cgroup cpu.max where the cpu controller is on
    pids: int = 0  # 0 = the sandbox's pids_max


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A listening TCP socket for one instance. Sandboxed and without network it lives in
    a network namespace of its own whose only interface is loopback: pass it to ``spawn``
    and the instance reaches ``address`` (127.0.0.1:port) and nothing else. Otherwise it
    listens on the host's loopback at an ephemeral port (``netns_fd`` -1), where any local
    process may connect: authenticate the peer. The caller closes it."""

    listener: socket.socket
    address: str
    netns_fd: int = -1

    def close(self) -> None:
        self.listener.close()
        if self.netns_fd >= 0:
            os.close(self.netns_fd)


@dataclass(frozen=True, slots=True)
class SpawnRequest:
    argv: Sequence[str]
    env: Mapping[str, str]  # the whole environment: nothing of the agent's is inherited
    cwd: str = ""  # "" = the sandbox's cwd (a private /tmp when sandboxed)
    network: bool = False  # True: the host's network; False: none at all
    limits: Limits = field(default_factory=Limits)
    endpoint: Endpoint | None = None  # join this endpoint's namespace (network False)
    stdin: bool = True  # False: /dev/null


@dataclass(frozen=True, slots=True)
class Exit:
    code: int  # like Popen.returncode: >= 0 the exit status, < 0 killed by that signal
    oom_killed: bool = False
    start_error: str = ""  # non-empty: the command never ran (not found, not executable)
    pid: int = 0
