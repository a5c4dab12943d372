"""easy-VizWiz: a small VizWiz-style dataset made from easy-VQA, in the official VizWiz layout.

VizWiz photos are taken by blind people, so the first question is whether the photo can
answer the question at all. easy-VizWiz poses that problem on easy-VQA's 64x64 shapes, with
both kinds of unanswerable question users meet:

* ``blurred`` / ``dark`` / ``cropped`` (``MIX["unusable"]``, equal thirds): an unusable
  photo (heavy Gaussian blur; 5-10 % brightness plus noise; a crop of the background
  alone, resized back) under the same questions as answerable records, so a text-only
  model cannot tell them from good photos;
* ``absent`` (``MIX["absent"]``): a usable photo and a question about a shape or colour it
  does not show ("what color is the triangle?" on a circle), so an image-only model cannot
  tell them from answerable records;
* ``answerable`` (``MIX["answerable"]``): easy-VQA questions on usable photos.

Usable photos (``answerable`` and ``absent``) are clean or mildly degraded alike, and a
share of the questions of every other kind uses the templates the ``absent`` questions use,
so neither the photo nor the question alone tells whether a record is answerable.

The layout is what ``read_vizwiz`` reads (``Annotations/<split>.json``, JPEGs
``<split>/VizWiz_<split>_<8 digits>.jpg``, one question per image, ``test`` without
answers), plus ``easy_vizwiz.json``, written last so that it marks a complete build: the
generator version, seed and sizes, and each record's provenance (kind, easy-VQA source
image, its shape and colour). Train questions come from easy-VQA train; val and test from
disjoint halves of the easy-VQA test images. A build is byte-identical for the same seed,
sizes and library versions (numpy's random streams, Pillow's blur and JPEG encoder).
Building, reuse and replacement of the folder follow ``lrcn.data.generated``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from lrcn.data.easyvqa import package_split
from lrcn.data.generated import GeneratedDataset
from lrcn.data.vizwiz import VIZWIZ_SPLITS, vizwiz_image_name
from lrcn.errors import LrcnError

__all__ = [
    "DEFAULT_SIZES", "EASY_VIZWIZ", "KINDS", "META_FILE", "MIX", "VERSION", "build_easy_vizwiz",
    "default_easy_vizwiz_root", "ensure_easy_vizwiz",
]

VERSION = 1  # bump whenever the generator's output changes: it names the cache folder
DEFAULT_SEED = 0
DEFAULT_SIZES = {"train": 6000, "val": 1500, "test": 1500}  # questions (= images) per split
MIX = {"answerable": 0.6, "unusable": 0.2, "absent": 0.2}  # share of each split's records
UNUSABLE_KINDS = ("blurred", "dark", "cropped")  # equal thirds of the unusable records
KINDS = ("answerable", *UNUSABLE_KINDS, "absent")
META_FILE = "easy_vizwiz.json"  # marks a complete build: renaming it invalidates users' caches

# easy-VQA split each split draws from; val and test take disjoint halves of its images.
SOURCE_SPLIT = {"train": "train", "val": "test", "test": "test"}
COLORS = {  # easy-VQA's palette; shapes are filled with exactly these values
    "black": (0, 0, 0), "gray": (128, 128, 128), "red": (255, 0, 0), "green": (0, 255, 0),
    "blue": (0, 0, 255), "yellow": (255, 255, 0), "teal": (0, 128, 128),
    "brown": (165, 42, 42),
}
SHAPES = ("circle", "rectangle", "triangle")
YES_NO = ("yes", "no")
# Questions that presuppose a shape or colour: with an absent one they are unanswerable.
COLOR_OF_SHAPE = ("what color is the {shape}?", "what is the color of the {shape}?")
SHAPE_OF_COLOR = ("what is the {color} shape?",)
PRESUPPOSING_SHARE = 1 / 3  # of answerable and unusable-photo questions, so the template
# alone does not give away an absent-object question

IMAGE_SIZE = 64  # easy-VQA's size, kept
JPEG_QUALITY = 95
CLEAN_SHARE = 0.5  # of usable photos left as they are; the rest mildly degraded:
MILD_BRIGHTNESS = (0.8, 1.1)  # brightness factor
MILD_BLUR = (0.3, 0.8)  # Gaussian radius, pixels
MILD_NOISE = (1.0, 4.0)  # noise standard deviation, grey levels
BLUR_RADIUS = (7.0, 10.0)  # unusable: Gaussian radius, pixels
DARK_FACTOR = (0.05, 0.10)  # unusable: brightness factor ...
DARK_NOISE = (3.0, 6.0)  # ... plus noise of this standard deviation
SHAPE_THRESHOLD = 8  # a pixel this far (max over channels) from the background is shape
CROP_MARGIN = 2  # pixels kept between a crop and the shape's bounding box
CROP_SIZE = (8, 32)  # side of the square crop, pixels, before resizing to IMAGE_SIZE
CROP_NOISE = 2.0
# Ten answers per record: answerable ones get 0/1/2 alternatives (synonyms, slips or
# "unanswerable") beside the true answer, so a perfect model still scores 100.
ALTERNATIVE_COUNT_P = (0.4, 0.45, 0.15)
ALTERNATIVE_UNANSWERABLE_P = 0.2
ALTERNATIVES = {
    "yes": ("no",), "no": ("yes",),
    "circle": ("round", "oval"), "rectangle": ("square", "box"),
    "triangle": ("triangular", "pyramid"),
    "black": ("dark gray", "dark"), "gray": ("grey", "silver"), "red": ("dark red", "orange"),
    "green": ("lime", "light green"), "blue": ("dark blue", "navy"),
    "yellow": ("gold", "light yellow"), "teal": ("turquoise", "dark cyan"),
    "brown": ("maroon", "dark red"),
}
# Unanswerable ones get 8/9/10 "unanswerable", the rest a guess (the truth half the time).
UNANSWERABLE_COUNTS = (8, 9, 10)
UNANSWERABLE_COUNT_P = (0.3, 0.4, 0.3)
GUESS_TRUTH_P = 0.5
SURE_P = 0.85  # confidence "yes" for the majority answer, else "maybe"
NUM_ANSWERS = 10

# --- source: easy-VQA images with known shape and colour ------------------------------


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
    """One easy-VQA split: images whose shape is known, and its questions about them.

    ``questions`` leaves out the presupposing templates: those are generated, so that
    their share is ``PRESUPPOSING_SHARE`` exactly.
    """

    images: dict[int, Path]
    shapes: dict[int, str]
    colors: dict[int, str]  # where the questions fix the colour, to check the pixels
    questions: list[tuple[str, str, int]]  # (question, answer, image id)


def _presupposing_pattern() -> re.Pattern[str]:
    names = {"shape": "|".join(SHAPES), "color": "|".join(COLORS)}
    templates = [re.escape(t).replace(r"\{shape\}", f"({names['shape']})")
                 .replace(r"\{color\}", f"({names['color']})")
                 for t in (*COLOR_OF_SHAPE, *SHAPE_OF_COLOR)]
    return re.compile("|".join(f"^{t}$" for t in templates))


PRESUPPOSING = _presupposing_pattern()


def _facts(question: str, answer: str) -> list[tuple[str, bool]]:
    """(shape or colour word, whether the image has it) that a question and answer fix."""
    words = question.rstrip("?").split()
    named = [w for w in words if w in COLORS or w in SHAPES]
    if answer in YES_NO:
        negated = "not" in words or words[:2] == ["is", "no"]
        return [(w, (answer == "yes") != negated) for w in named]
    return [(answer, True)] + [(w, True) for w in named]


@cache
def _source_split(split: str) -> SourceSplit:
    """Read an easy-VQA split and fix each image's shape from its questions.

    Images whose questions leave the shape open (about 4 %) are left out; a contradiction
    is an error.
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
    questions = [(t, a, i) for t, a, i in zip(texts, answers, ids)
                 if i in shapes and not PRESUPPOSING.match(t)]
    return SourceSplit({i: Path(images[i]) for i in shapes}, shapes, colors, questions)


@cache
def _source_image(split: str, image_id: int) -> SourceImage:
    """Analyse one easy-VQA image: background (the commonest colour), shape colour (the
    commonest palette colour) and the bounding box of the shape pixels."""
    source = _source_split(split)
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


def _image_pools(seed: int) -> dict[str, list[int]]:
    """Sorted easy-VQA image ids each split draws from (val and test: disjoint halves)."""
    test_ids = np.array(sorted(_source_split("test").images))
    order = np.random.default_rng([seed, len(VIZWIZ_SPLITS)]).permutation(len(test_ids))
    half = len(test_ids) // 2
    return {"train": sorted(_source_split("train").images),
            "val": sorted(int(i) for i in test_ids[order[:half]]),
            "test": sorted(int(i) for i in test_ids[order[half:]])}


# --- photos ---------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _blur(pixels: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))


def _noisy(pixels: np.ndarray, rng: np.random.Generator, factor: float, std: float) -> np.ndarray:
    """``pixels * factor`` plus Gaussian noise of standard deviation ``std``."""
    return _to_uint8(pixels.astype(np.float64) * factor + rng.normal(0.0, std, pixels.shape))


def _usable_photo(src: SourceImage, rng: np.random.Generator) -> np.ndarray:
    """The source photo, clean or (1 - CLEAN_SHARE of the time) mildly degraded."""
    if rng.random() < CLEAN_SHARE:
        return src.pixels
    blurred = _blur(src.pixels, _uniform(rng, MILD_BLUR))
    return _noisy(blurred, rng, _uniform(rng, MILD_BRIGHTNESS), _uniform(rng, MILD_NOISE))


def _blurred_photo(src: SourceImage, rng: np.random.Generator) -> np.ndarray:
    return _blur(src.pixels, _uniform(rng, BLUR_RADIUS))


def _dark_photo(src: SourceImage, rng: np.random.Generator) -> np.ndarray:
    return _noisy(src.pixels, rng, _uniform(rng, DARK_FACTOR), _uniform(rng, DARK_NOISE))


def _cropped_photo(src: SourceImage, rng: np.random.Generator) -> np.ndarray:
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


PHOTOS: dict[str, Callable[[SourceImage, np.random.Generator], np.ndarray]] = {
    "answerable": _usable_photo, "absent": _usable_photo, "blurred": _blurred_photo,
    "dark": _dark_photo, "cropped": _cropped_photo,
}


def _save_jpeg(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, "JPEG", quality=JPEG_QUALITY, subsampling=0)


# --- questions and answers ------------------------------------------------------------


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _family(answer: str) -> tuple[str, ...]:
    """The answers a guess at this answer's question is drawn from."""
    return YES_NO if answer in YES_NO else SHAPES if answer in SHAPES else tuple(COLORS)


def _answer(answer: str, confidence: str) -> dict[str, str]:
    return {"answer": answer, "answer_confidence": confidence}


def _answerable_answers(truth: str, rng: np.random.Generator) -> list[dict[str, str]]:
    """Ten answers: the truth, with 0-2 alternatives (a synonym, a slip, "unanswerable")."""
    n_alt = int(rng.choice(len(ALTERNATIVE_COUNT_P), p=ALTERNATIVE_COUNT_P))
    answers = [_answer(truth, "yes" if rng.random() < SURE_P else "maybe")
               for _ in range(NUM_ANSWERS - n_alt)]
    for _ in range(n_alt):
        alt = ("unanswerable" if rng.random() < ALTERNATIVE_UNANSWERABLE_P
               else _pick(rng, ALTERNATIVES[truth]))
        answers.append(_answer(alt, _pick(rng, ("maybe", "no"))))
    return [answers[i] for i in rng.permutation(NUM_ANSWERS)]


def _unanswerable_answers(truth: str, rng: np.random.Generator) -> list[dict[str, str]]:
    """Ten answers: 8-10 "unanswerable", the rest a guess (the truth half the time)."""
    n_unans = int(rng.choice(UNANSWERABLE_COUNTS, p=UNANSWERABLE_COUNT_P))
    answers = [_answer("unanswerable", "yes" if rng.random() < SURE_P else "maybe")
               for _ in range(n_unans)]
    for _ in range(NUM_ANSWERS - n_unans):
        guess = truth if rng.random() < GUESS_TRUTH_P else _pick(rng, _family(truth))
        answers.append(_answer(guess, _pick(rng, ("maybe", "no"))))
    return [answers[i] for i in rng.permutation(NUM_ANSWERS)]


def _presupposing_question(src: SourceImage, rng: np.random.Generator,
                           absent: bool) -> tuple[str, str]:
    """(question, the image's answer to the attribute asked) naming the image's own shape
    or colour, or, if ``absent``, one the image does not have."""
    template = _pick(rng, (*COLOR_OF_SHAPE, *SHAPE_OF_COLOR))
    if template in COLOR_OF_SHAPE:
        shape = _pick(rng, [s for s in SHAPES if s != src.shape]) if absent else src.shape
        return template.format(shape=shape), src.color
    color = _pick(rng, [c for c in COLORS if c != src.color]) if absent else src.color
    return template.format(color=color), src.shape


class _QuestionDraw:
    """Draws a pool's easy-VQA questions without replacement (reshuffled when used up)."""

    def __init__(self, questions: list[tuple[str, str, int]], rng: np.random.Generator):
        self.questions, self.rng, self.order = questions, rng, np.empty(0, dtype=np.int64)

    def __call__(self) -> tuple[str, str, int]:
        if len(self.order) == 0:
            self.order = self.rng.permutation(len(self.questions))
        index, self.order = int(self.order[0]), self.order[1:]
        return self.questions[index]


def _kind_counts(n: int) -> dict[str, int]:
    """Records of each kind in a split of ``n``: MIX rounded, unusable split in thirds."""
    unusable = round(n * MIX["unusable"])
    answerable = round(n * MIX["answerable"])
    counts = {"answerable": answerable, "absent": n - answerable - unusable}
    for j, kind in enumerate(UNUSABLE_KINDS):
        counts[kind] = unusable // 3 + (j < unusable % 3)
    return counts


def _make_split(split: str, n: int, pool: list[int], seed: int,
                out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write one split's images; return its annotation records and their provenance."""
    rng = np.random.default_rng([seed, VIZWIZ_SPLITS.index(split)])
    source_split = SOURCE_SPLIT[split]
    in_pool = set(pool)
    questions = [q for q in _source_split(source_split).questions if q[2] in in_pool]
    if n and (not pool or not questions):
        raise LrcnError(f"easy-VizWiz {split}: no easy-VQA {source_split} images to draw from")
    draw_question = _QuestionDraw(questions, rng)
    kinds = [kind for kind, count in _kind_counts(n).items() for _ in range(count)]
    kinds = [kinds[i] for i in rng.permutation(n)]
    (out / split).mkdir()
    records, provenance = [], []
    for index, kind in enumerate(kinds):
        if kind != "absent" and rng.random() >= PRESUPPOSING_SHARE:
            question, truth, image_id = draw_question()
            src = _source_image(source_split, image_id)
        else:
            src = _source_image(source_split, pool[int(rng.integers(len(pool)))])
            question, truth = _presupposing_question(src, rng, absent=kind == "absent")
        image = vizwiz_image_name(split, index)
        _save_jpeg(PHOTOS[kind](src, rng), out / split / image)
        record: dict[str, Any] = {"image": image, "question": question}
        if kind == "answerable":
            record.update(answers=_answerable_answers(truth, rng),
                          answer_type="yes/no" if truth in YES_NO else "other", answerable=1)
        else:
            record.update(answers=_unanswerable_answers(truth, rng),
                          answer_type="unanswerable", answerable=0)
        records.append(record if split != "test" else {"image": image, "question": question})
        provenance.append({"image": image, "kind": kind, "source": src.key,
                           "shape": src.shape, "color": src.color})
    return records, provenance


# --- building -------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _generate(out: Path, seed: int, sizes: dict[str, int]) -> dict[str, Any]:
    """Write the dataset into the empty folder ``out``; return the meta file's own fields."""
    pools = _image_pools(seed)
    (out / "Annotations").mkdir()
    provenance = {}
    for split in VIZWIZ_SPLITS:
        records, provenance[split] = _make_split(split, sizes[split], pools[split], seed, out)
        _write_json(out / "Annotations" / f"{split}.json", records)
    return {"mix": MIX, "source": f"easy-vqa {version('easy-vqa')}", "records": provenance}


EASY_VIZWIZ = GeneratedDataset(
    name="easy-vizwiz", title="easy-VizWiz", version=VERSION, generate=_generate,
    splits=VIZWIZ_SPLITS, default_sizes=DEFAULT_SIZES, own_names=("Annotations", *VIZWIZ_SPLITS),
    default_seed=DEFAULT_SEED, unit="questions", meta_file=META_FILE,
)


def build_easy_vizwiz(root: str | Path, seed: int = DEFAULT_SEED,
                      sizes: dict[str, int] | None = None) -> Path:
    """Generate easy-VizWiz into the new folder ``root`` and return it.

    The files are written beside ``root`` and renamed to it at the end, so ``root`` is
    complete or absent, never half-written.

    Args:
        root: the folder to create; it must not exist.
        seed: seeds every random choice; the same seed and sizes give the same bytes.
        sizes: questions per split, ``{"train": ..., "val": ..., "test": ...}``;
            None for ``DEFAULT_SIZES``.
    """
    return EASY_VIZWIZ.build(root, seed, sizes)


def default_easy_vizwiz_root() -> Path:
    """``$LRCN_DATA_HOME/easy-vizwiz-v<VERSION>``, or under ``~/.cache/lrcn`` if unset."""
    return EASY_VIZWIZ.default_root()


def ensure_easy_vizwiz(root: str | Path | None = None) -> Path:
    """The folder of a complete easy-VizWiz build, generating it on first use.

    A complete build of this version (its meta file written last) is reused as it is,
    whatever its seed and sizes. Otherwise the default build (``DEFAULT_SEED``,
    ``DEFAULT_SIZES``) is generated and renamed into place; an incomplete or older build
    there is replaced, but a folder holding anything else is an error.

    Args:
        root: the dataset folder; None for ``default_easy_vizwiz_root()``.
    """
    return EASY_VIZWIZ.ensure(root)
