"""Durable writes: a reader never sees a half-written file or folder, and a crash loses none
that was reported written. Every file the toolkit writes goes through `atomic_write`, or is
written into a staging folder that `commit_folder` moves into place whole (generated
datasets, feature stores, exported models: thousands of files, one commit) or that
`replace_folder` swaps in for the folder it replaces (checkpoints, read with `read_folder`)."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

T = TypeVar("T")

# Files are created with this mode less the umask: 0644 under the usual umask 022, so runs,
# checkpoints and results on a shared cluster are readable by the group as any file would be.
FILE_MODE = 0o666
FOLDER_MODE = 0o777  # 0755 under umask 022


def _temporary_path(path: Path) -> Path:
    """``.NAME.<pid>.<random>.tmp`` beside `path`: what `remove_unfinished_writes` deletes."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file_object)`` on a temporary file beside `path`, then rename it over.

    A reader sees the old file or the complete new one, never a half-written one. The file is
    fsynced before the rename and its folder after it, so once this returns the new file
    survives a crash. The temporary file (``.NAME.<pid>.<random>.tmp``) is created exclusively
    with `FILE_MODE` (the umask applies), and removed if anything fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_path(path)
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


@contextmanager
def building_folder(dest: Path, replace: bool = False) -> Iterator[Path]:
    """Build the folder `dest` whole: the block writes into the empty staging folder this
    yields (``.NAME.<pid>.<random>.tmp`` beside `dest`, mode 0777 less the umask), which is
    then moved into place by `commit_folder` (`dest` must not exist) or, with `replace`,
    `replace_folder`. If the block or the move fails, the staging folder is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_path(dest)
    os.mkdir(staging, FOLDER_MODE)
    try:
        yield staging
        (replace_folder if replace else commit_folder)(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def commit_folder(staging: Path, dest: Path) -> None:
    """Move the finished folder `staging` to `dest` (which must not exist), durably.

    Every file in it is fsynced, then every folder bottom-up, then it is renamed beside itself
    and the parent folder fsynced: a reader sees no folder or the complete one, and once this
    returns it survives a crash. Files written into `staging` get the usual mode (0666 less
    the umask), as `atomic_write`'s do.
    """
    _sync_tree(staging)
    if dest.exists():  # os.rename would silently replace an empty folder
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest))
    os.rename(staging, dest)
    fsync_folder(dest.parent)


ASIDE_SUFFIX = ".old"


def aside_path(dest: Path) -> Path:
    """Where `replace_folder` puts the old `dest` between its two renames: ``.NAME.old``."""
    return dest.with_name(f".{dest.name}{ASIDE_SUFFIX}")


def aside_of(aside: Path) -> Path:
    """The `dest` whose `aside_path` is `aside` (the inverse)."""
    return aside.with_name(aside.name[1:-len(ASIDE_SUFFIX)])


def replace_folder(staging: Path, dest: Path) -> None:
    """Put the finished folder `staging` in the place of the folder `dest`, durably.

    The invariant, whenever the process dies: `dest` is the old folder or the new one, whole;
    or, killed between the two renames below, `dest` is absent and the old folder, whole, is
    `aside_path(dest)`. `current_folder` (and so `read_folder`) then reads that one,
    `recover_folder` (called here first, and by `remove_unfinished_writes`) renames it back.

    Steps: fsync every file and folder of `staging` (`commit_folder`'s first step); finish a
    swap interrupted earlier (`recover_folder`); rename `dest` aside; rename `staging` to
    `dest`; fsync the parent folder (from here the new folder survives a crash); delete the
    old one. Left behind by a kill: the staging folder (a ``.tmp``, deleted by
    `remove_unfinished_writes`), the old folder aside (restored), or part of it with the new
    `dest` in place (deleted). A committed folder is never written again, only replaced.
    """
    _sync_tree(staging)
    recover_folder(dest)
    aside = aside_path(dest)
    if dest.exists():
        os.rename(dest, aside)
    os.rename(staging, dest)
    fsync_folder(dest.parent)
    shutil.rmtree(aside, ignore_errors=True)


def current_folder(dest: Path) -> Path | None:
    """The folder that holds `dest`'s contents now: `dest`, or the old folder a swap
    (`replace_folder`) killed between its renames left aside; None if neither exists."""
    if dest.is_dir():
        return dest
    aside = aside_path(dest)
    return aside if aside.is_dir() else None


def recover_folder(dest: Path) -> list[Path]:
    """Finish a `replace_folder` swap of `dest` that a kill interrupted: the old folder left
    aside goes back to `dest` when `dest` is absent (killed between the renames), or is
    deleted when the new `dest` is in place (killed after them). The paths acted on. Call it
    only where no other process is writing `dest`."""
    aside = aside_path(dest)
    if not aside.is_dir():
        return []
    if dest.exists():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(aside, dest)
    fsync_folder(dest.parent)
    return [aside]


def read_folder(dest: Path, read: Callable[[Path], T], attempts: int = 5) -> T:
    """``read(folder)`` of the folder `current_folder(dest)` names, from one version of it.

    A process writing `dest` (`replace_folder`) may swap it while `read` opens its files one
    by one; a read during which the folder at that path changed (another directory, or none)
    is discarded and done again, whether it returned or raised. The directory is held open
    while it is read, so that its inode number cannot pass to a new folder meanwhile: the
    same number before and after then means the same directory throughout (a swapped-out
    folder never comes back). A read of the old folder set aside mid-swap counts only if
    the swap has not finished by its end (then that folder is being deleted).
    FileNotFoundError when there is no folder; OSError (EBUSY) when it changed at every
    attempt.
    """
    for _ in range(attempts):
        folder = current_folder(dest)
        if folder is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(dest))
        try:
            held = os.open(folder, os.O_RDONLY)
        except FileNotFoundError:
            continue  # swapped between the look and the open
        except OSError:  # folders cannot be opened (Windows): the inode is not held
            held = None
        try:
            if held is None:
                identity = _identity(folder)
            else:
                st = os.fstat(held)
                identity = (st.st_dev, st.st_ino)
            try:
                result = read(folder)
            except Exception:
                if not _still(dest, folder, identity):
                    continue
                raise
            if _still(dest, folder, identity):
                return result
        finally:
            if held is not None:
                os.close(held)
    raise OSError(errno.EBUSY, f"changed while being read, {attempts} times (is a process "
                  "writing it?)", str(dest))


def _still(dest: Path, folder: Path, identity: tuple[int, int] | None) -> bool:
    """Whether `folder` is still the directory `identity` and still `dest`'s current folder
    (an old folder set aside is being deleted once the new one is in place)."""
    return current_folder(dest) == folder and _identity(folder) == identity


def _identity(folder: Path) -> tuple[int, int] | None:
    """Which directory `folder` is now (device and inode), None if it is gone."""
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _sync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder bottom-up, then `folder` itself."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            fsync_folder(path)
    fsync_folder(folder)


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
    """Clean what killed writes left in `folder`, at any depth; return the paths cleaned: the
    temporary files (``.NAME.*.tmp``) of `atomic_write` and staging folders of
    `building_folder`, deleted, and the swaps `replace_folder` left unfinished, recovered
    (`recover_folder`). Call it only where no other process is writing."""
    stale = sorted(folder.rglob(".*.tmp"))
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    for aside in sorted(folder.rglob(f".*{ASIDE_SUFFIX}")):
        if aside.is_dir():
            stale += recover_folder(aside_of(aside))
    return stale
