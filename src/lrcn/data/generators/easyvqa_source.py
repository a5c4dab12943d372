"""easy-VQA's images with what they show: shape, colour, background and the shape's box.

easy-VQA does not publish what each image shows, only questions about it; easy-VizWiz
(``easy_vizwiz``) needs it to ask about a shape or colour an image lacks and to crop the
shape out of frame. Each image's shape is recovered from its questions and answers, its
colours and the shape's bounding box from its pixels, and the two are checked against each
other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from lrcn.data.easyvqa import package_split
from lrcn.errors import LrcnError

__all__ = [
    "COLORS", "IMAGE_SIZE", "SHAPES", "SHAPE_THRESHOLD", "YES_NO", "SourceImage", "SourceSplit",
    "source_image", "source_split",
]

COLORS = {  # easy-VQA's palette; shapes are filled with exactly these values
    "black": (0, 0, 0), "gray": (128, 128, 128), "red": (255, 0, 0), "green": (0, 255, 0),
    "blue": (0, 0, 255), "yellow": (255, 255, 0), "teal": (0, 128, 128),
    "brown": (165, 42, 42),
}
SHAPES = ("circle", "rectangle", "triangle")
YES_NO = ("yes", "no")
IMAGE_SIZE = 64  # easy-VQA's size
SHAPE_THRESHOLD = 8  # a pixel this far (max over channels) from the background is shape


@dataclass(frozen=True, eq=False)
class SourceImage:
    """An easy-VQA image with its shape, colour, background and shape bounding box."""

    key: str  # "<easy-VQA split>/<id>", as recorded in the provenance
    path: Path
    pixels: np.ndarray  # (IMAGE_SIZE, IMAGE_SIZE, 3) uint8, read-only
    shape: str
    color: str
    background: tuple[int, int, int]
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1) of shape pixels, inclusive


@dataclass(frozen=True)
class SourceSplit:
    """One easy-VQA split: the images whose shape is known, and the questions about them."""

    images: dict[int, Path]
    shapes: dict[int, str]
    colors: dict[int, str]  # where the questions fix the colour, to check the pixels
    questions: list[tuple[str, str, int]]  # (question, answer, image id)


def _facts(question: str, answer: str) -> list[tuple[str, bool]]:
    """(shape or colour word, whether the image has it) that a question and answer fix."""
    words = question.rstrip("?").split()
    named = [w for w in words if w in COLORS or w in SHAPES]
    if answer in YES_NO:
        negated = "not" in words or words[:2] == ["is", "no"]
        return [(w, (answer == "yes") != negated) for w in named]
    return [(answer, True)] + [(w, True) for w in named]


@cache
def source_split(split: str) -> SourceSplit:
    """Read an easy-VQA split and fix each image's shape from its questions.

    Images whose questions leave the shape open (about 4 %) are left out, with their
    questions; a contradiction is an error.
    """
    texts, answers, ids, images = package_split(split)
    present: dict[int, set[str]] = {i: set() for i in images}
    absent: dict[int, set[str]] = {i: set() for i in images}
    for text, answer, image_id in zip(texts, answers, ids):
        if image_id not in images:
            raise LrcnError(f"easy-VQA {split}: question {text!r} refers to missing image "
                            f"{image_id}")
        for word, has in _facts(text, answer):
            (present if has else absent)[image_id].add(word)
    shapes, colors = {}, {}
    for image_id in sorted(images):
        has, lacks = present[image_id], absent[image_id]
        known_shapes = has & set(SHAPES) or set(SHAPES) - lacks
        known_colors = has & set(COLORS)
        if has & lacks or len(has & set(SHAPES)) > 1 or len(known_colors) > 1:
            raise LrcnError(f"easy-VQA {split}: the questions about image {image_id} "
                            f"contradict each other (has {sorted(has)}, lacks {sorted(lacks)})")
        if len(known_shapes) == 1:
            shapes[image_id] = known_shapes.pop()
        if known_colors:
            colors[image_id] = known_colors.pop()
    questions = [(t, a, i) for t, a, i in zip(texts, answers, ids) if i in shapes]
    return SourceSplit({i: Path(images[i]) for i in shapes}, shapes, colors, questions)


@cache
def source_image(split: str, image_id: int) -> SourceImage:
    """Analyse one easy-VQA image: background (the commonest colour), shape colour (the
    commonest palette colour) and the bounding box of the shape pixels."""
    source = source_split(split)
    path = source.images[image_id]
    pixels = _load_rgb(path)
    pixels.setflags(write=False)
    flat = pixels.reshape(-1, 3).astype(np.int32)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    values, counts = np.unique(codes, return_counts=True)
    code = int(values[counts.argmax()])
    background = (code >> 16 & 255, code >> 8 & 255, code & 255)
    palette = {name: int((codes == (r << 16 | g << 8 | b)).sum())
               for name, (r, g, b) in COLORS.items()}
    color = max(palette, key=lambda name: palette[name])
    expected = source.colors.get(image_id, color)
    if palette[color] == 0 or color != expected:
        raise LrcnError(f"{path}: expected a {expected} shape (from its questions), found "
                        f"{palette[color]} {color} pixels")
    distance = np.abs(pixels.astype(np.int16) - np.array(background, np.int16)).max(axis=-1)
    ys, xs = np.nonzero(distance > SHAPE_THRESHOLD)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    return SourceImage(f"{split}/{image_id}", path, pixels, source.shapes[image_id], color,
                       background, bbox)


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise LrcnError(f"{path}: expected a {IMAGE_SIZE}x{IMAGE_SIZE} image, got "
                        f"{pixels.shape[1]}x{pixels.shape[0]}")
    return pixels
