"""LRCN written plainly: ``nn.MultiheadAttention`` and ``nn.Dropout``, as the seed notebook does.

This is the reference the fast layers are measured and tested against
(benchmarks/train_throughput.py, tests/test_fast_layers.py), not a model to train with, so it
lives beside the benchmarks rather than in the package (import it with benchmarks/ on
``sys.path``). ``model.fast_cpu: false`` is a different thing: the package's own layers
without the CPU speed layer.
`plain_copy` keeps the blocks' equations and replaces what the optimisations changed:

- attention is ``nn.MultiheadAttention(batch_first=True)`` called as the seed calls it (it
  also returns the head-averaged attention weights, ``need_weights=True``), with a
  ``key_padding_mask`` built from the boolean mask on every call;
- every dropout is ``nn.Dropout`` (float Bernoulli masks), the FFN's ReLU a separate op.

The copy has exactly the original's parameters, so both compute the same function: equal
outputs in eval mode and equal gradients without dropout.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lrcn.models.dropout import Dropout
from lrcn.models.layers import AttentionPool, FeedForward, KeyMask, MultiHeadAttention
from lrcn.models.lrcn import LRCN


def _valid(mask: torch.Tensor | KeyMask | None) -> torch.Tensor | None:
    """The (B, S) bool mask, True = valid, of a mask given either way."""
    return mask.valid if isinstance(mask, KeyMask) else mask


class PlainAttention(nn.Module):
    """`MultiHeadAttention`'s interface on top of ``nn.MultiheadAttention``, with its weights."""

    def __init__(self, layer: MultiHeadAttention) -> None:
        super().__init__()
        D = layer.out_proj.in_features
        self.cross = layer.cross
        self.mha = nn.MultiheadAttention(D, layer.heads, dropout=layer.dropout, batch_first=True)
        with torch.no_grad():
            if layer.cross:
                self.mha.in_proj_weight.copy_(torch.cat([layer.q_proj.weight, layer.kv_proj.weight]))
                self.mha.in_proj_bias.copy_(torch.cat([layer.q_proj.bias, layer.kv_proj.bias]))
            else:
                self.mha.in_proj_weight.copy_(layer.qkv_proj.weight)
                self.mha.in_proj_bias.copy_(layer.qkv_proj.bias)
            self.mha.out_proj.weight.copy_(layer.out_proj.weight)
            self.mha.out_proj.bias.copy_(layer.out_proj.bias)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor | None = None,
                key_mask: torch.Tensor | KeyMask | None = None,
                score_bias: torch.Tensor | None = None,
                key_rows: torch.Tensor | None = None) -> torch.Tensor:
        kv = query if key_value is None else key_value
        if key_rows is not None:  # keys one per distinct image: each query's image's rows
            kv = torch.index_select(kv, 0, key_rows)
        valid = _valid(key_mask)
        padding = None if valid is None else ~valid
        attn_mask = None
        if score_bias is not None:  # (1 or B, heads, T, S) -> (B * heads, T, S), as mha takes it
            (B, T), S = query.shape[:2], kv.shape[1]
            attn_mask = score_bias.expand(B, -1, T, S).reshape(-1, T, S).to(query.dtype)
            if padding is not None:  # both masks float, as nn.MultiheadAttention wants them
                padding = torch.zeros(padding.shape, dtype=query.dtype,
                                      device=query.device).masked_fill(padding, float("-inf"))
        out, _ = self.mha(query, kv, kv, key_padding_mask=padding, attn_mask=attn_mask)
        return out


class PlainFeedForward(nn.Module):
    """Linear -> ReLU -> nn.Dropout -> Linear, with the weights of a `FeedForward`."""

    def __init__(self, layer: FeedForward) -> None:
        super().__init__()
        self.fc1, self.fc2 = layer.fc1, layer.fc2
        self.dropout = nn.Dropout(layer.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class PlainAttentionPool(nn.Module):
    """Attention pooling with ``masked_fill`` and ``nn.Dropout``, with an `AttentionPool`'s weights."""

    def __init__(self, layer: AttentionPool) -> None:
        super().__init__()
        self.fc1, self.fc2 = layer.fc1, layer.fc2
        self.dropout = nn.Dropout(layer.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | KeyMask | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.fc2(self.dropout(F.relu(self.fc1(x)))).squeeze(-1)  # (B, N)
        if mask is not None:
            scores = scores.masked_fill(~_valid(mask), float("-inf"))
        weights = scores.softmax(dim=-1)
        return torch.bmm(weights.unsqueeze(1), x).squeeze(1), weights


def plain_copy(net: LRCN) -> LRCN:
    """A deep copy of `net` whose attention, FFN, pooling and dropout are the plain modules."""
    plain = copy.deepcopy(net)
    replacements = {MultiHeadAttention: PlainAttention, FeedForward: PlainFeedForward,
                    AttentionPool: PlainAttentionPool, Dropout: lambda m: nn.Dropout(m.p)}
    for parent in list(plain.modules()):
        for name, child in parent.named_children():
            make = replacements.get(type(child))
            if make is not None:
                setattr(parent, name, make(child))
    return plain
