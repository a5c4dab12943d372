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
A region list (B, N, C) has no geometry of its own: its regions take the centres of their
boxes (``grid_boxes``, from a feature store imported with its boxes, `region_centres`);
without boxes it cannot take a position encoding.

``model.distance_bias`` (`DistanceBias`) is the relational counterpart: the image
self-attention's heads get an additive score bias ``-slope_h * |c_i - c_j|`` from the distance
between the two cells' centres, a 2-D form of ALiBi (Press et al. 2022). Half the heads start
with positive slopes (they look at near cells), half with negative ones (far cells); the
slopes are learned. A cell does not attend to itself in these heads (its own features reach
it through the residual), so after one layer each cell (or boxed region) holds what is
nearest to and furthest from it, and "the object nearest to the red one" becomes one
look-up instead of two chained attention hops, which the model learns far later (README,
"Your own data").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lrcn.errors import LrcnError
from lrcn.models.layers import tracing


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
    """(..., 2) centres (x, y) in [-1, 1] of cells of an H x W grid -> (..., dim) encoding:
    [sin, cos] of x and of y at dim // 4 frequencies each; ``dim`` must be divisible by 4."""
    k = dim // 4
    steps = torch.arange(k, device=centres.device, dtype=centres.dtype) / max(1, k - 1)
    top = torch.tensor([width, height], device=centres.device, dtype=centres.dtype)
    top = (top / 2).clamp(min=1.0).unsqueeze(-1)  # (2, 1) highest frequency / pi, per axis
    freq = math.pi * top ** steps  # (2, k): pi ... pi * cells / 2
    # positions in image widths from the left/top edge: u = (c + 1) / 2 in [0, 1]
    angles = ((centres + 1) / 2).unsqueeze(-1) * freq  # (..., 2, k)
    return torch.cat((angles.sin(), angles.cos()), dim=-1).reshape(*centres.shape[:-1], dim)


def region_centres(grid: torch.Tensor, boxes: torch.Tensor | None,
                   option: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """Where the regions of ``grid`` are: centres (1 or B, N, 2) in [-1, 1] across the image,
    and the (H, W) that sets the sinusoidal encoding's highest frequencies.

    A grid (B, H, W, C) gives its cells' centres (the same for every image). A region list
    (B, N, C) needs ``boxes`` (B, N, 4): (x0, y0, x1, y1) as fractions of the image's width
    and height; its centres are the boxes' and its frequencies those of a square grid of
    about N cells. ``option`` names the setting that asked, for the error without boxes.
    """
    if grid.dim() == 4:
        if boxes is not None:
            raise LrcnError(f"grid_boxes are for region lists (batch, N, C); a grid of shape "
                            f"{tuple(grid.shape)} has its cells' places already")
        H, W = grid.shape[1], grid.shape[2]
        return cell_centres(H, W, grid.device, grid.dtype).unsqueeze(0), (H, W)
    if boxes is None:
        raise LrcnError(
            f"{option} needs to know where each region is: a spatial grid (batch, H, W, C), or "
            f"a region list with boxes (a feature store imported with them); got shape "
            f"{tuple(grid.shape)}, a region list without boxes; turn {option} off for it")
    if boxes.shape != (*grid.shape[:2], 4):
        raise LrcnError(f"grid_boxes has shape {tuple(boxes.shape)}, expected "
                        f"({grid.shape[0]}, {grid.shape[1]}, 4) for regions of shape "
                        f"{tuple(grid.shape)}")
    boxes = boxes.to(grid.dtype)
    side = max(1, math.ceil(math.sqrt(grid.shape[1])))
    return boxes[..., :2] + boxes[..., 2:] - 1, (side, side)  # ((x0 + x1) / 2) * 2 - 1


class GridPosition(nn.Module):
    """Position information for grid tokens, as ``model.position`` chooses.

    Use ``extra_channels`` to size the projection, ``append`` on the flattened grid before
    the projection and ``add`` on the projected tokens after it, both with the centres of
    `region_centres`.
    """

    def __init__(self, kind: str, d_model: int) -> None:
        super().__init__()
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

    def append(self, cells: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C + extra_channels): region centres (1 or B, N, 2) appended."""
        if not self.appends:
            return cells
        return torch.cat((cells, centres.to(cells.dtype).expand(cells.shape[0], -1, -1)), dim=-1)

    def add(self, tokens: torch.Tensor, centres: torch.Tensor,
            size: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) projected tokens -> the same with the sinusoidal encoding of the region
        centres (1 or B, N, 2) added; ``size`` (H, W) as `region_centres` gives it."""
        if not self.adds:
            return tokens
        return tokens + sincos_encoding(centres.to(tokens.dtype), self.d_model, *size)


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

        bias[b, h, i, j] = -slope_h * |c_bi - c_bj|   (i != j),   SELF_BIAS on the diagonal
    """

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.slopes = nn.Parameter(torch.tensor(distance_slopes(heads)))

    def forward(self, centres: torch.Tensor) -> torch.Tensor:
        """Region centres (1 or B, N, 2) (`region_centres`) -> score bias (1 or B, heads, N, N)."""
        if tracing():  # ONNX has no cdist: the distances written out (equal to within ~1e-7)
            distances = (centres[:, :, None] - centres[:, None]).norm(dim=-1).unsqueeze(1)
        else:
            distances = torch.cdist(centres, centres).unsqueeze(1)  # (1 or B, 1, N, N)
        bias = -self.slopes[:, None, None].to(distances.dtype) * distances
        eye = torch.eye(centres.shape[1], dtype=torch.bool, device=centres.device)
        return bias.masked_fill(eye, SELF_BIAS)
