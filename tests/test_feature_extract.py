"""``lrcn features extract``: C5 grids of a frozen trunk, weights, refusals, and resuming.

A random-weight resnet50 on 64x64 images gives a 2x2 grid of 2048 channels and keeps every
run to a second or two of CPU. The resume test kills a real ``python -m lrcn`` process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lrcn.cli import main
from lrcn.data.images import ImageTable, normalize
from lrcn.errors import LrcnError
from lrcn.engine.feature_extraction import extract_features
from lrcn.features import FeatureStore
from lrcn.features.store import partial_path

KEYS = ["train2014/COCO_train2014_000000000009.jpg", "train2014/COCO_train2014_000000000025.jpg",
        "val2014/COCO_val2014_000000000042.png"]


def write_images(root: Path, keys: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / key)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_images(root, KEYS)
    (root / "notes.txt").write_text("not an image")
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def extract_args(images: Path, out: Path, *extra: Any) -> list[Any]:
    return ["features", "extract", "--images", images, "--backbone", "resnet50", "--out", out,
            "--image-size", 64, "--batch-size", 2, *extra]


def test_random_weights_give_a_2x2_grid_per_image(images: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    code, out, err = run_cli(capsys, *extract_args(images, tmp_path / "s", "--random-weights", "--json"))
    assert code == 0, err
    assert torch.equal(torch.rand(3), expected_draw)  # the seeded init left the caller's RNG alone
    assert "WARNING: extracting with RANDOM resnet50 weights" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["count"], summary["item_shape"], summary["dtype"]) == (3, [2, 2, 2048], "float16")
    assert summary["source"]["random_weights"] is True

    store = FeatureStore.open(tmp_path / "s")
    assert store.keys == KEYS and store.layout == "grid" and not store.has_mask
    grids, mask = store.read(np.arange(3))
    assert grids.shape == (3, 2, 2, 2048) and mask is None
    assert torch.isfinite(grids).all() and grids.abs().sum() > 0 and not torch.equal(grids[0], grids[1])
    assert store.row_of("COCO_train2014_000000000009") == 0
    store.verify()
    assert not partial_path(tmp_path / "s").exists()


def test_weights_file_gives_the_models_own_features(images: Path, tmp_path: Path, capsys) -> None:
    import torchvision

    torch.manual_seed(1)  # not the extractor's seed: equal features prove the file was used
    net = torchvision.models.resnet50(weights=None).eval()
    torch.save(net.state_dict(), tmp_path / "resnet50.pth")
    code, _, err = run_cli(capsys, *extract_args(images, tmp_path / "s", "--weights",
                                                 tmp_path / "resnet50.pth", "--dtype", "float32"))
    assert code == 0, err
    assert "RANDOM" not in err

    store = FeatureStore.open(tmp_path / "s")
    assert store.source["weights"] == str((tmp_path / "resnet50.pth").resolve())
    pixels = ImageTable([images / k for k in KEYS], 64, cache=False).pixels(torch.arange(3))
    trunk = torch.nn.Sequential(*list(net.children())[:-2])  # up to layer4: C5
    with torch.no_grad():
        expected = trunk(normalize(pixels)).permute(0, 2, 3, 1)  # (B, 2, 2, 2048)
    got, _ = store.read(np.arange(3))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_refusals_leave_nothing(images: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    code, _, err = run_cli(capsys, *extract_args(images, out))
    assert code == 2 and "pass --weights FILE" in err
    code, _, err = run_cli(capsys, *extract_args(images, out, "--weights", tmp_path / "none.pth"))
    assert code == 2 and f"weights file not found: {tmp_path / 'none.pth'}" in err
    code, _, err = run_cli(capsys, *extract_args(tmp_path / "empty", out, "--random-weights"))
    assert code == 2 and "image folder not found" in err
    code, _, err = run_cli(capsys, *extract_args(images, out, "--random-weights", "--image-size", 50))
    assert code == 2 and "multiple of 32" in err
    code, _, err = run_cli(capsys, "features", "extract", "--images", images, "--backbone", "vgg16",
                           "--out", out, "--random-weights")
    assert code == 2 and "unknown image trunk 'vgg16'" in err
    assert not out.exists() and not partial_path(out).exists()
    out.mkdir()
    code, _, err = run_cli(capsys, *extract_args(images, out, "--random-weights"))
    assert code == 2 and "already exists" in err


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    write_images(tmp_path / "img", KEYS[:1])
    (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(LrcnError) as err:
        extract_features(tmp_path / "img", "resnet50", None, tmp_path / "s", image_size=64,
                         random_weights=True)
    assert f"cannot read image {tmp_path / 'img' / 'broken.jpg'}" in str(err.value)
    assert not (tmp_path / "s").exists()
    assert partial_path(tmp_path / "s").exists()  # kept: the same command continues it


# --------------------------------------------------------------------------- resuming

def _command(images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lrcn", "features", "extract", "--images", str(images),
            "--backbone", "resnet50", "--random-weights", "--image-size", "64",
            "--batch-size", "4", "--out", str(out)]


def test_killed_extraction_resumes_to_a_byte_identical_store(tmp_path: Path, capsys, caplog) -> None:
    images, out, reference = tmp_path / "img", tmp_path / "killed", tmp_path / "reference"
    write_images(images, [f"train2014/COCO_train2014_{i:012d}.jpg" for i in range(120)])
    # One thread, as in this process (conftest): the same kernels, so the same bytes.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    victim = subprocess.Popen(_command(images, out), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    progress = partial_path(out) / "progress.json"
    deadline = time.monotonic() + 120
    while victim.poll() is None and time.monotonic() < deadline:
        if progress.exists() and json.loads(progress.read_text())["rows_done"] >= 4:
            break
        time.sleep(0.005)
    assert victim.poll() is None, f"ended before it could be killed: {victim.stderr.read().decode()}"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    rows_done = json.loads(progress.read_text())["rows_done"]
    assert 4 <= rows_done < 120 and rows_done % 4 == 0, rows_done
    assert not out.exists()  # a killed extraction leaves nothing at STORE

    # Other settings against the partial: refused, the partial kept as it was.
    code, _, err = run_cli(capsys, *extract_args(images, out, "--random-weights"))
    assert code == 2 and "batch_size: 4 there, 2 now" in err and str(partial_path(out)) in err
    assert json.loads(progress.read_text())["rows_done"] == rows_done

    settings = dict(image_size=64, batch_size=4, random_weights=True)
    with caplog.at_level("INFO", logger="lrcn.engine.feature_extraction"):
        extract_features(images, "resnet50", None, out, **settings)
    assert f"continuing after {rows_done} of 120 images" in caplog.text
    extract_features(images, "resnet50", None, reference, **settings)
    for name in ("features.npy", "keys.json", "meta.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not partial_path(out).exists() and not (out / "progress.json").exists()
    FeatureStore.open(out).verify()


def test_killed_while_finishing_reruns_to_completion(tmp_path: Path, monkeypatch, caplog) -> None:
    write_images(tmp_path / "img", KEYS)
    out = tmp_path / "s"
    real_rename = os.rename

    def rename_dies(src: Any, dst: Any) -> None:  # every row and meta.json written, then killed
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", rename_dies)
    with pytest.raises(KeyboardInterrupt):
        extract_features(tmp_path / "img", "resnet50", None, out, image_size=64, batch_size=2,
                         random_weights=True)
    assert not out.exists() and (partial_path(out) / "meta.json").exists()
    monkeypatch.setattr(os, "rename", real_rename)
    with caplog.at_level("INFO", logger="lrcn.engine.feature_extraction"):
        store = extract_features(tmp_path / "img", "resnet50", None, out, image_size=64,
                                 batch_size=2, random_weights=True)
    assert "continuing after 3 of 3 images" in caplog.text
    assert store.keys == KEYS and not (out / "progress.json").exists()
    store.verify()
