"""The paper's learning-rate schedule (TRAR/MCAN): warm-up by epoch, then step decay."""

from __future__ import annotations

from collections.abc import Sequence


def lr_factor(epoch: int, warmup_epochs: int, decay_epochs: Sequence[int], decay_rate: float) -> float:
    """Multiplier of the base learning rate during `epoch` (0-based).

    Warm-up: (epoch + 1) / (warmup_epochs + 1) for the first `warmup_epochs` epochs, i.e.
    1/4, 2/4, 3/4 with the paper's 3; then `decay_rate` for every decay epoch reached
    (x0.2 from epoch 10, x0.04 from epoch 12 in the paper).
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    return decay_rate ** sum(1 for e in decay_epochs if epoch >= e)
