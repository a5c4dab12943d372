"""Grid features from the user's own images: the C5 grid of a frozen torchvision trunk.

Each image is resized to S x S, ImageNet-normalised and run through the trunk up to layer4,
giving (S/32) x (S/32) cells of 2048 channels (S = 512 -> 16 x 16, the grid the paper feeds
to its 2x2 stride-2 convolution). Extraction is resumable: after every batch the rows are
made durable and ``STORE.partial/progress.json`` is rewritten atomically, so rerunning the
same command continues after the last complete batch and gives a byte-identical store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lrcn.data.images import ImageTable, normalize
from lrcn.fileio import atomic_write
from lrcn.errors import LrcnError
from lrcn.features.store import DTYPES, PROGRESS_FILE, FeatureStore, partial_path, sha256_file
from lrcn.features.writer import StoreWriter
from lrcn.models.image_encoders import TorchvisionTrunk

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TRUNK_STRIDE = 32  # C5 cells per image side = image_size / 32
TRUNK_CHANNELS = 2048
RANDOM_SEED = 0  # random weights are seeded, so a resumed run matches an uninterrupted one


def find_images(images_dir: Path) -> list[tuple[str, Path]]:
    """(key, path) of every .jpg/.jpeg/.png under `images_dir`, sorted; key = relative path."""
    found = [(path.relative_to(images_dir).as_posix(), path) for path in images_dir.rglob("*")
             if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()]
    return sorted(found)


def _settings(keys: list[str], backbone: str, weights: Path | None, random_weights: bool,
              image_size: int, batch_size: int, dtype: str, device: str) -> dict[str, Any]:
    """Everything that decides the bytes of the store; a resumed run must match it exactly."""
    return {
        "count": len(keys),
        "keys_sha256": hashlib.sha256(json.dumps(keys).encode()).hexdigest(),
        "backbone": backbone,
        "weights": None if weights is None else str(weights.resolve()),
        "weights_bytes": None if weights is None else weights.stat().st_size,
        "weights_sha256": None if weights is None else sha256_file(weights),
        "random_weights": random_weights,
        "image_size": image_size,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
    }


def _resume_point(partial: Path, settings: dict[str, Any]) -> int:
    """Rows already extracted into `partial` with the same settings; LrcnError if they differ."""
    progress_path = partial / PROGRESS_FILE
    try:
        progress = json.loads(progress_path.read_text())
        old, done = progress["settings"], progress["rows_done"]
    except FileNotFoundError:
        raise LrcnError(f"{partial} exists but holds no {PROGRESS_FILE}, so it is not an "
                        "extraction that can be continued; delete it and run again") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LrcnError(f"{progress_path}: unreadable ({exc}); delete {partial} and run again") from None
    differ = [f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now"
              for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if differ:
        raise LrcnError(f"{partial} holds an unfinished extraction with other settings "
                        f"({'; '.join(differ)}); rerun with the same arguments to continue it, "
                        f"or delete {partial} to start over")
    batch, count = settings["batch_size"], settings["count"]
    if not isinstance(done, int) or not 0 <= done <= count or (done % batch and done != count):
        raise LrcnError(f"{progress_path}: rows_done {done!r} is not a batch boundary of "
                        f"{count} images; delete {partial} and run again")
    return done


def _write_progress(partial: Path, rows_done: int, settings: dict[str, Any]) -> None:
    progress = {"rows_done": rows_done, "settings": settings}
    atomic_write(partial / PROGRESS_FILE, lambda f: f.write(json.dumps(progress, indent=2).encode()))


def _build_trunk(backbone: str, weights: Path | None, random_weights: bool,
                 device: torch.device) -> TorchvisionTrunk:
    if random_weights:
        message = (f"extracting with RANDOM {backbone} weights (--random-weights): the features "
                   "are noise, fit only for tests")
        log.warning(message)
        print(f"WARNING: {message}", file=sys.stderr)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(RANDOM_SEED)
        trunk = TorchvisionTrunk(backbone, weights, freeze=True, random_weights=random_weights)
    return trunk.to(device)


def extract_features(
    images_dir: str | Path,
    backbone: str,
    weights: str | Path | None,
    out: str | Path,
    image_size: int = 512,
    batch_size: int = 16,
    random_weights: bool = False,
    device: str = "cpu",
    dtype: str = "float16",
) -> FeatureStore:
    """Extract the C5 grid of every image under `images_dir` into a new store at `out`.

    Keys are the images' paths relative to `images_dir`. If ``out``.partial holds an
    interrupted extraction with the same settings, it is continued; with other settings it
    is an error. Nothing exists at `out` until the store is complete.
    """
    images_dir, out = Path(images_dir), Path(out)
    if image_size < TRUNK_STRIDE or image_size % TRUNK_STRIDE:
        raise LrcnError(f"--image-size must be a positive multiple of {TRUNK_STRIDE}, got {image_size}")
    if batch_size < 1:
        raise LrcnError(f"--batch-size must be at least 1, got {batch_size}")
    if dtype not in DTYPES:
        raise LrcnError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if weights is None and not random_weights:
        raise LrcnError(f"{backbone} needs its weights: pass --weights FILE (a torchvision state "
                        "dict saved with torch.save(model.state_dict(), FILE)); --random-weights "
                        "is for tests only")
    if weights is not None and random_weights:
        raise LrcnError("--weights and --random-weights exclude each other")
    weights = None if weights is None else Path(weights)
    if weights is not None and not weights.is_file():
        raise LrcnError(f"weights file not found: {weights}")
    if device == "cuda" and not torch.cuda.is_available():
        raise LrcnError("--device cuda: no CUDA device is available")
    if out.exists():
        raise LrcnError(f"{out} already exists; choose another --out or delete it first")
    if not images_dir.is_dir():
        raise LrcnError(f"image folder not found: {images_dir}")
    files = find_images(images_dir)
    if not files:
        raise LrcnError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {images_dir}")
    keys = [key for key, _ in files]
    count = len(keys)

    settings = _settings(keys, backbone, weights, random_weights, image_size, batch_size,
                         dtype, device)
    partial = partial_path(out)
    resume = partial.exists()
    done = _resume_point(partial, settings) if resume else 0
    trunk = _build_trunk(backbone, weights, random_weights, torch.device(device))

    cells = image_size // TRUNK_STRIDE
    source = {"backbone": backbone, "weights": settings["weights"],
              "weights_sha256": settings["weights_sha256"], "random_weights": random_weights,
              "image_size": image_size, "images": str(images_dir.resolve()),
              "normalization": "imagenet", "device": device}
    writer = StoreWriter(out, count, (cells, cells, TRUNK_CHANNELS), dtype, "grid", False, keys,
                         source, resume=resume)
    if resume:
        log.info("%s: continuing after %d of %d images", partial, done, count)
    else:
        _write_progress(partial, 0, settings)

    table = ImageTable([path for _, path in files], image_size, cache=False)
    starts = list(range(done, count, batch_size))

    def batch_pixels(start: int) -> torch.Tensor:
        return table.pixels(torch.arange(start, min(start + batch_size, count)))

    try:
        bar = tqdm(total=count, initial=done, desc=f"{backbone} features", unit="img",
                   disable=None)
        # One thread decodes the next batch while the trunk runs on this one.
        with ThreadPoolExecutor(max_workers=1) as loader, torch.no_grad():
            pending = loader.submit(batch_pixels, starts[0]) if starts else None
            for i, start in enumerate(starts):
                pixels = pending.result()
                if i + 1 < len(starts):
                    pending = loader.submit(batch_pixels, starts[i + 1])
                grid = trunk(normalize(pixels.to(device)))  # (B, cells, cells, 2048)
                block = grid.float().cpu().numpy().astype(dtype)
                finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
                if not finite.all():
                    bad = start + int(np.flatnonzero(~finite)[0])
                    raise LrcnError(f"{files[bad][1]}: features overflow {dtype} (NaN or inf); "
                                    "extract with --dtype float32")
                writer.write(start, block)
                writer.flush()  # rows durable before progress says they are done
                _write_progress(partial, start + len(block), settings)
                bar.update(len(block))
        bar.close()
    except BaseException:
        writer.close_files()
        log.info("progress kept in %s; rerun the same command to continue", partial)
        raise
    store = writer.finish()
    log.info("wrote %d grids %s to %s", count, store.item_shape, out)
    return store
