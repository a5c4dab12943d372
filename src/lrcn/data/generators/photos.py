"""Photos as blind users take them: usable ones, and three kinds no one can answer from.

VizWiz photos are often blurred, dark or miss the object asked about. Given an easy-VQA
image (``easyvqa_source.SourceImage``) and a random stream, each function here returns the
photo a user might have taken of it, as (IMAGE_SIZE, IMAGE_SIZE, 3) uint8 pixels:

* ``usable``: the image, clean (``CLEAN_SHARE`` of the time) or mildly blurred, dimmed or
  brightened, and noisy;
* ``blurred``: heavy Gaussian blur; ``dark``: 5-10 % brightness plus noise; ``cropped``: a
  square of background beside the shape, resized to the full frame.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from lrcn.data.generators.easyvqa_source import IMAGE_SIZE, SHAPE_THRESHOLD, SourceImage
from lrcn.errors import LrcnError

__all__ = ["PHOTOS", "UNUSABLE", "blurred_photo", "cropped_photo", "dark_photo", "usable_photo"]

CLEAN_SHARE = 0.5  # of usable photos left as they are; the rest mildly degraded:
MILD_BRIGHTNESS = (0.8, 1.1)  # brightness factor
MILD_BLUR = (0.3, 0.8)  # Gaussian radius, pixels
MILD_NOISE = (1.0, 4.0)  # noise standard deviation, grey levels
BLUR_RADIUS = (7.0, 10.0)  # unusable: Gaussian radius, pixels
DARK_FACTOR = (0.05, 0.10)  # unusable: brightness factor ...
DARK_NOISE = (3.0, 6.0)  # ... plus noise of this standard deviation
CROP_MARGIN = 2  # pixels kept between a crop and the shape's bounding box
CROP_SIZE = (8, 32)  # side of the square crop, pixels, before resizing to IMAGE_SIZE
CROP_NOISE = 2.0


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _blur(pixels: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))


def _noisy(pixels: np.ndarray, rng: np.random.Generator, factor: float, std: float) -> np.ndarray:
    """``pixels * factor`` plus Gaussian noise of standard deviation ``std``."""
    return _to_uint8(pixels.astype(np.float64) * factor + rng.normal(0.0, std, pixels.shape))


def usable_photo(src: SourceImage, rng: np.random.Generator) -> np.ndarray:
    """The source photo, clean or (1 - CLEAN_SHARE of the time) mildly degraded."""
    if rng.random() < CLEAN_SHARE:
        return src.pixels
    blurred = _blur(src.pixels, _uniform(rng, MILD_BLUR))
    return _noisy(blurred, rng, _uniform(rng, MILD_BRIGHTNESS), _uniform(rng, MILD_NOISE))


def blurred_photo(src: SourceImage, rng: np.random.Generator) -> np.ndarray:
    return _blur(src.pixels, _uniform(rng, BLUR_RADIUS))


def dark_photo(src: SourceImage, rng: np.random.Generator) -> np.ndarray:
    return _noisy(src.pixels, rng, _uniform(rng, DARK_FACTOR), _uniform(rng, DARK_NOISE))


def cropped_photo(src: SourceImage, rng: np.random.Generator) -> np.ndarray:
    """A square of background beside the shape, resized to the full frame, plus noise.

    The square lies in a strip left, right, above or below the shape's bounding box (at
    least CROP_MARGIN pixels away); the shape spans at most half the frame, so one strip
    is always wide enough. The crop is checked to hold no shape pixel.
    """
    x0, y0, x1, y1 = src.bbox
    far = IMAGE_SIZE - 1
    strips = {  # side: free width beside the bounding box
        "left": x0 - CROP_MARGIN, "right": far - x1 - CROP_MARGIN,
        "top": y0 - CROP_MARGIN, "bottom": far - y1 - CROP_MARGIN,
    }
    sides = [side for side, width in strips.items() if width >= CROP_SIZE[0]]
    if not sides:
        raise LrcnError(f"{src.path}: the shape leaves no {CROP_SIZE[0]}-pixel strip to crop")
    side = sides[int(rng.integers(len(sides)))]
    size = min(strips[side], CROP_SIZE[1])
    across = int(rng.integers(IMAGE_SIZE - size + 1))  # position along the strip
    along = {"left": 0, "top": 0, "right": IMAGE_SIZE - size, "bottom": IMAGE_SIZE - size}[side]
    left, top = (along, across) if side in ("left", "right") else (across, along)
    crop = src.pixels[top:top + size, left:left + size]
    distance = np.abs(crop.astype(np.int16) - np.array(src.background, np.int16)).max(axis=-1)
    if (distance > SHAPE_THRESHOLD).any():
        raise LrcnError(f"{src.path}: crop {(left, top, size)} holds shape pixels")
    resized = Image.fromarray(crop).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return _noisy(np.asarray(resized), rng, 1.0, CROP_NOISE)


Photo = Callable[[SourceImage, np.random.Generator], np.ndarray]
PHOTOS: dict[str, Photo] = {
    "usable": usable_photo, "blurred": blurred_photo, "dark": dark_photo,
    "cropped": cropped_photo,
}
UNUSABLE = ("blurred", "dark", "cropped")  # the photos no one can answer a question from
