"""``--backbone x152``: grid-feats-vqa's X-152 (a detectron2 checkpoint) without detectron2.

No real checkpoint is available offline: a random torchvision ResNeXt-152 32x8d state dict is
renamed to detectron2's names by the inverse of the mapping (written here independently of
the module), padded with tensors of the rest of a detectron2 model, and saved as detectron2
saves checkpoints. ResNeXt-152 takes about 6 s per 600 x 900 image on one CPU thread, so
the end-to-end runs shrink detectron2's resize through the Python API (``resize=``).
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lrcn.cli import main
from lrcn.data.images import load_image
from lrcn.engine import feature_extraction
from lrcn.engine.feature_extraction import extract_features
from lrcn.errors import LrcnError
from lrcn.features import FeatureStore
from lrcn.features.store import partial_path
from lrcn.models.detectron2_trunk import (
    PIXEL_MEAN_BGR,
    Detectron2Trunk,
    detectron2_to_torchvision,
    preprocess,
    resized_shape,
)

KEYS = ["a/wide.jpg", "b/tall.png"]
SIZES = {"a/wide.jpg": (40, 60), "b/tall.png": (50, 30)}  # (height, width)
SMALL = (64, 96)  # resize (shortest, longest) for the end-to-end runs: 64x96 and 96x58 inputs
# The rest of a detectron2 grid-feats model: RPN, box head, predictors, attribute head.
EXTRA = {
    "proposal_generator.rpn_head.conv.weight": (8, 8, 3, 3),
    "proposal_generator.rpn_head.objectness_logits.weight": (15, 8, 1, 1),
    "roi_heads.box_head.fc1.weight": (16, 8),
    "roi_heads.box_predictor.cls_score.weight": (1601, 16),
    "roi_heads.box_predictor.bbox_pred.bias": (6400,),
    "roi_heads.attribute_predictor.obj_embed.weight": (1601, 4),
    "pixel_mean": (3, 1, 1),
    "pixel_std": (3, 1, 1),
}


def resnext152() -> torch.nn.Module:
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.ops import FrozenBatchNorm2d

    return ResNet(Bottleneck, [3, 8, 36, 3], groups=32, width_per_group=8,
                  norm_layer=FrozenBatchNorm2d)


def d2_name(name: str, res5: str = "backbone.res5") -> str:
    """detectron2's name of torchvision trunk tensor `name` (the inverse renaming)."""
    if name == "conv1.weight":
        return "backbone.stem.conv1.weight"
    if name.startswith("bn1."):
        return "backbone.stem.conv1.norm." + name.split(".", 1)[1]
    layer, block, part, *rest = name.split(".")
    stage = {"layer1": "backbone.res2", "layer2": "backbone.res3", "layer3": "backbone.res4",
             "layer4": res5}[layer]
    if part == "downsample":
        tail = "shortcut.weight" if rest == ["0", "weight"] else f"shortcut.norm.{rest[1]}"
    elif part.startswith("bn"):
        tail = f"conv{part[2]}.norm.{rest[0]}"
    else:
        tail = f"{part}.weight"
    return f"{stage}.{block}.{tail}"


def as_detectron2(tv_state: dict[str, torch.Tensor], res5: str = "backbone.res5",
                  prefix: str = "") -> dict[str, torch.Tensor]:
    state = {prefix + d2_name(k, res5): v for k, v in tv_state.items()}
    gen = torch.Generator().manual_seed(3)
    state.update({prefix + k: torch.randn(shape, generator=gen) for k, shape in EXTRA.items()})
    return state


@pytest.fixture(scope="module")
def reference() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A seeded ResNeXt-152 32x8d trunk (eval) and its state dict, BatchNorm buffers random,
    so that swapping any two of them would show."""
    torch.manual_seed(11)
    net = resnext152()
    gen = torch.Generator().manual_seed(12)
    for module in net.modules():
        if hasattr(module, "running_var"):
            n = module.weight.numel()
            module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
            module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    trunk = torch.nn.Sequential(OrderedDict(list(net.named_children())[:-2])).eval()  # to layer4
    return trunk, dict(trunk.state_dict())


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``{"model": state_dict, ...}`` as detectron2's Checkpointer saves it."""
    path = tmp_path_factory.mktemp("x152") / "X-152.pth"
    torch.save({"model": as_detectron2(reference[1]), "__author__": "test", "iteration": 3,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.02, "params": [0, 1]}]},
                "scheduler": {"last_epoch": 3}}, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for key in KEYS:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*SIZES[key], 3), dtype=np.uint8)).save(root / key)
    return root


# --------------------------------------------------------------------------- the name mapping

def test_mapping_covers_every_trunk_tensor(reference) -> None:
    tv_state = reference[1]
    for res5, prefix in (("backbone.res5", ""), ("roi_heads.res5", ""), ("backbone.res5", "module.")):
        d2 = as_detectron2(tv_state, res5, prefix)
        mapped = detectron2_to_torchvision(d2)
        assert set(mapped) == set(tv_state)  # none missing, no stray name
        trunk_names = [k for k in d2 if k.startswith((prefix + "backbone.", prefix + "roi_heads.res5."))]
        assert len(trunk_names) == len(mapped) == 775  # every trunk tensor of the file used
        assert all(mapped[k] is tv_state[k] for k in tv_state)
    assert set(detectron2_to_torchvision({k: torch.zeros(1) for k in EXTRA})) == set()


def test_other_architectures_are_refused() -> None:
    with pytest.raises(LrcnError, match=r"backbone\.res4\.0\.conv2_offset\.weight.*deformable"):
        detectron2_to_torchvision({"backbone.res4.0.conv2_offset.weight": torch.zeros(1)})
    with pytest.raises(LrcnError, match=r"unknown trunk tensors backbone\.fpn_lateral2\.weight"):
        detectron2_to_torchvision({"backbone.fpn_lateral2.weight": torch.zeros(1)})
    with pytest.raises(LrcnError, match="both in the backbone"):
        detectron2_to_torchvision({"backbone.res5.0.conv1.weight": torch.zeros(1),
                                   "roi_heads.res5.0.conv1.weight": torch.zeros(1)})


def test_checkpoint_loads_tensor_for_tensor(reference, checkpoint: Path) -> None:
    net, tv_state = reference
    trunk = Detectron2Trunk(checkpoint)
    loaded = trunk.body.state_dict()
    assert set(loaded) == set(tv_state)
    for name, tensor in loaded.items():
        assert torch.equal(tensor, tv_state[name]), name
    trunk.train()
    assert not trunk.training and not any(p.requires_grad for p in trunk.parameters())
    images = torch.randn(1, 3, 64, 96) * 50
    with torch.no_grad():  # in the channels-last order the trunk runs its convolutions in
        expected = net(images.contiguous(memory_format=torch.channels_last))
    assert torch.equal(trunk(images), expected.permute(0, 2, 3, 1))  # (1, 2, 3, 2048)


def test_missing_or_misfit_tensors_are_named(tmp_path: Path, reference) -> None:
    names = [d2_name(k) for k in reference[1]]
    tiny = {k: torch.zeros(1) for k in names}  # shapes checked only when nothing is missing
    gone = "backbone.res4.35.conv2.norm.running_var"
    torch.save({"model": {k: v for k, v in tiny.items() if k != gone}}, tmp_path / "one.pth")
    with pytest.raises(LrcnError, match=rf"missing trunk tensors {gone}$"):
        Detectron2Trunk(tmp_path / "one.pth")
    torch.save({k: v for k, v in tiny.items() if ".res5." not in k}, tmp_path / "bare.pth")  # no "model"
    with pytest.raises(LrcnError, match=r"missing trunk tensors backbone\.res5\.0\.conv1\.weight, "
                                        r".*\(50 in all\)"):
        Detectron2Trunk(tmp_path / "bare.pth")
    torch.save({"model": tiny}, tmp_path / "shapes.pth")
    with pytest.raises(LrcnError, match=r"wrong shape.*backbone\.stem\.conv1\.weight \(1,\) "
                                        r"\(ResNeXt-152 32x8d: \(64, 3, 7, 7\)\).*\(775 in all\)"):
        Detectron2Trunk(tmp_path / "shapes.pth")


class NotAStateDict:
    pass


def test_non_tensor_pickles_are_refused(tmp_path: Path) -> None:
    torch.save(NotAStateDict(), tmp_path / "object.pth")
    with pytest.raises(LrcnError, match="cannot read as a PyTorch state dict"):
        Detectron2Trunk(tmp_path / "object.pth")
    torch.save({"model": {"backbone.stem.conv1.weight": "not a tensor"}}, tmp_path / "str.pth")
    with pytest.raises(LrcnError, match="expected a state dict"):
        Detectron2Trunk(tmp_path / "str.pth")
    with pytest.raises(LrcnError, match="needs its weights"):
        Detectron2Trunk()


# --------------------------------------------------------------------------- preprocessing

def test_resize_rule_is_detectron2s_resize_shortest_edge() -> None:
    assert resized_shape(300, 450) == (600, 900)
    assert resized_shape(450, 300) == (900, 600)
    assert resized_shape(200, 1000) == (200, 1000)  # capped at longest 1000
    assert resized_shape(100, 1000) == (100, 1000)
    assert resized_shape(1000, 1500) == (600, 900)
    assert resized_shape(333, 500) == (600, 901)  # 900.9 rounds half up
    assert resized_shape(480, 640) == (600, 800)
    assert resized_shape(40, 60, 64, 96) == (64, 96) and resized_shape(50, 30, 64, 96) == (96, 58)
    image = Image.new("RGB", (450, 300))  # PIL: (width, height)
    assert preprocess(image).shape == (3, 600, 900)


def test_preprocessing_is_bgr_minus_mean_over_std() -> None:
    rgb = np.array([[[10, 20, 30], [255, 0, 128], [1, 2, 3]],
                    [[0, 0, 0], [255, 255, 255], [7, 200, 90]]], dtype=np.uint8)  # (2, 3, 3)
    got = preprocess(Image.fromarray(rgb), shortest=2, longest=3)  # already 2 x 3: no resize
    assert got.shape == (3, 2, 3) and got.dtype == torch.float32
    # PIXEL_STD is 1 (detectron2's default, kept by grid-feats-vqa)
    assert got[:, 0, 0].tolist() == pytest.approx([30 - 103.530, 20 - 116.280, 10 - 123.675])
    assert got[:, 1, 2].tolist() == pytest.approx([90 - 103.530, 200 - 116.280, 7 - 123.675])
    # resized with PIL's bilinear, as detectron2's ResizeTransform does
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    resized = np.asarray(image.resize((14, 10), Image.Resampling.BILINEAR), dtype=np.float32)
    expected = torch.from_numpy(resized[:, :, ::-1].transpose(2, 0, 1).copy())
    expected -= torch.tensor(PIXEL_MEAN_BGR).view(3, 1, 1)
    assert torch.equal(preprocess(image, 10, 100), expected)


# --------------------------------------------------------------------------- extraction

def run_cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_random_weights_grid_8(images: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    # Test-only: the CLI always resizes to 600/1000; the Python API takes smaller sizes.
    monkeypatch.setattr(feature_extraction, "extract_features",
                        functools.partial(extract_features, resize=SMALL))
    code, out, err = run_cli(capsys, "features", "extract", "--images", images, "--backbone",
                             "x152", "--random-weights", "--grid", 8, "--out", tmp_path / "s",
                             "--json")
    assert code == 0, err
    assert "WARNING: extracting with RANDOM x152 weights" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["count"], summary["item_shape"]) == (2, [8, 8, 2048])
    source = summary["source"]
    assert (source["normalization"], source["grid"], source["resize"]) == ("detectron2-bgr", 8, list(SMALL))
    store = FeatureStore.open(tmp_path / "s")
    grids, _ = store.read(np.arange(2))
    assert store.keys == KEYS and grids.shape == (2, 8, 8, 2048) and torch.isfinite(grids).all()
    assert not torch.equal(grids[0], grids[1])


def test_store_holds_the_pooled_res5_grid(reference, checkpoint: Path, images: Path,
                                          tmp_path: Path) -> None:
    store = extract_features(images, "x152", checkpoint, tmp_path / "s", dtype="float32",
                             resize=SMALL)
    assert store.item_shape == (16, 16, 2048) and store.source["weights"] == str(checkpoint.resolve())
    net = reference[0]
    got, _ = store.read(np.arange(2))
    for row, key in enumerate(KEYS):
        image = load_image(images / key)
        height, width = resized_shape(image.height, image.width, *SMALL)
        bgr = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR),
                         dtype=np.float32)[:, :, ::-1]
        pixels = torch.from_numpy(bgr.transpose(2, 0, 1).copy()) - torch.tensor(PIXEL_MEAN_BGR).view(3, 1, 1)
        with torch.no_grad():
            res5 = net(pixels[None])  # (1, 2048, 2, 3) or (1, 2048, 3, 2)
        expected = F.adaptive_avg_pool2d(res5, 16)[0].permute(1, 2, 0)
        torch.testing.assert_close(got[row], expected, rtol=1e-5, atol=1e-5)


def test_resume_and_refusals(images: Path, tmp_path: Path, capsys) -> None:
    work, out = tmp_path / "img", tmp_path / "s"
    (work / "a").mkdir(parents=True)
    (work / "a" / "wide.jpg").write_bytes((images / "a" / "wide.jpg").read_bytes())
    (work / "b").mkdir()
    (work / "b" / "tall.png").write_bytes(b"not a png")
    settings = dict(random_weights=True, batch_size=1, grid=8, resize=SMALL)
    with pytest.raises(LrcnError, match="cannot read image"):
        extract_features(work, "x152", None, out, **settings)
    progress = json.loads((partial_path(out) / "progress.json").read_text())
    assert progress["rows_done"] == 1
    assert (progress["settings"]["grid"], progress["settings"]["resize"]) == (8, list(SMALL))
    assert progress["settings"]["backbone"] == "x152" and progress["settings"]["image_size"] is None
    with pytest.raises(LrcnError, match="grid: 8 there, 16 now"):
        extract_features(work, "x152", None, out, **{**settings, "grid": 16})
    (work / "b" / "tall.png").write_bytes((images / "b" / "tall.png").read_bytes())
    resumed = extract_features(work, "x152", None, out, **settings)
    extract_features(work, "x152", None, tmp_path / "ref", **settings)  # uninterrupted
    for name in ("features.npy", "keys.json", "meta.json"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert resumed.count == 2

    # options of the other kind of trunk are refused, nothing written
    with pytest.raises(LrcnError, match="--image-size is for torchvision trunks"):
        extract_features(images, "x152", None, tmp_path / "x", image_size=512, random_weights=True)
    with pytest.raises(LrcnError, match=r"--grid \(and resize\) are for x152"):
        extract_features(images, "resnet50", None, tmp_path / "x", grid=8, random_weights=True)
    with pytest.raises(LrcnError, match="x152 needs its weights.*detectron2 checkpoint"):
        extract_features(images, "x152", None, tmp_path / "x")
    with pytest.raises(SystemExit):  # argparse: --grid is 16 or 8
        run_cli(capsys, "features", "extract", "--images", images, "--backbone", "x152",
                "--random-weights", "--grid", 4, "--out", tmp_path / "x")
    assert "invalid choice: 4" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not partial_path(tmp_path / "x").exists()
