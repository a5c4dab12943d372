"""Benchmark: image encoders on channels-last input against the default order, side by side.

The grid encoders (models/image_encoders.py) hand their convolutions channels-last images.
This measures what that buys on this machine, each way with the same weights and input:

* ``step``: the ``own-data-clevr`` preset's training step from 128 x 128 pixels (64
  questions of 7 images: forward, summed cross-entropy, backward, Adam), the small CNN fed
  channels-last (``encoder(images)``, what training runs) against the default order
  (``encoder.features(images)``, the CNN's layers called directly);
* ``trunk``: a frozen ResNet-101 trunk to ``layer3`` (CLEVR's features; random weights) on
  4 images at 224 x 224, forward only.

Rounds alternate the two orders so machine noise hits both alike; each ``speedup`` is the
median of the rounds' ratios (default order / channels-last).

    python benchmarks/channels_last.py [--rounds 5] [--steps 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from lrcn.config import load_config
from lrcn.engine.step import make_optimizer
from lrcn.models import create_model
from lrcn.models.image_encoders import TorchvisionTrunk
from step_timing import ANSWERS, VOCAB, shared_image_batch, side_by_side, train_step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed calls an order a round")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = load_config("own-data-clevr")
    model = create_model(cfg.model, VOCAB, ANSWERS).train()
    optimizer = make_optimizer(model, cfg.train)
    b = shared_image_batch(cfg.data.image_size)

    def step(channels_last: bool) -> None:
        if channels_last:
            grid = model.encoder(b.images)
        else:  # the same layers on the images as they come: (U, C, 8, 8) -> (U, 8, 8, C)
            grid = model.encoder.features(b.images).permute(0, 2, 3, 1)
        train_step(model, optimizer, b.tokens, b.target, grid=grid, image_index=b.index)

    trunk = TorchvisionTrunk("resnet101", random_weights=True, layer="layer3").eval()
    pixels = torch.randn(4, 3, 224, 224)

    @torch.no_grad()
    def extract(channels_last: bool) -> torch.Tensor:
        return trunk(pixels) if channels_last else trunk.body(pixels).permute(0, 2, 3, 1)

    result: dict[str, object] = {"threads": torch.get_num_threads()}
    for name, run, calls in (("step", step, args.steps),
                             ("trunk", extract, max(1, args.steps // 4))):
        timed = side_by_side({"default": lambda: run(False), "channels_last": lambda: run(True)},
                             args.rounds, calls)
        result[name] = {"channels_last_ms": timed["channels_last"]["ms"],
                        "default_ms": timed["default"]["ms"],
                        "speedup": timed["channels_last"]["speedup"]}
    if not args.json:
        for name, what in (("step", "own-data-clevr training step"),
                           ("trunk", "resnet101 layer3, 4 images at 224")):
            r = result[name]
            print(f"{what}: channels-last {r['channels_last_ms']} ms, default order "
                  f"{r['default_ms']} ms, speedup {r['speedup']}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
