"""Dropout whose random masks are cheap on the CPU, with exactly torch's semantics.

Why not ``nn.Dropout`` on the CPU: torch draws every mask element as a float Bernoulli from a
single-threaded Mersenne Twister, about 8 ns an element on a 2-core Xeon. The paper-size
LRCN-ED training step draws ~120 M mask elements (attention maps, FFN hidden, residual
branches), which made dropout a fifth of the whole step (see benchmarks/train_throughput.py).

Here an element costs one random *byte*, and bytes come eight at a time from 64-bit words of
torch's own generator (so ``torch.manual_seed`` and ``torch.get_rng_state`` still cover the
masks). With ``k = floor(256 p)``, an element is dropped when its byte is below ``k``; the rare
elements whose byte equals ``k`` (1 in 256) are dropped with probability ``256 p - k`` from a
float draw. So P(drop) = k/256 + (256p - k)/256 = p exactly, elements independent, and kept
elements are scaled by 1 / (1 - p), as ``F.dropout`` does. On other devices (CUDA's
generator is fast) and outside training, ``F.dropout`` itself is used.

The FFN's ReLU and its dropout share one saved mask (``relu_dropout``), which saves a pass
over the largest activation in both directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool tensor of `shape`, each element True (kept) with probability 1 - p, independently."""
    n = shape.numel()
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1)  # the full 64 bits, not just the non-negative half
    random_bytes = words.view(torch.uint8)[:n]  # (n,) uniform on 0..255
    k = int(p * 256)
    frac = p * 256 - k
    if frac == 0:
        return (random_bytes >= k).view(shape)
    keep = random_bytes > k
    ties = (random_bytes == k).nonzero().squeeze(1)  # drop with probability frac: P(drop) = p
    keep[ties] = torch.rand(ties.numel(), device=device) >= frac
    return keep.view(shape)


class _MaskMultiply(torch.autograd.Function):
    """y = x * mask with a precomputed (scaled) mask; the gradient is grad * mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def _use_byte_masks(x: torch.Tensor, p: float, training: bool) -> bool:
    return training and 0.0 < p < 1.0 and x.device.type == "cpu"


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with byte masks on the CPU."""
    if not _use_byte_masks(x, p, training):
        return F.dropout(x, p, training)
    mask = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
    return _MaskMultiply.apply(x, mask)


def relu_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(F.relu(x), p, training)`` as one masked multiply (one saved mask)."""
    if not _use_byte_masks(x, p, training):
        return F.dropout(F.relu(x), p, training)
    keep = keep_mask(x.shape, p, x.device)
    keep &= x > 0  # ReLU's gradient is 0 at x <= 0, as torch's threshold_backward
    mask = keep.to(x.dtype).mul_(1.0 / (1.0 - p))
    return _MaskMultiply.apply(x, mask)


class Dropout(nn.Module):
    """``nn.Dropout`` with byte masks on the CPU; same probability, same scaling."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
