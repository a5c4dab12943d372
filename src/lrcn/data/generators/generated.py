"""Datasets that lrcn generates itself, and the rules for their folders.

Where a build lives: the folder the caller gives (``data.data_root`` / ``--data-root`` for
a run, ``--root`` for ``lrcn data build``), else ``<data home>/<name>-v<version>``, where
the data home is ``$LRCN_DATA_HOME``, or ``~/.cache/lrcn`` if unset.

How it gets there: ``lrcn data build NAME`` builds it explicitly; otherwise the first
``load_split`` of the dataset builds it (``ensure``), saying so in the log. A build is
written into a fresh folder beside its destination and renamed into place at the end, so
the destination is complete or absent, never half-written. A meta file, written last,
marks a complete build and records the generator's name, version, seed and sizes (and what
the generator adds); a build of another version is rebuilt, and a folder holding anything
but the dataset's own files is never replaced.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from lrcn.errors import LrcnError
from lrcn.fileio import commit_folder

__all__ = ["DATA_HOME_ENV", "GeneratedDataset", "Generate", "Progress", "data_home"]

log = logging.getLogger(__name__)

DATA_HOME_ENV = "LRCN_DATA_HOME"
META_KEYS = ("name", "version", "seed", "sizes")  # what every meta file starts with

Progress = Callable[[int], None]  # told how many more items (images) have been written


class Generate(Protocol):
    """Writes a dataset into the empty folder ``out``.

    ``sizes`` are checked and in the order of the dataset's splits; ``progress(n)`` is
    called as items are written. Returns what the meta file should record about the build
    besides ``META_KEYS``.
    """

    def __call__(self, out: Path, seed: int, sizes: dict[str, int], *,
                 progress: Progress) -> dict[str, Any]: ...


def data_home() -> Path:
    """``$LRCN_DATA_HOME``, or ``~/.cache/lrcn`` if unset: where generated datasets live."""
    home = os.environ.get(DATA_HOME_ENV)
    return Path(home).expanduser() if home else Path.home() / ".cache" / "lrcn"


@dataclass(eq=False)
class GeneratedDataset:
    """A dataset lrcn writes itself.

    Not frozen, so that tests can monkeypatch ``default_sizes`` or ``generate`` on the
    instance the registry holds.

    Attributes:
        name: the dataset's name; its default folder is ``data_home()/<name>-v<version>``.
        version: bumped whenever the generator's output changes.
        generate: writes a build (see ``Generate``).
        splits: the splits a build holds; ``sizes`` give a count for each of them.
        default_sizes: what ``ensure`` builds (and ``build`` without sizes).
        own_names: the files and folders a build holds besides the meta file.
        default_seed: what ``ensure`` builds with (and ``build`` without a seed).
        unit: what a size counts (``questions``, ``images``), for messages.
        title: the name in messages; ``name`` if empty.
        meta_file: the meta file's name; ``<name, - as _>.json`` if empty. Renaming it
            invalidates every existing build.
    """

    name: str
    version: int
    generate: Generate
    splits: tuple[str, ...]
    default_sizes: dict[str, int]
    own_names: tuple[str, ...]
    default_seed: int = 0
    unit: str = "items"
    title: str = ""
    meta_file: str = ""

    def __post_init__(self) -> None:
        self.title = self.title or self.name
        self.meta_file = self.meta_file or f"{self.name.replace('-', '_')}.json"

    def default_root(self) -> Path:
        """``data_home()/<name>-v<version>``."""
        return data_home() / f"{self.name}-v{self.version}"

    def check_split(self, split: str) -> None:
        """LrcnError unless a build holds ``split``: asked before a first build, not after."""
        if split not in self.splits:
            raise LrcnError(f"{self.name} has no split {split!r}; known splits: "
                            f"{', '.join(self.splits)}")

    def check_sizes(self, sizes: Mapping[str, int]) -> dict[str, int]:
        """``sizes`` in split order, or LrcnError unless it gives a count >= 0 per split."""
        if not isinstance(sizes, Mapping) or set(sizes) != set(self.splits):
            raise LrcnError(f"{self.title} sizes must give a number of {self.unit} for each "
                            f"of {', '.join(self.splits)}, got {sizes!r}")
        for split, n in sizes.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise LrcnError(f"{self.title} sizes[{split!r}] must be an integer >= 0, "
                                f"got {n!r}")
        return {split: sizes[split] for split in self.splits}

    def meta(self, root: str | Path) -> dict[str, Any] | None:
        """The meta file of a complete build of this version in ``root``, else None."""
        try:
            meta = json.loads((Path(root) / self.meta_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("version") != self.version:
            return None
        return meta

    def is_complete(self, root: str | Path) -> bool:
        """Whether ``root`` holds a complete build of this version."""
        return self.meta(root) is not None

    def build(self, root: str | Path, seed: int | None = None,
              sizes: Mapping[str, int] | None = None) -> Path:
        """Generate the dataset into the new folder ``root`` (it must not exist); return it.

        Args:
            root: the folder to create.
            seed: seeds every random choice; None for ``default_seed``.
            sizes: a count per split; None for ``default_sizes``.
        """
        root = Path(root)
        sizes = self.check_sizes(self.default_sizes if sizes is None else sizes)
        if root.exists():
            raise LrcnError(f"{root} already exists; build {self.title} into a new folder "
                            "(ensure reuses a complete build)")
        tmp = self._build_beside(root, self.default_seed if seed is None else seed, sizes)
        try:
            commit_folder(tmp, root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LrcnError(f"cannot create {root}: {exc.strerror} "
                            "(was it created meanwhile?)") from None
        return root

    def ensure(self, root: str | Path | None = None) -> Path:
        """The folder of a complete build, generating the default build on first use.

        A complete build of this version (its meta file written last) is reused as it is,
        whatever its seed and sizes. Otherwise the default build is generated beside it and
        renamed into place, logged at INFO with where it goes and how to choose the folder;
        an incomplete or older build there is replaced, but a folder holding anything else
        is an error.

        Args:
            root: the dataset folder; None for ``default_root()``.
        """
        root = self.default_root() if root is None else Path(root)
        if self.is_complete(root):
            return root
        return self._replace(root, self.default_seed, self.default_sizes, first_use=True)

    def rebuild(self, root: str | Path | None = None, seed: int | None = None,
                sizes: Mapping[str, int] | None = None) -> Path:
        """Generate a build into ``root`` in place of the build of this dataset it holds.

        Like ``ensure`` but never reuses a build: any build there, complete or not, is
        replaced once the new one is complete; a folder holding anything else is an error.

        Args:
            root: the dataset folder; None for ``default_root()``.
            seed: seeds every random choice; None for ``default_seed``.
            sizes: a count per split; None for ``default_sizes``.
        """
        root = self.default_root() if root is None else Path(root)
        return self._replace(root, self.default_seed if seed is None else seed,
                             self.default_sizes if sizes is None else sizes, first_use=False)

    def _replace(self, root: Path, seed: int, sizes: Mapping[str, int],
                 first_use: bool) -> Path:
        """Generate beside ``root`` and swap the build in; with ``first_use`` (``ensure``),
        a complete build that another process finished meanwhile is kept instead."""
        if root.exists():
            self._check_replaceable(root)
            if not self.is_complete(root) and any(root.iterdir()):
                log.warning("%s: %s holds no complete build of version %d; rebuilding it",
                            self.title, root, self.version)
        sizes = self.check_sizes(sizes)
        if first_use:
            log.info("%s: first use: building %s %s into %s, once (--data-root / "
                     "data.data_root or $%s choose the folder; `lrcn data build %s` builds "
                     "it ahead of a run)", self.title, sizes, self.unit, root, DATA_HOME_ENV,
                     self.name)
        else:
            log.info("%s: building %s %s (seed %d) into %s", self.title, sizes, self.unit,
                     seed, root)
        tmp = self._build_beside(root, seed, sizes)
        if first_use and self.is_complete(root):  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return root
        old = None
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            root.rename(old)
        try:
            commit_folder(tmp, root)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not self.is_complete(root):
                raise LrcnError(f"cannot move the {self.title} build into {root}") from None
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return root

    def _build_beside(self, root: Path, seed: int, sizes: dict[str, int]) -> Path:
        """Generate into a fresh ``.<name>.tmp-*`` folder beside ``root``, the meta file last,
        with a progress bar on a terminal; the folder is removed on failure."""
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            start = time.perf_counter()
            with tqdm(total=sum(sizes.values()), desc=self.title, unit=f" {self.unit}",
                      disable=None, leave=False) as bar:
                about = self.generate(tmp, seed, sizes, progress=bar.update)
            clash = sorted(set(META_KEYS) & set(about))
            if clash:
                raise ValueError(f"{self.title}: the generator returned meta keys "
                                 f"{clash}, which the meta file sets itself")
            meta = {"name": self.name, "version": self.version, "seed": seed, "sizes": sizes,
                    **about}
            (tmp / self.meta_file).write_text(json.dumps(meta), encoding="utf-8")
            log.info("%s: generated %s %s in %.1f s", self.title, sizes, self.unit,
                     time.perf_counter() - start)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    def _check_replaceable(self, root: Path) -> None:
        """Refuse to replace a folder that holds anything but this dataset's own files."""
        if not root.is_dir():
            raise LrcnError(f"{self.title} root {root} exists and is not a folder")
        ours = {*self.own_names, self.meta_file}
        others = sorted(p.name for p in root.iterdir() if p.name not in ours)
        if others:
            build = "a complete" if self.is_complete(root) else "no complete"
            raise LrcnError(f"{root} holds {build} {self.title} build and also other files "
                            f"({', '.join(others[:5])}); remove it or pick a new folder")
