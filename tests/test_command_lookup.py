"""How a sandbox slot finds a function's command before it forks: execvpe's order, seen with
the function uid's permissions, never root's (which would tell a function what exists in
folders closed to it)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hodei.agent.sandbox_child import executables

# A uid other than the tests' when they run as root (as CI does); the tests' own otherwise.
UID = 65534 if os.geteuid() == 0 else os.geteuid()


@pytest.fixture
def folders() -> Iterator[Path]:
    """Under /tmp (pytest's own folders are closed to other uids), open to every uid."""
    base = Path(tempfile.mkdtemp(prefix="hodei-lookup-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def make(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_execvpe_order_past_missing_folders_and_folders_named_like_the_command(
    folders: Path,
) -> None:
    not_runnable = make(folders / "a" / "cmd", 0o644)  # execve says why, as execvpe would
    (folders / "c" / "cmd").mkdir(parents=True)
    runnable = make(folders / "d" / "cmd")
    path = ":".join(str(folders / d) for d in ("a", "b", "c", "d"))
    found = executables("cmd", {"PATH": path}, "/", UID)
    assert found == [str(not_runnable), str(runnable)]
    assert executables("/bin/sh", {"PATH": path}, "/", UID) == ["/bin/sh"]


def test_relative_folders_are_the_functions_working_directorys(folders: Path) -> None:
    runnable = make(folders / "bin" / "cmd")
    assert executables("cmd", {"PATH": "bin"}, str(folders), UID) == [str(runnable)]
    with pytest.raises(FileNotFoundError):
        executables("cmd", {"PATH": "bin"}, "/", UID)


def test_a_folder_closed_to_the_uid_does_not_tell_what_it_holds(folders: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a folder closed to another uid")
    closed = folders / "closed"
    make(closed / "present")
    closed.chmod(stat.S_IRWXU)  # root's alone
    path = {"PATH": str(closed)}
    # Both look the same to the uid (its exec will fail with EACCES for both).
    assert executables("present", path, "/", UID) == [str(closed / "present")]
    assert executables("absent", path, "/", UID) == [str(closed / "absent")]


def test_a_name_that_cannot_be_a_file_is_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        executables("a\0b", {"PATH": "/usr/bin:/bin"}, "/", UID)
