"""Grid features from the user's own images: the C5 (or conv4) grid of a frozen trunk.

Torchvision trunks: each image is resized to S x S, ImageNet-normalised and run through the
trunk up to ``layer4``, giving (S/32) x (S/32) cells of 2048 channels (S = 512 -> 16 x 16, the
grid the paper feeds to its 2x2 stride-2 convolution), or up to ``layer3``, giving
(S/16) x (S/16) cells of 1024 channels (a ResNet-101 at S = 224 -> 14 x 14 x 1024: CLEVR's
standard features, as openvqa's and FiLM's extraction scripts make them).

``x152`` (grid-feats-vqa's X-152, `lrcn.models.detectron2_trunk`): each image is prepared as
detectron2 does (shortest side 600, longest at most 1000, aspect ratio kept; BGR minus the
pixel mean), run at its own size, one image at a time, since padding to batch them would change
the border cells; its variable res5 grid is then average-pooled to a fixed G x G (16 or 8).

Extraction is resumable: after every batch the rows are made durable and
``STORE.partial/progress.json`` is rewritten atomically, so rerunning the same command
continues after the last complete batch and gives a byte-identical store.
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
import torch.nn.functional as F
from tqdm import tqdm

from lrcn.data.images import ImageTable, load_image, normalize
from lrcn.fileio import atomic_write
from lrcn.errors import LrcnError
from lrcn.features.store import DTYPES, PROGRESS_FILE, FeatureStore, partial_path, sha256_file
from lrcn.features.writer import StoreWriter
from lrcn.models.detectron2_trunk import (
    DETECTRON2_TRUNK_NAMES,
    GRID_SIZES,
    MAX_SIZE_TEST,
    MIN_SIZE_TEST,
    Detectron2Trunk,
    preprocess,
)
from lrcn.models.image_encoders import (
    TRUNK_LAYERS,
    TRUNK_NAMES,
    TRUNK_STRIDES,
    GridEncoder,
    TorchvisionTrunk,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
RANDOM_SEED = 0  # random weights are seeded, so a resumed run matches an uninterrupted one
BACKBONES = TRUNK_NAMES + DETECTRON2_TRUNK_NAMES
DEFAULT_IMAGE_SIZE = 512  # torchvision trunks
DEFAULT_LAYER = "layer4"  # torchvision trunks: C5
DEFAULT_GRID = GRID_SIZES[0]  # x152: 16 x 16


def find_images(images_dir: Path) -> list[tuple[str, Path]]:
    """(key, path) of every .jpg/.jpeg/.png under `images_dir`, sorted; key = relative path."""
    found = [(path.relative_to(images_dir).as_posix(), path) for path in images_dir.rglob("*")
             if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()]
    return sorted(found)


def _settings(keys: list[str], backbone: str, weights: Path | None, random_weights: bool,
              image_size: int | None, batch_size: int, dtype: str, device: str,
              grid: int | None = None, resize: tuple[int, int] | None = None,
              layer: str | None = None) -> dict[str, Any]:
    """Everything that decides the bytes of the store; a resumed run must match it exactly.

    `image_size` and `layer` are a torchvision trunk's, `grid` and `resize` (shortest,
    longest) x152's; the others' are None.
    """
    return {
        "count": len(keys),
        "keys_sha256": hashlib.sha256(json.dumps(keys).encode()).hexdigest(),
        "backbone": backbone,
        "weights": None if weights is None else str(weights.resolve()),
        "weights_bytes": None if weights is None else weights.stat().st_size,
        "weights_sha256": None if weights is None else sha256_file(weights),
        "random_weights": random_weights,
        "image_size": image_size,
        "layer": layer,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
        "grid": grid,
        "resize": None if resize is None else list(resize),  # as JSON gives it back
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
    if "layer" not in old and old.get("image_size") is not None:
        old["layer"] = DEFAULT_LAYER  # a torchvision extraction from before --layer: C5
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
                 device: torch.device, layer: str | None) -> GridEncoder:
    if random_weights:
        message = (f"extracting with RANDOM {backbone} weights (--random-weights): the features "
                   "are noise, fit only for tests")
        log.warning(message)
        print(f"WARNING: {message}", file=sys.stderr)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(RANDOM_SEED)
        if backbone in DETECTRON2_TRUNK_NAMES:
            trunk: GridEncoder = Detectron2Trunk(weights, random_weights=random_weights)
        else:
            assert layer is not None
            trunk = TorchvisionTrunk(backbone, weights, freeze=True,
                                     random_weights=random_weights, layer=layer)
    return trunk.to(device)


def extract_features(
    images_dir: str | Path,
    backbone: str,
    weights: str | Path | None,
    out: str | Path,
    image_size: int | None = None,
    batch_size: int = 16,
    random_weights: bool = False,
    device: str = "cpu",
    dtype: str = "float16",
    grid: int | None = None,
    resize: tuple[int, int] | None = None,
    layer: str | None = None,
) -> FeatureStore:
    """Extract the C5 (or conv4) grid of every image under `images_dir` into a new store at `out`.

    Keys are the images' paths relative to `images_dir`. If ``out``.partial holds an
    interrupted extraction with the same settings, it is continued; with other settings it
    is an error. Nothing exists at `out` until the store is complete.

    Torchvision trunks take `image_size` (default 512) and `layer` (default ``layer4``):
    images are resized to S x S and the grid is layer4's S/32 x S/32 (2048 channels for
    ResNet-50 and deeper) or layer3's S/16 x S/16 (1024 channels). ``x152`` takes `grid` (16
    or 8, default 16): the G x G average pool of its res5 grid, each image resized as
    grid-feats-vqa does; `resize` (shortest, longest), default (600, 1000), is for tests that
    cannot afford 600-pixel images on a CPU. On the x152 path the trunk runs one image at a
    time and `batch_size` is only the number of rows written, and recorded as done, together.
    """
    images_dir, out = Path(images_dir), Path(out)
    if backbone not in BACKBONES:
        raise LrcnError(f"unknown image trunk {backbone!r}; known trunks: {', '.join(BACKBONES)}")
    detectron2 = backbone in DETECTRON2_TRUNK_NAMES
    if detectron2:
        if image_size is not None:
            raise LrcnError(f"--image-size is for torchvision trunks: {backbone} resizes each "
                            f"image as grid-feats-vqa does (shortest side {MIN_SIZE_TEST}, "
                            f"longest at most {MAX_SIZE_TEST}) and pools its grid to --grid")
        if layer is not None:
            raise LrcnError(f"--layer is for torchvision trunks: {backbone} gives its res5 "
                            "grid (layer4), pooled to --grid")
        grid = DEFAULT_GRID if grid is None else grid
        if grid not in GRID_SIZES:
            raise LrcnError(f"--grid must be one of {', '.join(map(str, GRID_SIZES))}, got {grid}")
        resize = (MIN_SIZE_TEST, MAX_SIZE_TEST) if resize is None else tuple(resize)
        if len(resize) != 2 or not all(isinstance(n, int) and n > 0 for n in resize) \
                or resize[0] > resize[1]:
            raise LrcnError(f"resize must be (shortest, longest), positive, shortest <= longest; "
                            f"got {resize!r}")
    else:
        if grid is not None or resize is not None:
            raise LrcnError(f"--grid (and resize) are for {', '.join(DETECTRON2_TRUNK_NAMES)}: "
                            "a torchvision trunk's grid is --image-size / its --layer's stride")
        layer = DEFAULT_LAYER if layer is None else layer
        if layer not in TRUNK_LAYERS:
            raise LrcnError(f"--layer must be one of {', '.join(TRUNK_LAYERS)}, got {layer!r}")
        stride = TRUNK_STRIDES[layer]
        image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
        if image_size < stride or image_size % stride:
            raise LrcnError(f"--image-size must be a positive multiple of {stride} (the stride "
                            f"of {layer}), got {image_size}")
    if batch_size < 1:
        raise LrcnError(f"--batch-size must be at least 1, got {batch_size}")
    if dtype not in DTYPES:
        raise LrcnError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if weights is None and not random_weights:
        kind = ("grid-feats-vqa's X-152.pth, a detectron2 checkpoint" if detectron2 else
                "a torchvision state dict saved with torch.save(model.state_dict(), FILE)")
        raise LrcnError(f"{backbone} needs its weights: pass --weights FILE ({kind}); "
                        "--random-weights is for tests only")
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
                         dtype, device, grid, resize, layer)
    partial = partial_path(out)
    resume = partial.exists()
    done = _resume_point(partial, settings) if resume else 0
    trunk = _build_trunk(backbone, weights, random_weights, torch.device(device), layer)

    source: dict[str, Any] = {
        "backbone": backbone, "weights": settings["weights"],
        "weights_sha256": settings["weights_sha256"], "random_weights": random_weights}
    if detectron2:
        assert grid is not None and resize is not None
        cells = grid
        source.update({"resize": list(resize), "grid": grid, "images": str(images_dir.resolve()),
                       "normalization": "detectron2-bgr", "device": device})
    else:
        assert image_size is not None and layer is not None
        cells = image_size // TRUNK_STRIDES[layer]
        source.update({"layer": layer, "image_size": image_size,
                       "images": str(images_dir.resolve()), "normalization": "imagenet",
                       "device": device})
    writer = StoreWriter(out, count, (cells, cells, trunk.out_channels), dtype, "grid", False,
                         keys, source, resume=resume)
    if resume:
        log.info("%s: continuing after %d of %d images", partial, done, count)
    else:
        _write_progress(partial, 0, settings)

    starts = list(range(done, count, batch_size))
    if detectron2:
        def batch_pixels(start: int) -> list[torch.Tensor]:  # [(3, H_i, W_i)], sizes differ
            return [preprocess(load_image(path), *resize)
                    for _, path in files[start:start + batch_size]]

        def encode(pixels: list[torch.Tensor]) -> torch.Tensor:
            grids = []
            for image in pixels:  # one at a time: padding would change the border cells
                res5 = trunk(image[None].to(device)).permute(0, 3, 1, 2)  # (1, 2048, h, w)
                pooled = F.adaptive_avg_pool2d(res5, cells)  # (1, 2048, G, G)
                grids.append(pooled.permute(0, 2, 3, 1))  # (1, G, G, 2048)
            return torch.cat(grids)  # (B, G, G, 2048)
    else:
        table = ImageTable([path for _, path in files], image_size, cache=False)

        def batch_pixels(start: int) -> torch.Tensor:
            return table.pixels(torch.arange(start, min(start + batch_size, count)))

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            return trunk(normalize(pixels.to(device)))  # (B, cells, cells, C)

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
                block = encode(pixels).float().cpu().numpy().astype(dtype)
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
