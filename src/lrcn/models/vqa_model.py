"""The full VQA model: an optional grid image encoder in front of a net (LRCN or a baseline).

A batch carries its unique images once, (U, 3, H, W), and ``image_index`` (B,) says which image
each question is about, so an image shared by several questions is encoded once per batch.

`build_vqa_model` is how every registered builder makes its model (`lrcn.models.registry`):
the image encoder, the net on its grids and this wrapper, the same way for every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lrcn.config import ModelConfig
from lrcn.data.pipeline import ImageInput
from lrcn.errors import LrcnError
from lrcn.models.image_encoders import GridEncoder, build_image_encoder



@dataclass
class LRCNOutput:
    """What a net's ``forward_features`` returns (LRCN's and the baselines' alike)."""

    fused: torch.Tensor             # (B, fused_dim) z, the input of the heads
    image_weights: torch.Tensor     # (B, N) attention-pooling weights over image regions
    question_weights: torch.Tensor  # (B, T) attention-pooling weights over question tokens


@dataclass
class VQAOutput:
    """Everything one forward pass gives: both heads' logits and the pooling weights."""

    answer: torch.Tensor                # (B, K) answer logits
    answerable: torch.Tensor | None     # (B,) answerability logits; None without that head
    image_weights: torch.Tensor         # (B, N) attention-pooling weights over image regions
    question_weights: torch.Tensor      # (B, T) attention-pooling weights over question tokens


class VQAModel(nn.Module):
    """Image encoder (or precomputed grids when ``encoder`` is None) + a net (LRCN or a baseline).

    A net is built as ``net_class(cfg, vocab_size, num_answers, grid_channels, word_vectors)``
    (`build_vqa_model`) and has ``forward_features(tokens, grid, grid_mask, grid_boxes,
    image_index)`` -> `LRCNOutput` (``grid`` one per question, or one per distinct image with
    ``image_index`` (B,) naming each question's row; masks and boxes one per question),
    ``forward_head(fused)`` -> answer logits, ``num_parameters``, and the attributes
    ``uses_image``, ``grid_channels``, ``places_regions`` and ``fused_dim``.

    Args:
        encoder: maps images to grids; None when the model reads precomputed grid features
            (or never reads the image).
        net: answers questions about grids: ``forward_features`` gives the fused vector,
            ``forward_head`` the answer logits.
        task: ``answer``, ``answerable`` or ``both``; the last two add an answerability head,
            one logit on the fused vector (VizWiz: can the photo answer the question?).
        answerable_hidden: 0 for a linear answerability head, else its MLP's hidden units.
    """

    def __init__(self, encoder: GridEncoder | None, net: nn.Module, task: str = "answer",
                 answerable_hidden: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.net = net
        self.task = task
        self.answerable_head: nn.Module | None = None
        if task != "answer" and answerable_hidden == 0:
            self.answerable_head = nn.Linear(net.fused_dim, 1)
        elif task != "answer":
            # z sums what the image and the question contribute; a hidden layer can compare
            # them (does the photo show what the question names?), a linear read-out cannot.
            self.answerable_head = nn.Sequential(
                nn.Linear(net.fused_dim, answerable_hidden), nn.ReLU(),
                nn.Linear(answerable_hidden, 1))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (U, 3, H, W) -> grids (U, h, w, C), e.g. to cache frozen features."""
        if self.encoder is None:
            raise LrcnError(
                "this model reads precomputed grid features (image_encoder: features); "
                "pass grid=..., not images"
            )
        return self.encoder(images)

    def image_input(self) -> ImageInput:
        """What this model reads of the images, which decides how data is encoded for it."""
        frozen = self.encoder is not None and not self.encoder.trainable
        return ImageInput(reads_image=self.net.uses_image,
                          from_stores=self.net.uses_image and self.encoder is None,
                          grid_channels=self.net.grid_channels,
                          places_regions=self.net.places_regions,
                          frozen_encoder=self.encode_images if frozen else None)

    def _grid(
        self,
        images: torch.Tensor | None,
        image_index: torch.Tensor | None,
        grid: torch.Tensor | None,
        batch: int,
    ) -> torch.Tensor:
        """The grids the questions ask about (B, or U with ``image_index``): precomputed, or
        each image encoded once. The net gives each question its image's grid."""
        if (images is None) == (grid is None):
            raise LrcnError("pass exactly one of images= (pixels) or grid= (precomputed features)")
        if images is not None:
            grid = self.encode_images(images)  # (U, h, w, C)
        if image_index is None and grid.shape[0] != batch:
            raise LrcnError(
                f"{grid.shape[0]} image grids for {batch} questions; pass image_index (one image "
                "id per question) when images are shared"
            )
        if image_index is not None and image_index.shape != (batch,):
            raise LrcnError(f"image_index has shape {tuple(image_index.shape)}, expected "
                            f"({batch},): one image row per question")
        return grid

    def forward_features(
        self,
        tokens: torch.Tensor,
        images: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        grid_mask: torch.Tensor | None = None,
        grid_boxes: torch.Tensor | None = None,
    ) -> LRCNOutput:
        """Fused vectors and pooling weights for questions (B, T) about images or grids.

        Args:
            tokens: token ids (B, T), right-padded with 0.
            images: unique normalised images (U, 3, H, W); exclusive with ``grid``.
            image_index: (B,) row of ``images`` (or of ``grid``) for each question; None means
                one image per question, in order.
            grid: precomputed grids (B or U, H, W, C) or (B or U, N, C); exclusive with ``images``.
            grid_mask: (B, N) True = valid region, per question; None means all valid.
            grid_boxes: (B, N, 4) boxes (x0, y0, x1, y1) of a region list's regions, as
                fractions of the image's width and height, per question; None for grids
                and for region stores without boxes.
        """
        if self.net.uses_image:
            grid = self._grid(images, image_index, grid, tokens.shape[0])
        else:  # a text-only net never looks at the image
            grid = grid_mask = grid_boxes = image_index = None
        return self.net.forward_features(tokens, grid, grid_mask, grid_boxes, image_index)

    def forward(
        self,
        tokens: torch.Tensor,
        images: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        grid_mask: torch.Tensor | None = None,
        grid_boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Answer logits (B, K); same inputs as ``forward_features``."""
        return self.forward_all(tokens, images, image_index, grid, grid_mask, grid_boxes).answer

    def forward_all(
        self,
        tokens: torch.Tensor,
        images: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        grid_mask: torch.Tensor | None = None,
        grid_boxes: torch.Tensor | None = None,
    ) -> VQAOutput:
        """Answer and answerability logits and the pooling weights, in one pass."""
        out = self.forward_features(tokens, images, image_index, grid, grid_mask, grid_boxes)
        answerable = None
        if self.answerable_head is not None:
            answerable = self.answerable_head(out.fused).squeeze(-1)  # (B,)
        return VQAOutput(self.net.forward_head(out.fused), answerable, out.image_weights,
                         out.question_weights)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        """Parameters of the encoder, the net and the heads (word embedding excluded by default)."""
        n = self.net.num_parameters(exclude_embeddings)
        for part in (self.encoder, self.answerable_head):
            if part is not None:
                n += sum(p.numel() for p in part.parameters())
        return n


def build_vqa_model(
    net_class: type[nn.Module],
    cfg: ModelConfig,
    vocab_size: int,
    num_answers: int,
    word_vectors: torch.Tensor | None = None,
    random_weights: bool = False,
) -> VQAModel:
    """A net of `net_class` behind the image encoder ``cfg.image_encoder``, with the heads of
    ``cfg.task``: what every registered builder returns.

    A net that never reads the image (``uses_image`` False) gets no image encoder. The net reads
    grids of the encoder's channels, or of ``cfg.feature_channels`` from precomputed features.

    Args:
        net_class: the net, built as ``net_class(cfg, vocab_size, num_answers, grid_channels,
            word_vectors=word_vectors)``.
        cfg: the model configuration.
        vocab_size: number of question tokens (id 0 is the pad).
        num_answers: number of candidate answers K.
        word_vectors: optional (vocab_size, word_dim) initial word embedding (GloVe).
        random_weights: let a torchvision trunk start from random weights instead of a file
            (tests only).
    """
    encoder = None
    if net_class.uses_image:
        encoder = build_image_encoder(cfg, random_weights=random_weights)
    grid_channels = encoder.out_channels if encoder is not None else cfg.feature_channels
    net = net_class(cfg, vocab_size, num_answers, grid_channels, word_vectors=word_vectors)
    return VQAModel(encoder, net, cfg.task, cfg.answerable_hidden)
