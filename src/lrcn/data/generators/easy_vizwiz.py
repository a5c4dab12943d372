"""easy-VizWiz: a small VizWiz-style dataset made from easy-VQA, in the official VizWiz layout.

VizWiz photos are taken by blind people, so the first question is whether the photo can
answer the question at all. easy-VizWiz poses that problem on easy-VQA's 64x64 shapes, with
both kinds of unanswerable question users meet:

* ``blurred`` / ``dark`` / ``cropped`` (``MIX["unusable"]``, equal thirds): an unusable
  photo (``photos``: heavy Gaussian blur; 5-10 % brightness plus noise; a crop of the
  background alone, resized back) under the same questions as answerable records, so a
  text-only model cannot tell them from good photos;
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

``lrcn data build easy-vizwiz`` builds it, or the first ``load_split`` does, into
``data.data_root`` / ``--data-root`` if given, else ``$LRCN_DATA_HOME/easy-vizwiz-v<VERSION>``
(default ``~/.cache/lrcn``). Building, reuse and replacement of the folder follow
``generated``.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lrcn.data.generators.easyvqa_source import (
    COLORS, IMAGE_SIZE, SHAPES, YES_NO, SourceImage, source_image, source_split,
)
from lrcn.data.generators.generated import GeneratedDataset, Progress
from lrcn.data.generators.photos import PHOTOS, UNUSABLE
from lrcn.data.records import VQASplit
from lrcn.data.registry import register_dataset
from lrcn.data.vizwiz import VIZWIZ_SPLITS, read_vizwiz, vizwiz_image_name
from lrcn.errors import LrcnError

__all__ = [
    "COLORS", "DEFAULT_SIZES", "EASY_VIZWIZ", "IMAGE_SIZE", "KINDS", "META_FILE", "MIX", "SHAPES",
    "UNUSABLE_KINDS", "VERSION", "build_easy_vizwiz", "default_easy_vizwiz_root",
    "ensure_easy_vizwiz",
]

VERSION = 1  # bump whenever the generator's output changes: it names the cache folder
DEFAULT_SEED = 0
DEFAULT_SIZES = {"train": 6000, "val": 1500, "test": 1500}  # questions (= images) per split
MIX = {"answerable": 0.6, "unusable": 0.2, "absent": 0.2}  # share of each split's records
UNUSABLE_KINDS = UNUSABLE  # equal thirds of the unusable records: blurred, dark, cropped
KINDS = ("answerable", *UNUSABLE_KINDS, "absent")
META_FILE = "easy_vizwiz.json"  # marks a complete build: renaming it invalidates users' caches

# easy-VQA split each split draws from; val and test take disjoint halves of its images.
SOURCE_SPLIT = {"train": "train", "val": "test", "test": "test"}
# Questions that presuppose a shape or colour: with an absent one they are unanswerable.
COLOR_OF_SHAPE = ("what color is the {shape}?", "what is the color of the {shape}?")
SHAPE_OF_COLOR = ("what is the {color} shape?",)
PRESUPPOSING_SHARE = 1 / 3  # of answerable and unusable-photo questions, so the template
# alone does not give away an absent-object question

JPEG_QUALITY = 95

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


def _presupposing_pattern() -> re.Pattern[str]:
    """A regex matching exactly the questions of COLOR_OF_SHAPE and SHAPE_OF_COLOR."""
    names = {"shape": "|".join(SHAPES), "color": "|".join(COLORS)}
    templates = [re.escape(t).replace(r"\{shape\}", f"({names['shape']})")
                 .replace(r"\{color\}", f"({names['color']})")
                 for t in (*COLOR_OF_SHAPE, *SHAPE_OF_COLOR)]
    return re.compile("|".join(f"^{t}$" for t in templates))


PRESUPPOSING = _presupposing_pattern()


# --- easy-VQA images and the JPEGs made of them ----------------------------------------


def _image_pools(seed: int) -> dict[str, list[int]]:
    """Sorted easy-VQA image ids each split draws from (val and test: disjoint halves)."""
    test_ids = np.array(sorted(source_split("test").images))
    order = np.random.default_rng([seed, len(VIZWIZ_SPLITS)]).permutation(len(test_ids))
    half = len(test_ids) // 2
    return {"train": sorted(source_split("train").images),
            "val": sorted(int(i) for i in test_ids[order[:half]]),
            "test": sorted(int(i) for i in test_ids[order[half:]])}


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


def _make_split(split: str, n: int, pool: list[int], seed: int, out: Path,
                progress: Progress) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write one split's images (``progress(1)`` after each); return its annotation records
    and their provenance."""
    rng = np.random.default_rng([seed, VIZWIZ_SPLITS.index(split)])
    source = SOURCE_SPLIT[split]
    in_pool = set(pool)
    questions = [q for q in source_split(source).questions  # presupposing ones are generated
                 if q[2] in in_pool and not PRESUPPOSING.match(q[0])]
    if n and (not pool or not questions):
        raise LrcnError(f"easy-VizWiz {split}: no easy-VQA {source} images to draw from")
    draw_question = _QuestionDraw(questions, rng)
    kinds = [kind for kind, count in _kind_counts(n).items() for _ in range(count)]
    kinds = [kinds[i] for i in rng.permutation(n)]
    (out / split).mkdir()
    records, provenance = [], []
    for index, kind in enumerate(kinds):
        if kind != "absent" and rng.random() >= PRESUPPOSING_SHARE:
            question, truth, image_id = draw_question()
            src = source_image(source, image_id)
        else:
            src = source_image(source, pool[int(rng.integers(len(pool)))])
            question, truth = _presupposing_question(src, rng, absent=kind == "absent")
        image = vizwiz_image_name(split, index)
        photo = PHOTOS[kind if kind in UNUSABLE_KINDS else "usable"]
        _save_jpeg(photo(src, rng), out / split / image)
        progress(1)
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


def _generate(out: Path, seed: int, sizes: dict[str, int], *,
              progress: Progress) -> dict[str, Any]:
    """Write the dataset into the empty folder ``out``; return the meta file's own fields."""
    pools = _image_pools(seed)
    (out / "Annotations").mkdir()
    provenance = {}
    for split in VIZWIZ_SPLITS:
        records, provenance[split] = _make_split(split, sizes[split], pools[split], seed, out,
                                                 progress)
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


@register_dataset("easy-vizwiz", train_split="train", val_split="val", metric="vizwiz",
                  generated=EASY_VIZWIZ)
def _load_easy_vizwiz(root: str | None, split: str) -> VQASplit:
    EASY_VIZWIZ.check_split(split)
    return read_vizwiz(EASY_VIZWIZ.ensure(root), split)
