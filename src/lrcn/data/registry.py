"""Dataset registry: a name in the config picks the reader that builds a split.

Readers are functions ``(root, split) -> VQASplit`` registered with ``@register_dataset``
beside their code, as in detectron2 (``lrcn.data`` imports every reader module, which
registers it); ``load_split`` is the one way the rest of lrcn reads data. A dataset lrcn
generates itself also registers its ``GeneratedDataset``, which ``lrcn data build`` builds.
Adding a dataset is one reader module with ``@register_dataset`` and one import line in
``lrcn/data/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lrcn.data.records import VQASplit
from lrcn.errors import LrcnError

if TYPE_CHECKING:
    from lrcn.data.generators.generated import GeneratedDataset

__all__ = [
    "DatasetReader", "dataset_metric", "dataset_names", "default_splits", "generated_dataset",
    "generated_names", "load_split", "need_root", "register_dataset",
]

DatasetReader = Callable[[str | None, str], VQASplit]

_DATASETS: dict[str, DatasetReader] = {}
_DEFAULT_SPLITS: dict[str, tuple[str, str]] = {}
_METRICS: dict[str, str] = {}
_GENERATED: dict[str, GeneratedDataset] = {}


def register_dataset(
    name: str, train_split: str = "train", val_split: str = "val", metric: str = "vqa",
    generated: GeneratedDataset | None = None,
) -> Callable[[DatasetReader], DatasetReader]:
    """Decorator that registers a reader ``(root, split) -> VQASplit`` under ``name``.

    ``train_split`` and ``val_split`` are the splits a run uses when none are given;
    ``metric`` is the official evaluator that scores it (``vqa``, ``vizwiz`` or ``clevr``);
    ``generated``, for a dataset lrcn writes itself, is what builds it.
    """

    def decorator(reader: DatasetReader) -> DatasetReader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = reader
        _DEFAULT_SPLITS[name] = (train_split, val_split)
        _METRICS[name] = metric
        if generated is not None:
            _GENERATED[name] = generated
        return reader

    return decorator


def need_root(name: str, root: str | None, holding: str) -> str:
    """``root``, or LrcnError saying what the folder of dataset ``name`` must hold."""
    if root is None:
        raise LrcnError(f"dataset {name} needs a data root (data.data_root / --data-root): "
                        f"the folder holding {holding}")
    return root


def default_splits(name: str) -> tuple[str, str]:
    """The (train, validation) splits a run on dataset `name` uses by default."""
    if name not in _DATASETS:
        raise LrcnError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return _DEFAULT_SPLITS[name]


def dataset_metric(name: str) -> str:
    """The evaluator that scores dataset `name`: ``vqa``, ``vizwiz`` or ``clevr``."""
    default_splits(name)  # unknown names fail with the list of known ones
    return _METRICS[name]


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_DATASETS)


def generated_names() -> list[str]:
    """Names of the registered datasets that lrcn generates, sorted."""
    return sorted(_GENERATED)


def generated_dataset(name: str) -> GeneratedDataset:
    """The generator of dataset ``name``; LrcnError listing the generated ones otherwise."""
    if name not in _GENERATED:
        what = (f"dataset {name!r} is read from its published files, not generated"
                if name in _DATASETS else f"unknown dataset {name!r}")
        raise LrcnError(f"{what}; generated datasets: {', '.join(generated_names())}")
    return _GENERATED[name]


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
