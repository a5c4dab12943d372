"""A feature store for easy-VQA: random grids for every image key, so that tests can train the
LRCN on grids alone (no BatchNorm, whose batch statistics depend on how a batch is split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lrcn.data import load_split
from lrcn.features.writer import StoreWriter

GRID = (4, 4, 8)  # (H, W, C) of every image

# Adam divides each update by sqrt(v) + eps. The key biases of attention and the pooling
# MLPs' last bias have a gradient of exactly zero (softmax ignores a constant), whose float
# noise depends on the order of the sums; with the paper's eps of 1e-9 that noise makes
# lr-sized steps. Runs whose weights are compared use a larger eps.
ADAM_EPS = ["--set", "train.eps=1e-6"]


def write_easyvqa_store(out: Path, nan_key: str | None = None) -> Path:
    """Grids for the keys of the training split (the test split's keys are a subset); the grid
    of `nan_key`, when given, is all NaN."""
    keys = sorted({r.image_key for r in load_split("easyvqa", None, "train").records})
    grids = np.random.default_rng(0).standard_normal((len(keys), *GRID), np.float32)
    if nan_key is not None:
        grids[keys.index(nan_key)] = np.nan
    writer = StoreWriter(out, len(keys), GRID, "float32", "grid", False, keys, {"format": "test"})
    writer.write(0, grids)
    writer.finish()
    return out


def store_args(store: Path) -> list[str]:
    """``lrcn train`` flags for the tiny LRCN on the store, without dropout."""
    return ["--features", str(store), "--set", "model.grid_reduction=none",
            "--set", "model.dropout=0"]
