"""The cgroup v2 side of the sandbox: one cgroup per uid slot, ``<mount>/hodei/<mark>/slot-N``,
holding the slot process and the functions it starts.

Where the v2 hierarchy offers the pids, memory and cpu controllers, a slot's cgroup limits
its function; on a hybrid host (cgroup v1 controllers, a v2 hierarchy without them, like
Debian with ``systemd.unified_cgroup_hierarchy=0``) it only groups, and limits come from
rlimits. cgroup v1 controllers are not used. The folder named by the agent's mark is how
its next life finds what a killed one left running (``reap``). The tree hangs off the
hierarchy's root (as Docker's does), because a cgroup with processes of its own cannot hand
controllers to children.

Stdlib only: the spawner imports it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

WANTED = ("pids", "memory", "cpu")
CPU_PERIOD_US = 100_000


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the cgroup v2 hierarchy is mounted, if it is."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class SlotCgroups:
    """The cgroups of one agent's slots, under ``<root>/<mark>``."""

    def __init__(self, mount: str, root: str, mark: str) -> None:
        self.mount = mount
        self.base = os.path.join(root, mark)
        self.controllers: tuple[str, ...] = ()
        self.values: dict[tuple[int, str], str] = {}
        self.oom_kills: dict[int, int] = {}

    def create(self) -> int:
        """Make the agent's folder, handing it what controllers the hierarchy offers; kill
        and remove what an earlier life of this agent left there. Returns how many processes
        were killed. Raises OSError when the agent may not create cgroups."""
        offered = set(_read(os.path.join(self.mount, "cgroup.controllers")).split())
        wanted = [c for c in WANTED if c in offered]
        killed = reap(self.base)
        os.makedirs(self.base, exist_ok=True)
        folders = [self.mount]
        for part in os.path.relpath(self.base, self.mount).split(os.sep):
            folders.append(os.path.join(folders[-1], part))
        for folder in folders:
            enabled = set(_read(os.path.join(folder, "cgroup.subtree_control")).split())
            missing = [c for c in wanted if c not in enabled]
            if missing:
                with contextlib.suppress(OSError):
                    _write(
                        os.path.join(folder, "cgroup.subtree_control"),
                        " ".join(f"+{c}" for c in missing),
                    )
        offered_here = set(_read(os.path.join(self.base, "cgroup.subtree_control")).split())
        self.controllers = tuple(c for c in WANTED if c in offered_here)
        return killed

    def path(self, slot: int) -> str:
        return os.path.join(self.base, f"slot-{slot}")

    def open(self, slot: int) -> int:
        """The slot's cgroup (made when missing) as a directory fd, for clone3; the caller
        closes it."""
        path = self.path(slot)
        if not os.path.isdir(path):
            os.mkdir(path)
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def limit(self, slot: int, pids: int, memory_mb: int, cpu_millicores: int) -> None:
        """Set the slot's limits where the controllers exist (written only when they change)."""
        settings: dict[str, str] = {}
        if "pids" in self.controllers:
            settings["pids.max"] = str(pids) if pids > 0 else "max"
        if "memory" in self.controllers:
            settings["memory.max"] = str(memory_mb * 1024 * 1024) if memory_mb > 0 else "max"
            settings["memory.swap.max"] = "0"
        if "cpu" in self.controllers:
            quota = cpu_millicores * CPU_PERIOD_US // 1000
            settings["cpu.max"] = f"{quota if quota > 0 else 'max'} {CPU_PERIOD_US}"
        for name, value in settings.items():
            if self.values.get((slot, name)) != value:
                with contextlib.suppress(FileNotFoundError):
                    _write(os.path.join(self.path(slot), name), value)
                self.values[(slot, name)] = value
        if "memory" in self.controllers and slot not in self.oom_kills:
            self.oom_kills[slot] = self.oom_kill_count(slot)

    def oom_kill_count(self, slot: int) -> int:
        try:
            for line in _read(os.path.join(self.path(slot), "memory.events")).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        return 0

    def oom_killed_since_last(self, slot: int) -> bool:
        if "memory" not in self.controllers:
            return False
        now = self.oom_kill_count(slot)
        before = self.oom_kills.get(slot, now)
        self.oom_kills[slot] = now
        return now > before

    def remove(self) -> None:
        """Remove the agent's folder (its slots must be empty)."""
        reap(self.base)


def kill(path: str) -> None:
    """SIGKILL every process in the cgroup ``path``; the kernel does it atomically with
    respect to forks. Kernels before 5.14 have no ``cgroup.kill``: signal what is listed
    until nothing is (the caller waits for ``populated 0`` anyway)."""
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")
        return
    except FileNotFoundError:
        pass
    except OSError:
        return
    for _ in range(100):
        try:
            pids = [int(p) for p in _read(os.path.join(path, "cgroup.procs")).split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def reap(base: str) -> int:
    """Kill every process in the cgroups under ``base`` and remove them; returns how many
    processes were killed (what an earlier life of the agent left running)."""
    if not os.path.isdir(base):
        return 0
    killed = 0
    for name in sorted(os.listdir(base)):
        path = os.path.join(base, name)
        if not os.path.isdir(path):
            continue
        with contextlib.suppress(OSError):
            killed += len(_read(os.path.join(path, "cgroup.procs")).split())
        kill(path)
        _rmdir_when_empty(path)
    _rmdir_when_empty(base)
    return killed


def _rmdir_when_empty(path: str) -> None:
    """A cgroup can be removed once its last process is gone, which follows a kill within
    milliseconds; give it up to a second."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
