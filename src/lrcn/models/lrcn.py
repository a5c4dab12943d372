"""LRCN: Layer-residual Co-Attention Networks (Han et al., ESWA 2025) on MCAN's blocks.

Reads top to bottom: the question self-attention block, the image self+guided layer with the
layer-residual mechanism (LRM), co-stacking's question guided block, then the model: question
encoder, image input path, one of the three stackings (ed | st | cst), attention pooling on
both streams and the fusion head, and last its registration (``model.arch: lrcn``). All blocks
are Post-LN as in MCAN. See shared/spec/LRCN.md. Every block takes ``fast``, the model's
``model.fast_cpu`` (the CPU speed layer, `lrcn.models.layers`), and hands it to its layers.

Padding: questions are right-padded with id 0. The LSTM runs over the pads, but since it reads
left to right the valid positions never see them, and every attention and pooling step masks
the pad positions (and masked image regions) as keys, so neither can change the output.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrcn.config import ModelConfig
from lrcn.errors import LrcnError
from lrcn.models.dropout import Dropout
from lrcn.models.layers import (
    AttentionPool,
    FeedForward,
    KeyMask,
    MultiHeadAttention,
    layer_norm,
    word_embedding,
)
from lrcn.models.position import DistanceBias, GridPosition, region_centres
from lrcn.models.registry import register_model
from lrcn.models.vqa_model import LRCNOutput, VQAModel, build_vqa_model



class QuestionSA(nn.Module):
    """Question self-attention block (MCAN's SA).

        a  = LN(y + MHA(y, y, y))
        y' = LN(a + FFN(a))
    """

    def __init__(self, d_model: int, heads: int, ffn_dim: int, dropout: float,
                 fast: bool = True, norm: str = "torch") -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, heads, dropout, fast=fast)
        self.norm1 = layer_norm(d_model, norm)
        self.ffn = FeedForward(d_model, ffn_dim, dropout, fast=fast)
        self.norm2 = layer_norm(d_model, norm)
        self.dropout = Dropout(dropout, inplace=True, fast=fast)  # on fresh sub-layer outputs

    def forward(self, y: torch.Tensor, y_mask: KeyMask | torch.Tensor | None) -> torch.Tensor:
        y = self.norm1(y + self.dropout(self.self_attn(y, key_mask=y_mask)))
        return self.norm2(y + self.dropout(self.ffn(y)))


class ImageSGA(nn.Module):
    """Image self+guided attention layer (MCAN's SGA) with the layer-residual mechanism.

        s_l = LN(x_{l-1} + MHA(x_{l-1}, x_{l-1}, x_{l-1}) + [LRM in SA] * s_{l-1})
        g_l = LN(s_l + MHA(s_l, y, y) + [LRM in GA] * g_{l-1})
        x_l = LN(g_l + FFN(g_l))

    s_{l-1} and g_{l-1} are the previous layer's attention sub-layer outputs (after their LN,
    before the FFN), with s_0 = g_0 = x_0. The skip adds no parameters, so every placement
    (none | sa | ga | both) has the same state dict. With ``distance_bias`` the self-attention
    scores get each head's `DistanceBias` (``model.distance_bias``).
    """

    def __init__(self, d_model: int, heads: int, ffn_dim: int, dropout: float, lrm: str,
                 distance_bias: bool = False, fast: bool = True, norm: str = "torch") -> None:
        super().__init__()
        self.lrm_sa = lrm in ("sa", "both")
        self.lrm_ga = lrm in ("ga", "both")
        self.distance_bias = DistanceBias(heads) if distance_bias else None
        self.self_attn = MultiHeadAttention(d_model, heads, dropout, fast=fast)
        self.norm1 = layer_norm(d_model, norm)
        self.guided_attn = MultiHeadAttention(d_model, heads, dropout, cross=True, fast=fast)
        self.norm2 = layer_norm(d_model, norm)
        self.ffn = FeedForward(d_model, ffn_dim, dropout, fast=fast)
        self.norm3 = layer_norm(d_model, norm)
        self.dropout = Dropout(dropout, inplace=True, fast=fast)  # on fresh sub-layer outputs

    def attend_self(
        self,
        x: torch.Tensor,
        x_mask: KeyMask | torch.Tensor | None,
        prev_s: torch.Tensor,
        centres: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """s_l, the self-attention sub-layer: it reads no question. ``centres`` (1 or B, N, 2)
        of x's regions: needed with ``distance_bias``."""
        bias = None
        if self.distance_bias is not None:
            if centres is None:
                raise LrcnError("model.distance_bias needs the centres of the image regions")
            bias = self.distance_bias(centres)  # (1 or B, heads, N, N)
        s = x + self.dropout(self.self_attn(x, key_mask=x_mask, score_bias=bias))
        if self.lrm_sa:
            s = s + prev_s
        return self.norm1(s)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_mask: KeyMask | torch.Tensor | None,
        y_mask: KeyMask | torch.Tensor | None,
        prev_s: torch.Tensor,
        prev_g: torch.Tensor,
        centres: torch.Tensor | None = None,
        s: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns x_l, s_l, g_l; s_l and g_l are the next layer's prev_s and prev_g.
        ``centres`` (1 or B, N, 2) of x's regions: needed with ``distance_bias``. ``s``: this
        layer's `attend_self` when it has been run already (then x is not read)."""
        if s is None:
            s = self.attend_self(x, x_mask, prev_s, centres)
        g = s + self.dropout(self.guided_attn(s, y, key_mask=y_mask))
        if self.lrm_ga:
            g = g + prev_g
        g = self.norm2(g)
        x = self.norm3(g + self.dropout(self.ffn(g)))
        return x, s, g


class QuestionGA(nn.Module):
    """Co-stacking's question guided block: the question attends to the image of layer l-1.

        q_l = LN(y + MHA(y, x_{l-1}, x_{l-1}) + [cst_question_lrm] * q_{l-1}),   q_0 = Y
        y'  = LN(q_l + FFN(q_l))

    (choice) The paper states only that the question attends to the image with its own
    layer-residual path (PrevReY(0) = Y, the LSTM output). The FFN sub-layer, dropout and
    Post-LN here mirror the other blocks; they are this implementation's reading.
    """

    def __init__(self, d_model: int, heads: int, ffn_dim: int, dropout: float, lrm: bool,
                 fast: bool = True, norm: str = "torch") -> None:
        super().__init__()
        self.lrm = lrm
        self.guided_attn = MultiHeadAttention(d_model, heads, dropout, cross=True, fast=fast)
        self.norm1 = layer_norm(d_model, norm)
        self.ffn = FeedForward(d_model, ffn_dim, dropout, fast=fast)
        self.norm2 = layer_norm(d_model, norm)
        self.dropout = Dropout(dropout, inplace=True, fast=fast)  # on fresh sub-layer outputs

    def forward(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        x_mask: KeyMask | torch.Tensor | None,
        prev_q: torch.Tensor,
        x_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns y' and q_l; q_l is the next layer's prev_q. ``x_rows`` (B,): the row of x
        (one per distinct image) each question reads; None: row i."""
        q = y + self.dropout(self.guided_attn(y, x, key_mask=x_mask, key_rows=x_rows))
        if self.lrm:
            q = q + prev_q
        q = self.norm1(q)
        return self.norm2(q + self.dropout(self.ffn(q))), q


class LRCN(nn.Module):
    """The LRCN family: question encoder, image input path, co-attention stacking, fusion head.

    Reads both modalities (``uses_image``; a text-only baseline sets it False).

    Args:
        cfg: the model configuration (variant, layers, lrm, sizes, grid reduction, fast_cpu).
        vocab_size: number of question tokens, id 0 being the pad.
        num_answers: K, the width of the answer logits.
        grid_channels: C, the channel count of the image grid the model reads.
        word_vectors: optional (vocab_size, word_dim) matrix (GloVe) that initialises the
            word embedding; the embedding is learned from scratch when None.
    """

    uses_image = True

    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        num_answers: int,
        grid_channels: int,
        word_vectors: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        _check_config(cfg)
        self.variant = cfg.variant
        self.grid_channels = grid_channels
        self.fused_dim = cfg.fused_dim
        D = cfg.d_model

        # question encoder: word embedding -> one-layer LSTM, Y in R^{T x D}
        self.embed = word_embedding(vocab_size, cfg.word_dim, word_vectors)
        self.lstm = nn.LSTM(cfg.word_dim, D, num_layers=1, batch_first=True)

        # image input path: optional 2x2 stride-2 grid reduction, [cell centres appended],
        # Linear C (+2) -> D, [sinusoidal position added]
        if cfg.grid_reduction == "conv":
            self.reduce: nn.Module | None = nn.Conv2d(grid_channels, grid_channels, 2, stride=2)
        elif cfg.grid_reduction == "avgpool":
            self.reduce = nn.AvgPool2d(2)
        else:
            self.reduce = None
        self.position = GridPosition(cfg.position, D)
        self.image_proj = nn.Linear(grid_channels + self.position.extra_channels, D)

        # co-attention stacking: L question SA blocks, L image SGA layers (+ L question GA for cst)
        L, fast, norm = cfg.layers, cfg.fast_cpu, cfg.norm
        self.question_blocks = nn.ModuleList(
            QuestionSA(D, cfg.heads, cfg.ffn_dim, cfg.dropout, fast=fast, norm=norm)
            for _ in range(L)
        )
        if cfg.variant == "cst":
            self.question_guided = nn.ModuleList(
                QuestionGA(D, cfg.heads, cfg.ffn_dim, cfg.dropout,
                           cfg.cst_question_lrm and cfg.lrm != "none", fast=fast, norm=norm)
                for _ in range(L)
            )
        self.uses_distance_bias = cfg.distance_bias
        self.image_layers = nn.ModuleList(
            ImageSGA(D, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.lrm, cfg.distance_bias,
                     fast=fast, norm=norm)
            for _ in range(L)
        )
        # openvqa's conventions, for weights trained with it (lrcn import openvqa)
        self.mask_zero_rows = cfg.mask_zero_rows
        self.no_key_attention = cfg.no_key_attention

        # head: attention pooling on each stream, z = LN(X W_x + Y W_y), logits = z W_z
        self.image_pool = AttentionPool(D, cfg.pool_hidden, cfg.dropout, fast=fast)
        self.question_pool = AttentionPool(D, cfg.pool_hidden, cfg.dropout, fast=fast)
        self.fuse_image = nn.Linear(D, cfg.fused_dim)
        self.fuse_question = nn.Linear(D, cfg.fused_dim)
        self.fuse_norm = layer_norm(cfg.fused_dim, norm)
        self.head = nn.Linear(cfg.fused_dim, num_answers)

    @property
    def places_regions(self) -> bool:
        """Whether the model needs to know where image regions are (a region list's boxes)."""
        return self.position.kind != "none" or self.uses_distance_bias

    def encode_question(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T), pad 0, right-padded -> Y (B, T, D) and its mask (B, T)."""
        if tokens.dim() != 2:
            raise LrcnError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        y, _ = self.lstm(self.embed(tokens))  # (B, T, D)
        return y, tokens != 0

    def encode_grid(
        self, grid: torch.Tensor, grid_mask: torch.Tensor | None = None,
        grid_boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Grid (B, H, W, C) or (B, N, C) -> X (B, N', D), its mask (B, N') or None, and the
        regions' centres (1 or B, N', 2) when ``model.position`` or ``model.distance_bias``
        needs them (else None).

        With a reduction, H and W are zero-padded to even sizes and halved; masked input cells
        are zeroed first, and a reduced cell is valid if any of its input cells is valid. A
        region list takes its regions' places from ``grid_boxes`` (B, N, 4) (`region_centres`).
        """
        if grid.dim() not in (3, 4) or grid.shape[-1] != self.grid_channels:
            raise LrcnError(
                f"grid must be (batch, H, W, {self.grid_channels}) or (batch, N, "
                f"{self.grid_channels}), got shape {tuple(grid.shape)}"
            )
        B = grid.shape[0]
        spatial = tuple(grid.shape[1:-1])  # (H, W) or (N,)
        if grid_mask is not None:
            cells = math.prod(spatial)
            if grid_mask.shape[0] != B or math.prod(grid_mask.shape[1:]) != cells:
                raise LrcnError(
                    f"grid_mask has shape {tuple(grid_mask.shape)}, expected ({B}, "
                    f"{', '.join(map(str, spatial))}) or ({B}, {cells})"
                )
            grid_mask = grid_mask.reshape(B, *spatial).bool()  # (B, H, W) or (B, N)
        if self.mask_zero_rows:  # openvqa's make_mask: an all-zero region is padding
            nonzero = grid.abs().sum(dim=-1) != 0  # (B, H, W) or (B, N)
            grid_mask = nonzero if grid_mask is None else grid_mask & nonzero

        if self.reduce is not None:
            if grid.dim() != 4:
                raise LrcnError(
                    "grid_reduction conv/avgpool needs a spatial grid (batch, H, W, C), got "
                    f"shape {tuple(grid.shape)}; use grid_reduction: none for region lists"
                )
            H, W = spatial
            if grid_mask is not None:
                grid = grid * grid_mask.unsqueeze(-1).to(grid.dtype)  # masked cells -> 0
            pad = (0, W % 2, 0, H % 2)  # zero-pad right and bottom to even sizes
            g = F.pad(grid.permute(0, 3, 1, 2), pad)  # (B, C, H', W')
            grid = self.reduce(g).permute(0, 2, 3, 1)  # (B, H'/2, W'/2, C)
            if grid_mask is not None:
                m = F.pad(grid_mask.unsqueeze(1).to(g.dtype), pad)  # (B, 1, H', W')
                grid_mask = F.max_pool2d(m, 2).squeeze(1) > 0  # (B, H'/2, W'/2)

        centres = size = None
        if self.places_regions:
            option = "model.position" if self.position.kind != "none" else "model.distance_bias"
            centres, size = region_centres(grid, grid_boxes, option)  # after any reduction
        grid = grid.reshape(B, -1, grid.shape[-1])  # (B, N, C)
        if grid_mask is not None:
            grid_mask = grid_mask.reshape(B, -1)  # (B, N)
        x = self.image_proj(self.position.append(grid, centres))  # (B, N, D); C [+ 2] -> D
        x = self.position.add(x, centres, size)
        return x, grid_mask, centres

    def co_attend(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_mask: KeyMask | torch.Tensor | None,
        y_mask: KeyMask | torch.Tensor,
        centres: torch.Tensor | None = None,
        first_s: torch.Tensor | None = None,
        per_image: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the stacking on X (B, N, D) and Y (B, T, D); returns the final X and Y.
        ``centres`` (1 or B, N, 2) of X's regions: for ``model.distance_bias``. ``first_s``
        (B, N, D): the first image layer's self-attention output, when run already.
        ``per_image``: X once per distinct image (U, N, D) and each question's row (B,), for
        co-stacking's first question guided block, which then projects its keys once an image."""
        s = g = x  # s_0 = g_0 = x_0 (PrevRe(0) = X)
        if self.variant == "ed":
            # encoder-decoder: all question blocks, then every image layer guided by the final y
            for q_block in self.question_blocks:
                y = q_block(y, y_mask)
            for l, layer in enumerate(self.image_layers):
                x, s, g = layer(x, y, x_mask, y_mask, s, g, centres, first_s if l == 0 else None)
        elif self.variant == "st":
            # pure stacking: question block l, then image layer l guided by the question of layer l
            for l, (q_block, layer) in enumerate(zip(self.question_blocks, self.image_layers)):
                y = q_block(y, y_mask)
                x, s, g = layer(x, y, x_mask, y_mask, s, g, centres, first_s if l == 0 else None)
        else:
            # co-stacking: question block l, the question attends to the image of layer l-1,
            # then image layer l guided by the updated question
            q = y  # PrevReY(0) = Y
            for l, (q_block, q_guided, layer) in enumerate(
                zip(self.question_blocks, self.question_guided, self.image_layers)
            ):
                y = q_block(y, y_mask)
                keys, rows = per_image if l == 0 and per_image is not None else (x, None)
                y, q = q_guided(y, keys, x_mask, q, rows)
                x, s, g = layer(x, y, x_mask, y_mask, s, g, centres, first_s if l == 0 else None)
        return x, y

    def forward_features(
        self,
        tokens: torch.Tensor,
        grid: torch.Tensor,
        grid_mask: torch.Tensor | None = None,
        grid_boxes: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> LRCNOutput:
        """Questions (B, T) and grids (B or U, H, W, C) or (B or U, N, C) -> fused vector and
        pooling weights.

        Args:
            tokens: token ids, right-padded with 0.
            grid: image grid features, one per question, or with ``image_index`` one per
                distinct image; ``conv``/``avgpool`` reduction needs (B or U, H, W, C).
            grid_mask: (B, N) or (B, H, W), True = valid region, at the input resolution;
                None means all regions are valid.
            grid_boxes: (B, N, 4) boxes (x0, y0, x1, y1) of a region list's regions, as
                fractions of the image's width and height; where they are for
                ``model.position`` and ``model.distance_bias``. None for grids.
            image_index: (B,) the row of ``grid`` each question asks about; None: row i.
        """
        y, y_valid = self.encode_question(tokens)
        if image_index is not None and not self._first_layer_per_image(grid_mask, grid_boxes):
            grid, image_index = torch.index_select(grid, 0, image_index), None  # (B, ...)
        x, x_valid, centres = self.encode_grid(grid, grid_mask, grid_boxes)  # (U or B, N, D)
        first_s = per_image = None
        if image_index is not None:
            # What reads no question runs once per image (U rows): the first image layer's
            # self-attention, and co-stacking's first keys from the image; then every question
            # gets its image's rows (B). index_select, not x[image_index]: the backward of
            # indexing sums an image's gradients in an order that varies between processes on
            # the CPU when a batch holds an image twice (train.group_by_image), so the same
            # seed would not give the same weights; index_select's backward adds in order.
            per_image = (x, image_index)
            first_s = self.image_layers[0].attend_self(
                x, KeyMask.of(x_valid, self.no_key_attention), x, centres)  # (U, N, D)
            x, first_s = (torch.index_select(t, 0, image_index) for t in (x, first_s))
            if x_valid is not None:  # mask_zero_rows: found per image
                x_valid = torch.index_select(x_valid, 0, image_index)
        # built once, used by every layer
        y_mask = KeyMask.of(y_valid, self.no_key_attention)
        x_mask = KeyMask.of(x_valid, self.no_key_attention)
        x, y = self.co_attend(x, y, x_mask, y_mask, centres, first_s, per_image)
        x_pooled, x_weights = self.image_pool(x, x_mask)  # (B, D), (B, N)
        y_pooled, y_weights = self.question_pool(y, y_mask)  # (B, D), (B, T)
        fused = self.fuse_norm(self.fuse_image(x_pooled) + self.fuse_question(y_pooled))
        return LRCNOutput(fused=fused, image_weights=x_weights, question_weights=y_weights)

    def _first_layer_per_image(self, grid_mask: torch.Tensor | None,
                               grid_boxes: torch.Tensor | None) -> bool:
        """Whether what reads no question (the first image layer's self-attention, co-stacking's
        first keys from the image) can run once per distinct image: not with per-question
        masks or boxes, and not while dropout draws its masks (each question draws its own, as
        in MCAN)."""
        dropping = self.training and self.image_layers[0].dropout.p > 0
        return grid_mask is None and grid_boxes is None and not dropping

    def forward_head(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused vectors (B, fused_dim) -> answer logits (B, K); no sigmoid, no ReLU."""
        return self.head(fused)

    def forward(
        self,
        tokens: torch.Tensor,
        grid: torch.Tensor,
        grid_mask: torch.Tensor | None = None,
        grid_boxes: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Answer logits (B, K) for questions (B, T) about grids (B or U, H, W, C) or (B or U,
        N, C); ``image_index`` as in `forward_features`."""
        return self.forward_head(
            self.forward_features(tokens, grid, grid_mask, grid_boxes, image_index).fused)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        """Parameter count; the paper reports it without the word embedding."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
        return n


def _check_config(cfg: ModelConfig) -> None:
    """What LRCN needs beyond the model section's own rules (`ModelConfig.validate`)."""
    cfg.validate()
    if cfg.d_model % cfg.heads != 0:
        raise LrcnError(
            f"model.d_model = {cfg.d_model} must be divisible by model.heads = {cfg.heads}"
        )


@register_model("lrcn")
def lrcn(cfg: ModelConfig, vocab_size: int, num_answers: int, **kwargs: Any) -> VQAModel:
    """LRCN (stacking ``cfg.variant``) behind the image encoder ``cfg.image_encoder``."""
    return build_vqa_model(LRCN, cfg, vocab_size, num_answers, **kwargs)
