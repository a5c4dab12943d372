"""Where each image region is: position information for the image stream.

Attention and pooling are permutation-invariant, so a grid flattened into N tokens has lost
where each cell was. ``model.position`` gives it back (``POSITIONS``):

* ``none``: the paper's model; position survives only through what the image features
  themselves carry.
* ``coords``: each cell's centre, (x, y) in [-1, 1] across the image, appended to its
  features before the projection to D, as Relation Networks and CoordConv do; a left/right
  or top/bottom question is then a linear read-out of the attended cell.
* ``sincos``: a 2-D sinusoidal encoding of the cell centre (D/4 frequencies per axis, sin
  and cos) added to the projected tokens, as DETR does; nearer cells have more alike
  encodings. Added at unit scale it can hide small features: with the small CNN it kept
  the model at chance far longer than ``coords`` (README, "Your own data").
* ``both``: ``coords`` and ``sincos``.

Centres are computed from the grid's own H x W, so any size works (they are in units of the
image, not of cells). Masked cells get a position like any other and stay masked as keys.
A region list (B, N, C) carries no geometry, so it cannot take a position encoding.

``model.distance_bias`` (`DistanceBias`) is the relational counterpart: the image
self-attention's heads get an additive score bias ``-slope_h * |c_i - c_j|`` from the distance
between the two cells' centres, a 2-D form of ALiBi (Press et al. 2022). Half the heads start
with positive slopes (they look at near cells), half with negative ones (far cells); the
slopes are learned. A cell does not attend to itself in these heads (its own features reach
it through the residual), so after one layer each cell holds what is nearest to and furthest
from it, and "the object nearest to the red one" becomes one look-up instead of two chained
attention hops, which the model learns far later (README, "Your own data").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lrcn.errors import LrcnError

POSITIONS = ("none", "coords", "sincos", "both")
COORD_CHANNELS = 2
# DistanceBias: initial |slope| per head, geometric from the steepest to the gentlest, in
# score units per image half-width; objects a tenth of the image apart differ by 0.2-0.8.
DISTANCE_SLOPES = (8.0, 2.0)
SELF_BIAS = -1e4  # a cell's score for itself in DistanceBias heads: finite, so a cell whose
# only valid key is itself still attends to something
# sincos frequencies, radians per image width, geometrically spaced from pi (the cosine is
# positive exactly on the left half, and falls steadily with distance across the image) up
# to pi * cells / 2 along that axis (a period of four cells: higher ones alias on the grid).


def cell_centres(height: int, width: int, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H * W, 2) centres (x, y) of the cells of an H x W grid, in [-1, 1], row-major."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width * 2 - 1
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((x, y), dim=-1).reshape(-1, 2)


def sincos_encoding(centres: torch.Tensor, dim: int, height: int, width: int) -> torch.Tensor:
    """(N, 2) centres (x, y) in [-1, 1] of cells of an H x W grid -> (N, dim) encoding:
    [sin, cos] of x and of y at dim // 4 frequencies each; ``dim`` must be divisible by 4."""
    k = dim // 4
    steps = torch.arange(k, device=centres.device, dtype=centres.dtype) / max(1, k - 1)
    top = torch.tensor([width, height], device=centres.device, dtype=centres.dtype)
    top = (top / 2).clamp(min=1.0).unsqueeze(-1)  # (2, 1) highest frequency / pi, per axis
    freq = math.pi * top ** steps  # (2, k): pi ... pi * cells / 2
    # positions in image widths from the left/top edge: u = (c + 1) / 2 in [0, 1]
    angles = ((centres + 1) / 2).unsqueeze(-1) * freq  # (N, 2, k)
    return torch.cat((angles.sin(), angles.cos()), dim=-1).reshape(centres.shape[0], dim)


class GridPosition(nn.Module):
    """Position information for grid tokens, as ``model.position`` chooses.

    Use ``extra_channels`` to size the projection, ``append`` on the grid before the
    projection and ``add`` on the projected tokens after it.
    """

    def __init__(self, kind: str, d_model: int) -> None:
        super().__init__()
        if kind not in POSITIONS:
            raise LrcnError(f"model.position = {kind!r} is not one of {', '.join(POSITIONS)}")
        if kind in ("sincos", "both") and d_model % 4 != 0:
            raise LrcnError(f"model.position {kind} needs model.d_model divisible by 4, "
                            f"got {d_model}")
        self.kind = kind
        self.d_model = d_model
        self.appends = kind in ("coords", "both")
        self.adds = kind in ("sincos", "both")

    @property
    def extra_channels(self) -> int:
        """Channels ``append`` adds to each cell."""
        return COORD_CHANNELS if self.appends else 0

    @staticmethod
    def spatial_size(grid: torch.Tensor) -> tuple[int, int]:
        if grid.dim() != 4:
            raise LrcnError(
                "model.position needs a spatial grid (batch, H, W, C) to know where each "
                f"region is, got shape {tuple(grid.shape)} (a region list); use "
                "model.position: none for region lists")
        return grid.shape[1], grid.shape[2]

    def append(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C + extra_channels): cell centres appended."""
        if not self.appends:
            return grid
        (H, W), B = self.spatial_size(grid), grid.shape[0]
        coords = cell_centres(H, W, grid.device, grid.dtype).reshape(1, H, W, COORD_CHANNELS)
        return torch.cat((grid, coords.expand(B, H, W, COORD_CHANNELS)), dim=-1)

    def add(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, H * W, D) projected tokens -> the same with the sinusoidal encoding added."""
        if not self.adds:
            return tokens
        centres = cell_centres(height, width, tokens.device, tokens.dtype)
        return tokens + sincos_encoding(centres, self.d_model, height, width)


def cell_distances(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(H * W, H * W) distances between the centres of an H x W grid's cells (`cell_centres`,
    image units), row-major."""
    centres = cell_centres(height, width, device)
    return torch.cdist(centres, centres)


def distance_slopes(heads: int) -> list[float]:
    """Initial slopes of `DistanceBias` for ``heads`` heads: the first ceil(heads / 2) look
    near (positive), the rest far (negative), steepest first within each half."""
    near, far = (heads + 1) // 2, heads // 2
    steep, gentle = DISTANCE_SLOPES

    def magnitudes(n: int) -> list[float]:
        return [steep * (gentle / steep) ** (i / max(1, n - 1)) for i in range(n)]

    return magnitudes(near) + [-m for m in magnitudes(far)]


class DistanceBias(nn.Module):
    """Each head's additive self-attention bias from cell distances (``model.distance_bias``).

        bias[h, i, j] = -slope_h * |c_i - c_j|   (i != j),   SELF_BIAS on the diagonal
    """

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.slopes = nn.Parameter(torch.tensor(distance_slopes(heads)))

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """(N, N) cell distances -> (1, heads, N, N) score bias."""
        bias = -self.slopes[:, None, None] * distances  # (heads, N, N)
        eye = torch.eye(distances.shape[0], dtype=torch.bool, device=distances.device)
        return bias.masked_fill(eye, SELF_BIAS).unsqueeze(0)
