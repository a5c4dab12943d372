"""Dataset registry: a name in the config picks the reader that builds a split.

Readers are functions ``(root, split) -> VQASplit`` registered with ``@register_dataset``,
as in detectron2; ``load_split`` is the one way the rest of lrcn reads data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from lrcn.data.easyvqa import read_easyvqa
from lrcn.data.records import VQASplit
from lrcn.data.vqa2 import read_vqa2
from lrcn.errors import LrcnError

logger = logging.getLogger(__name__)

DatasetReader = Callable[[str | None, str], VQASplit]

_DATASETS: dict[str, DatasetReader] = {}
_DEFAULT_SPLITS: dict[str, tuple[str, str]] = {}


def register_dataset(
    name: str, train_split: str = "train", val_split: str = "val"
) -> Callable[[DatasetReader], DatasetReader]:
    """Decorator that registers a reader ``(root, split) -> VQASplit`` under ``name``.

    ``train_split`` and ``val_split`` are the splits a run uses when none are given.
    """

    def decorator(reader: DatasetReader) -> DatasetReader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = reader
        _DEFAULT_SPLITS[name] = (train_split, val_split)
        return reader

    return decorator


def default_splits(name: str) -> tuple[str, str]:
    """The (train, validation) splits a run on dataset `name` uses by default."""
    if name not in _DATASETS:
        raise LrcnError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return _DEFAULT_SPLITS[name]


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_DATASETS)


def load_split(name: str, root: str | Path | None, split: str) -> VQASplit:
    """Read one split of a registered dataset."""
    if name not in _DATASETS:
        raise LrcnError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return _DATASETS[name](None if root is None else str(root), split)


@register_dataset("easyvqa", train_split="train", val_split="test")
def _load_easyvqa(root: str | None, split: str) -> VQASplit:
    if root is not None:
        logger.warning("easyvqa reads the installed easy-vqa package; data_root %s is ignored", root)
    return read_easyvqa(split)


@register_dataset("vqa2", train_split="train2014", val_split="val2014")
def _load_vqa2(root: str | None, split: str) -> VQASplit:
    if root is None:
        raise LrcnError(
            "dataset vqa2 needs a data root (data.data_root): the folder holding the "
            "VQA-v2 question/annotation JSON files and the COCO image folders"
        )
    return read_vqa2(root, split)
