"""Training losses: soft-score BCE or cross-entropy for answers, BCE for answerability.

All are summed over the batch, as the paper (and MCAN/TRAR) train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrcn.config import ANSWER_LOSSES
from lrcn.errors import LrcnError
from lrcn.models.vqa_model import VQAOutput




def answer_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Loss of answer logits (B, K) against dense soft scores (B, K).

    ``bce``: binary cross-entropy against every answer's soft score (the paper's loss).
    ``ce``: cross-entropy on the single most common answer (the highest soft score; the first
    on ties); questions none of whose answers is in the vocabulary are left out.
    """
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    if kind == "ce":
        best, index = target.max(dim=1)
        index = index.masked_fill(best <= 0, -100)  # no answer in the vocabulary: ignored
        return F.cross_entropy(logits, index, ignore_index=-100, reduction="sum")
    raise LrcnError(f"train.answer_loss = {kind!r} is not one of {', '.join(ANSWER_LOSSES)}")


def task_loss(out: VQAOutput, batch: dict[str, torch.Tensor], task: str, answer_kind: str,
              answerable_weight: float) -> torch.Tensor:
    """The loss of `task` (answer | answerable | both) on one batch; tensors on out's device."""
    device = out.answer.device
    loss = out.answer.new_zeros(())
    if task in ("answer", "both"):
        loss = loss + answer_loss(out.answer, batch["target"].to(device, non_blocking=True),
                                  answer_kind)
    if task in ("answerable", "both"):
        weight = 1.0 if task == "answerable" else answerable_weight
        target = batch["answerable"].to(device, non_blocking=True)
        loss = loss + weight * F.binary_cross_entropy_with_logits(out.answerable, target,
                                                                  reduction="sum")
    return loss
