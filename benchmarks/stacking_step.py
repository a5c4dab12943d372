"""Benchmark: the training step of LRCN's three stackings, side by side.

The ``own-data-clevr`` preset's model (from 128 x 128 pixels, L = 2, D = 128) in each
stacking: encoder-decoder (``ed``), pure stacking (``st``) and co-stacking (``cst``, whose
question-guided blocks let the question attend to the image in every layer), on one batch of
64 questions of 7 images: forward, summed cross-entropy, backward and Adam. Rounds take the
stackings in turn so machine noise hits them alike; each ``speedup`` is the median of the
rounds' ratios against co-stacking.

    python benchmarks/stacking_step.py [--rounds 5] [--steps 8] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable

import torch

from lrcn.config import load_config
from lrcn.engine.step import make_optimizer
from lrcn.models import create_model
from step_timing import ANSWERS, VOCAB, shared_image_batch, side_by_side, train_step

STACKINGS = ("cst", "ed", "st")  # the first is the baseline of the speedups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed steps a stacking a round")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args()

    cfg = load_config("own-data-clevr")
    torch.manual_seed(0)
    b = shared_image_batch(cfg.data.image_size)

    def step_of(variant: str) -> Callable[[], None]:
        torch.manual_seed(0)
        model = create_model(dataclasses.replace(cfg.model, variant=variant), VOCAB,
                             ANSWERS).train()
        optimizer = make_optimizer(model, cfg.train)
        return lambda: train_step(model, optimizer, b.tokens, b.target, images=b.images,
                                  image_index=b.index)

    timed = side_by_side({v: step_of(v) for v in STACKINGS}, args.rounds, args.steps)
    result = {"threads": torch.get_num_threads(), **timed}
    if not args.json:
        for v in STACKINGS:
            print(f"{v}: {timed[v]['ms']} ms/step, {timed[v]['speedup']}x of cst")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
