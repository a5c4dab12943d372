"""One optimiser step: the model's forward and loss, micro-batches, precision and clipping.

`training_step` is the module that torch.compile compiles and DDP wraps; `OptimizerStep` runs
one step of it, with the precision's autocast and the clipping norm bound when it is made.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lrcn.config import TrainConfig
from lrcn.data.pipeline import model_inputs
from lrcn.engine import distributed
from lrcn.engine.losses import task_loss
from lrcn.models import VQAModel
from lrcn.models.vqa_model import VQAOutput

# Devices with torch's fused Adam kernel. torch has no public query for them (its own list
# is private, torch.utils._foreach_utils), so the ones its Adam documentation names.
FUSED_ADAM_DEVICES = ("cpu", "cuda", "mps", "xpu")


class TrainingStep(nn.Module):
    """The model's forward and loss on one batch: what torch.compile compiles and DDP wraps.

    The VQAModel inside stays an eager module: evaluation runs it directly and checkpoints
    save its state dict (keys without ``_orig_mod.`` or ``module.``).
    """

    def __init__(self, model: VQAModel, t: TrainConfig, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.answer_loss = t.answer_loss
        self.answerable_weight = t.answerable_weight
        self.device = device

    def forward(self, batch: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
        """The summed loss of the first `keep` questions of a batch from `batch_loader` (the
        others pad the last batch of a process)."""
        out = self.model.forward_all(**model_inputs(batch, self.device))
        if keep < out.answer.shape[0]:
            out = VQAOutput(out.answer[:keep], None if out.answerable is None
                            else out.answerable[:keep], out.image_weights, out.question_weights)
            batch = {k: v[:keep] for k, v in batch.items() if k in ("target", "answerable")}
        return task_loss(out, batch, self.model.task, self.answer_loss, self.answerable_weight)


def training_step(model: VQAModel, t: TrainConfig, device: torch.device) -> nn.Module:
    """`TrainingStep`, compiled with ``train.compile``, wrapped in DDP with several processes.

    DDP wraps the compiled module (not the reverse), so its ``no_sync`` between the
    micro-batches of a step and its gradient hooks work as in eager mode.
    """
    step: nn.Module = TrainingStep(model, t, device)
    if t.compile:
        step = torch.compile(step)
    if distributed.world_size() > 1:
        step = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda"
                                       else None)
    return step


def make_optimizer(model: VQAModel, t: TrainConfig) -> torch.optim.Optimizer:
    """The paper's Adam over the trainable parameters (lr is set per epoch by the schedule):
    torch's fused kernel where it has one for the parameters' device, else foreach."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in FUSED_ADAM_DEVICES for p in trainable)
    return torch.optim.Adam(trainable, lr=t.lr, betas=t.betas, eps=t.eps,
                            weight_decay=t.weight_decay, fused=fused or None,
                            foreach=None if fused else True)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast for the forward pass and loss; nothing for fp32. Reusable: one context
    serves every micro-batch of a run."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class OptimizerStep:
    """One optimiser step over micro-batches, called as ``loss, stepped = run(batches, keep)``.

    Each micro-batch (its first ``keep[i]`` questions; all without `keep`) is forwarded and
    backwarded in turn, so the gradients add up to the gradient of their summed loss, then
    the optimiser steps once. Under DDP the loss is scaled by the number of processes, since
    DDP averages their gradients: the result is the gradient of the loss summed over every
    process's questions, as one process computes it.

    A non-finite loss (NaN or inf) in any process, or a non-finite gradient norm with
    ``train.grad_clip``, skips the step in every process: no weight or Adam state changes.

    Args:
        step: from `training_step`.
        optimizer: from `make_optimizer`.
        t: the train section; its precision and clipping norm are read here, once.
    """

    def __init__(self, step: nn.Module, optimizer: torch.optim.Optimizer, t: TrainConfig) -> None:
        self.step = step
        self.optimizer = optimizer
        self.device = next(step.parameters()).device
        self.autocast = autocast(self.device, t.precision)
        self.grad_clip = t.grad_clip

    def __call__(self, batches: list[dict[str, torch.Tensor]],
                 keep: list[int] | None = None) -> tuple[float, bool]:
        """The summed loss of `batches` and whether the optimiser stepped."""
        self.optimizer.zero_grad(set_to_none=True)
        world = distributed.world_size()
        summed = torch.zeros((), dtype=torch.float64, device=self.device)  # no sync per batch
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = nullcontext() if last or world == 1 else self.step.no_sync()  # all-reduce once
            with sync:
                with self.autocast:
                    loss = self.step(batch, batch["tokens"].shape[0] if keep is None else keep[i])
                (loss * world).backward()
            summed += loss.detach().double()
        total = summed.item()
        finite = math.isfinite(total)
        if self.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.step.parameters(), self.grad_clip)
            finite = finite and bool(torch.isfinite(norm))
        if distributed.any_process(not finite, self.device):
            return total, False
        self.optimizer.step()
        return total, True
