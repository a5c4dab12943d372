"""The paper's learning-rate schedule (TRAR/MCAN): warm-up by epoch, then step decay.

A preset or config file states its schedule for its own ``train.epochs``; a run of another
length gets that schedule rescaled to its length (`rescale_schedule`, `follow_epochs`), so
that ``--epochs 12`` on a 4-epoch preset does not leave 9 epochs at the decayed rate.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # lrcn.config imports this module
    from lrcn.config import TrainConfig

log = logging.getLogger(__name__)

# The fields a schedule is stated in besides train.epochs, which rescale_schedule adapts.
RESCALED_FIELDS = ("warmup_epochs", "decay_epochs")


def lr_factor(epoch: int, warmup_epochs: int, decay_epochs: Sequence[int], decay_rate: float) -> float:
    """Multiplier of the base learning rate during `epoch` (0-based).

    Warm-up: (epoch + 1) / (warmup_epochs + 1) for the first `warmup_epochs` epochs, i.e.
    1/4, 2/4, 3/4 with the paper's 3; then `decay_rate` for every decay epoch reached
    (x0.2 from epoch 10, x0.04 from epoch 12 in the paper).
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    return decay_rate ** sum(1 for e in decay_epochs if epoch >= e)


def warmup_step_factor(step: int, warmup_steps: int) -> float:
    """Multiplier of an epoch's learning rate at optimizer step `step` (0-based, counted
    from the start of the run): min(1, (step + 1) / warmup_steps), 1 without a warm-up."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def lr_per_epoch(t: TrainConfig) -> list[float]:
    """The learning rate of every epoch of a run, first to last: what training sets."""
    return [t.lr * lr_factor(epoch, t.warmup_epochs, t.decay_epochs, t.decay_rate)
            for epoch in range(t.epochs)]


def describe_schedule(lrs: Sequence[float], warmup_steps: int = 0) -> str:
    """A schedule (`lr_per_epoch`, ``train.warmup_steps``) in one short line, equal epochs
    merged (1-based): ``epoch 1 0.00015, epochs 2-3 0.0003, epoch 4 6e-05``."""
    parts = [f"rising over the first {warmup_steps} steps"] if warmup_steps else []
    for lr, group in itertools.groupby(enumerate(lrs, start=1), key=lambda p: p[1]):
        epochs = [epoch for epoch, _ in group]
        span = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"
        parts.append(f"{span} {lr:.3g}")
    return ", ".join(parts)


def rescale_schedule(stated: TrainConfig, epochs: int) -> TrainConfig:
    """`stated`'s schedule, stated for ``stated.epochs`` epochs, for a run of `epochs` (>= 1).

    Each decay epoch e becomes round(e * epochs / stated.epochs) (halves up); those that no
    longer fall after the warm-up and before the end of the run are dropped, and decay epochs
    that meet are merged (the result is strictly increasing). The warm-up stays as stated
    unless it no longer leaves an epoch at the full rate: then it is epochs - 1.
    """
    warmup = max(0, min(stated.warmup_epochs, epochs - 1))
    moved = ((2 * e * epochs + stated.epochs) // (2 * stated.epochs) for e in stated.decay_epochs)
    decay = sorted({e for e in moved if warmup < e < epochs})
    return dataclasses.replace(stated, epochs=epochs, warmup_epochs=warmup, decay_epochs=decay)


def follow_epochs(t: TrainConfig, stated: TrainConfig, source: str,
                  explicit: Collection[str] = (), resumed: bool = False) -> None:
    """Make `t`'s schedule fit its epochs where they differ from the ``stated.epochs`` that
    `source` states its schedule for, logging every change (INFO).

    The warm-up and decay epochs become `rescale_schedule`'s, except those in `explicit`
    (``train.decay_epochs``: the user set them for this run). A `resumed` run keeps its saved
    schedule exactly: it is what the run's first epochs trained with.
    """
    if t.epochs == stated.epochs or t.epochs < 1:  # < 1: check_train_config refuses it
        return
    if resumed:
        log.info("train.epochs %d -> %d on resume: the run keeps its saved schedule "
                 "(warmup_epochs %d, decay_epochs %s)", stated.epochs, t.epochs,
                 t.warmup_epochs, t.decay_epochs)
        return
    rescaled = rescale_schedule(stated, t.epochs)
    for name in RESCALED_FIELDS:
        old, new = getattr(stated, name), getattr(rescaled, name)
        if f"train.{name}" not in explicit and new != old:
            setattr(t, name, new)
            log.info("train.%s %s -> %s: %s states its schedule for %d epochs, this run has %d",
                     name, old, new, source, stated.epochs, t.epochs)


def image_passes_per_epoch(questions_per_image: Sequence[int], pixels: bool, grouped: bool,
                           group_size: int | None = None) -> int:
    """How many times an epoch runs an image through the image encoder, given how many
    questions each training image has: never from a feature store (``pixels`` False), once
    per group of an image's questions when they share a batch (``train.group_by_image``,
    groups of at most ``train.image_group_size``: `group_size`), else once per question."""
    if not pixels:
        return 0
    if not grouped:
        return sum(questions_per_image)
    if group_size is None:
        return len(questions_per_image)
    return sum(-(-n // group_size) for n in questions_per_image)


def epochs_for_samples(t: TrainConfig, questions: int, image_passes: int = 0) -> None:
    """Set `t`'s epochs from ``t.samples``, rescaling the schedule `t` states for its own
    ``epochs`` (`rescale_schedule`), and log what was set.

    A sample is a training question or a pass of an image through the image encoder
    (`image_passes_per_epoch`): both cost time, so a dataset of one question per photo gets
    fewer epochs than one whose photos carry several questions each.
    """
    if t.samples is None:
        return
    epochs = max(1, round(t.samples / max(1, questions + image_passes)))
    if epochs != t.epochs:
        rescaled = rescale_schedule(t, epochs)
        passes = f" and {image_passes} image passes" if image_passes else ""
        log.info("train.samples %d over %d training questions%s an epoch: %d epochs "
                 "(warmup_epochs %d, decay_epochs %s; stated for %d epochs: %d, %s)",
                 t.samples, questions, passes, epochs, rescaled.warmup_epochs,
                 rescaled.decay_epochs, t.epochs, t.warmup_epochs, t.decay_epochs)
        for name in ("epochs", *RESCALED_FIELDS):
            setattr(t, name, getattr(rescaled, name))
