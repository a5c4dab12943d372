"""Dropout whose random masks are cheap on the CPU, with torch's semantics.

Why not ``nn.Dropout`` on the CPU: torch draws every mask element as a float Bernoulli from a
single-threaded Mersenne Twister (about 8 ns an element on a 2-core Xeon), stores the mask, and
multiplies in a separate pass. The paper-size LRCN-ED training step draws ~120 M mask elements
(attention maps, FFN hidden, residual branches), which made dropout a fifth of the whole step
(see benchmarks/train_throughput.py).

Here a numba kernel (`lrcn.models.dropout_kernels`) draws each element's random 64-bit number
from a counter-based stream and applies the mask in the same pass, on as many threads as
torch uses. An element is dropped when its number is below ``floor(p * 2^64)``, so P(drop) is
p to within 2^-64, elements are independent, and kept elements are scaled by 1 / (1 - p), as
``F.dropout`` does.
The mask is never stored: the backward pass recomputes it from the call's seed. Each call takes
its seed from torch's generator, so ``torch.manual_seed`` and ``torch.get_rng_state`` still
decide and restore the masks. The FFN's ReLU and its dropout are one pass (`relu_dropout`),
whose gradient is read off its output.

This is the CPU speed layer's dropout: the layers use it when the model is built with
``model.fast_cpu`` (their ``fast=True``), and plain ``F.dropout`` otherwise, never importing
numba. Even in a fast layer the kernels can only run where `fast_dropout_applies`: in training,
on CPU float tensors, outside ``torch.compile`` (which fuses dropout into its own kernels).
Elsewhere (CUDA, whose generator is fast; bf16 autocast; evaluation) ``F.dropout`` runs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def _numba_kernels():
    """Import numba and the kernels (compiled, or loaded from numba's cache) once.

    Starting numba's OpenMP threads sets the OpenMP thread count of the calling thread (shared
    with torch) to numba's own default, the number of CPUs; torch's setting is put back."""
    threads = torch.get_num_threads()
    import numba

    from lrcn.models import dropout_kernels

    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # starts numba's threads
    torch.set_num_threads(threads)
    return numba, dropout_kernels


def _kernels():
    """The kernels, set to run on as many threads as torch uses now."""
    numba, kernels = _numba_kernels()
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    return kernels


def _flat(t: torch.Tensor) -> np.ndarray:
    """The tensor's elements as a flat array (a view; a copy only when `t` is not contiguous)."""
    return t.detach().contiguous().view(-1).numpy()


def _scale(p: float, like: np.ndarray) -> np.generic:
    """1 / (1 - p) in the array's dtype, so the kernels multiply without upcasting."""
    return like.dtype.type(1.0 / (1.0 - p))


def _scale_kept(x: torch.Tensor, stream: tuple, p: float, relu: bool,
                inplace: bool = False) -> torch.Tensor:
    """Dropout of `x` (of ReLU(x) with `relu`) with the mask of `stream`: a new tensor, or `x`
    itself overwritten with `inplace` (when it is contiguous)."""
    x_flat = _flat(x)
    out = x if inplace and x.is_contiguous() else torch.empty(x.shape, dtype=x.dtype)
    threshold = np.uint64(int(p * 2**64))  # < 2^64 for p < 1; p * 2^64 exactly for p >= 2^-11
    _kernels().scale_kept(x_flat, out.view(-1).numpy(), *stream, threshold, _scale(p, x_flat),
                          relu)
    return out


def _new_stream() -> tuple:
    """A fresh mask stream, drawn from torch's default generator (two 64-bit integers)."""
    seed, gamma = torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64).tolist()
    return _numba_kernels()[1].stream_parameters(seed, gamma)  # plain Python: no thread setup


class _Dropout(torch.autograd.Function):
    """y = x * mask / (1 - p); the backward pass recomputes the mask from the stream."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool) -> torch.Tensor:
        ctx.stream, ctx.p = _new_stream(), p
        out = _scale_kept(x, ctx.stream, p, relu=False, inplace=inplace)
        if out is x:
            ctx.mark_dirty(x)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _scale_kept(grad, ctx.stream, ctx.p, relu=False), None, None


class _ReluDropout(torch.autograd.Function):
    """y = relu(x) * mask / (1 - p); the gradient is grad / (1 - p) where y > 0, else 0."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool) -> torch.Tensor:
        out = _scale_kept(x, _new_stream(), p, relu=True, inplace=inplace)
        if out is x:
            ctx.mark_dirty(x)
        ctx.save_for_backward(out)  # the next Linear saves it anyway: no extra memory
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (out,) = ctx.saved_tensors
        grad_in = torch.empty(out.shape, dtype=out.dtype)
        out_flat = _flat(out)
        _kernels().scale_where_positive(_flat(grad), out_flat, grad_in.view(-1).numpy(),
                                        _scale(ctx.p, out_flat))
        return grad_in, None, None


def _whole_base(x: torch.Tensor) -> torch.Tensor | None:
    """The tensor `x` is a reshaping view of, when `x` covers all of it in the same order.

    ``F.linear`` on a (B, T, D) input returns a view of its 2-D result. Writing into such a
    view in place makes autograd record the write into the base (``CopySlices``), whose
    backward pass clones the base's gradient, fills a zero tensor of its size and copies twice,
    four passes over a 32 MiB FFN hidden layer of the paper-size step. Writing into the base
    instead, then viewing it as `x`, records none of that."""
    # Tensor._base is the only way to the tensor a view was made from: torch has no public
    # accessor (untyped_storage() gives its memory, not the tensor autograd tracks).
    base = x._base
    if (base is None or base.numel() != x.numel() or not base.is_contiguous()
            or not x.is_contiguous() or x.storage_offset() != base.storage_offset()):
        return None
    return base


def fast_dropout_applies(x: torch.Tensor, p: float, training: bool) -> bool:
    """Whether the kernels can drop out of `x`: in training, 0 < p < 1, a float32/64 CPU tensor,
    eager (compiled graphs trace ``F.dropout`` and fuse it into their own kernels)."""
    return (training and 0.0 < p < 1.0 and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling())


def dropout(x: torch.Tensor, p: float, training: bool, inplace: bool = False) -> torch.Tensor:
    """``F.dropout(x, p, training, inplace)``, with one-pass counter-based masks where
    `fast_dropout_applies`.

    `inplace` overwrites `x` (as torch does, autograd refuses it where `x` is still needed)
    and spares an allocation the size of `x`."""
    # Only training writes (and records) anything; evaluation, and a graph being exported,
    # never touch the view's base.
    if inplace and training and (base := _whole_base(x)) is not None:
        return dropout(base, p, training, inplace=True).view(x.shape)
    if not fast_dropout_applies(x, p, training):
        return F.dropout(x, p, training, inplace)
    return _Dropout.apply(x, p, inplace)


def relu_dropout(x: torch.Tensor, p: float, training: bool,
                 inplace: bool = False) -> torch.Tensor:
    """``F.dropout(F.relu(x), p, training)`` in one pass, saving only its output; `inplace`
    as in `dropout`."""
    if inplace and training and (base := _whole_base(x)) is not None:  # as in `dropout`
        return relu_dropout(base, p, training, inplace=True).view(x.shape)
    if not fast_dropout_applies(x, p, training):
        # torch's ReLU backward reads the ReLU's output, so only the ReLU may overwrite x
        return F.dropout(F.relu_(x) if inplace else F.relu(x), p, training)
    return _ReluDropout.apply(x, p, inplace)


class Dropout(nn.Module):
    """``nn.Dropout`` (same probability, same scaling), with the one-pass masks when `fast`.

    Args:
        p: probability of an element being zeroed.
        inplace: overwrite the input (a fresh sub-layer output that nothing else reads).
        fast: use `dropout` (the kernels where they apply); False: ``F.dropout`` alone.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, fast: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p
        self.inplace = inplace
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return dropout(x, self.p, self.training, self.inplace)
        return F.dropout(x, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}, fast={self.fast}"
