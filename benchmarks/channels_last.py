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
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lrcn.config import load_config
from lrcn.engine.step import make_optimizer
from lrcn.models import create_model
from lrcn.models.image_encoders import TorchvisionTrunk

BATCH, IMAGES, TOKENS, VOCAB, ANSWERS = 64, 7, 15, 45, 23


def _ms_per_call(run: Callable[[], object], calls: int) -> float:
    run()  # one untimed call: first-touch allocations
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls * 1000


def _side_by_side(channels_last: Callable[[], object], default: Callable[[], object],
                  rounds: int, calls: int) -> dict[str, float]:
    fast, slow = [], []
    for _ in range(rounds):
        fast.append(_ms_per_call(channels_last, calls))
        slow.append(_ms_per_call(default, calls))
    return {"channels_last_ms": round(statistics.median(fast), 1),
            "default_ms": round(statistics.median(slow), 1),
            "speedup": round(statistics.median(s / f for s, f in zip(slow, fast)), 3)}


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
    tokens = torch.randint(1, VOCAB, (BATCH, TOKENS))
    images = torch.randn(IMAGES, 3, cfg.data.image_size, cfg.data.image_size)
    index = torch.arange(BATCH) * IMAGES // BATCH  # (B,): about nine questions an image
    target = torch.randint(0, ANSWERS, (BATCH,))

    def step(channels_last: bool) -> None:
        optimizer.zero_grad(set_to_none=True)
        if channels_last:
            grid = model.encoder(images)
        else:  # the same layers on the images as they come: (U, C, 8, 8) -> (U, 8, 8, C)
            grid = model.encoder.features(images).permute(0, 2, 3, 1)
        logits = model.forward_all(tokens, grid=grid, image_index=index).answer
        F.cross_entropy(logits, target, reduction="sum").backward()
        optimizer.step()

    trunk = TorchvisionTrunk("resnet101", random_weights=True, layer="layer3").eval()
    pixels = torch.randn(4, 3, 224, 224)

    @torch.no_grad()
    def extract(channels_last: bool) -> torch.Tensor:
        return trunk(pixels) if channels_last else trunk.body(pixels).permute(0, 2, 3, 1)

    result = {
        "threads": torch.get_num_threads(),
        "step": _side_by_side(lambda: step(True), lambda: step(False), args.rounds, args.steps),
        "trunk": _side_by_side(lambda: extract(True), lambda: extract(False), args.rounds,
                               max(1, args.steps // 4)),
    }
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
