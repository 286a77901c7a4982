"""The Linux calls the sandbox needs and Python 3.11 lacks (``unshare``, ``setns``, ``mount``,
``clone3``, ``prctl``, ``setfsuid``), through ctypes on the C library.

Imported by the spawner process, so it stays stdlib-only and cheap to import.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct

# typing stays unimported at run time (see sandbox_spawner); mypy takes any TYPE_CHECKING
# as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

_SYS_CLONE3 = 435  # x86_64 and aarch64 alike (the syscall table is unified from 5.3 on)
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_OPEN_TREE_CLONE = 1
_AT_RECURSIVE = 0x8000
_AT_FDCWD = -100
_MOVE_MOUNT_F_EMPTY_PATH = 4
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSCONFIG_CMD_CREATE = 6
_FS_CLOEXEC = 1  # FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC
_MOUNT_ATTR_NOSUID_NODEV_NOEXEC = 0x2 | 0x4 | 0x8
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


@contextlib.contextmanager
def file_system_ids(uid: int) -> Iterator[None]:
    """File permissions checked as ``uid`` (group ``uid``, and no supplementary group: the
    caller, root, has none) by this thread, inside the block; root's again after. Root's
    file capabilities are off meanwhile (the kernel drops them with the file-system uid)."""
    _libc.setfsgid(uid)
    _libc.setfsuid(uid)
    try:
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def clone_tree(path: str) -> int:
    """A detached copy of the mounts at ``path`` (open_tree, Linux 5.2+), to be attached
    elsewhere with ``attach_tree`` even after ``path`` itself is covered."""
    flags = _OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC
    return _check(
        _libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, path.encode(), ctypes.c_uint(flags)),
        f"open_tree {path}",
    )


def attach_tree(tree_fd: int, target: str) -> None:
    _check(
        _libc.syscall(
            _SYS_MOVE_MOUNT,
            tree_fd,
            b"",
            _AT_FDCWD,
            target.encode(),
            ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
        ),
        f"move_mount {target}",
    )


def new_mount(fstype: str) -> int:
    """A new nosuid, nodev, noexec mount of ``fstype`` (fsopen and fsmount, Linux 5.2+),
    attached nowhere: an O_PATH fd of its root, for ``attach_tree`` or ``os.open(".",
    dir_fd=...)``. A file opened through it keeps it alive."""
    context = _check(
        _libc.syscall(_SYS_FSOPEN, fstype.encode(), ctypes.c_uint(_FS_CLOEXEC)), f"fsopen {fstype}"
    )
    try:
        _check(
            _libc.syscall(
                _SYS_FSCONFIG, context, ctypes.c_uint(_FSCONFIG_CMD_CREATE), None, None, 0
            ),
            f"fsconfig {fstype}",
        )
        return _check(
            _libc.syscall(
                _SYS_FSMOUNT,
                context,
                ctypes.c_uint(_FS_CLOEXEC),
                ctypes.c_uint(_MOUNT_ATTR_NOSUID_NODEV_NOEXEC),
            ),
            f"fsmount {fstype}",
        )
    finally:
        os.close(context)


# The IPC_INFO family of shmctl, semctl and msgctl: counts of what exists in this process's
# IPC namespace, without the text of /proc/sysvipc (which costs the slot ~50 us a file).
_SHM_INFO = 14
_SEM_INFO = 19
_MSG_INFO = 12
_INFO_SIZE = 256  # larger than struct shm_info, seminfo and msginfo


def sysv_ipc_in_use() -> bool:
    """Whether any System V shared memory segment, semaphore set or message queue exists
    in this IPC namespace; True when that cannot be told."""
    shm, sem, msg = (ctypes.create_string_buffer(_INFO_SIZE) for _ in range(3))
    results = (
        _libc.shmctl(0, _SHM_INFO, shm),
        _libc.semctl(0, 0, _SEM_INFO, sem),
        _libc.msgctl(0, _MSG_INFO, msg),
    )
    if min(results) < 0:
        return True
    used_segments = struct.unpack_from("i", shm, 0)[0]  # shm_info.used_ids
    used_sets = struct.unpack_from("i", sem, 7 * 4)[0]  # seminfo.semusz
    used_queues = struct.unpack_from("i", msg, 0)[0]  # msginfo.msgpool
    return bool(used_segments or used_sets or used_queues)


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), "prctl")


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


def fork_raw(cgroup_fd: int = -1) -> int:
    """fork() as the bare clone3 system call, the child born in the cgroup ``cgroup_fd`` (a
    directory fd) when given: no migration afterwards, which costs ~0.2 ms of CPU and now
    and then milliseconds of waiting on the cgroup lock.

    Without os.fork's hooks (locks re-made, at-fork callbacks), which only a single-threaded
    process may skip; the spawner and its slots are single-threaded, and their children
    only set themselves up and exec. Saves a third of the child's CPU. Raises OSError
    (ENOSYS on kernels before 5.3, or under seccomp filters that hide clone3).
    """
    flags = CLONE_INTO_CGROUP if cgroup_fd >= 0 else 0
    args = _CloneArgs(flags=flags, exit_signal=signal.SIGCHLD, cgroup=max(cgroup_fd, 0))
    return _check(
        _libc.syscall(_SYS_CLONE3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args))),
        "clone3",
    )


def loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace (a new one has it down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def listener_in_new_netns(port: int, home_netns: int) -> tuple[socket.socket, int]:
    """A TCP listener on 127.0.0.1:``port`` in a new network namespace whose only interface,
    loopback, is up, and an fd of that namespace (a socket stays in the namespace it was
    made in, so a process that joins it reaches this listener and nothing else). The caller
    is back in ``home_netns`` on return; it must be single-threaded."""
    unshare(CLONE_NEWNET)
    listener: socket.socket | None = None
    try:
        loopback_up()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        return listener, os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    finally:
        setns(home_netns, CLONE_NEWNET)
