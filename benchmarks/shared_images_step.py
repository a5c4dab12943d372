"""Benchmark: a training step when a batch's questions share images, LRCN's two paths side by side.

With ``train.group_by_image`` a batch of 64 questions holds a few images, ten questions each
(CLEVR's layout). LRCN's first image self-attention and co-stacking's first keys and values
from the image read no question, so with ``image_index`` they run once per distinct image
(``shared``); the other path gives every question its own copy of its image's grid before
the net (``per_question``, what a model without the sharing does). Both run the CNN once per
image, the same weights and the same batch; the answers are the same. The step is forward,
summed cross-entropy, backward and Adam, with the ``own-data-clevr`` preset's model (from
128 x 128 pixels). Rounds alternate the two paths so machine noise hits both alike;
``speedup`` is the median of the rounds' ratios.

    python benchmarks/shared_images_step.py [--rounds 5] [--steps 10] [--json]
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

BATCH, IMAGES, TOKENS, VOCAB, ANSWERS = 64, 7, 15, 45, 23


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps a path a round")
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

    def step(shared: bool) -> None:
        optimizer.zero_grad(set_to_none=True)
        if shared:
            logits = model.forward_all(tokens, images=images, image_index=index).answer
        else:  # the CNN once per image, then each question its own copy of the grid
            logits = model.forward_all(tokens, grid=model.encode_images(images)[index]).answer
        F.cross_entropy(logits, target, reduction="sum").backward()
        optimizer.step()

    def ms_per_step(run: Callable[[], None]) -> float:
        run()  # one untimed step: first-touch allocations
        start = time.perf_counter()
        for _ in range(args.steps):
            run()
        return (time.perf_counter() - start) / args.steps * 1000

    shared_ms, per_question_ms = [], []
    for _ in range(args.rounds):
        shared_ms.append(ms_per_step(lambda: step(True)))
        per_question_ms.append(ms_per_step(lambda: step(False)))
    result = {
        "batch": BATCH, "images": IMAGES, "threads": torch.get_num_threads(),
        "shared_ms": round(statistics.median(shared_ms), 1),
        "per_question_ms": round(statistics.median(per_question_ms), 1),
        "speedup": round(statistics.median(p / s for p, s in zip(per_question_ms, shared_ms)), 3),
    }
    if not args.json:
        print(f"{BATCH} questions of {IMAGES} images: shared {result['shared_ms']} ms/step, "
              f"per question {result['per_question_ms']} ms/step, speedup {result['speedup']}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
