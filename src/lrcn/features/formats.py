"""Readers for per-image feature files as the model zoos publish them, and ``import_features``.

=========  =========  =====================================================  ========
format     extension  one file per image                                     layout
=========  =========  =====================================================  ========
trar       .npy       (H, W, C) grid, e.g. 8x8 or 16x16 (TRAR-VQA)          grid
gridfeats  .pth       tensor (1, C, H, W), H and W vary (grid-feats-vqa)      grid
openvqa    .npz       ``x`` (C, R) or (R, C) bottom-up regions (openvqa)      regions
=========  =========  =====================================================  ========

A file's key is its path under the source folder, without the format's extension:
``train2014/COCO_train2014_000000000009.jpg.npy`` -> ``train2014/COCO_train2014_000000000009.jpg``.
Items of different sizes are zero-padded to the largest and the store gets a mask. openvqa
files that carry ``bbox`` (R, 4) pixel boxes with ``image_h`` and ``image_w`` give the store
their boxes as fractions of the image size (``boxes.npy``), so that a model can tell where
each region is (``model.position``, ``model.distance_bias``).
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lrcn.errors import LrcnError
from lrcn.features.store import DTYPES, FeatureStore, read_npy_header
from lrcn.features.writer import StoreWriter

log = logging.getLogger(__name__)

_CHUNK_BYTES = 64 << 20  # rows are gathered into blocks of about this size before writing


@dataclass(frozen=True)
class PublishedFormat:
    """How to read one published per-image format.

    Attributes:
        extension: file name ending of the per-image files.
        layout: "grid" or "regions".
        pads: whether items may differ in size (padded, with a mask) or must all match.
        shape: (path, channels) -> item shape, reading as little of the file as possible.
        load: (path, channels) -> the item as an array in store layout ((H, W, C) or (R, C)).
        has_boxes: path -> whether the file carries region boxes (cheaply); None: never.
        boxes: (path, regions) -> (R, 4) boxes (x0, y0, x1, y1), fractions of the image size.
    """

    extension: str
    layout: str
    pads: bool
    shape: Callable[[Path, int], tuple[int, ...]]
    load: Callable[[Path, int], np.ndarray]
    has_boxes: Callable[[Path], bool] | None = None
    boxes: Callable[[Path, int], np.ndarray] | None = None


def _check_float(path: Path, dtype: np.dtype | torch.dtype) -> None:
    is_float = dtype.is_floating_point if isinstance(dtype, torch.dtype) else (
        np.issubdtype(dtype, np.floating))
    if not is_float:
        raise LrcnError(f"{path}: features must be floating point, got {dtype}")


# --------------------------------------------------------------------------- trar

def _trar_array(path: Path, channels: int, mmap: bool) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise LrcnError(f"{path}: cannot read as a .npy array ({type(exc).__name__}: {exc})") from None
    if not isinstance(array, np.ndarray):
        raise LrcnError(f"{path}: expected one .npy array, got {type(array).__name__}")
    if array.ndim != 3 or array.shape[-1] != channels:
        raise LrcnError(f"{path}: expected a grid (H, W, {channels}), got shape {array.shape}"
                        f"{'' if array.ndim != 3 else ' (set --channels if that is right)'}")
    _check_float(path, array.dtype)
    return array


def _trar_shape(path: Path, channels: int) -> tuple[int, ...]:
    return _trar_array(path, channels, mmap=True).shape


def _trar_load(path: Path, channels: int) -> np.ndarray:
    return _trar_array(path, channels, mmap=False)


# --------------------------------------------------------------------------- gridfeats

def _gridfeats_tensor(path: Path, channels: int) -> torch.Tensor:
    # weights_only: a .pth is a pickle, and only tensors (no arbitrary objects) may load.
    # Memory-mapped where the file allows it (torch.save's zip format, not the legacy one), so
    # the shape pass reads little more than the header.
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True,
                            mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        # torch's weights-only message is a page of advice; the line that names the cause is
        # the one after "WeightsUnpickler error:".
        text = str(exc)
        _, found, cause = text.partition("WeightsUnpickler error:")
        cause = (cause if found else text).strip().split("\n")[0].split(". ")[0][:200]
        raise LrcnError(f"{path}: cannot read as a tensor saved by torch.save; only tensors are "
                        f"loaded, never other pickled objects ({type(exc).__name__}: {cause})") from None
    if not isinstance(tensor, torch.Tensor):
        raise LrcnError(f"{path}: expected a tensor (1, {channels}, H, W), got {type(tensor).__name__}")
    if tensor.dim() != 4 or tensor.shape[0] != 1 or tensor.shape[1] != channels or tensor.numel() == 0:
        raise LrcnError(f"{path}: expected a tensor (1, {channels}, H, W), got shape "
                        f"{tuple(tensor.shape)} (set --channels if the channel count is right)")
    _check_float(path, tensor.dtype)
    return tensor


def _gridfeats_shape(path: Path, channels: int) -> tuple[int, ...]:
    _, c, h, w = _gridfeats_tensor(path, channels).shape
    return (h, w, c)


def _gridfeats_load(path: Path, channels: int) -> np.ndarray:
    tensor = _gridfeats_tensor(path, channels)
    return tensor[0].permute(1, 2, 0).float().numpy()  # (C, H, W) -> (H, W, C)


# --------------------------------------------------------------------------- openvqa

def _regions_transposed(path: Path, shape: tuple[int, ...], channels: int) -> bool:
    """Whether ``x`` is stored (C, R), found from which axis has `channels`."""
    if len(shape) != 2:
        raise LrcnError(f"{path}: 'x' must be 2-D ({channels}, R) or (R, {channels}), got shape {shape}")
    if shape[0] == shape[1] == channels:
        raise LrcnError(f"{path}: 'x' has shape {shape}: both axes have {channels}, so which is "
                        "the channel axis is ambiguous")
    if channels not in shape:
        raise LrcnError(f"{path}: 'x' has shape {shape}, neither axis has {channels} channels "
                        "(set --channels if that is right)")
    if 0 in shape:
        raise LrcnError(f"{path}: 'x' has shape {shape}: no regions")
    return shape[0] == channels


def _openvqa_shape(path: Path, channels: int) -> tuple[int, ...]:
    # Read only x's .npy header inside the zip, not its (possibly compressed) data.
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "x.npy" not in names:
                found = ", ".join(n.removesuffix(".npy") for n in names) or "nothing"
                raise LrcnError(f"{path}: no array 'x' in the .npz (it holds {found})")
            with archive.open("x.npy") as f:
                shape, dtype, _, _ = read_npy_header(f, path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise LrcnError(f"{path}: cannot read as a .npz archive ({exc})") from None
    _check_float(path, dtype)
    r, c = shape[::-1] if _regions_transposed(path, shape, channels) else shape
    return (r, c)


def _openvqa_load(path: Path, channels: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise LrcnError(f"{path}: no array 'x' in the .npz (it holds {', '.join(archive.files)})")
            x = archive["x"]
    except LrcnError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise LrcnError(f"{path}: cannot read as a .npz archive ({type(exc).__name__}: {exc})") from None
    _check_float(path, x.dtype)
    return x.T if _regions_transposed(path, x.shape, channels) else x


OPENVQA_BOX_ARRAYS = ("bbox", "image_h", "image_w")
BOX_TOLERANCE = 0.01  # boxes may overshoot the image by this fraction (then clipped to it)


def _openvqa_has_boxes(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n.removesuffix(".npy") for n in archive.namelist()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise LrcnError(f"{path}: cannot read as a .npz archive ({exc})") from None
    present = [n for n in OPENVQA_BOX_ARRAYS if n in names]
    if present and len(present) != len(OPENVQA_BOX_ARRAYS):
        missing = ", ".join(n for n in OPENVQA_BOX_ARRAYS if n not in names)
        raise LrcnError(f"{path}: has {', '.join(present)} but not {missing}; region boxes "
                        f"need all of {', '.join(OPENVQA_BOX_ARRAYS)}")
    return bool(present)


def _openvqa_boxes(path: Path, regions: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            bbox = np.asarray(archive["bbox"], dtype=np.float64)
            height, width = (np.asarray(archive[n]) for n in ("image_h", "image_w"))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise LrcnError(f"{path}: cannot read its boxes ({type(exc).__name__}: {exc})") from None
    if height.size != 1 or width.size != 1 or not (float(height) > 0 and float(width) > 0):
        raise LrcnError(f"{path}: image_h and image_w must be positive numbers, got "
                        f"{height.tolist()} and {width.tolist()}")
    if bbox.shape != (regions, 4):
        raise LrcnError(f"{path}: bbox has shape {bbox.shape}, expected ({regions}, 4): one "
                        "box (x0, y0, x1, y1) per region of x")
    boxes = bbox / np.array([float(width), float(height)] * 2)
    bad = ~np.isfinite(boxes).all(1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    bad |= ((boxes < -BOX_TOLERANCE) | (boxes > 1 + BOX_TOLERANCE)).any(1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LrcnError(f"{path}: box {i} {bbox[i].tolist()} is not (x0, y0, x1, y1) with "
                        f"x0 <= x1, y0 <= y1 inside the {float(width):g} x {float(height):g} "
                        "image")
    return np.clip(boxes, 0.0, 1.0).astype(np.float32)


FORMATS: dict[str, PublishedFormat] = {
    "trar": PublishedFormat(".npy", "grid", pads=False, shape=_trar_shape, load=_trar_load),
    "gridfeats": PublishedFormat(".pth", "grid", pads=True, shape=_gridfeats_shape,
                                 load=_gridfeats_load),
    "openvqa": PublishedFormat(".npz", "regions", pads=True, shape=_openvqa_shape,
                               load=_openvqa_load, has_boxes=_openvqa_has_boxes,
                               boxes=_openvqa_boxes),
}


# --------------------------------------------------------------------------- import

def find_files(src: Path, extension: str) -> list[tuple[str, Path]]:
    """(key, path) of every file under `src` ending in `extension`, sorted by relative path."""
    found = []
    for path in src.rglob("*"):
        if path.name.lower().endswith(extension) and path.is_file():
            relative = path.relative_to(src).as_posix()
            found.append((relative, path))
    found.sort()
    return [(relative[: -len(extension)], path) for relative, path in found]


def _cast_checked(array: np.ndarray, dtype: str, path: Path) -> np.ndarray:
    """`array` as `dtype`; LrcnError naming `path` for NaN/inf, before or after the cast."""
    if not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise LrcnError(f"{path}: {bad} non-finite values (NaN or inf)")
    with np.errstate(over="ignore"):  # overflow is reported below, naming the file
        cast = array.astype(dtype)
    if not np.isfinite(cast).all():
        raise LrcnError(f"{path}: values up to {float(np.abs(array).max()):.6g} overflow {dtype} "
                        f"(largest finite {float(np.finfo(dtype).max):.6g}); import with --dtype float32")
    return cast


def _all_or_no_boxes(spec: PublishedFormat, files: list[tuple[str, Path]]) -> bool:
    """Whether the files carry region boxes: all of them, or none (LrcnError naming a file
    without boxes when others have them: a store's regions are placed all alike)."""
    if spec.has_boxes is None:
        return False
    has = [spec.has_boxes(path) for _, path in files]
    if any(has) and not all(has):
        without = files[has.index(False)][1]
        with_ = files[has.index(True)][1]
        raise LrcnError(f"{without}: has no region boxes, but {with_} and {sum(has) - 1} more "
                        "files do; give every file its boxes, or none")
    return all(has)


def import_features(
    fmt: str,
    src: str | Path,
    out: str | Path,
    dtype: str = "float16",
    channels: int = 2048,
    mask_zero_rows: bool = False,
) -> FeatureStore:
    """Pack the per-image files of a published format under `src` into a new store at `out`.

    With `mask_zero_rows`, every region (grid cell) whose features are all zero is masked, as
    openvqa masks the zero rows it pads its region lists with; otherwise only the padding
    added here is.

    Two passes, never holding all arrays: the first reads only shapes (to size the store and
    the padding), the second writes rows block by block. On any error the partial store is
    removed, so `out` either is complete or does not exist.
    """
    if fmt not in FORMATS:
        raise LrcnError(f"unknown feature format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise LrcnError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if channels < 1:
        raise LrcnError(f"--channels must be positive, got {channels}")
    spec = FORMATS[fmt]
    src, out = Path(src), Path(out)
    if out.exists():
        raise LrcnError(f"{out} already exists; choose another --out or delete it first")
    if not src.is_dir():
        raise LrcnError(f"feature folder not found: {src}")
    files = find_files(src, spec.extension)
    if not files:
        raise LrcnError(f"no {spec.extension} files under {src} (looked for {fmt} features, "
                        f"one {spec.extension} file per image)")

    shapes = [spec.shape(path, channels)
              for _, path in tqdm(files, desc=f"{fmt}: reading shapes", unit="file", disable=None)]
    if not spec.pads and len(set(shapes)) > 1:
        first = shapes[0]
        i = next(i for i, s in enumerate(shapes) if s != first)
        raise LrcnError(f"{files[i][1]}: shape {shapes[i]} differs from {first} of {files[0][1]}; "
                        f"every {fmt} file must have the same shape")
    item_shape = tuple(max(s[d] for s in shapes) for d in range(len(shapes[0])))
    with_mask = len(set(shapes)) > 1 or mask_zero_rows
    with_boxes = _all_or_no_boxes(spec, files)
    log.info("%s: %d files, item shape %s%s%s", src, len(files), item_shape,
             " (padded, with mask)" if with_mask else "", ", with boxes" if with_boxes else "")

    source = {"format": fmt, "src": str(src.resolve()), "channels": channels,
              "mask_zero_rows": mask_zero_rows}
    writer = StoreWriter(out, len(files), item_shape, dtype, spec.layout, with_mask,
                         [key for key, _ in files], source, with_boxes=with_boxes)
    try:
        row_bytes = math.prod(item_shape) * np.dtype(dtype).itemsize
        chunk = max(1, _CHUNK_BYTES // row_bytes)
        bar = tqdm(total=len(files), desc=f"{fmt}: writing", unit="file", disable=None)
        for start in range(0, len(files), chunk):
            part = files[start:start + chunk]
            block = np.zeros((len(part), *item_shape), dtype=dtype)  # zeros = the padding
            mask = np.zeros((len(part), *item_shape[:-1]), dtype=bool) if with_mask else None
            boxes = np.zeros((len(part), item_shape[0], 4), np.float32) if with_boxes else None
            for j, (_, path) in enumerate(part):
                array = spec.load(path, channels)
                if array.shape != shapes[start + j]:  # the file changed between the passes
                    raise LrcnError(f"{path}: shape {array.shape}, was {shapes[start + j]} a moment ago")
                cells = tuple(slice(0, n) for n in array.shape[:-1])
                block[(j, *cells)] = _cast_checked(array, dtype, path)
                if mask is not None:
                    mask[(j, *cells)] = True
                if mask_zero_rows:
                    mask[j] &= (block[j] != 0).any(axis=-1)
                if boxes is not None:
                    boxes[j, :len(array)] = spec.boxes(path, len(array))
            writer.write(start, block, mask, boxes)
            bar.update(len(part))
        bar.close()
        return writer.finish()
    except BaseException:
        writer.abort()
        raise
