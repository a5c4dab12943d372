"""Position information in the image stream (model.position), for every model family."""

from __future__ import annotations

import math

import pytest
import torch

from lrcn.config import ModelConfig
from lrcn.errors import LrcnError
from lrcn.models import create_model
from lrcn.models.layers import MultiHeadAttention
from lrcn.config import POSITIONS
from lrcn.models.position import (
    SELF_BIAS, DistanceBias, cell_centres, distance_slopes, region_centres,
    sincos_encoding,
)

VOCAB, ANSWERS, CHANNELS = 20, 7, 12
# Every model family that reads the image: the three LRCN stackings and two baselines.
FAMILIES = [("lrcn", "ed"), ("lrcn", "st"), ("lrcn", "cst"), ("cnn_lstm", "ed"),
            ("image_only", "ed")]


def model_for(arch: str, variant: str, position: str, **overrides):
    sizes = dict(layers=2, d_model=32, heads=2, ffn_dim=64, word_dim=16, pool_hidden=32,
                 fused_dim=48, dropout=0.0, image_encoder="features", feature_channels=CHANNELS)
    cfg = ModelConfig(arch=arch, variant=variant, position=position, **{**sizes, **overrides})
    torch.manual_seed(0)
    return create_model(cfg, VOCAB, ANSWERS).eval()


def inputs(h: int = 4, w: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    tokens = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    return tokens, torch.randn(2, h, w, CHANNELS)


def permuted(grid: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The grid with its cells moved to other places (``order`` over the H * W cells)."""
    B, H, W, C = grid.shape
    return grid.reshape(B, H * W, C)[:, order].reshape(B, H, W, C)


@pytest.mark.parametrize("arch,variant", FAMILIES)
@pytest.mark.parametrize("position", POSITIONS)
def test_permuting_cells_changes_the_answer_only_with_position(arch, variant, position):
    model = model_for(arch, variant, position)
    tokens, grid = inputs()
    order = torch.randperm(20, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(tokens, grid=grid)
        after = model(tokens, grid=permuted(grid, order))
    if position == "none":  # attention and the mean are permutation-invariant
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    else:
        assert (after - before).abs().max() > 1e-3


@pytest.mark.parametrize("arch,variant", FAMILIES)
@pytest.mark.parametrize("position", ["coords", "sincos", "both"])
def test_masked_cells_never_change_the_answer(arch, variant, position):
    model = model_for(arch, variant, position)
    tokens, grid = inputs()
    mask = torch.ones(2, 4, 5, dtype=torch.bool)
    mask[0, 1:, 3:] = False
    mask[1, 0, :] = False
    changed = grid.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), CHANNELS) * 100
    with torch.no_grad():
        a = model(tokens, grid=grid, grid_mask=mask)
        b = model(tokens, grid=changed, grid_mask=mask)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (8, 8), (14, 14)])
def test_any_grid_size(size):
    model = model_for("lrcn", "ed", "both")
    tokens, grid = inputs(*size)
    with torch.no_grad():
        assert model(tokens, grid=grid).shape == (2, ANSWERS)


def test_position_after_grid_reduction():
    """With a 2x2 reduction the cells are those of the reduced grid (odd sizes padded)."""
    model = model_for("lrcn", "ed", "sincos", grid_reduction="avgpool")
    tokens, grid = inputs(5, 7)
    x, _, centres = model.net.encode_grid(grid)
    assert centres.shape == (1, 3 * 4, 2)
    assert x.shape == (2, 3 * 4, 32)
    order = torch.randperm(35, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(tokens, grid=grid) - model(tokens, grid=permuted(grid, order))).abs().max() > 1e-3


def test_cell_centres_and_encoding():
    centres = cell_centres(2, 4)
    # row-major: x runs along a row, y down the rows; centres in [-1, 1] units of the image
    torch.testing.assert_close(centres[:4, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    torch.testing.assert_close(centres[::4, 1], torch.tensor([-0.5, 0.5]))
    enc = sincos_encoding(centres, 16, 2, 4)
    assert enc.shape == (8, 16)
    # the lowest frequency's cosine is positive exactly on the left half (and the top half)
    cos_x = enc.reshape(8, 2, 8)[:, 0, 4]
    assert (cos_x > 0).tolist() == [x < 0 for x in centres[:, 0].tolist()]
    # the nearest cell's encoding is more alike than the furthest's
    d = enc @ enc.T
    assert d[0, 1] > d[0, 3] and d[0, 4] > d[0, 7]
    assert math.isclose(float(enc.norm(dim=1).pow(2).mean()), 8.0, rel_tol=1e-5)


def test_region_lists_and_bad_settings_are_refused():
    model = model_for("lrcn", "ed", "coords")
    tokens, _ = inputs()
    with pytest.raises(LrcnError, match="spatial grid"):
        model(tokens, grid=torch.randn(2, 9, CHANNELS))
    with pytest.raises(LrcnError, match="model.position"):
        model_for("lrcn", "ed", "rope")
    with pytest.raises(LrcnError, match="divisible by 4"):
        model_for("lrcn", "ed", "sincos", d_model=30, heads=2)
    # without a position encoding a region list is fine
    with torch.no_grad():
        assert model_for("lrcn", "ed", "none")(tokens, grid=torch.randn(2, 9, CHANNELS)).shape == (2, ANSWERS)


# model.distance_bias: the image self-attention's heads biased by cell distance (LRCN only).
STACKINGS = [v for a, v in FAMILIES if a == "lrcn"]


@pytest.mark.parametrize("variant", STACKINGS)
def test_distance_bias_makes_the_layout_matter_even_without_position(variant):
    """Permuting cells keeps every cell's features but changes who is near whom."""
    plain = model_for("lrcn", variant, "none")
    biased = model_for("lrcn", variant, "none", distance_bias=True)
    tokens, grid = inputs()
    order = torch.randperm(20, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(plain(tokens, grid=permuted(grid, order)),
                                   plain(tokens, grid=grid), rtol=1e-5, atol=1e-5)
        assert (biased(tokens, grid=permuted(grid, order))
                - biased(tokens, grid=grid)).abs().max() > 1e-3


@pytest.mark.parametrize("variant", STACKINGS)
def test_distance_bias_respects_masks(variant):
    model = model_for("lrcn", variant, "coords", distance_bias=True)
    tokens, grid = inputs()
    mask = torch.ones(2, 4, 5, dtype=torch.bool)
    mask[0, 1:, 3:] = False
    mask[1, :, :] = False
    mask[1, 2, 2] = True  # a grid whose only valid cell has no other cell to attend to
    changed = grid.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), CHANNELS) * 100
    with torch.no_grad():
        a = model(tokens, grid=grid, grid_mask=mask)
        b = model(tokens, grid=changed, grid_mask=mask)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (8, 8)])
@pytest.mark.parametrize("reduction", ["none", "avgpool"])
def test_distance_bias_any_grid_size(size, reduction):
    model = model_for("lrcn", "cst", "coords", distance_bias=True, grid_reduction=reduction)
    tokens, grid = inputs(*size)
    with torch.no_grad():
        out = model(tokens, grid=grid)
    assert out.shape == (2, ANSWERS) and torch.isfinite(out).all()


def test_distance_bias_values():
    """bias[h, i, j] = -slope_h * distance; half the heads look near, half far; no self."""
    assert distance_slopes(1) == [8.0]
    assert distance_slopes(4) == [8.0, 2.0, -8.0, -2.0]
    slopes = distance_slopes(5)
    assert [s > 0 for s in slopes] == [True, True, True, False, False]
    assert slopes[0] > slopes[1] > slopes[2] == 2.0
    centres = cell_centres(2, 3).unsqueeze(0)
    d = torch.cdist(centres, centres)[0]
    torch.testing.assert_close(d[0, 1], torch.tensor(2 / 3))  # neighbours along a row
    torch.testing.assert_close(d[0, 3], torch.tensor(1.0))    # neighbours down a column
    bias = DistanceBias(4)(centres)
    assert bias.shape == (1, 4, 6, 6)
    assert (bias[0].diagonal(dim1=-2, dim2=-1) == SELF_BIAS).all()
    off = ~torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(bias[0, 0][off], -8.0 * d[off])
    torch.testing.assert_close(bias[0, 3][off], 2.0 * d[off])


def test_score_bias_in_both_attention_paths():
    """The written-out CPU path (training with dropout) adds the bias as SDPA's path does."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, dropout=1e-12)
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    bias = DistanceBias(4)(cell_centres(2, 3).unsqueeze(0))
    with torch.no_grad():
        sdpa = attn.eval()(x, key_mask=mask, score_bias=bias)
        written = attn.train()(x, key_mask=mask, score_bias=bias)
        unbiased = attn.eval()(x, key_mask=mask)
    torch.testing.assert_close(written, sdpa, rtol=1e-5, atol=1e-5)
    assert (sdpa - unbiased).abs().max() > 1e-3


def test_distance_bias_where_it_cannot_apply(caplog):
    model = model_for("lrcn", "ed", "none", distance_bias=True)
    tokens, grid = inputs()
    with pytest.raises(LrcnError, match="distance_bias.*without boxes"):
        model(tokens, grid=torch.randn(2, 9, CHANNELS))  # a region list without boxes
    # the baselines have no attention between regions: said, and the model is the same
    for arch in ("cnn_lstm", "image_only"):
        with caplog.at_level("INFO", logger="lrcn.models.baselines"):
            with_bias = model_for(arch, "ed", "coords", distance_bias=True)
        assert f"model.distance_bias does not apply to {arch}" in caplog.text
        without = model_for(arch, "ed", "coords")
        with torch.no_grad():
            torch.testing.assert_close(with_bias(tokens, grid=grid), without(tokens, grid=grid))
    # off, the paper's model: no extra parameters in its state dict
    assert not any("distance" in k for k in model_for("lrcn", "ed", "none").state_dict())
    assert sum("distance_bias.slopes" in k for k in model.state_dict()) == 2  # one per layer


# Region lists (B, N, C) take their places from their boxes (grid_boxes).

def regions_with_boxes(n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(4)
    corner = torch.rand(2, n, 2) * 0.6
    boxes = torch.cat((corner, corner + 0.1 + torch.rand(2, n, 2) * 0.3), dim=-1)
    return torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]]), torch.randn(2, n, CHANNELS), boxes


def test_region_centres_from_boxes():
    grid = torch.zeros(1, 2, CHANNELS)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 1.0, 1.0]]])
    centres, size = region_centres(grid, boxes, "model.position")
    torch.testing.assert_close(centres, torch.tensor([[[-0.5, -0.5], [0.5, 0.25]]]))
    assert size == (2, 2)
    with pytest.raises(LrcnError, match="grid_boxes has shape"):
        region_centres(grid, boxes[:, :1], "model.position")
    with pytest.raises(LrcnError, match="region lists"):
        region_centres(torch.zeros(1, 2, 2, CHANNELS), boxes, "model.position")


@pytest.mark.parametrize("arch,variant", FAMILIES)
@pytest.mark.parametrize("position", ["coords", "sincos", "both"])
def test_region_boxes_give_regions_their_places(arch, variant, position):
    """The regions are a set: reordered with their boxes the answer stays; moved, it changes."""
    model = model_for(arch, variant, position)
    tokens, regions, boxes = regions_with_boxes()
    order = torch.randperm(6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model(tokens, grid=regions, grid_boxes=boxes)
        reordered = model(tokens, grid=regions[:, order], grid_boxes=boxes[:, order])
        moved = model(tokens, grid=regions, grid_boxes=boxes[:, order])
    torch.testing.assert_close(reordered, before, rtol=1e-5, atol=1e-5)
    assert (moved - before).abs().max() > 1e-3


@pytest.mark.parametrize("variant", STACKINGS)
def test_distance_bias_on_boxed_regions(variant):
    model = model_for("lrcn", variant, "none", distance_bias=True)
    tokens, regions, boxes = regions_with_boxes()
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    changed = regions.clone()
    changed[~mask] = 100.0
    order = torch.randperm(6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model(tokens, grid=regions, grid_mask=mask, grid_boxes=boxes)
        torch.testing.assert_close(
            model(tokens, grid=changed, grid_mask=mask, grid_boxes=boxes), before,
            rtol=1e-5, atol=1e-5)
        full = model(tokens, grid=regions, grid_boxes=boxes)
        assert (model(tokens, grid=regions, grid_boxes=boxes[:, order]) - full).abs().max() > 1e-3
