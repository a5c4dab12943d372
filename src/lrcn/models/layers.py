"""Reusable blocks: multi-head attention with key masks, the feed-forward net, attention pooling.

Masks are boolean with True = valid position, everywhere in the package.

Rows with no valid key at all (a question of only padding, which only a caller's mistake can
produce) are handled explicitly rather than left to produce NaN: attention gives such a query a
zero context vector (so the output is the output projection's bias), and attention pooling
gives all-zero weights and a zero pooled vector. Gradients stay finite in both cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lrcn.errors import LrcnError
from lrcn.models.dropout import dropout, relu_dropout


@dataclass(frozen=True)
class KeyMask:
    """A key mask prepared once per forward pass and shared by every attention layer.

    Attributes:
        valid: (B, S) True where a key is valid.
        attend: (B, 1, 1, S) the mask attention uses: rows with no valid key are made all-valid
            so softmax has something to normalise over (their result is zeroed below).
        bias: (B, 1, 1, S) the same as an additive score bias, 0 or -inf.
        has_key: (B, 1, 1, 1) 1.0 for rows with a valid key, 0.0 otherwise; None when every
            row has one (the usual case), so no multiply is spent on it.
    """

    valid: torch.Tensor
    attend: torch.Tensor
    bias: torch.Tensor
    has_key: torch.Tensor | None

    @classmethod
    def of(cls, valid: torch.Tensor | KeyMask | None) -> KeyMask | None:
        """Prepare a (B, S) bool mask; a KeyMask or None is returned as it is."""
        if valid is None or isinstance(valid, KeyMask):
            return valid
        any_key = valid.any(dim=-1)  # (B,)
        attend = (valid | ~any_key.unsqueeze(-1))[:, None, None, :]  # (B, 1, 1, S)
        bias = torch.zeros(attend.shape, dtype=torch.float32, device=valid.device)
        bias.masked_fill_(~attend, float("-inf"))
        has_key = None if bool(any_key.all()) else any_key.float()[:, None, None, None]
        return cls(valid, attend, bias, has_key)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with key masks (MCAN's MHAtt).

    Self-attention projects Q, K, V with one fused ``Linear(D, 3D)``; cross-attention projects Q
    with ``Linear(D, D)`` and K, V with one fused ``Linear(D, 2D)``. Both have the same parameters
    as three separate projections. Dropout acts on the attention probabilities in training.

    Without dropout, attention is ``F.scaled_dot_product_attention`` (its fused kernels). With
    dropout on the CPU it is written out, so the probabilities get the cheap masks of
    `lrcn.models.dropout`; the math is the same as SDPA's own dropout path.

    Args:
        d_model: model width D.
        heads: number of heads; each has D // heads channels.
        dropout: dropout probability on the attention probabilities.
        cross: build the cross-attention projections (query and key/value sequences differ).
    """

    def __init__(self, d_model: int, heads: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        if d_model % heads != 0:
            raise LrcnError(f"d_model={d_model} must be divisible by heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.cross = cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor | None = None,
        key_mask: torch.Tensor | KeyMask | None = None,
        score_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` (B, T, D) to ``key_value`` (B, S, D), or to itself when None.

        Args:
            query: the sequence that asks.
            key_value: the sequence attended to; None means self-attention.
            key_mask: (B, S) True where a key is valid, or a prepared `KeyMask`; None means
                all valid.
            score_bias: (1 or B, heads, T, S) added to the scaled scores before the softmax
                (`lrcn.models.position.DistanceBias`); None adds nothing.

        Returns:
            (B, T, D) attended values after the output projection.
        """
        B, T, D = query.shape
        if self.cross:
            if key_value is None:
                raise ValueError("cross-attention needs key_value")
            q = self.q_proj(query)
            k, v = self.kv_proj(key_value).split(D, dim=-1)
        else:
            if key_value is not None:
                raise ValueError("self-attention takes no key_value; build with cross=True")
            q, k, v = self.qkv_proj(query).split(D, dim=-1)
        S = k.shape[1]
        q = q.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, T, head_dim)
        k = k.view(B, S, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, S, head_dim)
        v = v.view(B, S, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, S, head_dim)

        mask = KeyMask.of(key_mask)
        if self.training and self.dropout > 0 and q.device.type == "cpu":
            # in place on the fresh product: matmul's backward needs q and k, not its output
            scores = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # (B, heads, T, S)
            if mask is not None:
                scores.add_(mask.bias)
            if score_bias is not None:
                scores.add_(score_bias)
            probs = dropout(scores.softmax(dim=-1), self.dropout, True)
            out = probs @ v  # (B, heads, T, head_dim)
        else:
            attn_mask = None if mask is None else mask.attend
            if score_bias is not None:  # SDPA takes one mask: a float one holds both
                attn_mask = score_bias.to(q.dtype)
                if mask is not None:
                    attn_mask = attn_mask + mask.bias.to(q.dtype)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask,
                dropout_p=self.dropout if self.training else 0.0,
            )  # (B, heads, T, head_dim)
        if mask is not None and mask.has_key is not None:
            out = out * mask.has_key.to(out.dtype)  # no valid key -> zero context
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """Position-wise feed-forward net: Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.dropout = dropout
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: fc1's output is needed by nothing else (its backward uses its input)
        return self.fc2(relu_dropout(self.fc1(x), self.dropout, self.training, inplace=True))


class AttentionPool(nn.Module):
    """Masked attention pooling (MCAN's AttFlat with one glimpse).

    An MLP scores each position, softmax over the valid positions turns scores into weights,
    and the pooled vector is the weighted sum of the inputs.
    """

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.dropout = dropout
        self.fc2 = nn.Linear(hidden, 1)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | KeyMask | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``x`` (B, N, D) over its valid positions.

        Args:
            x: the sequence to pool.
            mask: (B, N) True where a position is valid, or a prepared `KeyMask`; None means
                all valid.

        Returns:
            pooled (B, D) and weights (B, N); a row without valid positions pools to zeros.
        """
        hidden = relu_dropout(self.fc1(x), self.dropout, self.training, inplace=True)
        scores = self.fc2(hidden).squeeze(-1)  # (B, N)
        mask = KeyMask.of(mask)
        if mask is None:
            weights = scores.softmax(dim=-1)
        else:
            weights = (scores + mask.bias[:, 0, 0]).softmax(dim=-1)
            if mask.has_key is not None:  # a row with no valid position -> zeros
                weights = weights * mask.has_key[:, 0, 0].to(weights.dtype)
        pooled = torch.bmm(weights.unsqueeze(1), x).squeeze(1)  # (B, 1, N) @ (B, N, D) -> (B, D)
        return pooled, weights


def word_embedding(vocab_size: int, word_dim: int,
                   word_vectors: torch.Tensor | None = None) -> nn.Embedding:
    """Word embedding with pad id 0, initialised from `word_vectors` (GloVe) when given."""
    embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
    if word_vectors is not None:
        if tuple(word_vectors.shape) != (vocab_size, word_dim):
            raise LrcnError(
                f"word vectors have shape {tuple(word_vectors.shape)}, expected "
                f"(vocab_size={vocab_size}, word_dim={word_dim})"
            )
        with torch.no_grad():
            embed.weight.copy_(word_vectors)
    return embed
