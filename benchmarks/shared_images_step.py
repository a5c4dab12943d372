"""Benchmark: a training step when a batch's questions share images, LRCN's two paths side by side.

With ``train.group_by_image`` a batch of 64 questions holds a few images, ten questions each
(CLEVR's layout). LRCN's first image self-attention and co-stacking's first keys and values
from the image read no question, so with ``image_index`` they run once per distinct image
(``shared``); the other path gives every question its own copy of its image's grid before
the net (``per_question``, what a model without the sharing does). Both run the CNN once per
image, the same weights and the same batch; the answers are the same. The step is forward,
summed cross-entropy, backward and Adam, with the ``own-data-clevr`` preset's model (from
128 x 128 pixels) in the stacking `--variant` (default: the preset's). Rounds alternate the
two paths so machine noise hits both alike; ``speedup`` is the median of the rounds' ratios.

    python benchmarks/shared_images_step.py [--variant ed|st|cst] [--rounds 5] [--steps 10]
        [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from lrcn.config import VARIANTS, load_config
from lrcn.engine.step import make_optimizer
from lrcn.models import create_model
from step_timing import ANSWERS, BATCH, IMAGES, VOCAB, shared_image_batch, side_by_side, train_step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, help="LRCN stacking (default: the preset's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps a path a round")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = load_config("own-data-clevr")
    model_cfg = dataclasses.replace(cfg.model, variant=args.variant or cfg.model.variant)
    model = create_model(model_cfg, VOCAB, ANSWERS).train()
    optimizer = make_optimizer(model, cfg.train)
    b = shared_image_batch(cfg.data.image_size)

    def shared() -> None:
        train_step(model, optimizer, b.tokens, b.target, images=b.images, image_index=b.index)

    def per_question() -> None:  # the CNN once per image, then each question its own grid copy
        train_step(model, optimizer, b.tokens, b.target,
                   grid=model.encode_images(b.images)[b.index])

    timed = side_by_side({"per_question": per_question, "shared": shared}, args.rounds,
                         args.steps)
    result = {"variant": model_cfg.variant, "batch": BATCH, "images": IMAGES,
              "threads": torch.get_num_threads(), "shared_ms": timed["shared"]["ms"],
              "per_question_ms": timed["per_question"]["ms"],
              "speedup": timed["shared"]["speedup"]}
    if not args.json:
        print(f"{model_cfg.variant}, {BATCH} questions of {IMAGES} images: shared "
              f"{result['shared_ms']} ms/step, per question {result['per_question_ms']} ms/step, "
              f"speedup {result['speedup']}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
