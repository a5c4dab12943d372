"""Dataset registry: a name in the config picks the reader that builds a split.

Readers are functions ``(root, split) -> VQASplit`` registered with ``@register_dataset``,
as in detectron2; ``load_split`` is the one way the rest of lrcn reads data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from lrcn.data.easyvqa import read_easyvqa
from lrcn.data.easy_vizwiz import ensure_easy_vizwiz
from lrcn.data.records import VQASplit
from lrcn.data.relational_shapes import RELATIONAL_SHAPES, SPLITS as RELATIONAL_SPLITS
from lrcn.data.vizwiz import VIZWIZ_SPLITS, read_vizwiz
from lrcn.data.vqa2 import read_vqa2
from lrcn.errors import LrcnError

logger = logging.getLogger(__name__)

DatasetReader = Callable[[str | None, str], VQASplit]

_DATASETS: dict[str, DatasetReader] = {}
_DEFAULT_SPLITS: dict[str, tuple[str, str]] = {}
_METRICS: dict[str, str] = {}


def register_dataset(
    name: str, train_split: str = "train", val_split: str = "val", metric: str = "vqa"
) -> Callable[[DatasetReader], DatasetReader]:
    """Decorator that registers a reader ``(root, split) -> VQASplit`` under ``name``.

    ``train_split`` and ``val_split`` are the splits a run uses when none are given;
    ``metric`` is the official evaluator that scores it (``vqa`` or ``vizwiz``).
    """

    def decorator(reader: DatasetReader) -> DatasetReader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = reader
        _DEFAULT_SPLITS[name] = (train_split, val_split)
        _METRICS[name] = metric
        return reader

    return decorator


def default_splits(name: str) -> tuple[str, str]:
    """The (train, validation) splits a run on dataset `name` uses by default."""
    if name not in _DATASETS:
        raise LrcnError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return _DEFAULT_SPLITS[name]


def dataset_metric(name: str) -> str:
    """The evaluator that scores dataset `name`: ``vqa`` or ``vizwiz``."""
    default_splits(name)  # unknown names fail with the list of known ones
    return _METRICS[name]


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_DATASETS)


def load_split(
    name: str, root: str | Path | None, split: str, cache: dict[str, VQASplit] | None = None
) -> VQASplit:
    """Read a split of a registered dataset, or several joined by ``+``.

    ``train2014+val2014+vg`` is the records of the three splits in that order, as one split
    (they must share an image root, and no question id may occur twice). Pass a ``cache``
    dict to read each part once when several combinations share it.
    """
    if name not in _DATASETS:
        raise LrcnError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    parts = split.split("+")
    if any(not p for p in parts) or len(set(parts)) != len(parts):
        raise LrcnError(f"split {split!r}: expected distinct split names joined by '+'")
    cache = {} if cache is None else cache
    for part in parts:
        if part not in cache:
            cache[part] = _DATASETS[name](None if root is None else str(root), part)
    if len(parts) == 1:
        return cache[split]
    return _join_splits(split, [cache[p] for p in parts])


def _join_splits(name: str, splits: list[VQASplit]) -> VQASplit:
    first_split: dict[object, str] = {}
    for s in splits:
        if s.image_root != splits[0].image_root:
            raise LrcnError(f"split {name}: parts have different image roots "
                            f"({splits[0].image_root}, {s.image_root}); they cannot be joined")
        for record in s.records:
            seen = first_split.setdefault(record.question_id, s.name)
            if seen != s.name:
                raise LrcnError(f"split {name}: question_id {record.question_id!r} is in both "
                                f"{seen} and {s.name}")
    records = [r for s in splits for r in s.records]
    return VQASplit(name=name, records=records, image_root=splits[0].image_root)


@register_dataset("easyvqa", train_split="train", val_split="test")
def _load_easyvqa(root: str | None, split: str) -> VQASplit:
    if root is not None:
        logger.warning("easyvqa reads the installed easy-vqa package; data_root %s is ignored", root)
    return read_easyvqa(split)


def _need_root(name: str, root: str | None, holding: str) -> str:
    if root is None:
        raise LrcnError(f"dataset {name} needs a data root (data.data_root / --data-root): "
                        f"the folder holding {holding}")
    return root


@register_dataset("vqa2", train_split="train2014", val_split="val2014")
def _load_vqa2(root: str | None, split: str) -> VQASplit:
    root = _need_root("vqa2", root, "the VQA-v2 question/annotation JSON files and the COCO "
                      "image folders")
    return read_vqa2(root, split)


@register_dataset("vizwiz", train_split="train", val_split="val", metric="vizwiz")
def _load_vizwiz(root: str | None, split: str) -> VQASplit:
    root = _need_root("vizwiz", root, "Annotations/<split>.json and the train/val/test image "
                      "folders")
    return read_vizwiz(root, split)


@register_dataset("easy-vizwiz", train_split="train", val_split="val", metric="vizwiz")
def _load_easy_vizwiz(root: str | None, split: str) -> VQASplit:
    if split not in VIZWIZ_SPLITS:  # before a first build, not after it
        raise LrcnError(f"easy-vizwiz has no split {split!r}; known splits: "
                        f"{', '.join(VIZWIZ_SPLITS)}")
    return read_vizwiz(ensure_easy_vizwiz(None if root is None else Path(root)), split)


@register_dataset("relational-shapes", train_split="train2014", val_split="val2014")
def _load_relational_shapes(root: str | None, split: str) -> VQASplit:
    if split not in RELATIONAL_SPLITS:  # before a first build, not after it
        raise LrcnError(f"relational-shapes has no split {split!r}; known splits: "
                        f"{', '.join(RELATIONAL_SPLITS)}")
    return read_vqa2(RELATIONAL_SHAPES.ensure(root), split)
