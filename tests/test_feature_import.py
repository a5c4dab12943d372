"""``lrcn features import``: the three published per-image formats, and every refusal.

Files are written in each format's published layout: TRAR-VQA's ``<image file>.npy`` grids
(H, W, C), grid-feats-vqa's ``<image id>.pth`` tensors (1, C, H, W) and openvqa's bottom-up
``<image file>.npz`` with ``x`` (C, R) plus ``bbox``, ``image_h``, ``image_w``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import run_cli
from lrcn.errors import LrcnError
from lrcn.features import FORMATS, FeatureStore, import_features
from lrcn.cli import main
from lrcn.features.store import partial_path

C = 16  # channels of the small gridfeats / openvqa files (--channels 16)


def coco(split: str, image_id: int) -> str:
    return f"{split}/COCO_{split}_{image_id:012d}.jpg"


# --------------------------------------------------------------------------- writers

def write_trar(src: Path, arrays: dict[str, np.ndarray]) -> None:
    for image, array in arrays.items():
        path = src / f"{image}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)


def write_gridfeats(src: Path, tensors: dict[int, torch.Tensor]) -> None:
    src.mkdir(parents=True, exist_ok=True)
    for image_id, tensor in tensors.items():
        torch.save(tensor, src / f"{image_id}.pth")


def save_openvqa(path: Path, x: np.ndarray, channels: int = C, **replace: Any) -> None:
    """One bottom-up file: x, a box per region (the i-th 10 pixels right of the (i-1)-th),
    image_h, image_w; ``replace`` swaps arrays (None drops one)."""
    regions = x.shape[1] if x.shape[0] == channels else x.shape[0]
    bbox = np.array([[10.0 * i, 20.0, 10.0 * i + 40.0, 60.0] for i in range(regions)],
                    np.float32).reshape(regions, 4)
    arrays = {"x": x, "bbox": bbox, "image_h": np.array(480), "image_w": np.array(640),
              **replace}
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})


def write_openvqa(src: Path, regions: dict[str, np.ndarray], **replace: Any) -> None:
    for image, x in regions.items():
        path = src / f"{image}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_openvqa(path, x, **replace)


def trar_arrays(seed: int = 0, shape: tuple[int, ...] = (8, 8, 2048)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [coco("train2014", 9), coco("train2014", 25), coco("val2014", 42)]
    return {image: rng.standard_normal(shape).astype(np.float32) for image in images}


# --------------------------------------------------------------------------- imports

def test_the_cli_offers_every_registered_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["features", "import", "--help"])
    assert stop.value.code == 0
    assert f"--format {{{','.join(FORMATS)}}}" in capsys.readouterr().out


def test_trar_import_round_trips_at_published_shape(tmp_path: Path, capsys) -> None:
    arrays = trar_arrays()
    write_trar(tmp_path / "src", arrays)
    out = tmp_path / "trar_store"
    r = run_cli(capsys, "features", "import", "--format", "trar", "--src", tmp_path / "src",
                "--out", out, "--json")
    assert r.code == 0, r.err
    summary = r.json
    assert summary["store"] == str(out) and summary["count"] == 3
    assert (summary["item_shape"], summary["dtype"], summary["has_mask"]) == ([8, 8, 2048], "float16", False)
    assert summary["source"]["format"] == "trar" and summary["seconds"] >= 0

    store = FeatureStore.open(out)
    assert store.keys == sorted(arrays) and store.layout == "grid"
    got, mask = store.read(np.arange(3))
    assert mask is None
    for i, key in enumerate(store.keys):
        np.testing.assert_allclose(got[i].numpy(), arrays[key], rtol=1e-3, atol=2e-3)
    row = store.row_of("COCO_train2014_000000000009")
    assert row == store.row_of("train2014/COCO_train2014_000000000009.jpg") == 0
    assert store.row_of("COCO_val2014_000000000042.jpg") == 2
    assert store.rows_for(["COCO_train2014_000000000025"], "test").tolist() == [1]
    store.verify()


def test_trar_float32_is_exact(tmp_path: Path) -> None:
    arrays = trar_arrays(1, (4, 4, 8))
    write_trar(tmp_path / "src", arrays)
    store = import_features("trar", tmp_path / "src", tmp_path / "s", dtype="float32", channels=8)
    assert store.dtype == "float32" and store.item_shape == (4, 4, 8)
    got, _ = store.read([2, 0])
    np.testing.assert_array_equal(got.numpy(), np.stack([arrays[store.keys[2]], arrays[store.keys[0]]]))


def test_gridfeats_pads_to_the_largest_grid_with_a_mask(tmp_path: Path, capsys) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {9: torch.randn(1, C, 3, 5, generator=g), 25: torch.randn(1, C, 4, 2, generator=g),
               42: torch.randn(1, C, 2, 3, generator=g)}
    write_gridfeats(tmp_path / "src", tensors)
    out = tmp_path / "grid_store"
    r = run_cli(capsys, "features", "import", "--format", "gridfeats", "--src", tmp_path / "src",
                "--out", out, "--channels", C, "--dtype", "float32", "--json")
    assert r.code == 0, r.err
    assert (r.json["item_shape"], r.json["has_mask"]) == ([4, 5, C], True)

    store = FeatureStore.open(out)
    assert store.keys == ["25", "42", "9"]  # relative paths sorted as text
    got, mask = store.read([2, 0, 1])
    for i, image_id in enumerate([9, 25, 42]):
        _, _, h, w = tensors[image_id].shape
        expected = tensors[image_id][0].permute(1, 2, 0)  # (H, W, C)
        np.testing.assert_array_equal(got[i, :h, :w].numpy(), expected.numpy())
        assert mask[i, :h, :w].all() and mask[i].sum() == h * w
        assert (got[i][~mask[i]] == 0).all()  # padding is zeros


def test_gridfeats_same_sizes_need_no_mask_and_legacy_files_load(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    t = torch.randn(1, C, 2, 2)
    torch.save(t, src / "1.pth", _use_new_zipfile_serialization=False)  # pre-1.6 torch.save
    torch.save(t * 2, src / "2.pth")
    store = import_features("gridfeats", src, tmp_path / "s", channels=C)
    got, mask = store.read([0, 1])
    assert mask is None and store.item_shape == (2, 2, C)
    np.testing.assert_allclose(got[1].numpy(), (t * 2)[0].permute(1, 2, 0).numpy(), rtol=1e-3, atol=1e-3)


def test_openvqa_regions_either_orientation_padded(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    regions = {coco("train2014", 9): rng.standard_normal((C, 5)).astype(np.float32),   # (C, R)
               coco("train2014", 25): rng.standard_normal((3, C)).astype(np.float32),  # (R, C)
               coco("val2014", 42): rng.standard_normal((C, 7)).astype(np.float32)}
    write_openvqa(tmp_path / "src", regions)
    out = tmp_path / "bua_store"
    r = run_cli(capsys, "features", "import", "--format", "openvqa", "--src", tmp_path / "src",
                "--out", out, "--channels", C, "--json")
    assert r.code == 0, r.err
    assert (r.json["layout"], r.json["item_shape"], r.json["has_mask"], r.json["has_boxes"]) == (
        "regions", [7, C], True, True)

    store = FeatureStore.open(out)
    assert store.keys == sorted(regions)
    got, mask = store.read(np.arange(3))
    boxes = store.read_boxes(np.array([2, 0]))  # any rows, in the order asked
    assert boxes.shape == (2, 7, 4)
    for i, key in enumerate(store.keys):
        x = regions[key]
        expected = x.T if x.shape[0] == C else x
        r_count = len(expected)
        np.testing.assert_allclose(got[i, :r_count].numpy(), expected, rtol=1e-3, atol=2e-3)
        assert mask[i].tolist() == [True] * r_count + [False] * (7 - r_count)
    # pixel boxes (10 i, 20, 10 i + 40, 60) of a 640 x 480 image, as fractions; padding zeros
    np.testing.assert_allclose(boxes[0, :7, 0].numpy(), np.arange(7) * 10 / 640, rtol=1e-6)
    np.testing.assert_allclose(boxes[1, 4], [40 / 640, 20 / 480, 80 / 640, 60 / 480], rtol=1e-6)
    assert (boxes[1, 5:] == 0).all()
    assert store.row_of("COCO_val2014_000000000042") == 2
    store.verify()  # boxes.npy is hashed with the rest


def test_openvqa_without_boxes_and_stores_made_before_boxes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "src").mkdir()
    for name in ("a.jpg", "b.jpg"):  # x alone, as some bottom-up dumps have it
        np.savez(tmp_path / "src" / f"{name}.npz", x=rng.standard_normal((C, 3)).astype(np.float32))
    store = import_features("openvqa", tmp_path / "src", tmp_path / "s", channels=C)
    assert not store.has_boxes and store.read_boxes([0, 1]) is None
    assert not (tmp_path / "s" / "boxes.npy").exists()
    # a store written before boxes existed has neither has_boxes nor checksum.boxes
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["has_boxes"], meta["checksum"]["boxes"]
    meta_path.write_text(json.dumps(meta))
    old = FeatureStore.open(tmp_path / "s")
    assert not old.has_boxes
    old.verify()


def test_human_output_names_the_store(tmp_path: Path, capsys) -> None:
    write_trar(tmp_path / "src", trar_arrays(2, (2, 2, 4)))
    r = run_cli(capsys, "features", "import", "--format", "trar", "--src", tmp_path / "src",
                "--out", tmp_path / "s", "--channels", 4)
    assert r.code == 0 and f"store: {tmp_path / 's'}" in r.out
    r = run_cli(capsys, "features", "info", tmp_path / "s", "--json")
    assert r.code == 0 and r.json["count"] == 3 and r.json["verified"] is False
    r = run_cli(capsys, "features", "verify", tmp_path / "s", "--json")
    assert r.code == 0 and r.json["verified"] is True


# --------------------------------------------------------------------------- refusals

class NotATensor:
    """Pickled by torch.save as an arbitrary object, which a weights-only load must refuse."""

    def __init__(self) -> None:
        self.features = [1.0, 2.0]


def f32(shape: tuple[int, ...], value: float = 0.0) -> np.ndarray:
    return np.full(shape, value, np.float32)


# Each format's good files (channels 4), then one bad file written beside them.
GOOD = {
    "trar": lambda src: write_trar(src, trar_arrays(3, (2, 2, 4))),
    "gridfeats": lambda src: write_gridfeats(src, {1: torch.zeros(1, 4, 2, 2)}),
    "openvqa": lambda src: write_openvqa(src, {"good.jpg": f32((4, 3))}),
}
BAD_TRAR = "val2014/bad.jpg.npy"  # sorts after the good train2014 files
# case -> (format, bad file, how to write it, what the message must say)
CASES = {
    "trar other shape": ("trar", BAD_TRAR, lambda p: np.save(p, f32((3, 2, 4))),
                         "differs from (2, 2, 4)"),
    "trar wrong channels": ("trar", BAD_TRAR, lambda p: np.save(p, f32((2, 2, 5))),
                            "expected a grid (H, W, 4)"),
    "trar wrong ndim": ("trar", BAD_TRAR, lambda p: np.save(p, f32((4, 4))), "got shape (4, 4)"),
    "trar integers": ("trar", BAD_TRAR, lambda p: np.save(p, np.zeros((2, 2, 4), np.int64)),
                      "floating point"),
    "trar nan": ("trar", BAD_TRAR, lambda p: np.save(p, f32((2, 2, 4), np.nan)), "non-finite"),
    "trar inf": ("trar", BAD_TRAR, lambda p: np.save(p, f32((2, 2, 4), np.inf)), "non-finite"),
    "float16 overflow": ("trar", BAD_TRAR, lambda p: np.save(p, f32((2, 2, 4), 1e5)),
                         "overflow float16"),
    "trar unreadable": ("trar", BAD_TRAR, lambda p: p.write_bytes(b"not an array"),
                        "cannot read as a .npy array"),
    "gridfeats object pickle": ("gridfeats", "7.pth", lambda p: torch.save(NotATensor(), p),
                                "GLOBAL test_feature_import.NotATensor was not an allowed global"),
    "gridfeats not a pickle": ("gridfeats", "7.pth", lambda p: p.write_bytes(b"\x00garbage"),
                               "cannot read as a tensor"),
    "gridfeats dict": ("gridfeats", "7.pth", lambda p: torch.save({"x": torch.zeros(2)}, p),
                       "got dict"),
    "gridfeats 3-D": ("gridfeats", "7.pth", lambda p: torch.save(torch.zeros(4, 2, 2), p),
                      "got shape (4, 2, 2)"),
    "gridfeats channels": ("gridfeats", "7.pth", lambda p: torch.save(torch.zeros(1, 8, 2, 2), p),
                           "expected a tensor (1, 4, H, W)"),
    "openvqa no x": ("openvqa", "bad.jpg.npz", lambda p: np.savez(p, bbox=f32((3, 4))),
                     "no array 'x'"),
    "openvqa square": ("openvqa", "bad.jpg.npz", lambda p: np.savez(p, x=f32((4, 4))),
                       "ambiguous"),
    "openvqa channels": ("openvqa", "bad.jpg.npz", lambda p: np.savez(p, x=f32((5, 3))),
                         "neither axis has 4"),
    "openvqa inf": ("openvqa", "bad.jpg.npz",
                    lambda p: save_openvqa(p, f32((4, 3), -np.inf), channels=4), "non-finite"),
    "openvqa no boxes": ("openvqa", "bad.jpg.npz", lambda p: np.savez(p, x=f32((4, 3))),
                         "has no region boxes, but"),
    "openvqa part of the boxes": ("openvqa", "bad.jpg.npz",
                                  lambda p: save_openvqa(p, f32((4, 3)), 4, image_w=None),
                                  "has bbox, image_h but not image_w"),
    "openvqa box count": ("openvqa", "bad.jpg.npz",
                          lambda p: save_openvqa(p, f32((4, 3)), 4, bbox=f32((2, 4))),
                          "bbox has shape (2, 4), expected (3, 4)"),
    "openvqa box outside": ("openvqa", "bad.jpg.npz",
                            lambda p: save_openvqa(p, f32((4, 3)), 4, bbox=np.array(
                                [[0, 0, 10, 10], [600, 0, 700, 10], [0, 0, 1, 1]], np.float32)),
                            "box 1 [600.0, 0.0, 700.0, 10.0] is not (x0, y0, x1, y1)"),
    "openvqa box inverted": ("openvqa", "bad.jpg.npz",
                             lambda p: save_openvqa(p, f32((4, 3)), 4, bbox=np.array(
                                 [[0, 0, 10, 10], [0, 0, 1, 1], [50, 0, 40, 10]], np.float32)),
                             "box 2 [50.0, 0.0, 40.0, 10.0]"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_is_named_and_nothing_is_left(tmp_path: Path, capsys, case: str) -> None:
    fmt, bad_file, write_bad, expected = CASES[case]
    src, out = tmp_path / "src", tmp_path / "store"
    GOOD[fmt](src)
    (src / bad_file).parent.mkdir(parents=True, exist_ok=True)
    write_bad(src / bad_file)
    r = run_cli(capsys, "features", "import", "--format", fmt, "--src", src, "--out", out,
                "--channels", 4, "--json")
    assert r.code == 2
    assert r.err.startswith("lrcn features: error: ") and r.out == ""
    assert str(src / bad_file) in r.err and expected in r.err, r.err
    assert not out.exists() and not partial_path(out).exists()


def test_float16_overflow_imports_as_float32(tmp_path: Path) -> None:
    GOOD["trar"](tmp_path / "src")
    np.save(tmp_path / "src" / "big.npy", f32((2, 2, 4), 1e5))
    store = import_features("trar", tmp_path / "src", tmp_path / "s", dtype="float32", channels=4)
    assert float(store.read([store.row_of("big")])[0].max()) == 1e5


def test_empty_source_names_folder_and_extension(tmp_path: Path, capsys) -> None:
    (tmp_path / "src" / "train2014").mkdir(parents=True)
    np.save(tmp_path / "src" / "train2014" / "a.npy", np.zeros((2, 2, 4), np.float32))
    r = run_cli(capsys, "features", "import", "--format", "openvqa", "--src", tmp_path / "src",
                "--out", tmp_path / "s")
    assert r.code == 2 and f"no .npz files under {tmp_path / 'src'}" in r.err
    assert not (tmp_path / "s").exists() and not partial_path(tmp_path / "s").exists()
    with pytest.raises(LrcnError, match="feature folder not found"):
        import_features("trar", tmp_path / "missing", tmp_path / "s")


def test_existing_store_is_refused_and_kept(tmp_path: Path, capsys) -> None:
    write_trar(tmp_path / "src", trar_arrays(4, (2, 2, 4)))
    store = import_features("trar", tmp_path / "src", tmp_path / "s", channels=4)
    before = {p.name: p.read_bytes() for p in store.path.iterdir()}
    r = run_cli(capsys, "features", "import", "--format", "trar", "--src", tmp_path / "src",
                "--out", tmp_path / "s", "--channels", 4)
    assert r.code == 2 and f"{tmp_path / 's'} already exists" in r.err
    assert {p.name: p.read_bytes() for p in store.path.iterdir()} == before
    assert not partial_path(tmp_path / "s").exists()
