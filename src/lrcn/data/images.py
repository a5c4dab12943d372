"""Reading images from a dataset folder and turning them into normalised tensors.

Pixels are kept as uint8 (3, S, S) tensors after resizing, which is four times smaller than
float and lets a small dataset (easy-VQA: 4,000 images, 49 MB) stay decoded in memory; the
float conversion and ImageNet normalisation happen per batch in `normalize`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from lrcn.errors import LrcnError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: Path) -> Image.Image:
    """Open an image file as RGB, or fail with a message naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise LrcnError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise LrcnError(f"cannot read image {path}: {exc}") from None


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
