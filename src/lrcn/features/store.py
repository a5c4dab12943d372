"""A grid-feature store: one folder of image features that training reads through a memory map.

Layout of a store folder::

    features.npy   (N, *item_shape) float16 or float32; item_shape is (H, W, C) for layout
                   "grid" or (R, C) for layout "regions"
    mask.npy       (N, *item_shape[:-1]) bool, True = a real cell/region (only when padded)
    boxes.npy      (N, R, 4) float32, each region's box (x0, y0, x1, y1) as fractions of its
                   image's width and height (layout "regions" only, when the source has boxes)
    keys.json      the N image keys in row order, unique
    meta.json      format version, count, layout, item_shape, dtype, has_mask, has_boxes (absent
                   in stores made before boxes: false), source (what made the store) and the
                   sha256 of every file above; written last

A store is built (`lrcn.features.writer`) in the sibling folder ``STORE.partial`` and renamed
to ``STORE`` only once complete, so a folder named ``STORE`` is never half-written. Opening checks sizes and shapes
(cheap); ``verify`` hashes every byte (minutes at 50 GB).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from numpy.lib.format import read_array_header_1_0, read_array_header_2_0, read_magic
from tqdm import tqdm

from lrcn.errors import LrcnError

FORMAT_VERSION = 1
BOX_COORDS = 4  # x0, y0, x1, y1
LAYOUTS = {"grid": 3, "regions": 2}  # layout -> len(item_shape)
DTYPES = ("float16", "float32")
STEM_EXTENSIONS = (".npy", ".npz", ".pth", ".pt", ".jpg", ".jpeg", ".png")
PROGRESS_FILE = "progress.json"  # an extraction's resume point inside STORE.partial
_HASH_CHUNK = 8 << 20


def image_stem(key: str) -> str:
    """The file name of `key` without its directory and known extensions, stripped repeatedly.

    ``train2014/COCO_train2014_000000000009.jpg`` and ``COCO_train2014_000000000009.jpg.npy``
    both give ``COCO_train2014_000000000009``, so keys from a feature dump and from a
    dataset's image paths meet.
    """
    name = key.rsplit("/", 1)[-1]
    stripped = True
    while stripped:
        stripped = False
        for ext in STEM_EXTENSIONS:
            if name.lower().endswith(ext) and len(name) > len(ext):
                name, stripped = name[: -len(ext)], True
    return name


def _trailing_id(stem: str) -> int | None:
    """The number after the last underscore of a stem (COCO and VizWiz names), if any."""
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def partial_path(out: str | Path) -> Path:
    """The folder a store is built in before it is renamed to `out`."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def read_npy_header(f: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, data offset) of the .npy file open as `f`, data unread."""
    try:
        version = read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError) as exc:
        raise LrcnError(f"{path}: not a readable .npy file ({exc})") from None
    return tuple(shape), dtype, fortran_order, f.tell()


def check_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Check that `path` holds a C-ordered `dtype` array of `shape`, all bytes present.

    Returns the data offset. A truncated file (an interrupted copy) fails here, naming the
    file and the expected and actual byte counts, instead of reading zeros or crashing later.
    """
    if not path.is_file():
        raise LrcnError(f"{path}: file missing from the feature store")
    with open(path, "rb") as f:
        file_shape, file_dtype, fortran_order, offset = read_npy_header(f, path)
    if file_shape != shape or file_dtype != dtype or fortran_order:
        raise LrcnError(
            f"{path}: holds {file_dtype} {file_shape}{' (Fortran order)' if fortran_order else ''}, "
            f"meta.json says {dtype} {shape}"
        )
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise LrcnError(
            f"{path}: {actual} bytes, expected {expected} for {dtype} {shape}; the file is "
            f"{'truncated' if actual < expected else 'longer than its header says'}"
        )
    return offset


def sha256_file(path: Path, progress: tqdm | None = None) -> str:
    """Hex sha256 of a file, read in chunks so a 50 GB file never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return digest.hexdigest()


def hash_files(paths: dict[str, Path | None]) -> dict[str, str | None]:
    total = sum(p.stat().st_size for p in paths.values() if p is not None)
    with tqdm(total=total, desc="sha256", unit="B", unit_scale=True, disable=None,
              leave=False) as bar:
        return {name: None if p is None else sha256_file(p, bar) for name, p in paths.items()}


# --------------------------------------------------------------------------- reading

def _check_meta(meta: Any, path: Path) -> None:
    """Fail naming `path` and the first field that is missing or of the wrong kind."""
    if not isinstance(meta, dict):
        raise LrcnError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    fields = {"format_version": int, "count": int, "layout": str, "item_shape": list,
              "dtype": str, "has_mask": bool, "source": dict, "checksum": dict}
    for name, kind in fields.items():
        if name not in meta:
            raise LrcnError(f"{path}: missing field {name!r}")
        value = meta[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise LrcnError(f"{path}: field {name!r} must be {kind.__name__}, got {value!r}")
    if meta["format_version"] != FORMAT_VERSION:
        raise LrcnError(f"{path}: format_version {meta['format_version']} is not supported "
                        f"(this lrcn reads version {FORMAT_VERSION})")
    if meta["count"] < 0:
        raise LrcnError(f"{path}: count must be >= 0, got {meta['count']}")
    if meta["layout"] not in LAYOUTS:
        raise LrcnError(f"{path}: layout must be one of {', '.join(LAYOUTS)}, got {meta['layout']!r}")
    shape = meta["item_shape"]
    if (len(shape) != LAYOUTS[meta["layout"]]
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise LrcnError(f"{path}: item_shape {shape} is not {LAYOUTS[meta['layout']]} positive "
                        f"integers, as layout {meta['layout']!r} needs")
    if meta["dtype"] not in DTYPES:
        raise LrcnError(f"{path}: dtype must be one of {', '.join(DTYPES)}, got {meta['dtype']!r}")
    has_boxes = meta.get("has_boxes", False)
    if not isinstance(has_boxes, bool):
        raise LrcnError(f"{path}: field 'has_boxes' must be bool, got {has_boxes!r}")
    if has_boxes and meta["layout"] != "regions":
        raise LrcnError(f"{path}: has_boxes is true for layout {meta['layout']!r}; only region "
                        "stores have boxes")
    checksum = meta["checksum"]
    if checksum.get("algorithm") != "sha256":
        raise LrcnError(f"{path}: checksum.algorithm must be 'sha256', got {checksum.get('algorithm')!r}")
    optional = {"mask": meta["has_mask"], "boxes": has_boxes}
    for name in ("features", "keys", "mask", "boxes"):
        expect_hex = optional.get(name, True)
        value = checksum.get(name)
        if expect_hex and not (isinstance(value, str) and len(value) == 64):
            raise LrcnError(f"{path}: checksum.{name} must be a sha256 hex digest, got {value!r}")
        if not expect_hex and value is not None:
            raise LrcnError(f"{path}: checksum.{name} must be null when has_{name} is false")


def _read_json(path: Path, when_missing: str) -> Any:
    """A store file parsed as JSON; LrcnError naming it when missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LrcnError(f"{path}: {when_missing}") from None
    except (OSError, ValueError) as exc:
        raise LrcnError(f"{path}: cannot read as JSON ({exc})") from None


class _MappedArray:
    """A read-only .npy array viewed through ``mmap``, whose pages are dropped after each read."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
        self._file = open(path, "rb")
        self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._offset = offset
        self._row_bytes = math.prod(shape[1:]) * dtype.itemsize
        self.array = np.frombuffer(self._mmap, dtype=dtype, count=math.prod(shape),
                                   offset=offset).reshape(shape)

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = self.array[rows]  # one fancy-index copy, in the requested order
        # File-backed pages touched through a mapping count towards this process's RSS until
        # unmapped, so reading a 50 GB store epoch after epoch would look like (and, under a
        # cgroup limit, be treated as) a 50 GB process. Dropping the span just read keeps RSS
        # flat; the pages stay in the kernel's page cache, so re-reading them is still fast.
        if len(rows) and hasattr(mmap, "MADV_DONTNEED"):
            start = self._offset + int(rows.min()) * self._row_bytes
            end = self._offset + (int(rows.max()) + 1) * self._row_bytes
            start -= start % mmap.PAGESIZE
            self._mmap.madvise(mmap.MADV_DONTNEED, start, end - start)
        return out

    def close(self) -> None:
        del self.array  # the view must go before the mapping can close
        self._mmap.close()
        self._file.close()


class FeatureStore:
    """A feature store opened for reading; rows are read through a memory map, batch by batch.

    Opening checks meta.json, the .npy headers and byte sizes and the keys, but does not hash
    (see ``verify``). A store pickles as its path, so DataLoader workers reopen it themselves.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            hint = (f" ({partial_path(self.path)} exists: an unfinished import or extraction)"
                    if partial_path(self.path).exists() else "")
            raise LrcnError(f"feature store not found: {self.path}{hint}")
        meta_path = self.path / "meta.json"
        meta = _read_json(meta_path, f"missing; {self.path} is not a complete feature store")
        _check_meta(meta, meta_path)
        self.meta: dict[str, Any] = meta
        self.count: int = meta["count"]
        self.layout: str = meta["layout"]
        self.item_shape: tuple[int, ...] = tuple(meta["item_shape"])
        self.dtype: str = meta["dtype"]
        self.has_mask: bool = meta["has_mask"]
        self.has_boxes: bool = meta.get("has_boxes", False)

        shape = (self.count, *self.item_shape)
        self._features_offset = check_npy(self.path / "features.npy", shape, np.dtype(self.dtype))
        self._mask_offset = self._boxes_offset = None
        if self.has_mask:
            self._mask_offset = check_npy(self.path / "mask.npy", shape[:-1], np.dtype(bool))
        if self.has_boxes:
            self._boxes_offset = check_npy(self.path / "boxes.npy", (*shape[:-1], BOX_COORDS),
                                           np.dtype(np.float32))

        keys_path = self.path / "keys.json"
        keys = _read_json(keys_path, "missing from the feature store")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise LrcnError(f"{keys_path}: expected a JSON list of strings")
        if len(keys) != self.count:
            raise LrcnError(f"{keys_path}: {len(keys)} keys, meta.json says count {self.count}")
        self.keys: list[str] = keys
        self._row = {key: row for row, key in enumerate(keys)}
        if len(self._row) != len(keys):
            dup = next(k for i, k in enumerate(keys) if self._row[k] != i)
            raise LrcnError(f"{keys_path}: key {dup!r} appears more than once")
        self._stem_row: dict[str, int] = {}  # stem -> row, or -1 when several keys share it
        self._id_row: dict[int, int] = {}    # image id -> row for all-digit stems, -1 if shared
        for row, key in enumerate(keys):
            stem = image_stem(key)
            self._stem_row[stem] = -1 if stem in self._stem_row else row
            if stem.isdigit():
                self._id_row[int(stem)] = -1 if int(stem) in self._id_row else row
        self._features: _MappedArray | None = None  # mapped on first read
        self._mask: _MappedArray | None = None
        self._boxes: _MappedArray | None = None

    @classmethod
    def open(cls, path: str | Path) -> FeatureStore:
        """Open and check the store at `path` (LrcnError naming the file if anything is off)."""
        return cls(path)

    # ----------------------------------------------------------------------- properties

    def __len__(self) -> int:
        return self.count

    @property
    def channels(self) -> int:
        return self.item_shape[-1]

    @property
    def source(self) -> dict[str, Any]:
        """What made the store: the import format and folder, or the backbone and weights."""
        return self.meta["source"]

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, count={self.count}, layout={self.layout!r}, "
                f"item_shape={self.item_shape}, dtype={self.dtype!r}, has_mask={self.has_mask}, "
                f"has_boxes={self.has_boxes})")

    # ----------------------------------------------------------------------- keys

    def row_of(self, key: str) -> int | None:
        """The row of `key`, or None.

        Tried in order, each only when it names one store key: the exact key; its
        ``image_stem``; the image id, the number that ends the stem
        (``COCO_train2014_000000000009`` -> 9), against stores whose keys are bare ids, as
        grid-feats-vqa names its files (``9.pth``).
        """
        row = self._row.get(key)
        if row is None:
            stem = image_stem(key)
            row = self._stem_row.get(stem, -1)
            if row < 0 and self._id_row and (image_id := _trailing_id(stem)) is not None:
                row = self._id_row.get(image_id, -1)
        return None if row < 0 else row

    def rows_for(self, keys: Sequence[str], where: str) -> np.ndarray:
        """int64 rows of `keys` (matched as in ``row_of``); LrcnError listing missing keys."""
        rows = np.fromiter((-1 if (r := self.row_of(k)) is None else r for k in keys),
                           dtype=np.int64, count=len(keys))
        if (rows < 0).any():
            missing = [keys[i] for i in np.flatnonzero(rows < 0)]
            ambiguous = [k for k in missing if self._stem_row.get(image_stem(k)) == -1]
            message = (f"{where}: {len(missing)} of {len(keys)} keys are not in feature store "
                       f"{self.path}; first: {', '.join(missing[:5])}")
            if ambiguous:
                message += (f"; {len(ambiguous)} of them match several store keys by file name "
                            f"(e.g. {image_stem(ambiguous[0])!r}) and need the store's full key")
            raise LrcnError(message)
        return rows

    # ----------------------------------------------------------------------- rows

    def _checked_rows(self, rows: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """`rows` as int64 row numbers; LrcnError if not 1-D or out of range."""
        if isinstance(rows, torch.Tensor):
            rows = rows.cpu().numpy()
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise LrcnError(f"{self.path}: rows must be one-dimensional, got shape {rows.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= self.count):
            bad = rows[(rows < 0) | (rows >= self.count)][0]
            raise LrcnError(f"{self.path}: row {bad} out of range for {self.count} items")
        return rows

    def read(self, rows: Sequence[int] | np.ndarray | torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (B, *item_shape) float32 and mask (B, *item_shape[:-1]) bool or None.

        Rows come back in the order asked, repeats included. Without a mask every cell is real.
        """
        rows = self._checked_rows(rows)
        if self._features is None:
            shape = (self.count, *self.item_shape)
            self._features = _MappedArray(self.path / "features.npy", shape,
                                          np.dtype(self.dtype), self._features_offset)
            if self.has_mask:
                self._mask = _MappedArray(self.path / "mask.npy", shape[:-1], np.dtype(bool),
                                          self._mask_offset)
        features = torch.from_numpy(self._features.take(rows).astype(np.float32, copy=False))
        mask = torch.from_numpy(self._mask.take(rows)) if self._mask is not None else None
        return features, mask

    def read_boxes(self, rows: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor | None:
        """Boxes (B, R, 4) float32 of the rows' regions (``boxes.npy``), or None without boxes."""
        if not self.has_boxes:
            return None
        rows = self._checked_rows(rows)
        if self._boxes is None:
            self._boxes = _MappedArray(self.path / "boxes.npy", (self.count, self.item_shape[0],
                                       BOX_COORDS), np.dtype(np.float32), self._boxes_offset)
        return torch.from_numpy(self._boxes.take(rows))

    def verify(self) -> None:
        """Hash every file against meta.json; LrcnError naming the first file that differs."""
        files = {"features": self.path / "features.npy", "keys": self.path / "keys.json",
                 "mask": self.path / "mask.npy" if self.has_mask else None,
                 "boxes": self.path / "boxes.npy" if self.has_boxes else None}
        actual = hash_files(files)
        for name, path in files.items():
            if path is not None and actual[name] != self.meta["checksum"][name]:
                raise LrcnError(
                    f"{path}: sha256 {actual[name]} does not match meta.json "
                    f"({self.meta['checksum'][name]}); the file is corrupt or was changed"
                )

    # ----------------------------------------------------------------------- lifetime

    def close(self) -> None:
        for mapped in (self._features, self._mask, self._boxes):
            if mapped is not None:
                mapped.close()
        self._features = self._mask = self._boxes = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, str]:
        return {"path": str(self.path)}  # a mapping cannot be pickled; the worker reopens

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["path"])
