"""Baselines: the late-fusion CNN+LSTM of the VizWiz report, and text-only and image-only models.

Reads top to bottom: the question encoder (word embedding -> bidirectional LSTM -> attention
pooling over the words), the image encoder (masked mean over grid cells -> Linear -> ReLU), then
the model, which concatenates the modalities it uses and answers through an MLP and a linear head:

    q = AttPool(BiLSTM(E[tokens]))                  (B, D)   question vector
    v = ReLU(W_v mean_valid(grid) + b_v)             (B, D)   image vector
    z = Dropout(ReLU(W_z [v; q] + b_z))              (B, fused_dim)
    logits = W_h z + b_h                             (B, K)

``CNNLSTM`` uses both (the "CNN" is the VQAModel's image encoder in front, as for LRCN),
``TextOnly`` only q and ``ImageOnly`` only v; together they show what each modality contributes.
All three have LRCN's interface (``forward_features`` -> ``LRCNOutput``, ``forward_head``,
``num_parameters``, ``grid_channels``, ``fused_dim``), plus the flags ``uses_image`` and
``uses_question``. Their registrations (``model.arch``: cnn_lstm, text_only, image_only) close
the file. ``model.fast_cpu`` reaches the attention pooling (`lrcn.models.layers`); the fusion
MLP's dropout is ``nn.Dropout`` either way (its (B, fused_dim) mask is small).

Padding: questions are right-padded with id 0. The LSTM runs on packed sequences of the true
lengths, so neither direction reads a pad, and pooling masks the pads; masked image cells are
zeroed and left out of the mean. Neither can change the output.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrcn.config import ModelConfig
from lrcn.errors import LrcnError
from lrcn.models.layers import AttentionPool, tracing, word_embedding
from lrcn.models.position import GridPosition, region_centres
from lrcn.models.registry import register_model
from lrcn.models.vqa_model import LRCNOutput, VQAModel, build_vqa_model

log = logging.getLogger(__name__)


class QuestionEncoder(nn.Module):
    """Word embedding -> 1-layer bidirectional LSTM -> attention pooling over the words.

    Args:
        vocab_size: number of question tokens, id 0 being the pad.
        word_dim: word-embedding size.
        d_model: D, the width of the question vector; each LSTM direction has D // 2 units.
        pool_hidden: hidden size of the attention-pooling MLP.
        dropout: dropout inside the attention-pooling MLP.
        word_vectors: optional (vocab_size, word_dim) matrix (GloVe) that initialises the
            embedding; learned from scratch when None.
        fast: the pooling's CPU speed layer (``model.fast_cpu``).
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int,
        d_model: int,
        pool_hidden: int,
        dropout: float,
        word_vectors: torch.Tensor | None = None,
        fast: bool = True,
    ) -> None:
        super().__init__()
        self.embed = word_embedding(vocab_size, word_dim, word_vectors)
        self.lstm = nn.LSTM(word_dim, d_model // 2, num_layers=1, batch_first=True,
                            bidirectional=True)
        self.pool = AttentionPool(d_model, pool_hidden, dropout, fast=fast)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T), right-padded with 0 -> question vectors (B, D) and weights (B, T).

        A question of pads only runs the LSTM on one step (length clamped to 1), but pooling
        masks that step, so it gets all-zero weights and a zero vector.
        """
        if tokens.dim() != 2:
            raise LrcnError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        T = tokens.shape[1]
        mask = tokens != 0  # (B, T) True = word
        lengths = mask.sum(dim=1).clamp(min=1)  # (B,)
        if tracing():  # packing sorts by data-dependent lengths, which no exported graph can
            return self.pool(self._lstm_padded(self.embed(tokens), lengths), mask)
        packed = nn.utils.rnn.pack_padded_sequence(  # lengths on the CPU, as it wants them
            self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        h, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=T)  # (B, T, D)
        return self.pool(h, mask)  # (B, D), (B, T)

    def _lstm_padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """What the packed BiLSTM gives, (B, T, D), without packing: for export.

        The forward direction reads each question from its first word, so pads after it never
        reach its words; the backward direction must start at its last word, so it reads the
        question shifted right until that word is last. One BiLSTM pass over both (2B rows);
        each half is taken where it is right, moved back in place, and the pads zeroed as
        ``pad_packed_sequence`` leaves them.
        """
        B, T, _ = x.shape
        steps = torch.arange(T, device=x.device)  # (T,)
        shift = (T - lengths)[:, None]  # (B, 1)
        right = x.gather(1, ((steps - shift) % T)[:, :, None].expand_as(x))  # last word at T-1
        h, _ = self.lstm(torch.cat((x, right)))  # (2B, T, D)
        half = h.shape[-1] // 2
        backward = h[B:, :, half:].gather(  # back to the words' own places
            1, ((steps + shift) % T)[:, :, None].expand(B, T, half))
        h = torch.cat((h[:B, :, :half], backward), dim=-1)  # (B, T, D)
        return h * (steps < lengths[:, None])[:, :, None].to(h.dtype)


class ImageEncoder(nn.Module):
    """Masked mean over grid cells -> Linear(C, D) -> ReLU; with ``model.position``, each
    cell's features and position -> Linear -> ReLU, then the masked mean.

    The grid comes from the VQAModel's image encoder (SmallCNN, a torchvision trunk) or from
    precomputed features, as for LRCN; this is only the pooling and projection on top. A mean
    forgets where each cell was, so with a position encoding the ReLU comes before the mean:
    what a cell holds and where it is then shape the image vector together.
    """

    def __init__(self, grid_channels: int, d_model: int, position: str = "none") -> None:
        super().__init__()
        self.grid_channels = grid_channels
        self.position = GridPosition(position, d_model)
        self.proj = nn.Linear(grid_channels + self.position.extra_channels, d_model)

    def forward(
        self, grid: torch.Tensor, grid_mask: torch.Tensor | None = None,
        grid_boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid (B, H, W, C) or (B, N, C), mask (B, N) or (B, H, W) -> (B, D) and weights (B, N).

        The weights are the mean's: 1 / (valid cells) on each valid cell, 0 on masked ones. A
        grid with no valid cell pools to zeros. A region list's places come from its boxes
        ``grid_boxes`` (B, N, 4) (`lrcn.models.position.region_centres`).
        """
        C = self.grid_channels
        if grid.dim() not in (3, 4) or grid.shape[-1] != C:
            raise LrcnError(
                f"grid must be (batch, H, W, {C}) or (batch, N, {C}), got shape "
                f"{tuple(grid.shape)}"
            )
        B, N = grid.shape[0], math.prod(grid.shape[1:-1])
        if grid_mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=grid.device)
        else:
            if grid_mask.shape[0] != B or math.prod(grid_mask.shape[1:]) != N:
                raise LrcnError(
                    f"grid_mask has shape {tuple(grid_mask.shape)}, expected ({B}, {N}) or the "
                    f"grid's ({B}, {', '.join(map(str, grid.shape[1:-1]))})"
                )
            mask = grid_mask.reshape(B, N).bool()  # (B, N)
        weights = mask.to(grid.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, N)
        if self.position.kind == "none":
            grid = grid.reshape(B, N, C).masked_fill(~mask.unsqueeze(-1), 0.0)  # even inf/NaN
            pooled = torch.bmm(weights.unsqueeze(1), grid).squeeze(1)  # (B, 1, N) @ (B, N, C)
            return F.relu(self.proj(pooled)), weights  # (B, D), (B, N)
        centres, size = region_centres(grid, grid_boxes, "model.position")
        cells = grid.reshape(B, N, C).masked_fill(~mask.unsqueeze(-1), 0.0)
        cells = self.position.append(cells, centres)  # (B, N, C [+ 2])
        cells = F.relu(self.position.add(self.proj(cells), centres, size))  # (B, N, D)
        return torch.bmm(weights.unsqueeze(1), cells).squeeze(1), weights  # (B, D), (B, N)


class LateFusion(nn.Module):
    """The family: the encoders its flags ask for, concatenation, MLP, answer classifier.

    Use the subclasses ``CNNLSTM``, ``TextOnly`` and ``ImageOnly``.

    Args:
        cfg: the model configuration; reads d_model, word_dim, pool_hidden, fused_dim, dropout,
            position and fast_cpu.
        vocab_size: number of question tokens, id 0 being the pad.
        num_answers: K, the width of the answer logits.
        grid_channels: C, the channel count of the image grid the model reads.
        word_vectors: optional (vocab_size, word_dim) matrix (GloVe) for the word embedding.
    """

    uses_image: bool = True
    uses_question: bool = True

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
        if cfg.distance_bias:  # said, not refused: the own-data preset sets it for every model
            log.info("model.distance_bias does not apply to %s: it has no attention between "
                     "image regions", cfg.arch)
        self.grid_channels = grid_channels
        self.fused_dim = cfg.fused_dim
        D = cfg.d_model

        self.question: QuestionEncoder | None = None
        if self.uses_question:
            self.question = QuestionEncoder(vocab_size, cfg.word_dim, D, cfg.pool_hidden,
                                            cfg.dropout, word_vectors, fast=cfg.fast_cpu)
        self.image: ImageEncoder | None = None
        if self.uses_image:
            self.image = ImageEncoder(grid_channels, D, cfg.position)

        # fusion: concat [v; q] -> Linear -> ReLU -> Dropout, then the answer classifier
        in_dim = D * (int(self.uses_image) + int(self.uses_question))
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, cfg.fused_dim), nn.ReLU(), nn.Dropout(cfg.dropout)
        )
        self.head = nn.Linear(cfg.fused_dim, num_answers)

    @property
    def places_regions(self) -> bool:
        """Whether the model needs to know where image regions are (a region list's boxes)."""
        return self.image is not None and self.image.position.kind != "none"

    def forward_features(
        self,
        tokens: torch.Tensor,
        grid: torch.Tensor | None = None,
        grid_mask: torch.Tensor | None = None,
        grid_boxes: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> LRCNOutput:
        """Fused vectors (B, fused_dim) and pooling weights for questions (B, T) about grids.

        Args:
            tokens: token ids (B, T), right-padded with 0 (only B is read when the model does
                not use the question).
            grid: (B or U, H, W, C) or (B or U, N, C); may be None when the model does not
                use the image.
            grid_mask: (B, N) or (B, H, W), True = valid cell; None means all valid.
            grid_boxes: (B, N, 4) boxes of a region list's regions (as LRCN takes them).
            image_index: (B,) the row of ``grid`` each question asks about (grids one per
                distinct image); None: row i.

        Returns:
            An ``LRCNOutput``; the weights of a modality the model does not use are (B, 0).
        """
        B = tokens.shape[0]
        parts = []
        image_weights = question_weights = None
        if self.image is not None:
            if grid is None:
                raise LrcnError(f"{type(self).__name__} reads the image: pass a grid")
            if image_index is not None:
                grid = torch.index_select(grid, 0, image_index)  # (U, ...) -> (B, ...)
            if grid.shape[0] != B:
                raise LrcnError(f"{grid.shape[0]} image grids for {B} questions")
            v, image_weights = self.image(grid, grid_mask, grid_boxes)  # (B, D), (B, N)
            parts.append(v)
        if self.question is not None:
            q, question_weights = self.question(tokens)  # (B, D), (B, T)
            parts.append(q)
        fused = self.mlp(torch.cat(parts, dim=-1))  # (B, n*D) -> (B, fused_dim)
        empty = fused.new_zeros(B, 0)  # the weights of the modality left out
        return LRCNOutput(
            fused,
            image_weights if image_weights is not None else empty,
            question_weights if question_weights is not None else empty,
        )

    def forward_head(self, fused: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, K) from fused vectors (B, fused_dim)."""
        return self.head(fused)

    def forward(
        self,
        tokens: torch.Tensor,
        grid: torch.Tensor | None = None,
        grid_mask: torch.Tensor | None = None,
        grid_boxes: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Answer logits (B, K) for questions (B, T) about grids (B or U, H, W, C) or (B or U,
        N, C); ``image_index`` as in `forward_features`."""
        return self.forward_head(
            self.forward_features(tokens, grid, grid_mask, grid_boxes, image_index).fused)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        """Parameter count, without the word embedding by default (as LRCN reports it)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and self.question is not None:
            n -= self.question.embed.weight.numel()
        return n


class CNNLSTM(LateFusion):
    """Late fusion of the image (CNN grid, mean-pooled) and the question (BiLSTM, attention)."""

    uses_image = True
    uses_question = True


class TextOnly(LateFusion):
    """The question alone: what the language prior answers without looking."""

    uses_image = False
    uses_question = True


class ImageOnly(LateFusion):
    """The image alone: what the photo answers without reading the question."""

    uses_image = True
    uses_question = False


def _check_config(cfg: ModelConfig) -> None:
    """What a baseline needs beyond the model section's own rules (`ModelConfig.validate`)."""
    cfg.validate()
    if cfg.d_model % 2 != 0:
        raise LrcnError(
            f"model.d_model = {cfg.d_model} must be even: the bidirectional LSTM has "
            "d_model // 2 units per direction"
        )


@register_model("cnn_lstm")
def cnn_lstm(cfg: ModelConfig, vocab_size: int, num_answers: int, **kwargs: Any) -> VQAModel:
    """Late-fusion CNN + BiLSTM baseline (the VizWiz report's model, defects fixed)."""
    return build_vqa_model(CNNLSTM, cfg, vocab_size, num_answers, **kwargs)


@register_model("text_only")
def text_only(cfg: ModelConfig, vocab_size: int, num_answers: int, **kwargs: Any) -> VQAModel:
    """Question-only baseline (BiLSTM + attention pooling + MLP); no image encoder."""
    return build_vqa_model(TextOnly, cfg, vocab_size, num_answers, **kwargs)


@register_model("image_only")
def image_only(cfg: ModelConfig, vocab_size: int, num_answers: int, **kwargs: Any) -> VQAModel:
    """Image-only baseline (mean-pooled grid + MLP); the question is not read."""
    return build_vqa_model(ImageOnly, cfg, vocab_size, num_answers, **kwargs)
