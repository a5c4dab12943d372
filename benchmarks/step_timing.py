"""Shared by the training-step benchmarks: a CLEVR-like batch, one training step, and timing
of several ways to run it side by side.

The batch is what ``train.group_by_image`` gives on CLEVR's layout: 64 questions of 7 images
(about nine questions an image), 15 tokens, 23 answers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lrcn.models import VQAModel

BATCH, IMAGES, TOKENS, VOCAB, ANSWERS = 64, 7, 15, 45, 23


@dataclass
class SharedImageBatch:
    tokens: torch.Tensor  # (B, T)
    images: torch.Tensor  # (U, 3, S, S)
    index: torch.Tensor   # (B,): each question's image
    target: torch.Tensor  # (B,): one answer a question


def shared_image_batch(image_size: int) -> SharedImageBatch:
    """Random tokens, images and answers of the shape above (seeded by the caller)."""
    return SharedImageBatch(tokens=torch.randint(1, VOCAB, (BATCH, TOKENS)),
                            images=torch.randn(IMAGES, 3, image_size, image_size),
                            index=torch.arange(BATCH) * IMAGES // BATCH,
                            target=torch.randint(0, ANSWERS, (BATCH,)))


def train_step(model: VQAModel, optimizer: torch.optim.Optimizer, tokens: torch.Tensor,
               target: torch.Tensor, **inputs: torch.Tensor) -> None:
    """Forward (`inputs`: images / grid / image_index), summed cross-entropy, backward, step."""
    optimizer.zero_grad(set_to_none=True)
    logits = model.forward_all(tokens, **inputs).answer
    F.cross_entropy(logits, target, reduction="sum").backward()
    optimizer.step()


def _ms_per_call(run: Callable[[], object], calls: int) -> float:
    run()  # one untimed call: first-touch allocations
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls * 1000


def side_by_side(runs: dict[str, Callable[[], object]], rounds: int, calls: int
                 ) -> dict[str, dict[str, float]]:
    """Each run's median ms a call, and its speedup over the first run (the median of the
    rounds' ratios). Rounds take the runs in turn, so machine noise hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(_ms_per_call(run, calls))
    base = times[next(iter(runs))]
    return {name: {"ms": round(statistics.median(t), 1),
                   "speedup": round(statistics.median(b / x for b, x in zip(base, t)), 3)}
            for name, t in times.items()}
