"""Durable writes: folders committed whole, and every file the toolkit writes readable by the
group (0644 under umask 022): generated datasets and feature stores as well as run files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from lrcn.data.generators.relational_shapes import RELATIONAL_SHAPES
from lrcn.features import import_features
from lrcn.fileio import commit_folder


def modes(root: Path) -> dict[str, set[str]]:
    """The permission bits of every file and folder under `root` (itself included)."""
    found: dict[str, set[str]] = {"files": set(), "folders": {oct(stat.S_IMODE(root.stat().st_mode))}}
    for path in root.rglob("*"):
        kind = "files" if path.is_file() else "folders"
        found[kind].add(oct(stat.S_IMODE(path.stat().st_mode)))
    return found


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_commit_folder_moves_a_whole_folder_and_never_replaces_one(tmp_path: Path) -> None:
    staging = tmp_path / ".build"
    (staging / "a" / "b").mkdir(parents=True)
    (staging / "a" / "b" / "x.json").write_text("[1]")
    commit_folder(staging, tmp_path / "done")
    assert not staging.exists() and (tmp_path / "done" / "a" / "b" / "x.json").read_text() == "[1]"
    (tmp_path / "other").mkdir()
    (tmp_path / "empty").mkdir()  # os.rename alone would replace an empty folder silently
    with pytest.raises(FileExistsError):
        commit_folder(tmp_path / "other", tmp_path / "empty")
    assert (tmp_path / "other").is_dir()


def test_a_generated_dataset_is_readable_by_the_group(tmp_path: Path, umask_022) -> None:
    root = RELATIONAL_SHAPES.build(tmp_path / "rs", seed=1, sizes={"train2014": 4, "val2014": 2})
    assert modes(root) == {"files": {"0o644"}, "folders": {"0o755"}}
    assert [p.name for p in tmp_path.iterdir()] == ["rs"]  # no staging folder left


def test_a_feature_store_is_readable_by_the_group(tmp_path: Path, umask_022) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        np.save(src / f"img{i}.jpg.npy", np.full((2, 2, 4), i, dtype=np.float32))
    store = import_features("trar", src, tmp_path / "store", dtype="float16", channels=4)
    store.verify()
    assert modes(tmp_path / "store") == {"files": {"0o644"}, "folders": {"0o755"}}
