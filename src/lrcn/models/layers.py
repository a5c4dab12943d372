"""Reusable blocks: multi-head attention with key masks, the feed-forward net, attention pooling.

Masks are boolean with True = valid position, everywhere in the package.

Rows with no valid key at all (a question of only padding, which only a caller's mistake can
produce) are handled explicitly rather than left to produce NaN: attention gives such a query a
zero context vector (so the output is the output projection's bias), and attention pooling
gives all-zero weights and a zero pooled vector. Gradients stay finite in both cases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrcn.errors import LrcnError


def _safe_key_mask(key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a key mask (B, S) into one with a valid key in every row, and the rows that had any.

    Rows with no valid key are made all-valid so softmax has something to normalise over; the
    caller zeroes their result with the returned ``has_key`` (B,).
    """
    has_key = key_mask.any(dim=-1)  # (B,)
    return key_mask | ~has_key.unsqueeze(-1), has_key


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with key masks (MCAN's MHAtt).

    Self-attention projects Q, K, V with one fused ``Linear(D, 3D)``; cross-attention projects Q
    with ``Linear(D, D)`` and K, V with one fused ``Linear(D, 2D)``. Both have the same parameters
    as three separate projections. Dropout acts on the attention probabilities in training.

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
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` (B, T, D) to ``key_value`` (B, S, D), or to itself when None.

        Args:
            query: the sequence that asks.
            key_value: the sequence attended to; None means self-attention.
            key_mask: (B, S) True where a key is valid; None means all valid.

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

        attn_mask, has_key = None, None
        if key_mask is not None:
            safe, has_key = _safe_key_mask(key_mask)
            attn_mask = safe[:, None, None, :]  # (B, 1, 1, S), broadcast over heads and queries
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, T, head_dim)
        if has_key is not None:
            out = out * has_key[:, None, None, None].to(out.dtype)  # no valid key -> zero context
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """Position-wise feed-forward net: Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class AttentionPool(nn.Module):
    """Masked attention pooling (MCAN's AttFlat with one glimpse).

    An MLP scores each position, softmax over the valid positions turns scores into weights,
    and the pooled vector is the weighted sum of the inputs.
    """

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``x`` (B, N, D) over its valid positions.

        Args:
            x: the sequence to pool.
            mask: (B, N) True where a position is valid; None means all valid.

        Returns:
            pooled (B, D) and weights (B, N); a row without valid positions pools to zeros.
        """
        scores = self.fc2(self.dropout(F.relu(self.fc1(x)))).squeeze(-1)  # (B, N)
        if mask is None:
            weights = scores.softmax(dim=-1)
        else:
            safe, _ = _safe_key_mask(mask)
            weights = scores.masked_fill(~safe, float("-inf")).softmax(dim=-1)
            weights = weights * mask.to(weights.dtype)  # a row with no valid position -> zeros
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
