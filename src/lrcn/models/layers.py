"""Reusable blocks: multi-head attention with key masks, the feed-forward net, attention pooling.

Masks are boolean with True = valid position, everywhere in the package.

Each layer with dropout takes ``fast`` (the model's ``model.fast_cpu``), decided when the model
is built: True uses the CPU speed layer (`lrcn.models.dropout`'s one-pass masks, where they
can run), False plain PyTorch (``F.dropout``, ``F.scaled_dot_product_attention``).

Rows with no valid key at all (a question of only padding, an image whose regions are all
masked) are handled explicitly rather than left to produce NaN, by one of two rules
(``model.no_key_attention``): ``zero`` gives such a query a zero context vector (so the output
is the output projection's bias) and attention pooling all-zero weights and a zero pooled
vector; ``uniform`` gives both the mean over all keys, which is what openvqa's masking with
-1e9 computes (every score equal, so a uniform softmax). Gradients stay finite in both cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lrcn.config import NO_KEY_RULES, NORMS
from lrcn.errors import LrcnError
from lrcn.models.dropout import dropout, fast_dropout_applies, relu_dropout


def tracing() -> bool:
    """Whether the model is being captured as a graph for export (``torch.export``, as the
    ONNX exporter runs it, or TorchScript tracing): code that branches on tensor values
    takes its branch-free form then, which gives the same numbers."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


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
    uniform: bool = False

    @classmethod
    def of(cls, valid: torch.Tensor | KeyMask | None, no_key: str = "zero") -> KeyMask | None:
        """Prepare a (B, S) bool mask; a KeyMask or None is returned as it is. `no_key` is the
        rule for rows without a valid key: ``zero`` or ``uniform`` (see the module's doc)."""
        if valid is None or isinstance(valid, KeyMask):
            return valid
        if no_key not in NO_KEY_RULES:
            raise LrcnError(f"no_key_attention must be one of {', '.join(NO_KEY_RULES)}, "
                            f"got {no_key!r}")
        any_key = valid.any(dim=-1)  # (B,)
        attend = (valid | ~any_key.unsqueeze(-1))[:, None, None, :]  # (B, 1, 1, S)
        bias = torch.zeros(attend.shape, dtype=torch.float32, device=valid.device)
        bias.masked_fill_(~attend, float("-inf"))
        # Eager, the common all-valid case skips the multiply; a graph being exported cannot
        # branch on tensor values, so it always keeps the factor (all ones there: same result).
        if tracing() or not bool(any_key.all()):
            has_key = any_key.float()[:, None, None, None]  # (B, 1, 1, 1)
        else:
            has_key = None
        return cls(valid, attend, bias, has_key, no_key == "uniform")

    def fill_no_key(self, out: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Attention output `out` (B, heads, T, head_dim) with the rows that have no valid key
        replaced by the rule's result: zero, or the mean of `values` (B, heads, S, head_dim)."""
        has_key = self.has_key.to(out.dtype)  # (B, 1, 1, 1)
        out = out * has_key
        if self.uniform:
            out = out + (1 - has_key) * values.mean(dim=-2, keepdim=True)
        return out


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with key masks (MCAN's MHAtt).

    Self-attention projects Q, K, V with one fused ``Linear(D, 3D)``; cross-attention projects Q
    with ``Linear(D, D)`` and K, V with one fused ``Linear(D, 2D)``. Both have the same parameters
    as three separate projections. Dropout acts on the attention probabilities in training.

    Attention is ``F.scaled_dot_product_attention`` (`attend`: its fused kernels, its own
    dropout). With `fast`, where the one-pass masks can run (training with dropout on the CPU,
    `fast_dropout_applies`), it is written out instead (`attend_fast_dropout`), so the
    probabilities get the cheap masks of `lrcn.models.dropout`; the math is SDPA's.

    Args:
        d_model: model width D.
        heads: number of heads; each has D // heads channels.
        dropout: dropout probability on the attention probabilities.
        cross: build the cross-attention projections (query and key/value sequences differ).
        fast: the CPU speed layer (``model.fast_cpu``); False: SDPA alone.
    """

    def __init__(self, d_model: int, heads: int, dropout: float, cross: bool = False,
                 fast: bool = True) -> None:
        super().__init__()
        if d_model % heads != 0:
            raise LrcnError(f"d_model={d_model} must be divisible by heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.cross = cross
        self.fast = fast
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
        key_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` (B, T, D) to ``key_value`` (B, S, D), or to itself when None.

        Args:
            query: the sequence that asks.
            key_value: the sequence attended to; None means self-attention.
            key_mask: (B, S) True where a key is valid, or a prepared `KeyMask`; None means
                all valid.
            score_bias: (1 or B, heads, T, S) added to the scaled scores before the softmax
                (`lrcn.models.position.DistanceBias`); None adds nothing.
            key_rows: cross-attention only: (B,) the row of ``key_value`` (U, S, D) each query
                attends to, so that keys and values shared by several queries (one image's
                questions) are projected once; None: row i.

        Returns:
            (B, T, D) attended values after the output projection.
        """
        B, T, D = query.shape
        if self.cross:
            if key_value is None:
                raise ValueError("cross-attention needs key_value")
            q = self.q_proj(query)
            kv = self.kv_proj(key_value)  # (B or U, S, 2D)
            if key_rows is not None:
                kv = torch.index_select(kv, 0, key_rows)  # (U, S, 2D) -> (B, S, 2D)
            k, v = kv.split(D, dim=-1)
        else:
            if key_value is not None or key_rows is not None:
                raise ValueError("self-attention takes no key_value; build with cross=True")
            q, k, v = self.qkv_proj(query).split(D, dim=-1)
        S = k.shape[1]
        q = q.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, T, head_dim)
        k = k.view(B, S, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, S, head_dim)
        v = v.view(B, S, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, S, head_dim)

        mask = KeyMask.of(key_mask)
        if self.fast and fast_dropout_applies(q, self.dropout, self.training):
            out = self.attend_fast_dropout(q, k, v, mask, score_bias)
        else:
            out = self.attend(q, k, v, mask, score_bias)
        if mask is not None and mask.has_key is not None:
            out = mask.fill_no_key(out, v)  # no valid key: zero or the mean of the values
        out = out.transpose(1, 2)  # (B, T, heads, head_dim)
        if tracing():  # an export captures SDPA's strides, then decomposes it into other ones,
            out = out.clone(memory_format=torch.contiguous_format)  # so no view may rely on them
        out = out.reshape(B, T, D)  # (B, T, D)
        return self.out_proj(out)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: KeyMask | None,
               score_bias: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(head_dim) + bias) v by SDPA, with its dropout in training:
        q (B, heads, T, head_dim), k and v (B, heads, S, head_dim) -> (B, heads, T, head_dim)."""
        attn_mask = None if mask is None else mask.attend
        if score_bias is not None:  # SDPA takes one mask: a float one holds both
            attn_mask = score_bias.to(q.dtype)
            if mask is not None:
                attn_mask = attn_mask + mask.bias.to(q.dtype)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, T, head_dim)

    def attend_fast_dropout(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            mask: KeyMask | None, score_bias: torch.Tensor | None) -> torch.Tensor:
        """`attend` written out, with the one-pass dropout masks on the probabilities."""
        # in place on the fresh product: matmul's backward needs q and k, not its output
        scores = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # (B, heads, T, S)
        if mask is not None:
            scores.add_(mask.bias)
        if score_bias is not None:
            scores.add_(score_bias)
        probs = dropout(scores.softmax(dim=-1), self.dropout, True)
        return probs @ v  # (B, heads, T, head_dim)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, dropout={self.dropout}, cross={self.cross}, fast={self.fast}"


def _relu_dropout(x: torch.Tensor, p: float, training: bool, fast: bool) -> torch.Tensor:
    """Dropout(ReLU(x)) of a fresh Linear output `x`: with `fast` one pass (`relu_dropout`),
    in place since nothing else reads `x` (the Linear's backward uses its input)."""
    if fast:
        return relu_dropout(x, p, training, inplace=True)
    return F.dropout(F.relu(x), p, training)


class FeedForward(nn.Module):
    """Position-wise feed-forward net: Linear -> ReLU -> Dropout -> Linear.

    With `fast` (``model.fast_cpu``) the ReLU and dropout are one pass (`relu_dropout`).
    """

    def __init__(self, d_model: int, hidden: int, dropout: float, fast: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.dropout = dropout
        self.fast = fast
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_relu_dropout(self.fc1(x), self.dropout, self.training, self.fast))

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, fast={self.fast}"


class AttentionPool(nn.Module):
    """Masked attention pooling (MCAN's AttFlat with one glimpse).

    An MLP scores each position, softmax over the valid positions turns scores into weights,
    and the pooled vector is the weighted sum of the inputs. With `fast` (``model.fast_cpu``)
    the MLP's ReLU and dropout are one pass (`relu_dropout`).
    """

    def __init__(self, d_model: int, hidden: int, dropout: float, fast: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.dropout = dropout
        self.fast = fast
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
            pooled (B, D) and weights (B, N); a row without valid positions has zero weights
            (or uniform ones, by the mask's rule).
        """
        hidden = _relu_dropout(self.fc1(x), self.dropout, self.training, self.fast)
        scores = self.fc2(hidden).squeeze(-1)  # (B, N)
        mask = KeyMask.of(mask)
        if mask is None:
            weights = scores.softmax(dim=-1)
        else:
            weights = (scores + mask.bias[:, 0, 0]).softmax(dim=-1)
            if mask.has_key is not None:  # a row with no valid position: zero or uniform
                has_key = mask.has_key[:, 0, 0].to(weights.dtype)  # (B, 1)
                weights = weights * has_key
                if mask.uniform:
                    weights = weights + (1 - has_key) / weights.shape[-1]
        pooled = torch.bmm(weights.unsqueeze(1), x).squeeze(1)  # (B, 1, N) @ (B, N, D) -> (B, D)
        return pooled, weights

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, fast={self.fast}"


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


class OpenVQALayerNorm(nn.Module):
    """openvqa's (and mcan-vqa's) layer norm: a * (x - mean) / (std + eps) + b.

    It differs from ``nn.LayerNorm`` in two ways that change the output by up to about 1e-3:
    the standard deviation is the unbiased one (divided by D - 1), and eps = 1e-6 is added to
    it outside the square root. The parameters are named as nn.LayerNorm's (weight, bias), so
    a state dict fits either formula.
    """

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        std = x.std(dim=-1, keepdim=True)  # unbiased, as torch.Tensor.std is by default
        return self.weight * (x - mean) / (std + self.eps) + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def layer_norm(size: int, norm: str = "torch") -> nn.Module:
    """The layer norm named by ``model.norm``: ``torch`` (nn.LayerNorm) or ``openvqa``."""
    if norm == "torch":
        return nn.LayerNorm(size)
    if norm == "openvqa":
        return OpenVQALayerNorm(size)
    raise LrcnError(f"model.norm must be one of {', '.join(NORMS)}, got {norm!r}")
