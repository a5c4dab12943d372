"""Model tests: registry smoke tests, masking, the layer-residual equations, sizes, encoders."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import ANSWERS, CHANNELS, VOCAB, tiny_lrcn_cfg, tokens_with_pads

from lrcn.config import LRM_PLACEMENTS, VARIANTS, ModelConfig
from lrcn.errors import LrcnError
from lrcn.models import (
    LRCN,
    SmallCNN,
    TorchvisionTrunk,
    VQAModel,
    build_image_encoder,
    create_model,
    model_names,
)
from lrcn.models.layers import AttentionPool, MultiHeadAttention
from lrcn.models.lrcn import ImageSGA, QuestionGA

def ref_attention(mha: MultiHeadAttention, q_in, kv_in, key_mask=None) -> torch.Tensor:
    """Multi-head attention written out from the module's weights, for comparison."""
    D, h = q_in.shape[-1], mha.heads
    if mha.cross:
        q = q_in @ mha.q_proj.weight.T + mha.q_proj.bias
        kv = kv_in @ mha.kv_proj.weight.T + mha.kv_proj.bias
        k, v = kv[..., :D], kv[..., D:]
    else:
        qkv = q_in @ mha.qkv_proj.weight.T + mha.qkv_proj.bias
        q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
    heads = []
    for i in range(h):
        sl = slice(i * D // h, (i + 1) * D // h)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / (D // h) ** 0.5  # (B, T, S)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., sl])
    return torch.cat(heads, -1) @ mha.out_proj.weight.T + mha.out_proj.bias


# --- registry-wide smoke tests -------------------------------------------------------------


@pytest.mark.parametrize("lrm", LRM_PLACEMENTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_shapes(variant: str, lrm: str) -> None:
    """Every LRCN stacking and placement (the baselines are tested in test_baselines.py)."""
    torch.manual_seed(0)
    model = create_model(tiny_lrcn_cfg(arch="lrcn", variant=variant, lrm=lrm), VOCAB, ANSWERS)
    tokens = tokens_with_pads()
    grid = torch.randn(3, 3, 4, CHANNELS)  # (B, H, W, C)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 8:] = False
    out = model.forward_features(tokens, grid=grid, grid_mask=mask)
    assert out.fused.shape == (3, 48)
    assert out.image_weights.shape == (3, 12) and out.question_weights.shape == (3, 5)
    assert torch.allclose(out.image_weights.sum(-1), torch.ones(3))
    assert (out.image_weights[1, 8:] == 0).all() and (out.question_weights[2, 1:] == 0).all()
    logits = model.net.forward_head(out.fused)
    assert logits.shape == (3, ANSWERS)
    logits.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if n != "net.embed.weight"]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("arch", model_names())
def test_small_cnn_model_trains_from_pixels(arch: str) -> None:
    model = create_model(tiny_lrcn_cfg(arch=arch, image_encoder="small_cnn"), VOCAB, ANSWERS)
    images = torch.randn(2, 3, 64, 64)
    logits = model(tokens_with_pads(), images=images, image_index=torch.tensor([0, 1, 1]))
    assert logits.shape == (3, ANSWERS)
    logits.sum().backward()
    if model.net.uses_image:
        assert model.encoder.features[0][0].weight.grad is not None
    else:  # a text-only model has no image encoder at all
        assert model.encoder is None


# --- masking ------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "conv", "avgpool"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_pads_and_masked_regions_do_not_change_output(variant: str, reduction: str) -> None:
    torch.manual_seed(0)
    net = LRCN(tiny_lrcn_cfg(variant=variant, grid_reduction=reduction), VOCAB, ANSWERS, CHANNELS).eval()
    tokens = tokens_with_pads()
    grid = torch.randn(3, 5, 6, CHANNELS)  # odd H: the reduction pads it
    mask = torch.ones(3, 5, 6, dtype=torch.bool)
    mask[0, 3:, :] = False  # whole reduced cells and half-masked ones
    mask[2, :, 5] = False
    with torch.no_grad():
        before = net(tokens, grid, mask.flatten(1))
        net.embed.weight[0] = torch.randn(16) * 10
        grid[~mask] = torch.randn(int((~mask).sum()), CHANNELS) * 10
        after = net(tokens, grid, mask)  # (B, H, W) masks are accepted too
        wider = net(torch.nn.functional.pad(tokens, (0, 3)), grid, mask)  # more pad columns
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    torch.testing.assert_close(wider, before, atol=1e-6, rtol=0)


def test_fully_masked_rows_give_no_nan() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, 0.0, cross=True)
    pool = AttentionPool(8, 8, 0.0)
    q = torch.randn(2, 3, 8, requires_grad=True)
    kv = torch.randn(2, 4, 8, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False] * 4])
    out = mha(q, kv, key_mask=mask)
    torch.testing.assert_close(out[0], ref_attention(mha, q, kv, mask)[0])
    torch.testing.assert_close(out[1], mha.out_proj.bias.expand(3, 8))  # no key: zero context
    pooled, weights = pool(kv, mask)
    assert (weights[1] == 0).all() and (pooled[1] == 0).all()
    (out.sum() + pooled.sum()).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(kv.grad).all()
    # a model given a question of pads only still answers with finite logits
    net = LRCN(tiny_lrcn_cfg(variant="cst"), VOCAB, ANSWERS, CHANNELS).eval()
    logits = net(torch.zeros(1, 4, dtype=torch.long), torch.randn(1, 9, CHANNELS))
    assert torch.isfinite(logits).all()


# --- the layer-residual mechanism ---------------------------------------------------------


def test_lrm_adds_no_parameters_but_changes_outputs() -> None:
    torch.manual_seed(0)
    plain = LRCN(tiny_lrcn_cfg(lrm="none"), VOCAB, ANSWERS, CHANNELS).eval()
    with_lrm = LRCN(tiny_lrcn_cfg(lrm="sa"), VOCAB, ANSWERS, CHANNELS).eval()
    with_lrm.load_state_dict(plain.state_dict(), strict=True)
    tokens, grid = tokens_with_pads(), torch.randn(3, 10, CHANNELS)
    with torch.no_grad():
        assert not torch.allclose(plain(tokens, grid), with_lrm(tokens, grid), atol=1e-4)


@pytest.mark.parametrize("lrm", LRM_PLACEMENTS)
def test_sga_layer_matches_the_equations(lrm: str) -> None:
    torch.manual_seed(0)
    layer = ImageSGA(16, 2, 32, 0.1, lrm).eval()
    x, y = torch.randn(2, 5, 16), torch.randn(2, 4, 16)
    prev_s, prev_g = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    x_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    y_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    in_sa, in_ga = float(lrm in ("sa", "both")), float(lrm in ("ga", "both"))

    def ln(t: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
        return F.layer_norm(t, (16,), norm.weight, norm.bias, norm.eps)

    s = ln(x + ref_attention(layer.self_attn, x, x, x_mask) + in_sa * prev_s, layer.norm1)
    g = ln(s + ref_attention(layer.guided_attn, s, y, y_mask) + in_ga * prev_g, layer.norm2)
    ffn = layer.ffn.fc2(F.relu(layer.ffn.fc1(g)))
    x_next = ln(g + ffn, layer.norm3)
    with torch.no_grad():
        got = layer(x, y, x_mask, y_mask, prev_s, prev_g)
    for a, b in zip(got, (x_next, s, g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lrm", [True, False])
def test_question_guided_block_matches_the_equations(lrm: bool) -> None:
    torch.manual_seed(0)
    block = QuestionGA(16, 2, 32, 0.1, lrm).eval()
    y, x, prev_q = torch.randn(2, 4, 16), torch.randn(2, 5, 16), torch.randn(2, 4, 16)
    x_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])

    def ln(t: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
        return F.layer_norm(t, (16,), norm.weight, norm.bias, norm.eps)

    q = ln(y + ref_attention(block.guided_attn, y, x, x_mask) + float(lrm) * prev_q, block.norm1)
    y_next = ln(q + block.ffn.fc2(F.relu(block.ffn.fc1(q))), block.norm2)
    with torch.no_grad():
        got = block(y, x, x_mask, prev_q)
    for a, b in zip(got, (y_next, q)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_stackings_are_wired_as_the_spec(variant: str) -> None:
    """Record what each block receives and check it against the spec's stacking."""
    torch.manual_seed(0)
    net = LRCN(tiny_lrcn_cfg(variant=variant, layers=3), VOCAB, ANSWERS, CHANNELS).eval()
    seen: dict[str, tuple] = {}

    def record(name: str, module: torch.nn.Module) -> None:
        def hook(mod, args, out) -> None:
            seen[name] = (args, out)

        module.register_forward_hook(hook)

    record("lstm", net.lstm)
    record("proj", net.image_proj)
    for l in range(3):
        record(f"q{l}", net.question_blocks[l])
        record(f"i{l}", net.image_layers[l])
        if variant == "cst":
            record(f"g{l}", net.question_guided[l])
    with torch.no_grad():
        net(tokens_with_pads(), torch.randn(3, 6, CHANNELS))
    Y, x0 = seen["lstm"][1][0], seen["proj"][1]
    x_in, y_in, _, _, s_in, g_in, _, _ = seen["i0"][0]
    assert x_in is x0 and s_in is x0 and g_in is x0  # s_0 = g_0 = x_0
    for l in range(3):
        y_prev = Y if l == 0 else seen[f"g{l - 1}" if variant == "cst" else f"q{l - 1}"][1]
        assert seen[f"q{l}"][0][0] is (y_prev[0] if variant == "cst" and l > 0 else y_prev)
        x_in, y_in, _, _, s_in, g_in, _, _ = seen[f"i{l}"][0]
        if l > 0:
            x_prev, s_prev, g_prev = seen[f"i{l - 1}"][1]
            assert x_in is x_prev and s_in is s_prev and g_in is g_prev
        if variant == "ed":  # every image layer is guided by the final question
            assert y_in is seen["q2"][1]
        elif variant == "st":  # image layer l is guided by question block l
            assert y_in is seen[f"q{l}"][1]
        else:  # block l, then the question attends to the image of layer l-1, then image layer l
            y_g, x_g, _, q_prev, _ = seen[f"g{l}"][0]
            assert y_g is seen[f"q{l}"][1]
            assert x_g is (x0 if l == 0 else seen[f"i{l - 1}"][1][0])
            assert q_prev is (Y if l == 0 else seen[f"g{l - 1}"][1][1])  # PrevReY(0) = Y
            assert y_in is seen[f"g{l}"][1][0]


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_size_parameter_counts(variant: str) -> None:
    # Measured here, excluding word embeddings: ED and St 51,640,891 (paper 51.61 M; with a
    # 20,573-word embedding 57,812,791 = MCAN-small's 57.81 M); CSt 70,555,195 (paper 65.71 M:
    # the paper does not say what its question guided block holds; ours has an FFN).
    cfg = ModelConfig(variant=variant, layers=6, d_model=512, heads=8, ffn_dim=2048, word_dim=300,
                      grid_reduction="none")
    with torch.device("meta"):  # count without allocating or initialising
        net = LRCN(cfg, vocab_size=20573, num_answers=3129, grid_channels=2048)
    n = net.num_parameters(exclude_embeddings=True)
    if variant == "cst":
        assert n == 70_555_195
    else:
        assert abs(n - 51.61e6) / 51.61e6 < 0.02
    assert net.num_parameters(exclude_embeddings=False) == n + 20573 * 300


# --- image input path -----------------------------------------------------------------------


def test_conv_reduction_halves_the_grid() -> None:
    net = LRCN(tiny_lrcn_cfg(grid_reduction="conv"), VOCAB, ANSWERS, CHANNELS)
    x, mask, _ = net.encode_grid(torch.randn(2, 16, 16, CHANNELS))
    assert x.shape == (2, 64, 32) and mask is None
    with pytest.raises(LrcnError, match="spatial grid"):
        net.encode_grid(torch.randn(2, 256, CHANNELS))
    with pytest.raises(LrcnError, match="grid must be"):
        net.encode_grid(torch.randn(2, 16, 16, CHANNELS + 1))


def test_avgpool_reduction_handles_odd_sizes_and_reduces_the_mask() -> None:
    net = LRCN(tiny_lrcn_cfg(grid_reduction="avgpool"), VOCAB, ANSWERS, CHANNELS)
    grid = torch.ones(1, 7, 9, CHANNELS)
    mask = torch.zeros(1, 7, 9, dtype=torch.bool)
    mask[0, 6, 8] = True  # the corner cell, alone in its padded 2x2 block
    mask[0, 0, 1] = True
    x, reduced, _ = net.encode_grid(grid, mask.flatten(1))
    assert x.shape == (1, 4 * 5, 32) and reduced.shape == (1, 20)
    assert reduced.nonzero()[:, 1].tolist() == [0, 19]  # a reduced cell is valid if any input is
    with pytest.raises(LrcnError, match="grid_mask"):
        net.encode_grid(grid, torch.ones(1, 10, dtype=torch.bool))


def test_word_vectors_initialise_the_embedding() -> None:
    vectors = torch.randn(VOCAB, 16)
    net = LRCN(tiny_lrcn_cfg(), VOCAB, ANSWERS, CHANNELS, word_vectors=vectors)
    assert torch.equal(net.embed.weight.detach(), vectors)
    with pytest.raises(LrcnError, match="word vectors"):
        LRCN(tiny_lrcn_cfg(), VOCAB, ANSWERS, CHANNELS, word_vectors=torch.randn(VOCAB, 300))


# --- image encoders -------------------------------------------------------------------------


def test_small_cnn_gives_an_8x8_grid() -> None:
    cnn = SmallCNN(16)
    assert cnn(torch.randn(2, 3, 64, 64)).shape == (2, 8, 8, 16)
    assert cnn(torch.randn(1, 3, 96, 80)).shape == (1, 8, 8, 16)
    assert cnn.trainable and all(p.requires_grad for p in cnn.parameters())


def test_small_cnn_runs_channels_last_with_the_same_grid_and_gradients() -> None:
    """The encoder hands its layers channels-last images (faster on a CPU): the grid comes out
    (B, h, w, C)-contiguous, and grid and weight gradients are those of the default order."""
    torch.manual_seed(0)
    cnn = SmallCNN(16)
    images = torch.randn(3, 3, 64, 64)
    grid = cnn(images)
    assert grid.is_contiguous()  # channels innermost: no copy when the net flattens the grid
    weights = list(cnn.parameters())
    got = torch.autograd.grad(grid.square().sum(), weights)
    want_grid = cnn.features(images.contiguous()).permute(0, 2, 3, 1)
    assert not want_grid.is_contiguous()
    want = torch.autograd.grad(want_grid.square().sum(), weights)
    torch.testing.assert_close(grid, want_grid, rtol=1e-4, atol=1e-5)
    for g, w in zip(got, want):  # float32 sums in another order: close relative to the scale
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3 * w.abs().max().item())
    assert all(p.is_contiguous() for p in weights)  # checkpoints keep the default order


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A random resnet50 classification state dict (fc included) saved to a file."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def test_torchvision_trunk_is_frozen_and_stays_in_eval(resnet50_file) -> None:
    trunk = TorchvisionTrunk("resnet50", resnet50_file, freeze=True)
    assert trunk(torch.randn(1, 3, 64, 64)).shape == (1, 2, 2, 2048)
    assert not any(p.requires_grad for p in trunk.parameters())
    parent = torch.nn.Sequential(trunk).train()
    assert parent.training and not trunk.training
    assert not any(m.training for m in trunk.modules())
    # same weights as the file: matches a torchvision resnet50 built from it up to layer4
    import torchvision

    ref = torchvision.models.resnet50(weights=None).eval()
    ref.load_state_dict(torch.load(resnet50_file, weights_only=True))
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = torch.nn.Sequential(*list(ref.children())[:-2])(image).permute(0, 2, 3, 1)
    # channels-last convolutions add in another order: float32 noise, not other weights
    torch.testing.assert_close(trunk(image), want, rtol=1e-3, atol=1e-3 * want.abs().max().item())


def test_torchvision_trunk_random_weights_and_build_image_encoder() -> None:
    trunk = build_image_encoder(ModelConfig(image_encoder="resnet50", freeze_encoder=False),
                                random_weights=True)
    assert isinstance(trunk, TorchvisionTrunk) and trunk.out_channels == 2048
    assert trunk.trainable and trunk.train().training
    assert build_image_encoder(ModelConfig(image_encoder="features")) is None
    assert isinstance(build_image_encoder(ModelConfig(encoder_channels=8)), SmallCNN)
    with pytest.raises(LrcnError, match="known encoders"):
        build_image_encoder(ModelConfig(image_encoder="resnext152_32x8d"))
    with pytest.raises(LrcnError, match="known trunks"):
        TorchvisionTrunk("resnet18", random_weights=True)
    with pytest.raises(LrcnError, match="needs a weights file"):
        TorchvisionTrunk("resnet50")


def test_torchvision_trunk_rejects_bad_weight_files(tmp_path) -> None:
    with pytest.raises(LrcnError, match="not found"):
        TorchvisionTrunk("resnet50", tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(LrcnError, match="garbage.pth"):
        TorchvisionTrunk("resnet50", garbage)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(LrcnError, match="expected a state dict"):
        TorchvisionTrunk("resnet50", a_list)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(2)}, wrong)
    with torch.device("meta"), pytest.raises(LrcnError, match=r"wrong.pth.*missing trunk keys bn1"):
        TorchvisionTrunk("resnet50", wrong)  # meta: the key check needs no real weights


# --- the full model -------------------------------------------------------------------------


def test_vqa_model_encodes_each_unique_image_once() -> None:
    torch.manual_seed(0)
    model = create_model(tiny_lrcn_cfg(image_encoder="small_cnn", variant="st"), VOCAB, ANSWERS).eval()
    calls: list[int] = []
    model.encoder.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    images = torch.randn(2, 3, 64, 64)
    index = torch.tensor([1, 0, 1])
    tokens = tokens_with_pads()
    with torch.no_grad():
        shared = model(tokens, images=images, image_index=index)
        assert calls == [2]
        per_question = model(tokens, images=images[index])
        cached = model(tokens, grid=model.encode_images(images), image_index=index)
    torch.testing.assert_close(shared, per_question, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared, cached)
    with pytest.raises(LrcnError, match="exactly one"):
        model(tokens, images=images, grid=torch.randn(3, 64, 16))
    with pytest.raises(LrcnError, match="image_index"):
        model(tokens, images=images)


@pytest.mark.parametrize("variant", VARIANTS)
def test_first_image_self_attention_runs_once_per_image(variant: str) -> None:
    """The first image layer's self-attention and co-stacking's first keys from the image read
    no question: with image_index they run on the distinct images (U rows), and the answers
    and gradients are those of one grid per question. Per-question masks and dropout in
    training run them per question."""
    torch.manual_seed(0)
    net = LRCN(tiny_lrcn_cfg(variant=variant, lrm="both", distance_bias=True, position="coords",
                             dropout=0.0),
               VOCAB, ANSWERS, CHANNELS)
    rows: list[int] = []
    net.image_layers[0].self_attn.register_forward_hook(
        lambda mod, args, out: rows.append(args[0].shape[0]))
    key_rows: list[int] = []  # co-stacking's first question guided block: keys from the image
    if variant == "cst":
        net.question_guided[0].guided_attn.kv_proj.register_forward_hook(
            lambda mod, args, out: key_rows.append(args[0].shape[0]))
    tokens, grid, index = tokens_with_pads(), torch.randn(2, 3, 4, CHANNELS), torch.tensor([1, 0, 1])

    shared = net(tokens, grid, image_index=index)
    shared.square().sum().backward()
    shared_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    per_question = net(tokens, grid[index])
    per_question.square().sum().backward()
    assert rows == [2, 3] and key_rows == ([2, 3] if variant == "cst" else [])
    torch.testing.assert_close(shared, per_question, atol=1e-6, rtol=1e-6)
    for a, b in zip(shared_grads, (p.grad for p in net.parameters())):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    rows.clear()
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 6:] = False
    masked = net(tokens, grid, grid_mask=mask, image_index=index)
    torch.testing.assert_close(masked, net(tokens, grid[index], grid_mask=mask))
    assert rows == [3, 3]

    rows.clear()  # dropout draws each question's own mask: the same draws as per question
    dropping = LRCN(tiny_lrcn_cfg(variant=variant, dropout=0.3), VOCAB, ANSWERS, CHANNELS)
    dropping.image_layers[0].self_attn.register_forward_hook(
        lambda mod, args, out: rows.append(args[0].shape[0]))
    torch.manual_seed(1)
    drawn = dropping(tokens, grid, image_index=index)
    torch.manual_seed(1)
    torch.testing.assert_close(drawn, dropping(tokens, grid[index]))
    assert rows == [3, 3]
    dropping.eval()
    rows.clear()
    torch.testing.assert_close(dropping(tokens, grid, image_index=index),
                               dropping(tokens, grid[index]), atol=1e-6, rtol=1e-6)
    assert rows == [2, 3]


def test_openvqa_zero_rows_are_found_per_image() -> None:
    """mask_zero_rows with grids one per image: each question gets its image's mask."""
    torch.manual_seed(0)
    net = LRCN(tiny_lrcn_cfg(mask_zero_rows=True), VOCAB, ANSWERS, CHANNELS).eval()
    grid = torch.randn(2, 6, CHANNELS)
    grid[0, 4:] = 0  # image 0's last two regions are padding
    index = torch.tensor([0, 1, 0])
    out = net.forward_features(tokens_with_pads(), grid, image_index=index)
    expected = net.forward_features(tokens_with_pads(), grid[index])
    torch.testing.assert_close(out.fused, expected.fused, atol=1e-6, rtol=1e-6)
    assert (out.image_weights[[0, 2], 4:] == 0).all() and (out.image_weights[1, 4:] > 0).all()


def test_features_model_rejects_images_and_unknown_names() -> None:
    model = create_model(tiny_lrcn_cfg(), VOCAB, ANSWERS)
    assert isinstance(model, VQAModel) and model.encoder is None
    with pytest.raises(LrcnError, match="precomputed"):
        model(tokens_with_pads(), images=torch.randn(3, 3, 64, 64))
    with pytest.raises(LrcnError, match="known models: cnn_lstm, image_only, lrcn, text_only"):
        create_model(tiny_lrcn_cfg(arch="mcan"), VOCAB, ANSWERS)
    for bad in (dict(variant="xx"), dict(lrm="all"), dict(grid_reduction="max"), dict(heads=5)):
        with pytest.raises(LrcnError, match="model\\."):
            create_model(dataclasses.replace(tiny_lrcn_cfg(), **bad), VOCAB, ANSWERS)


def _question_about_grid(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n questions that need both modalities: the grid has one marked cell holding a class
    a (one-hot in channels 0..ANSWERS-1), the question one word t, and the answer is
    (a + t) mod ANSWERS; neither the words alone nor the grid alone tell it."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, ANSWERS, (n,), generator=g)
    t = torch.randint(0, ANSWERS, (n,), generator=g)
    grid = torch.randn(n, 3, 3, CHANNELS, generator=g) * 0.1
    cell = torch.randint(0, 9, (n,), generator=g)
    flat = grid.view(n, 9, CHANNELS)
    flat[torch.arange(n), cell, a] += 3.0
    tokens = torch.stack([torch.full((n,), 1), t + 2], dim=1)  # "which" + the number word
    return tokens, grid, (a + t) % ANSWERS


@pytest.mark.parametrize("variant", VARIANTS)
def test_lrcn_fits_a_tiny_task_that_needs_both_modalities(variant: str) -> None:
    """Trained on 256 such questions, each stacking answers held-out ones (chance 1/7;
    98-100% after these 60 epochs), and only by reading both the question and the grid."""
    torch.manual_seed(0)
    net = LRCN(tiny_lrcn_cfg(variant=variant, dropout=0.0), VOCAB, ANSWERS, CHANNELS)
    tokens, grid, answer = _question_about_grid(256, seed=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        for batch in torch.randperm(256).split(32):
            loss = torch.nn.functional.cross_entropy(net(tokens[batch], grid[batch]), answer[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    test_tokens, test_grid, test_answer = _question_about_grid(256, seed=2)
    with torch.no_grad():
        accuracy = (net(test_tokens, test_grid).argmax(-1) == test_answer).float().mean()
        # each question shown the grid of another: the answer is lost (chance is 1/7)
        blind = (net(test_tokens, test_grid.roll(1, 0)).argmax(-1) == test_answer).float().mean()
    assert accuracy >= 0.9 and blind < 0.3, (float(accuracy), float(blind))
