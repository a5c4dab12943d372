"""Reading images from a dataset folder and turning them into normalised tensors.

Pixels are kept as uint8 (3, S, S) tensors after resizing, which is four times smaller than
float and lets a small dataset (easy-VQA: 4,000 images, 49 MB) stay decoded in memory; the
float conversion and ImageNet normalisation happen per batch in `normalize`.
"""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from lrcn.errors import LrcnError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# warnings.catch_warnings changes process-wide state: one thread at a time turns Pillow's
# decompression-bomb warning into an error.
_OPEN_LOCK = threading.Lock()


def load_image(path: Path) -> Image.Image:
    """Open an image file as RGB (see `to_rgb`), or fail with a message naming the file.

    An image over Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``, a decompression-bomb
    guard) is refused from its header, before any pixel is decoded.
    """
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise LrcnError(f"image not found: {path}") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise LrcnError(f"image {path} is over the pixel limit, refused: {exc}") from None
    except MemoryError:
        raise
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise LrcnError(f"cannot read image {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - some decoders raise SyntaxError, struct.error...
        raise LrcnError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as the image is seen: EXIF rotation applied, transparency over white, 16-bit
    and float images scaled to 8 bits (Pillow's own conversion clips them to white)."""
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
        pass
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit integer, float
        values = np.asarray(image, dtype=np.float32)
        if image.mode == "F":
            low, high = float(values.min()), float(values.max())
            values = (values - low) * (255.0 / max(high - low, 1e-12))
        else:
            values = values / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def find_unreadable(paths: list[Path], threads: int = 4) -> dict[Path, str]:
    """Every path that is missing or cannot be decoded, with the reason; one full decode each."""

    def problem(path: Path) -> str | None:
        try:
            load_image(path)
        except LrcnError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return {p: reason for p, reason in zip(paths, pool.map(problem, paths)) if reason}


def resize_transform(size: int) -> v2.Compose:
    """PIL image -> uint8 tensor (3, size, size)."""
    return v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True)])


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) with ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


class ImageTable:
    """The distinct images of a split, addressed by row, decoded on demand or all at once.

    Many questions share an image (about ten per image in easy-VQA and VQA-v2), so batches
    refer to images by row and each image is decoded, and encoded, once.
    """

    def __init__(self, paths: list[Path], size: int, cache: bool, threads: int = 4) -> None:
        self.paths = paths
        self.size = size
        self.transform = resize_transform(size)
        self.threads = threads
        self._cache: torch.Tensor | None = None
        if cache:
            self._cache = self._decode_many(range(len(paths)))

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, row: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[row]))

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def _decode_many(self, rows) -> torch.Tensor:
        rows = list(rows)
        out = torch.empty(len(rows), 3, self.size, self.size, dtype=torch.uint8)
        # Pillow releases the GIL while decoding, so threads overlap the file reads.
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for i, pixels in enumerate(pool.map(self._decode, rows)):
                out[i] = pixels
        return out

    def pixels(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 (len(rows), 3, S, S) for the given image rows."""
        if self._cache is not None:
            return self._cache[rows]
        return self._decode_many(rows.tolist())
