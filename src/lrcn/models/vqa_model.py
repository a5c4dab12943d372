"""The full VQA model: an optional grid image encoder in front of an LRCN.

A batch carries its unique images once, (U, 3, H, W), and ``image_index`` (B,) says which image
each question is about, so an image shared by several questions is encoded once per batch.
"""

from __future__ import annotations

import torch
from torch import nn

from lrcn.errors import LrcnError
from lrcn.models.image_encoders import GridEncoder
from lrcn.models.lrcn import LRCN, LRCNOutput


class VQAModel(nn.Module):
    """Image encoder (or precomputed grids when ``encoder`` is None) + LRCN.

    Args:
        encoder: maps images to grids; None when the model reads precomputed grid features.
        net: the LRCN that answers questions about grids.
    """

    def __init__(self, encoder: GridEncoder | None, net: LRCN) -> None:
        super().__init__()
        self.encoder = encoder
        self.net = net

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (U, 3, H, W) -> grids (U, h, w, C), e.g. to cache frozen features."""
        if self.encoder is None:
            raise LrcnError(
                "this model reads precomputed grid features (image_encoder: features); "
                "pass grid=..., not images"
            )
        return self.encoder(images)

    def _grid(
        self,
        images: torch.Tensor | None,
        image_index: torch.Tensor | None,
        grid: torch.Tensor | None,
        batch: int,
    ) -> torch.Tensor:
        """Each question's grid (B, ...): precomputed, or each unique image encoded once."""
        if (images is None) == (grid is None):
            raise LrcnError("pass exactly one of images= (pixels) or grid= (precomputed features)")
        if grid is not None:
            if image_index is not None:
                grid = grid[image_index]  # (U, ...) -> (B, ...)
        else:
            grid = self.encode_images(images)  # (U, h, w, C)
            if image_index is not None:
                grid = grid[image_index]  # (B, h, w, C)
        if grid.shape[0] != batch:
            raise LrcnError(
                f"{grid.shape[0]} image grids for {batch} questions; pass image_index (one image "
                "id per question) when images are shared"
            )
        return grid

    def forward_features(
        self,
        tokens: torch.Tensor,
        images: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        grid_mask: torch.Tensor | None = None,
    ) -> LRCNOutput:
        """Fused vectors and pooling weights for questions (B, T) about images or grids.

        Args:
            tokens: token ids (B, T), right-padded with 0.
            images: unique normalised images (U, 3, H, W); exclusive with ``grid``.
            image_index: (B,) row of ``images`` (or of ``grid``) for each question; None means
                one image per question, in order.
            grid: precomputed grids (B or U, H, W, C) or (B or U, N, C); exclusive with ``images``.
            grid_mask: (B, N) True = valid region, per question; None means all valid.
        """
        grid = self._grid(images, image_index, grid, tokens.shape[0])
        return self.net.forward_features(tokens, grid, grid_mask)

    def forward(
        self,
        tokens: torch.Tensor,
        images: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        grid_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Answer logits (B, K); same inputs as ``forward_features``."""
        fused = self.forward_features(tokens, images, image_index, grid, grid_mask).fused
        return self.net.forward_head(fused)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        """Parameters of the encoder and the LRCN (word embedding excluded by default)."""
        n = self.net.num_parameters(exclude_embeddings)
        if self.encoder is not None:
            n += sum(p.numel() for p in self.encoder.parameters())
        return n
