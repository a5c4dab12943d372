"""``lrcn features extract``: C5 (or conv4) grids of a frozen trunk, weights, refusals, resuming.

A random-weight resnet50 on 64x64 images gives a 2x2 grid of 2048 channels (layer3: 4x4 of
1024) and keeps every run to a second or two of CPU. The resume test kills a real
``python -m lrcn`` process.
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
from lrcn.models.image_encoders import TorchvisionTrunk

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
    assert summary["source"]["layer"] == "layer4"  # the default: C5

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
    assert_grids_of(store, net, "layer4", images)  # C5: (B, 2, 2, 2048)


def assert_grids_of(store: FeatureStore, net: torch.nn.Module, layer: str, images: Path) -> None:
    """The store holds what torchvision's `net` gives up to `layer` for the KEYS images."""
    pixels = ImageTable([images / k for k in KEYS], 64, cache=False).pixels(torch.arange(3))
    parts = [name for name, _ in net.named_children()]
    trunk = torch.nn.Sequential(*list(net.children())[:parts.index(layer) + 1])
    with torch.no_grad():
        expected = trunk(normalize(pixels)).permute(0, 2, 3, 1)  # (B, h, w, C)
    got, _ = store.read(np.arange(3))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_resnet101_layer3_at_224_gives_clevrs_14x14x1024_grids(images: Path, tmp_path: Path,
                                                               capsys) -> None:
    code, out, err = run_cli(capsys, "features", "extract", "--images", images, "--backbone",
                             "resnet101", "--layer", "layer3", "--image-size", 224,
                             "--random-weights", "--out", tmp_path / "s", "--json")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["item_shape"] == [14, 14, 1024]
    assert (summary["source"]["backbone"], summary["source"]["layer"],
            summary["source"]["image_size"]) == ("resnet101", "layer3", 224)
    grids, _ = FeatureStore.open(tmp_path / "s").read(np.arange(3))
    assert grids.shape == (3, 14, 14, 1024) and torch.isfinite(grids).all()


def test_layer3_loads_a_classification_state_dict(images: Path, tmp_path: Path, capsys) -> None:
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet50(weights=None).eval()
    state = net.state_dict()
    torch.save(state, tmp_path / "resnet50.pth")  # fc.* and layer4.* included
    code, _, err = run_cli(capsys, *extract_args(images, tmp_path / "s", "--layer", "layer3",
                                                 "--weights", tmp_path / "resnet50.pth",
                                                 "--dtype", "float32"))
    assert code == 0, err
    store = FeatureStore.open(tmp_path / "s")
    assert store.item_shape == (4, 4, 1024) and store.source["layer"] == "layer3"
    assert_grids_of(store, net, "layer3", images)  # conv4

    # layer3 needs nothing after it; a tensor it needs is still required, and named.
    conv4 = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
    torch.save(conv4, tmp_path / "conv4.pth")
    assert TorchvisionTrunk("resnet50", tmp_path / "conv4.pth", layer="layer3").out_channels == 1024
    with pytest.raises(LrcnError, match=r"conv4.pth.*missing trunk keys layer4\.0\."):
        TorchvisionTrunk("resnet50", tmp_path / "conv4.pth")
    del conv4["layer3.5.bn3.running_var"]
    torch.save(conv4, tmp_path / "broken.pth")
    with pytest.raises(LrcnError, match=r"broken.pth.*missing trunk keys layer3.5.bn3.running_var$"):
        TorchvisionTrunk("resnet50", tmp_path / "broken.pth", layer="layer3")


def test_layer_refusals(images: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    code, _, err = run_cli(capsys, "features", "extract", "--images", images, "--backbone", "x152",
                           "--layer", "layer3", "--random-weights", "--out", out)
    assert code == 2 and "--layer is for torchvision trunks" in err
    code, _, err = run_cli(capsys, *extract_args(images, out, "--random-weights", "--layer",
                                                 "layer3", "--image-size", 40))
    assert code == 2 and "multiple of 16 (the stride of layer3)" in err
    with pytest.raises(SystemExit):  # argparse: not a choice
        main([str(a) for a in extract_args(images, out, "--random-weights", "--layer", "layer2")])
    assert not out.exists() and not partial_path(out).exists()


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

def test_resuming_with_another_layer_is_refused(tmp_path: Path, capsys) -> None:
    write_images(tmp_path / "img", KEYS[:2])
    (tmp_path / "img" / "zz_broken.jpg").write_bytes(b"not a jpeg")  # sorted last: batch 2
    out = tmp_path / "s"
    code, _, err = run_cli(capsys, *extract_args(tmp_path / "img", out, "--random-weights",
                                                 "--layer", "layer3"))
    assert code == 2 and "cannot read image" in err
    progress = partial_path(out) / "progress.json"
    assert json.loads(progress.read_text())["rows_done"] == 2
    code, _, err = run_cli(capsys, *extract_args(tmp_path / "img", out, "--random-weights"))
    assert code == 2 and "layer: 'layer3' there, 'layer4' now" in err
    assert json.loads(progress.read_text())["rows_done"] == 2 and not out.exists()


def test_an_extraction_from_before_layer_resumes_as_layer4(tmp_path: Path, capsys) -> None:
    """Its recorded settings have no layer: they were C5's (layer4)."""
    write_images(tmp_path / "img", KEYS[:2])
    broken = tmp_path / "img" / "zz_broken.jpg"
    broken.write_bytes(b"not a jpeg")  # sorted last: batch 2
    out = tmp_path / "s"
    code, _, err = run_cli(capsys, *extract_args(tmp_path / "img", out, "--random-weights"))
    assert code == 2 and "cannot read image" in err
    progress = partial_path(out) / "progress.json"
    saved = json.loads(progress.read_text())
    del saved["settings"]["layer"]  # as an earlier version wrote it
    progress.write_text(json.dumps(saved))
    Image.new("RGB", (40, 30), (10, 20, 30)).save(broken, "JPEG")
    code, _, err = run_cli(capsys, *extract_args(tmp_path / "img", out, "--random-weights"))
    assert code == 0, err
    assert len(FeatureStore(out)) == 3


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
