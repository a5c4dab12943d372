"""grid-feats-vqa's X-152 trunk without detectron2: its checkpoint on torchvision's ResNeXt.

grid-feats-vqa (Jiang et al., "In Defense of Grid Features for VQA") trains a ResNeXt-152
32x8d on Visual Genome with detectron2 and keeps the output of its last stage, res5, as the
grid. This module maps that checkpoint's parameter names onto torchvision's
``ResNet(Bottleneck, [3, 8, 36, 3], groups=32, width_per_group=8)`` with frozen BatchNorm
(torchvision's Bottleneck strides the 3x3 conv, as the X-152's ``STRIDE_IN_1X1: False``
does) and holds detectron2's input convention, so features can be extracted with torch and
torchvision alone.

Facts taken from grid-feats-vqa's configs and ``extract_grid_feature.py`` and detectron2
(commit ffff8ac, the one grid-feats-vqa asks for):

* the grid model keeps res2..res5 in the backbone (``RESNETS.OUT_FEATURES: ["res5"]``,
  ``AttributeStandardROIHeads``), so its res5 is ``backbone.res5.*``; a C4 model keeps it in
  ``roi_heads.res5.*``, which is read as well;
* extraction forces ``RES5_DILATION = 1``: res5's first block has stride 2 and no dilation,
  torchvision's layer4;
* input: BGR, 0-255 values minus ``PIXEL_MEAN`` over ``PIXEL_STD`` (detectron2's defaults,
  which the grid configs keep), each image resized by ``ResizeShortestEdge`` (shortest side
  600, longest at most 1000, PIL bilinear) and run at its own size (no padding for a plain
  ResNet backbone).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from lrcn.errors import LrcnError
from lrcn.models.image_encoders import GridEncoder, _first_keys, _read_state_dict

DETECTRON2_TRUNK_NAMES = ("x152",)
STAGE_BLOCKS = (3, 8, 36, 3)  # blocks in res2..res5 (ResNeXt-152)
GROUPS, WIDTH_PER_GROUP = 32, 8  # 32x8d
OUT_CHANNELS = 2048
# detectron2's MODEL.PIXEL_MEAN / PIXEL_STD defaults, in BGR order, on 0-255 values
PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
PIXEL_STD_BGR = (1.0, 1.0, 1.0)
# grid-feats-vqa's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (configs/Base-RCNN-grid.yaml)
MIN_SIZE_TEST, MAX_SIZE_TEST = 600, 1000
GRID_SIZES = (16, 8)  # the fixed grids the variable res5 grid is pooled to

_TRUNK_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_NORM_FIELDS = r"(weight|bias|running_mean|running_var)"
_STEM = re.compile(rf"backbone\.stem\.conv1\.(?:(weight)|norm\.{_NORM_FIELDS})")
_BLOCK = re.compile(rf"(?:backbone\.res([2-5])|roi_heads\.res(5))\.(\d+)\."
                    rf"(conv[123]|shortcut)\.(?:(weight)|norm\.{_NORM_FIELDS})")


def _torchvision_name(name: str) -> str | None:
    """torchvision's name for one detectron2 trunk tensor; None if `name` is not one."""
    stem = _STEM.fullmatch(name)
    if stem:
        return "conv1.weight" if stem[1] else f"bn1.{stem[2]}"
    block = _BLOCK.fullmatch(name)
    if not block:
        return None
    stage, res5, index, conv, weight, field = block.groups()
    layer = f"layer{int(stage or res5) - 1}.{int(index)}"
    if conv == "shortcut":
        return f"{layer}.downsample.0.weight" if weight else f"{layer}.downsample.1.{field}"
    j = conv[-1]
    return f"{layer}.conv{j}.weight" if weight else f"{layer}.bn{j}.{field}"


def _detectron2_name(name: str, res5: str = "backbone.res5") -> str:
    """detectron2's name for torchvision trunk tensor `name` (res5 under `res5`), for messages."""
    if name == "conv1.weight":
        return "backbone.stem.conv1.weight"
    if name.startswith("bn1."):
        return f"backbone.stem.conv1.norm.{name[len('bn1.'):]}"
    layer, index, part, *rest = name.split(".")  # layer4.0.bn2.weight, layer4.0.downsample.1.bias
    stage = int(layer[len("layer"):]) + 1
    prefix = f"{res5 if stage == 5 else f'backbone.res{stage}'}.{index}"
    if part == "downsample":
        return f"{prefix}.shortcut.weight" if rest[0] == "0" else f"{prefix}.shortcut.norm.{rest[1]}"
    conv = f"conv{part[-1]}"
    return f"{prefix}.{conv}.weight" if part.startswith("conv") else f"{prefix}.{conv}.norm.{rest[0]}"


def detectron2_to_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ResNet trunk tensors of a detectron2 state dict, under torchvision's names.

    ``backbone.stem.conv1`` -> ``conv1``/``bn1``, ``backbone.res{2,3,4}.i`` ->
    ``layer{1,2,3}.i``, ``backbone.res5.i`` or ``roi_heads.res5.i`` -> ``layer4.i``;
    ``convJ.norm`` -> ``bnJ``, ``shortcut`` -> ``downsample.0``, ``shortcut.norm`` ->
    ``downsample.1``. A ``module.`` prefix on every name is dropped. Tensors outside the trunk
    (RPN, box and attribute heads, ``pixel_mean``...) are left out. LrcnError for a
    ``backbone.*`` or ``roi_heads.res5.*`` tensor the mapping does not know (deformable
    convolutions, an FPN: another architecture, whose features would silently be wrong) and
    for res5 found both in the backbone and in the ROI heads.
    """
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, tensor in state.items():
        new = _torchvision_name(name)
        if new is not None:
            mapped[new] = tensor
        elif name.startswith(("backbone.", "roi_heads.res5.")):
            unknown.append(name)
    if unknown:
        unknown.sort()
        hint = (" (deformable convolutions, as in grid-feats-vqa's X-152-challenge / X-152++, "
                "are not supported)" if any(".conv2_offset." in k for k in unknown) else "")
        raise LrcnError(f"not a plain detectron2 ResNet trunk: unknown trunk tensors "
                        f"{_first_keys(unknown)}{hint}")
    if any(k.startswith("backbone.res5.") for k in state) and any(
            k.startswith("roi_heads.res5.") for k in state):
        raise LrcnError("res5 is both in the backbone (backbone.res5.*) and in the ROI heads "
                        "(roi_heads.res5.*); cannot tell which is the trunk's")
    return mapped


def _resnext152() -> nn.Sequential:
    """torchvision's ResNeXt-152 32x8d with frozen BatchNorm, up to layer4 (C5)."""
    from torchvision.models.resnet import Bottleneck, ResNet  # heavy; only needed here
    from torchvision.ops import FrozenBatchNorm2d

    net = ResNet(Bottleneck, list(STAGE_BLOCKS), groups=GROUPS, width_per_group=WIDTH_PER_GROUP,
                 norm_layer=FrozenBatchNorm2d)
    return nn.Sequential(OrderedDict((part, getattr(net, part)) for part in _TRUNK_PARTS))


class Detectron2Trunk(GridEncoder):
    """grid-feats-vqa's X-152 up to res5: detectron2-normalised BGR images -> (B, h, w, 2048).

    Always frozen and in eval mode (its BatchNorm is FrozenBatchNorm2d, as detectron2's
    ``FrozenBN``). Input is `preprocess`'s output; h = ceil(H / 32), w = ceil(W / 32).

    Args:
        weights_path: a detectron2 checkpoint (``{"model": state_dict, ...}``) or a bare
            state dict in detectron2's names, read with ``torch.load(weights_only=True)``.
        random_weights: allow building without a weights file (tests only: random features).
    """

    def __init__(self, weights_path: str | Path | None = None, random_weights: bool = False) -> None:
        super().__init__()
        if weights_path is None and not random_weights:
            raise LrcnError("x152 needs its weights: grid-feats-vqa's X-152.pth (a detectron2 "
                            "checkpoint)")
        self.out_channels = OUT_CHANNELS
        self.trainable = False
        if weights_path is None:
            self.body = _resnext152()  # torchvision's random init
        else:
            path = Path(weights_path)
            raw = _read_state_dict(path, unwrap="model")
            try:
                state = detectron2_to_torchvision(raw)
            except LrcnError as exc:
                raise LrcnError(f"{path}: {exc}") from None
            c4 = any(k.startswith(("roi_heads.res5.", "module.roi_heads.res5.")) for k in raw)
            with torch.device("meta"):  # shapes only: the checkpoint provides every tensor
                self.body = _resnext152()
            self._load(state, path, "roi_heads.res5" if c4 else "backbone.res5")
        self.requires_grad_(False)
        self.eval()

    def _load(self, state: dict[str, torch.Tensor], path: Path, res5: str) -> None:
        """Take every trunk tensor from `state` (torchvision names); LrcnError naming the
        missing or misfit ones by their detectron2 names (res5 under `res5`)."""
        expected = self.body.state_dict()
        missing = [_detectron2_name(k, res5) for k in expected if k not in state]
        if missing:
            raise LrcnError(f"{path}: not grid-feats-vqa's X-152 (a detectron2 ResNeXt-152 "
                            f"32x8d): missing trunk tensors {_first_keys(missing)}")
        misfit = [f"{_detectron2_name(k, res5)} {tuple(state[k].shape)} (ResNeXt-152 32x8d: "
                  f"{tuple(v.shape)})" for k, v in expected.items() if state[k].shape != v.shape]
        if misfit:
            raise LrcnError(f"{path}: tensors of the wrong shape for a ResNeXt-152 32x8d: "
                            f"{_first_keys(misfit)}")
        # In float32 (the model may have been saved in half precision); assign: no second copy.
        state = {k: state[k].to(torch.float32) for k in expected}
        self.body.load_state_dict(state, strict=True, assign=True)

    def train(self, mode: bool = True) -> Detectron2Trunk:
        """Frozen: stays in eval mode whatever the parent asks."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self._checked_images(images)
        with torch.no_grad():
            return self.body(images).permute(0, 2, 3, 1)  # (B, 2048, h, w) -> (B, h, w, 2048)


def resized_shape(height: int, width: int, shortest: int = MIN_SIZE_TEST,
                  longest: int = MAX_SIZE_TEST) -> tuple[int, int]:
    """(height, width) after detectron2's ResizeShortestEdge: shortest side to `shortest`,
    scaled down further if the longest side would pass `longest`; aspect ratio kept."""
    scale = shortest / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > longest:
        scale = longest / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)  # detectron2 rounds half up


def preprocess(image: Image.Image, shortest: int = MIN_SIZE_TEST,
               longest: int = MAX_SIZE_TEST) -> torch.Tensor:
    """An RGB PIL image -> float (3, H', W'): resized as detectron2 does (PIL bilinear),
    channels in BGR order, (value - PIXEL_MEAN) / PIXEL_STD on 0-255 values."""
    if image.mode != "RGB":
        raise LrcnError(f"preprocess expects an RGB image, got mode {image.mode!r}")
    height, width = resized_shape(image.height, image.width, shortest, longest)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    bgr = np.asarray(image)[:, :, ::-1]  # (H', W', 3) RGB -> BGR
    pixels = torch.from_numpy(bgr.transpose(2, 0, 1).astype(np.float32))  # (3, H', W')
    mean = torch.tensor(PIXEL_MEAN_BGR).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD_BGR).view(3, 1, 1)
    return (pixels - mean) / std
