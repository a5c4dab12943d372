"""Import published feature files into a store, then train and evaluate on it through the CLI,
with no image folders at all (users who only downloaded features)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TEST_IMAGES, TRAIN_IMAGES, VAL_IMAGES, VG_IMAGES, VQA2Layout, run_cli, \
    tiny_set_args
from lrcn.engine.checkpoint import load_checkpoint
from lrcn.features.writer import StoreWriter

CHANNELS = 8
IMAGES = {"train2014": TRAIN_IMAGES, "val2014": VAL_IMAGES, "test2015": TEST_IMAGES}


def features_only_layout(layout: VQA2Layout, tmp_path: Path) -> Path:
    """The question/annotation files without any image folder."""
    root = tmp_path / "vqa2"
    shutil.copytree(layout.root, root, ignore=shutil.ignore_patterns("*.jpg"))
    for folder in IMAGES:
        shutil.rmtree(root / folder)
    return root


def image_grid(image_id: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(image_id).standard_normal(shape).astype(np.float32)


def write_trar(src: Path, shape: tuple[int, ...] = (16, 16, CHANNELS), skip: int | None = None) -> Path:
    """TRAR's layout: <split>/COCO_<split>_<id>.jpg.npy, one (H, W, C) array per image."""
    for split, images in IMAGES.items():
        (src / split).mkdir(parents=True)
        for image_id in images:
            if image_id != skip:
                np.save(src / split / f"COCO_{split}_{image_id:012d}.jpg.npy",
                        image_grid(image_id, shape))
    return src


def write_gridfeats(src: Path) -> Path:
    """grid-feats-vqa's layout: one (1, C, H, W) tensor per image named by its COCO image id
    (``<id>.pth``, one dump folder per split), sizes varying."""
    for split, images in IMAGES.items():
        (src / split).mkdir(parents=True)
        for image_id in images:
            h, w = 5 + image_id % 3, 7 + image_id % 2
            grid = torch.from_numpy(image_grid(image_id, (CHANNELS, h, w))).unsqueeze(0)
            torch.save(grid, src / split / f"{image_id}.pth")
    return src


def write_openvqa(src: Path) -> Path:
    """openvqa's bottom-up layout: npz with x (C, N), bbox, image_h, image_w."""
    for split, images in IMAGES.items():
        (src / split).mkdir(parents=True)
        for image_id in images:
            n = 3 + image_id % 4
            corner = np.arange(n)[:, None] * np.array([60.0, 40.0])  # regions down a diagonal
            np.savez(src / split / f"COCO_{split}_{image_id:012d}.jpg.npz",
                     x=image_grid(image_id, (CHANNELS, n)),
                     bbox=np.concatenate((corner, corner + 100.0), axis=1),
                     image_h=480, image_w=640)
    return src


@pytest.mark.parametrize("fmt, writer, reduction", [
    ("trar", write_trar, "conv"),            # 16x16 -> 8x8 by the paper's convolution
    ("gridfeats", write_gridfeats, "avgpool"),  # variable grids, padded with a mask
    ("openvqa", write_openvqa, "none"),      # region lists, padded with a mask
])
def test_import_then_train_and_evaluate_on_features(
        fmt: str, writer, reduction: str, vqa2_layout: VQA2Layout, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = features_only_layout(vqa2_layout, tmp_path)
    store = tmp_path / "store"
    result = run_cli(capsys, "features", "import", "--format", fmt, "--src",
                     writer(tmp_path / "src"), "--out", store, "--channels", CHANNELS, "--json")
    assert result.code == 0, result.err
    assert result.json["count"] == len(TRAIN_IMAGES) + len(VAL_IMAGES) + len(TEST_IMAGES)

    run = tmp_path / "run"
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", root,
                     "--train-split", "train2014+vg", "--val-split", "val2014",
                     "--features", store, "--epochs", "1", "--out", run, "--json",
                     *tiny_set_args(), "--set", f"model.grid_reduction={reduction}")
    assert result.code == 0, result.err
    trained = result.json["overall"]
    cfg = load_checkpoint(run).config
    assert cfg.model.image_encoder == "features" and cfg.model.feature_channels == CHANNELS
    assert cfg.data.features == [str(store)]

    result = run_cli(capsys, "evaluate", "--checkpoint", run, "--split", "val2014", "--json")
    assert result.code == 0, result.err
    assert result.json["overall"] == pytest.approx(trained, abs=1e-9)  # read back exactly
    result = run_cli(capsys, "evaluate", "--checkpoint", run, "--split", "test2015", "--json")
    assert result.code == 0, result.err
    results = json.loads(Path(result.json["results"]).read_text())
    assert [r["question_id"] for r in results] == vqa2_layout.test_question_ids


def test_region_boxes_place_regions_in_training(
        vqa2_layout: VQA2Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bottom-up store with boxes trains with model.position and model.distance_bias: each
    region is placed by its box (the store without boxes is refused, naming the option)."""
    root = features_only_layout(vqa2_layout, tmp_path)
    store = tmp_path / "store"
    result = run_cli(capsys, "features", "import", "--format", "openvqa", "--src",
                     write_openvqa(tmp_path / "src"), "--out", store, "--channels", CHANNELS,
                     "--json")
    assert result.code == 0 and result.json["has_boxes"], result.err
    placed = ("--set", "model.position=coords", "--set", "model.distance_bias=true")
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", root,
                     "--features", store, "--epochs", "1", "--out", tmp_path / "run", "--json",
                     *tiny_set_args(), *placed)
    assert result.code == 0, result.err
    trained = result.json["overall"]
    result = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "run", "--split",
                     "val2014", "--json")
    assert result.code == 0, result.err
    # the checkpoint, read back with its boxes, scores exactly what training measured
    assert result.json["overall"] == pytest.approx(trained, abs=1e-9), (result.json, trained)

    src = tmp_path / "src-plain"  # the same regions without boxes
    for path in (tmp_path / "src").rglob("*.npz"):
        (src / path.parent.name).mkdir(parents=True, exist_ok=True)
        np.savez(src / path.parent.name / path.name, x=np.load(path)["x"])
    assert run_cli(capsys, "features", "import", "--format", "openvqa", "--src", src, "--out",
                   tmp_path / "plain", "--channels", CHANNELS).code == 0
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", root,
                     "--features", tmp_path / "plain", "--epochs", "1", "--out",
                     tmp_path / "run-plain", *tiny_set_args(), *placed)
    assert result.code == 2 and "region list without boxes" in result.err, result.err
    assert str(tmp_path / "plain") in result.err
    assert not (tmp_path / "run-plain").exists()


def test_features_split_across_stores(vqa2_layout: VQA2Layout, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """One store per split, as users keep them; each image is found in the store holding it."""
    root = features_only_layout(vqa2_layout, tmp_path)
    src = write_trar(tmp_path / "src", shape=(8, 8, CHANNELS))
    stores = []
    for split in ("train2014", "val2014"):
        stores.append(tmp_path / f"store-{split}")
        result = run_cli(capsys, "features", "import", "--format", "trar", "--src", src / split,
                         "--out", stores[-1], "--channels", CHANNELS, "--json")
        assert result.code == 0, result.err
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", root,
                     "--features", *stores, "--epochs", "1", "--out", tmp_path / "run",
                     "--json", *tiny_set_args())
    assert result.code == 0, result.err


def test_missing_features_are_errors(
        vqa2_layout: VQA2Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = features_only_layout(vqa2_layout, tmp_path)
    missing = next(iter(VG_IMAGES))  # a train2014 image the VG questions use too
    store = tmp_path / "store"
    src = write_trar(tmp_path / "src", shape=(8, 8, CHANNELS), skip=missing)
    assert run_cli(capsys, "features", "import", "--format", "trar", "--src", src,
                   "--out", store, "--channels", CHANNELS).code == 0
    run = tmp_path / "run"
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", root,
                     "--features", store, "--epochs", "1", "--out", run, *tiny_set_args())
    assert result.code == 2
    assert f"train2014/COCO_train2014_{missing:012d}.jpg" in result.err
    assert "1 of 6 images have no features" in result.err and not run.exists()

    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", root,
                     "--features", tmp_path / "nowhere", "--epochs", "1", "--out", run,
                     *tiny_set_args())
    assert result.code == 2 and "nowhere" in result.err and not run.exists()


def test_store_keys_match_dataset_image_keys(tmp_path: Path) -> None:
    """Exact keys, file names without extensions, and bare image ids (grid-feats-vqa)."""
    keys = ["train2014/COCO_train2014_000000000009.jpg", "COCO_val2014_000000000042.jpg",
            "test2015/1.pth", "a/77", "b/77"]
    writer = StoreWriter(tmp_path / "s", len(keys), (2, CHANNELS), "float16", "regions", False,
                         keys, {"format": "test"})
    writer.write(0, np.arange(len(keys) * 2 * CHANNELS, dtype=np.float32).reshape(len(keys), 2, -1))
    store = writer.finish()
    assert store.row_of("train2014/COCO_train2014_000000000009.jpg") == 0
    assert store.row_of("val2014/COCO_val2014_000000000042.jpg") == 1
    assert store.row_of("test2015/COCO_test2015_000000000001.jpg") == 2
    assert store.row_of("train2014/COCO_train2014_000000000077.jpg") is None  # two keys are 77
    assert store.row_of("train2014/COCO_train2014_000000000010.jpg") is None
    grid, mask = store.read(np.array([2, 0, 2]))
    assert mask is None and grid[:, 0, 0].tolist() == [4 * CHANNELS, 0, 4 * CHANNELS]
