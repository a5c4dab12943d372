"""Writing a feature store (`lrcn.features.store` describes its layout): rows in blocks into
``STORE.partial``, committed whole when complete."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from lrcn.errors import LrcnError
from lrcn.features.store import (
    BOX_COORDS, DTYPES, FORMAT_VERSION, LAYOUTS, PROGRESS_FILE, FeatureStore, hash_files,
    check_npy, partial_path,
)
from lrcn.fileio import atomic_write, commit_folder


def _pwrite_all(fd: int, array: np.ndarray, offset: int) -> None:
    buf = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    while len(buf):  # pwrite may write less than asked (and at most ~2 GB per call)
        written = os.pwrite(fd, buf, offset)
        buf, offset = buf[written:], offset + written


class StoreWriter:
    """Builds a store in ``STORE.partial``, block of rows by block, and renames it when done.

    The .npy files are created at full size with ``open_memmap`` (sparse until written); rows
    are then written with ``pwrite`` rather than through a mapping, so the writer's memory
    stays flat however large the store. ``resume=True`` reopens an existing partial folder
    with the same shape, for an extraction that continues after an interruption.

    Args:
        out: the store folder to create; must not exist.
        count: N, the number of rows.
        item_shape: (H, W, C) for layout "grid", (R, C) for "regions".
        dtype: "float16" or "float32".
        layout: "grid" or "regions".
        with_mask: write mask.npy; rows start all False and ``write`` sets them.
        keys: the N unique image keys, in row order.
        source: what made the store, saved in meta.json (JSON-safe).
        resume: reopen ``out``.partial instead of creating it.
        with_boxes: write boxes.npy (layout "regions" only); ``write`` sets each row's boxes.
    """

    def __init__(
        self,
        out: str | Path,
        count: int,
        item_shape: Sequence[int],
        dtype: str,
        layout: str,
        with_mask: bool,
        keys: Sequence[str],
        source: dict[str, Any],
        resume: bool = False,
        with_boxes: bool = False,
    ) -> None:
        self.out = Path(out)
        self.partial = partial_path(self.out)
        self.count = count
        self.item_shape = tuple(int(s) for s in item_shape)
        self.dtype = dtype
        self.layout = layout
        self.with_mask = with_mask
        self.with_boxes = with_boxes
        self.keys = list(keys)
        self.source = source
        if dtype not in DTYPES:
            raise LrcnError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if layout not in LAYOUTS or len(self.item_shape) != LAYOUTS[layout]:
            raise ValueError(f"layout {layout!r} does not fit item_shape {self.item_shape}")
        if with_boxes and layout != "regions":
            raise ValueError(f"boxes are for layout 'regions', not {layout!r}")
        if count < 1 or len(self.keys) != count:
            raise ValueError(f"count {count} must be positive and match the {len(self.keys)} keys")
        seen: set[str] = set()
        for key in self.keys:
            if key in seen:
                raise LrcnError(f"key {key!r} appears more than once; store keys must be unique")
            seen.add(key)
        if self.out.exists():
            raise LrcnError(f"{self.out} already exists; choose another output or delete it first")

        shape = (count, *self.item_shape)
        self._files = {"features": (self.partial / "features.npy", shape, np.dtype(dtype))}
        if with_mask:
            self._files["mask"] = (self.partial / "mask.npy", shape[:-1], np.dtype(bool))
        if with_boxes:
            self._files["boxes"] = (self.partial / "boxes.npy", (*shape[:-1], BOX_COORDS),
                                    np.dtype(np.float32))
        self._fds: dict[str, int] = {}
        self._offsets: dict[str, int] = {}
        if resume:
            if not self.partial.is_dir():
                raise LrcnError(f"{self.partial}: nothing to resume (folder missing)")
        else:
            if self.partial.exists():
                raise LrcnError(
                    f"{self.partial} exists: left by an interrupted run, or a run still going; "
                    "delete it and run again"
                )
            self.partial.mkdir(parents=True)
        try:
            for name, (path, file_shape, file_dtype) in self._files.items():
                if not resume:  # header, then a sparse file of full size; unmapped at once
                    open_memmap(path, mode="w+", dtype=file_dtype, shape=file_shape)
                self._offsets[name] = check_npy(path, file_shape, file_dtype)
                self._fds[name] = os.open(path, os.O_RDWR)
        except BaseException:
            self.close_files()
            if not resume:
                shutil.rmtree(self.partial, ignore_errors=True)
            raise

    def write(self, start: int, features: np.ndarray, mask: np.ndarray | None = None,
              boxes: np.ndarray | None = None) -> None:
        """Write rows ``start .. start + len(features)``, cast to the store dtype.

        `mask` (B, *item_shape[:-1]) bool is required exactly when the store has a mask,
        `boxes` (B, R, 4) exactly when it has boxes.
        """
        n = len(features)
        if tuple(features.shape[1:]) != self.item_shape or not 0 <= start <= self.count - n:
            raise ValueError(f"rows {start}..{start + n} of shape {features.shape[1:]} do not "
                             f"fit a store of {self.count} x {self.item_shape}")
        if (mask is not None) != self.with_mask:
            raise ValueError("a mask is required exactly when the store has one")
        if (boxes is not None) != self.with_boxes:
            raise ValueError("boxes are required exactly when the store has them")
        _, _, dtype = self._files["features"]
        row_bytes = math.prod(self.item_shape) * dtype.itemsize
        _pwrite_all(self._fds["features"], features.astype(dtype, copy=False),
                    self._offsets["features"] + start * row_bytes)
        if mask is not None:
            if tuple(mask.shape) != (n, *self.item_shape[:-1]):
                raise ValueError(f"mask shape {mask.shape} does not fit features {features.shape}")
            cells = math.prod(self.item_shape[:-1])
            _pwrite_all(self._fds["mask"], mask.astype(bool, copy=False),
                        self._offsets["mask"] + start * cells)
        if boxes is not None:
            if tuple(boxes.shape) != (n, self.item_shape[0], BOX_COORDS):
                raise ValueError(f"boxes shape {boxes.shape} does not fit features {features.shape}")
            row_bytes = self.item_shape[0] * BOX_COORDS * 4
            _pwrite_all(self._fds["boxes"], boxes.astype(np.float32, copy=False),
                        self._offsets["boxes"] + start * row_bytes)

    def flush(self) -> None:
        """Make every row written so far durable (before recording progress)."""
        for fd in self._fds.values():
            os.fsync(fd)

    def finish(self) -> FeatureStore:
        """Write keys, checksums and meta.json (last), rename the partial folder, open it."""
        self.flush()
        self.close_files()
        keys_path = self.partial / "keys.json"
        atomic_write(keys_path, lambda f: f.write(json.dumps(self.keys).encode()))
        checksum = {"algorithm": "sha256",
                    **hash_files({"features": self._files["features"][0],
                                   "mask": self._files["mask"][0] if self.with_mask else None,
                                   "boxes": self._files["boxes"][0] if self.with_boxes else None,
                                   "keys": keys_path})}
        meta = {"format_version": FORMAT_VERSION, "count": self.count, "layout": self.layout,
                "item_shape": list(self.item_shape), "dtype": self.dtype,
                "has_mask": self.with_mask, "has_boxes": self.with_boxes, "source": self.source,
                "checksum": checksum}
        atomic_write(self.partial / "meta.json",
                     lambda f: f.write(json.dumps(meta, indent=2).encode()))
        try:
            commit_folder(self.partial, self.out)
        except FileExistsError:
            raise LrcnError(f"{self.out} appeared while the store was being built; "
                            "not replacing it") from None
        # Removed only now: killed before the rename, a rerun still finds its resume point.
        (self.out / PROGRESS_FILE).unlink(missing_ok=True)
        return FeatureStore.open(self.out)

    def abort(self) -> None:
        """Remove the partial folder: a failed build leaves nothing behind."""
        self.close_files()
        shutil.rmtree(self.partial, ignore_errors=True)

    def close_files(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
