"""Grid image encoders: normalised images (B, 3, H, W) -> grid features (B, h, w, C).

``SmallCNN`` is trained end to end from pixels (small synthetic datasets such as easy-VQA);
``TorchvisionTrunk`` is the trunk of a torchvision ResNet/ResNeXt up to ``layer4`` (C5) or
``layer3`` (conv4, CLEVR's standard features), loaded from a state-dict file the user has on
disk. Nothing here downloads anything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from lrcn.config import ModelConfig
from lrcn.errors import LrcnError

TRUNK_NAMES = ("resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d")
_TRUNK_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
# The stages a trunk can end at, and the image pixels per grid cell of their output.
TRUNK_STRIDES = {"layer3": 16, "layer4": 32}
TRUNK_LAYERS = tuple(TRUNK_STRIDES)


class GridEncoder(nn.Module):
    """Base class: maps normalised images (B, 3, H, W) to a grid (B, h, w, out_channels).

    Attributes:
        out_channels: C, the channel count of the grid.
        trainable: whether the encoder's parameters are trained with the model.
    """

    out_channels: int
    trainable: bool

    def _checked_images(self, images: torch.Tensor) -> torch.Tensor:
        """`images` checked to be (B, 3, H, W), in channels-last memory order.

        oneDNN's convolutions and pools run faster on channels-last input on a CPU (the small
        CNN's forward and backward about 1.4x, the own-data-clevr training step 1.08x, a frozen
        ResNet-101 trunk 1.09x: benchmarks/channels_last.py), and the grid then comes out with
        its channels innermost, as (B, h, w, C) wants. The weights keep the default order, so
        checkpoints are unchanged.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise LrcnError(f"images must be (batch, 3, H, W), got shape {tuple(images.shape)}")
        return images.contiguous(memory_format=torch.channels_last)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(GridEncoder):
    """A small CNN trained from pixels: 64x64 -> 8x8 grid of ``channels`` features.

    The first convolution runs at full resolution so shapes of a few pixels survive, then three
    2x2 max-pools halve the grid to 8x8 and a last convolution widens the receptive field there.
    About 14 M multiply-adds per 64x64 image at channels=64. The final adaptive average pool
    gives an 8x8 grid for any input size.
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        if channels < 1:
            raise LrcnError(f"model.encoder_channels must be positive, got {channels}")
        c1, c2 = max(8, channels // 4), max(8, channels // 2)
        self.features = nn.Sequential(
            _conv_bn_relu(3, c1), nn.MaxPool2d(2),         # 64x64 -> 32x32
            _conv_bn_relu(c1, c2), nn.MaxPool2d(2),        # 32x32 -> 16x16
            _conv_bn_relu(c2, channels), nn.MaxPool2d(2),  # 16x16 -> 8x8
            _conv_bn_relu(channels, channels),
            nn.AdaptiveAvgPool2d(8),
        )
        self.out_channels = channels
        self.trainable = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self._checked_images(images)
        return self.features(images).permute(0, 2, 3, 1)  # (B, C, 8, 8) -> (B, 8, 8, C)


class TorchvisionTrunk(GridEncoder):
    """A torchvision ResNet/ResNeXt trunk up to `layer`: images (B, 3, H, W) -> (B, h, w, C).

    ``layer4`` gives the C5 grid (H/32 x W/32, C = 2048 for ResNet-50 and deeper); ``layer3``
    the conv4 grid (H/16 x W/16, C = 1024), CLEVR's standard features. Only the parts up to
    `layer` are built and loaded.

    Args:
        name: one of ``TRUNK_NAMES``.
        weights_path: a state-dict file (a full classification state dict is fine: ``fc.*``
            and the stages after `layer` are ignored), read with
            ``torch.load(weights_only=True)``.
        freeze: keep the weights fixed and the BatchNorm statistics in eval mode, even when a
            parent module calls ``.train()``; a frozen trunk also runs without autograd.
        random_weights: allow building without a weights file (tests only: random features).
        layer: the last stage run, one of ``TRUNK_LAYERS``.
    """

    def __init__(
        self,
        name: str,
        weights_path: str | Path | None = None,
        freeze: bool = True,
        random_weights: bool = False,
        layer: str = "layer4",
    ) -> None:
        super().__init__()
        if name not in TRUNK_NAMES:
            raise LrcnError(f"unknown image trunk {name!r}; known trunks: {', '.join(TRUNK_NAMES)}")
        if layer not in TRUNK_LAYERS:
            raise LrcnError(f"unknown trunk layer {layer!r}; known: {', '.join(TRUNK_LAYERS)}")
        if weights_path is None and not random_weights:
            raise LrcnError(
                f"image encoder {name} needs a weights file (model.encoder_weights): a "
                "torchvision state dict saved with torch.save(model.state_dict(), path)"
            )
        state = _read_state_dict(Path(weights_path)) if weights_path is not None else None

        import torchvision  # heavy; only needed for trunks

        net = getattr(torchvision.models, name)(weights=None)  # weights=None: never downloads
        parts = _TRUNK_PARTS[:_TRUNK_PARTS.index(layer) + 1]
        self.body = nn.Sequential(OrderedDict((part, getattr(net, part)) for part in parts))
        self.name = name
        self.layer = layer
        if state is not None:
            self._load(state, Path(weights_path))
        # The last convolution of the last stage sets the channels (its last block has no
        # downsample branch, so that is the block's output convolution).
        convs = [m for m in getattr(net, layer).modules() if isinstance(m, nn.Conv2d)]
        self.out_channels = convs[-1].out_channels
        self.trainable = not freeze
        if freeze:
            self.requires_grad_(False)
            self.eval()

    def _load(self, state: Mapping[str, torch.Tensor], path: Path) -> None:
        """Load the kept parts' weights, ignoring the classifier and the stages after `layer`.

        Fails with the first offending keys: a tensor the kept parts need, or one no part of
        the network has.
        """
        if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
            state = {k[len("module."):]: v for k, v in state.items()}
        skipped = tuple(f"{part}." for part in _TRUNK_PARTS[len(self.body):]) + ("fc.",)
        state = {k: v for k, v in state.items() if not k.startswith(skipped)}
        expected = set(self.body.state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing trunk keys {_first_keys(missing)}")
            if unexpected:
                parts.append(f"unexpected keys {_first_keys(unexpected)}")
            raise LrcnError(f"{path}: not a torchvision {self.name} state dict: {'; '.join(parts)}")
        try:
            self.body.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # shape mismatch: another architecture's weights
            raise LrcnError(f"{path}: weights do not fit the trunk: {str(exc)[:300]}") from None

    def train(self, mode: bool = True) -> TorchvisionTrunk:
        """Frozen trunks stay in eval mode whatever the parent asks."""
        return super().train(mode and self.trainable)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self._checked_images(images)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self.body(images).permute(0, 2, 3, 1)  # (B, C, h, w) -> (B, h, w, C)


def _first_keys(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > n else shown


def _read_state_dict(path: Path, unwrap: str | None = None) -> Mapping[str, torch.Tensor]:
    """Read a state dict from ``path`` without running pickled code; LrcnError if it is not one.

    With `unwrap`, a file holding a mapping whose `unwrap` entry is a mapping gives that entry
    (detectron2 checkpoints: ``{"model": state_dict, "iteration": ..., ...}``).
    """
    if not path.is_file():
        raise LrcnError(f"encoder weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise LrcnError(
            f"{path}: cannot read as a PyTorch state dict ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if unwrap is not None and isinstance(state, Mapping) and isinstance(state.get(unwrap), Mapping):
        state = state[unwrap]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise LrcnError(
            f"{path}: expected a state dict (a mapping of names to tensors), "
            f"got {type(state).__name__}"
        )
    return state


def build_image_encoder(cfg: ModelConfig, random_weights: bool = False) -> GridEncoder | None:
    """The encoder named by ``cfg.image_encoder``; None for ``features`` (precomputed grids)."""
    name = cfg.image_encoder
    if name == "small_cnn":
        return SmallCNN(cfg.encoder_channels)
    if name == "features":
        return None
    if name in TRUNK_NAMES:
        return TorchvisionTrunk(name, cfg.encoder_weights, cfg.freeze_encoder, random_weights)
    known = ", ".join(("small_cnn", "features") + TRUNK_NAMES)
    raise LrcnError(f"unknown model.image_encoder {name!r}; known encoders: {known}")
