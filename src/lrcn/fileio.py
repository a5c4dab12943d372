"""Durable writes: a reader never sees a half-written file or folder, and a crash loses none
that was reported written. Every file the toolkit writes goes through `atomic_write`, or is
written into a staging folder that `commit_folder` moves into place whole (generated
datasets, feature stores: thousands of files, one commit)."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# Files are created with this mode less the umask: 0644 under the usual umask 022, so runs,
# checkpoints and results on a shared cluster are readable by the group as any file would be.
FILE_MODE = 0o666


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file_object)`` on a temporary file beside `path`, then rename it over.

    A reader sees the old file or the complete new one, never a half-written one. The file is
    fsynced before the rename and its folder after it, so once this returns the new file
    survives a crash. The temporary file (``.NAME.<pid>.<random>.tmp``) is created exclusively
    with `FILE_MODE` (the umask applies), and removed if anything fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def commit_folder(staging: Path, dest: Path) -> None:
    """Move the finished folder `staging` to `dest` (which must not exist), durably.

    Every file in it is fsynced, then every folder bottom-up, then it is renamed beside itself
    and the parent folder fsynced: a reader sees no folder or the complete one, and once this
    returns it survives a crash. Files written into `staging` get the usual mode (0666 less
    the umask), as `atomic_write`'s do.
    """
    for path in sorted(staging.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            fsync_folder(path)
    fsync_folder(staging)
    if dest.exists():  # os.rename would silently replace an empty folder
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest))
    os.rename(staging, dest)
    fsync_folder(dest.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename or creation inside `folder` durable (a no-op where folders cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_unfinished_writes(folder: Path) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp``) that `atomic_write` leaves in `folder`, at
    any depth, when its process was killed mid-write; return them. Call it only where no other
    process is writing."""
    stale = sorted(p for p in folder.rglob(".*.tmp") if p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
