"""Baseline tests: CNN+LSTM late fusion, text-only and image-only models (lrcn.models.baselines)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrcn.config import ModelConfig
from lrcn.errors import LrcnError
from lrcn.models import CNNLSTM, ImageOnly, LateFusion, TextOnly, create_model, model_names
from lrcn.models.baselines import QuestionEncoder

ARCHS = {"cnn_lstm": CNNLSTM, "text_only": TextOnly, "image_only": ImageOnly}
VOCAB, ANSWERS, CHANNELS = 20, 5, 12
D, WORD, POOL, FUSED = 16, 8, 16, 24


def tiny_cfg(**overrides) -> ModelConfig:
    """D=16 (8 LSTM units per direction), reading precomputed grids of CHANNELS channels."""
    base = dict(
        d_model=D, word_dim=WORD, pool_hidden=POOL, fused_dim=FUSED, dropout=0.1,
        image_encoder="features", feature_channels=CHANNELS, encoder_channels=8,
    )
    base.update(overrides)
    return ModelConfig(**base)


def tiny_net(arch: str, **kwargs) -> LateFusion:
    torch.manual_seed(0)
    return ARCHS[arch](tiny_cfg(), VOCAB, ANSWERS, CHANNELS, **kwargs)


def tokens_with_pads() -> torch.Tensor:
    """Three right-padded questions of lengths 5, 3 and 1 (pad id 0)."""
    return torch.tensor([[3, 4, 5, 6, 7], [8, 9, 2, 0, 0], [11, 0, 0, 0, 0]])


def test_baselines_are_registered() -> None:
    assert {"cnn_lstm", "text_only", "image_only"} <= set(model_names())


# --- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["grid", "regions"])
@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_weights_and_gradients(arch: str, layout: str) -> None:
    torch.manual_seed(0)
    model = create_model(tiny_cfg(arch=arch), VOCAB, ANSWERS)
    net = model.net
    assert type(net) is ARCHS[arch] and net.grid_channels == CHANNELS and net.fused_dim == FUSED
    if layout == "grid":
        grid = torch.randn(3, 3, 4, CHANNELS)  # (B, H, W, C)
        mask = torch.ones(3, 3, 4, dtype=torch.bool)  # (B, H, W)
        mask[1, 2, :] = False
    else:
        grid = torch.randn(3, 12, CHANNELS)  # (B, N, C) region list
        mask = torch.ones(3, 12, dtype=torch.bool)  # (B, N)
        mask[1, 8:] = False
    out = model.forward_features(tokens_with_pads(), grid=grid, grid_mask=mask)
    assert out.fused.shape == (3, FUSED)
    if net.uses_image:
        assert out.image_weights.shape == (3, 12)
        torch.testing.assert_close(out.image_weights.sum(-1), torch.ones(3))
        assert (out.image_weights[1, 8:] == 0).all()
        torch.testing.assert_close(out.image_weights[1, :8], torch.full((8,), 1 / 8))
    else:
        assert out.image_weights.shape == (3, 0)
    if net.uses_question:
        assert out.question_weights.shape == (3, 5)
        torch.testing.assert_close(out.question_weights.sum(-1), torch.ones(3))
        assert (out.question_weights[1, 3:] == 0).all() and (out.question_weights[2, 1:] == 0).all()
    else:
        assert out.question_weights.shape == (3, 0)
    logits = net.forward_head(out.fused)
    assert logits.shape == (3, ANSWERS)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_small_cnn_model_answers_from_pixels(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(tiny_cfg(arch=arch, image_encoder="small_cnn"), VOCAB, ANSWERS)
    if model.net.uses_image:
        assert model.net.grid_channels == 8  # the SmallCNN's width, not feature_channels
    else:
        assert model.encoder is None  # text_only never reads the image: no CNN at all
    images = torch.randn(2, 3, 32, 32)
    logits = model(tokens_with_pads(), images=images, image_index=torch.tensor([0, 1, 1]))
    assert logits.shape == (3, ANSWERS)
    logits.sum().backward()
    if model.net.uses_image:  # the CNN trains through the image path
        assert model.encoder.features[0][0].weight.grad is not None


# --- padding and masking ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_pads_and_masked_cells_do_not_change_output(arch: str) -> None:
    net = tiny_net(arch).eval()
    tokens = tokens_with_pads()
    grid = torch.randn(3, 4, 5, CHANNELS)
    mask = torch.ones(3, 4, 5, dtype=torch.bool)
    mask[0, 2:, :] = False
    mask[2, :, 4] = False
    with torch.no_grad():
        before = net(tokens, grid, mask.flatten(1))
        if net.question is not None:
            net.question.embed.weight[0] = torch.randn(WORD) * 10
        grid[~mask] = torch.randn(int((~mask).sum()), CHANNELS) * 10
        grid[0, 3, 3, 0] = float("nan")  # a masked cell never reaches the output, even NaN
        after = net(tokens, grid, mask)  # (B, H, W) masks are accepted too
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["cnn_lstm", "text_only"])
def test_backward_lstm_does_not_read_pads(arch: str) -> None:
    """The same questions padded to 6 and to 14 tokens give the same output."""
    net = tiny_net(arch).eval()
    short = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 2, 13, 0, 0, 0], [11, 0, 0, 0, 0, 0]])
    long = F.pad(short, (0, 8))  # (3, 14), eight more pads
    grid = torch.randn(3, 6, CHANNELS)
    with torch.no_grad():
        out6, out14 = net.forward_features(short, grid), net.forward_features(long, grid)
    torch.testing.assert_close(out14.fused, out6.fused, atol=1e-6, rtol=0)
    torch.testing.assert_close(out14.question_weights[:, :6], out6.question_weights)
    assert (out14.question_weights[:, 6:] == 0).all()


def test_a_question_of_pads_only_gives_a_zero_question_vector() -> None:
    torch.manual_seed(0)
    encoder = QuestionEncoder(VOCAB, WORD, D, POOL, 0.0)
    tokens = torch.tensor([[3, 4, 0], [0, 0, 0]])
    q, weights = encoder(tokens)
    assert q.shape == (2, D) and weights.shape == (2, 3)
    assert (q[1] == 0).all() and (weights[1] == 0).all()
    q.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())


# --- which modality each model reads ----------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_each_model_reads_only_its_modalities(arch: str) -> None:
    net = tiny_net(arch).eval()
    tokens, grid = tokens_with_pads(), torch.randn(3, 6, CHANNELS)
    other_tokens = torch.tensor([[12, 13, 14, 15, 16], [17, 18, 19, 0, 0], [4, 0, 0, 0, 0]])
    with torch.no_grad():
        base = net(tokens, grid)
        new_grid = net(tokens, torch.randn(3, 6, CHANNELS))
        new_question = net(other_tokens, grid)

    def changed(a: torch.Tensor) -> bool:
        return not torch.allclose(a, base, atol=1e-5)

    assert changed(new_grid) == net.uses_image
    assert changed(new_question) == net.uses_question
    if not net.uses_image:  # text-only needs no grid at all
        with torch.no_grad():
            torch.testing.assert_close(net(tokens, None), base)
    else:
        with pytest.raises(LrcnError, match="pass a grid"):
            net(tokens, None)


def test_modality_flags() -> None:
    assert CNNLSTM.uses_image and CNNLSTM.uses_question
    assert not TextOnly.uses_image and TextOnly.uses_question
    assert ImageOnly.uses_image and not ImageOnly.uses_question
    assert tiny_net("text_only").image is None and tiny_net("image_only").question is None


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cnn_lstm", "text_only"])
def test_word_vectors_initialise_the_embedding(arch: str) -> None:
    vectors = torch.randn(VOCAB, WORD)
    model = create_model(tiny_cfg(arch=arch), VOCAB, ANSWERS, word_vectors=vectors)
    assert torch.equal(model.net.question.embed.weight.detach(), vectors)
    with pytest.raises(LrcnError, match="word vectors"):
        create_model(tiny_cfg(arch=arch), VOCAB, ANSWERS, word_vectors=torch.randn(VOCAB, 300))


def test_bad_configs_and_inputs_are_lrcn_errors() -> None:
    with pytest.raises(LrcnError, match="must be even"):
        CNNLSTM(tiny_cfg(d_model=15), VOCAB, ANSWERS, CHANNELS)
    with pytest.raises(LrcnError, match="dropout"):
        CNNLSTM(tiny_cfg(dropout=1.0), VOCAB, ANSWERS, CHANNELS)
    net = tiny_net("cnn_lstm")
    with pytest.raises(LrcnError, match="grid must be"):
        net(tokens_with_pads(), torch.randn(3, 6, CHANNELS + 1))
    with pytest.raises(LrcnError, match="grid_mask"):
        net(tokens_with_pads(), torch.randn(3, 6, CHANNELS), torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(LrcnError, match="tokens must be"):
        net(torch.tensor([1, 2, 3]), torch.randn(3, 6, CHANNELS))


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_counts(arch: str) -> None:
    """The count matches the layers written out; the word embedding is excluded by default."""
    net = tiny_net(arch)
    h = D // 2
    question = 2 * (4 * h * WORD + 4 * h * h + 2 * 4 * h) + (D * POOL + POOL + POOL + 1)
    image = CHANNELS * D + D
    width = D * (net.uses_image + net.uses_question)
    expected = (image if net.uses_image else 0) + (question if net.uses_question else 0)
    expected += width * FUSED + FUSED + FUSED * ANSWERS + ANSWERS
    assert net.num_parameters() == expected
    embedding = VOCAB * WORD if net.uses_question else 0
    assert net.num_parameters(exclude_embeddings=False) == expected + embedding


# --- training ---------------------------------------------------------------------------------


def fit(arch: str, task: str, steps: int = 60) -> list[float]:
    """Train a fresh tiny model on a synthetic task; returns the loss of every step.

    32 questions of class c_q (first word 2 + c_q, length 2 + c_q) about images of class c_i
    (a fixed grid per class), every (c_q, c_i) pair twice. The answer is c_q (task "question"),
    c_i ("image") or (c_q + c_i) mod 4 ("both"). Inputs depend on the classes only, so a model
    cannot memorise its way through a task whose modality it does not read.
    """
    torch.manual_seed(0)
    B, K = 32, 4
    c_q, c_i = torch.arange(B) % K, (torch.arange(B) // K) % K
    words = torch.tensor([[2 + c, 6, 7, 8, 9, 10] for c in range(K)])  # (K, 6)
    words[torch.arange(6) >= (2 + torch.arange(K))[:, None]] = 0  # right-padded
    tokens = words[c_q]  # (B, 6)
    grid = (torch.randn(K, 4, CHANNELS) * 2)[c_i]  # (B, 4, C)
    labels = {"question": c_q, "image": c_i, "both": (c_q + c_i) % K}[task]
    net = ARCHS[arch](tiny_cfg(d_model=32, fused_dim=48, dropout=0.0), VOCAB, K, CHANNELS)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(net(tokens, grid), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "arch, task", [("cnn_lstm", "both"), ("text_only", "question"), ("image_only", "image")]
)
def test_a_few_steps_fit_the_task_of_the_models_modalities(arch: str, task: str) -> None:
    losses = fit(arch, task)
    assert losses[0] > 1.2  # about ln 4: chance
    assert losses[-1] < 0.2, losses[::10]


@pytest.mark.parametrize("arch", ["text_only", "image_only"])
def test_one_modality_cannot_fit_a_task_that_needs_both(arch: str) -> None:
    losses = fit(arch, "both")
    assert losses[-1] > 1.2, losses[::10]  # stays at chance, ln 4 = 1.39
