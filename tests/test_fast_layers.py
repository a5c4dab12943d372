"""The fast layers against torch's plain ones: one-pass dropout, attention, the whole LRCN;
and ``model.fast_cpu: false``, the same model without the CPU speed layer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lrcn.models import LRCN, create_model, model_names
from lrcn.models import dropout as dropout_module
from lrcn.models.dropout import Dropout, dropout, relu_dropout
from lrcn.models.layers import AttentionPool, FeedForward, KeyMask, MultiHeadAttention
from conftest import ANSWERS, CHANNELS, VOCAB, tiny_lrcn_cfg, tokens_with_pads

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # the plain reference model
from plain_lrcn import PlainAttention, plain_copy  # noqa: E402


def _keep(shape: tuple[int, ...], p: float) -> torch.Tensor:
    """The next dropout mask of torch's generator, as bools (True = kept)."""
    return dropout(torch.ones(shape), p, training=True) != 0


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 1 / 3])
def test_masks_drop_with_probability_p_independently(p: float) -> None:
    """4 M draws: the standard error of the drop rate is 2.5e-4 at most. Neighbours (within a
    chunk of the kernel and across chunk boundaries), the same offset in neighbouring chunks and
    the same element in two calls must be dropped together with probability p^2."""
    torch.manual_seed(0)
    keep, again = _keep((2048, 2048), p), _keep((2048, 2048), p)
    drop_rate = 1.0 - keep.float().mean().item()
    assert abs(drop_rate - p) < 5 * (p * (1 - p) / keep.numel()) ** 0.5
    flat, other = ~keep.flatten(), ~again.flatten()
    for both in (flat[:-1] & flat[1:],  # neighbours
                 flat[32767::32768][:-1] & flat[32768::32768],  # across the kernel's chunks
                 flat[:-32768] & flat[32768:],  # the same place in neighbouring chunks
                 flat & other):  # two calls
        rate = both.float().mean().item()
        assert abs(rate - p * p) < 5 * (p * p * (1 - p * p) / both.numel()) ** 0.5
    assert not torch.equal(keep, again)


def test_masks_follow_torch_generator_and_not_the_thread_count() -> None:
    """The kernel runs in torch.get_num_threads() slices; the mask must not depend on them."""
    threads = torch.get_num_threads()
    torch.manual_seed(3)
    state = torch.get_rng_state()
    first = _keep((300, 1000), 0.3)
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            torch.set_rng_state(state)
            assert torch.equal(_keep((300, 1000), 0.3), first), n
            assert torch.get_num_threads() == n  # the kernels leave torch's thread count alone
    finally:
        torch.set_num_threads(threads)
    torch.manual_seed(3)
    assert torch.equal(_keep((300, 1000), 0.3), first)


def test_dropout_scales_kept_elements_and_passes_the_same_mask_back() -> None:
    x = torch.randn(64, 300, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.25, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    upstream = torch.randn(300, 64).t()  # not contiguous
    y.backward(upstream)
    torch.testing.assert_close(x.grad, upstream * kept.float() / 0.75)
    # the masks come from torch's generator: the same seed gives the same mask
    torch.manual_seed(0)
    torch.testing.assert_close(dropout(x, 0.25, training=True), y)


def test_dropout_is_the_identity_outside_training_or_at_zero() -> None:
    x = torch.randn(5, 7)
    assert dropout(x, 0.5, training=False) is x
    assert torch.equal(dropout(x, 0.0, training=True), x)
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    module = Dropout(0.3).eval()
    assert module(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)


def test_dropout_keeps_torch_semantics_for_layouts_dtypes_and_non_finite_values() -> None:
    x = torch.randn(40, 70)
    torch.manual_seed(5)
    expected = dropout(x, 0.4, training=True)
    torch.manual_seed(5)  # a transposed view is read in its logical order
    torch.testing.assert_close(dropout(x.t().contiguous().t(), 0.4, training=True), expected)
    torch.manual_seed(5)
    double = dropout(x.double(), 0.4, training=True)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), expected)
    half = dropout(x.bfloat16(), 0.4, training=True)  # torch's own dropout
    assert half.dtype == torch.bfloat16 and ((half == 0).float().mean() - 0.4).abs() < 0.05
    # NaN stays NaN even where dropped (x * 0), as with F.dropout; F.relu(-inf) = 0
    weird = torch.tensor([float("nan"), float("inf"), float("-inf")]).repeat(200)
    out = dropout(weird, 0.5, training=True)
    assert out[0::3].isnan().all()
    assert torch.equal(out[1::3].isnan(), out[1::3] != float("inf"))  # inf kept, inf * 0 = nan
    out = relu_dropout(weird, 0.5, training=True)
    assert out[0::3].isnan().all() and (out[2::3] == 0).all()


def test_relu_dropout_is_relu_then_dropout() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 500, requires_grad=True)
    y = relu_dropout(x, 0.1, training=True)
    kept = y != 0
    assert (x[kept] > 0).all()
    torch.testing.assert_close(y[kept], x[kept] / 0.9)
    positive = (x > 0).float().mean().item()
    assert abs(kept.float().mean().item() - 0.9 * positive) < 0.01
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / 0.9)  # ReLU's and dropout's gradients
    z = torch.randn(8, 9)
    torch.testing.assert_close(relu_dropout(z, 0.1, training=False), F.relu(z))


def test_attention_dropout_path_is_softmax_dropout_matmul() -> None:
    """In training on the CPU the attention is written out; with the same seed it equals the
    textbook computation with the same dropout mask on the probabilities."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, 0.2, cross=True).train()
    q_in, kv_in = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    torch.manual_seed(1)
    out = mha(q_in, kv_in, key_mask=mask)

    q = mha.q_proj(q_in).view(3, 5, 4, 4).transpose(1, 2)
    k, v = (t.view(3, 7, 4, 4).transpose(1, 2) for t in mha.kv_proj(kv_in).split(16, dim=-1))
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~mask[:, None, None, :], float("-inf"))
    torch.manual_seed(1)
    drop = dropout(torch.ones(3, 4, 5, 7), 0.2, training=True)  # the same mask, scaled
    expected = mha.out_proj(((scores.softmax(-1) * drop) @ v).transpose(1, 2).reshape(3, 5, 16))
    torch.testing.assert_close(out, expected)
    # without dropout (eval) the fused kernel computes the same as the plain module
    mha.eval()
    torch.testing.assert_close(mha(q_in, kv_in, key_mask=mask),
                               PlainAttention(mha).eval()(q_in, kv_in, key_mask=mask))


def test_key_mask_is_prepared_once_and_flags_rows_without_keys() -> None:
    valid = torch.tensor([[True, False, True], [True, True, True]])
    mask = KeyMask.of(valid)
    assert KeyMask.of(mask) is mask and KeyMask.of(None) is None
    assert mask.has_key is None  # every row has a key: no extra multiply
    assert torch.equal(mask.bias[0, 0, 0], torch.tensor([0.0, float("-inf"), 0.0]))
    empty = KeyMask.of(torch.tensor([[False, False], [True, False]]))
    assert empty.has_key.flatten().tolist() == [0.0, 1.0]
    assert empty.attend[0].all()  # an empty row attends everywhere, then is zeroed


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    grid = torch.randn(3, 4, 4, CHANNELS)
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[2, 10:] = False
    return tokens_with_pads(), grid, mask


@pytest.mark.parametrize("overrides", [
    {"variant": "ed"}, {"variant": "st"}, {"variant": "cst"},
    {"variant": "cst", "position": "coords", "distance_bias": True},  # own-data's model
], ids=["ed", "st", "cst", "cst-distance-bias"])
def test_fast_model_equals_the_plain_model(overrides: dict) -> None:
    """Eval outputs are equal, and so are the loss and every gradient of a training step
    without dropout (dropout masks are random, so that part is checked per layer above)."""
    torch.manual_seed(0)
    fast = LRCN(tiny_lrcn_cfg(**overrides), VOCAB, ANSWERS, CHANNELS)
    plain = plain_copy(fast)
    tokens, grid, mask = _inputs()
    fast.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(tokens, grid, mask), plain(tokens, grid, mask))

    for model in (fast, plain):
        model.train()
        for module in model.modules():  # dropout off, everything else in training mode
            for name in ("p", "dropout"):
                if isinstance(getattr(module, name, None), float):
                    setattr(module, name, 0.0)
    losses = []
    for model in (fast, plain):
        loss = model(tokens, grid, mask).logsumexp(-1).sum()
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    plain_grads = {name: p.grad for name, p in plain.named_parameters()}
    fast_grads = _grads_by_plain_name(fast)
    assert fast_grads.keys() == plain_grads.keys()  # the plain copy has the same parameters
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def _grads_by_plain_name(fast: LRCN) -> dict[str, torch.Tensor]:
    """The fast model's gradients under the plain copy's parameter names: fused projections
    become ``nn.MultiheadAttention``'s packed ``in_proj_weight``/``in_proj_bias``."""
    grads, attention_params = {}, set()
    for name, module in fast.named_modules():
        if isinstance(module, MultiHeadAttention):
            projections = [module.q_proj, module.kv_proj] if module.cross else [module.qkv_proj]
            for kind in ("weight", "bias"):
                grads[f"{name}.mha.in_proj_{kind}"] = torch.cat(
                    [getattr(m, kind).grad for m in projections])
                grads[f"{name}.mha.out_proj.{kind}"] = getattr(module.out_proj, kind).grad
            attention_params |= {f"{name}.{n}" for n, _ in module.named_parameters()}
    for name, p in fast.named_parameters():
        if name not in attention_params:
            grads[name] = p.grad
    return grads


def test_dropout_under_torch_compile_is_torchs_own() -> None:
    """Compiled graphs trace ``F.dropout`` (the kernels are opaque to dynamo)."""
    torch.manual_seed(0)
    ffn = torch.nn.Sequential(FeedForward(16, 64, 0.5), Dropout(0.5, inplace=True)).train()
    compiled = torch.compile(ffn, backend="aot_eager")
    x = torch.randn(4, 8, 16, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    dropped = (y == 0).float().mean().item()
    assert 0.4 < dropped < 0.6 and x.grad is not None and x.grad.isfinite().all()


def _graph_names(t: torch.Tensor) -> set[str]:
    """The names of every node in the autograd graph behind `t`."""
    names, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("fn", [dropout, relu_dropout])
@pytest.mark.parametrize("batch_shape", [(50,), (5, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the kernels; torch's own
def test_inplace_dropout_overwrites_its_input_with_the_same_result(fn, batch_shape,
                                                                   dtype) -> None:
    """In place (the model's fresh sub-layer outputs): same values and gradients, no new
    tensor; autograd still refuses it where the input is needed by another backward. A 3-D
    Linear output is a view of a 2-D product: the write goes to that product, so autograd
    records no write into a view (CopySlices, which copies the whole gradient twice)."""
    linear = torch.nn.Linear(8, 300, dtype=dtype)
    x = torch.randn(*batch_shape, 8, dtype=dtype)
    results = []
    for inplace in (False, True):
        linear.zero_grad()
        torch.manual_seed(4)
        h = linear(x)
        y = fn(h, 0.3, True, inplace=inplace)
        # torch's own ReLU backward reads the ReLU's output: only the ReLU is in place there
        overwrites = inplace and (fn is dropout or dtype == torch.float32)
        assert (y.data_ptr() == h.data_ptr()) == overwrites and y.shape == h.shape
        assert "CopySlices" not in _graph_names(y)
        (y * torch.arange(300.0, dtype=dtype)).sum().backward()
        results.append((y.detach(), linear.weight.grad.clone()))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    leaf = torch.randn(*batch_shape, 300, dtype=dtype, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        fn(leaf, 0.3, True, inplace=True)
    saved = torch.randn(50, 300, dtype=dtype, requires_grad=True).exp()  # exp's backward needs its output
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        fn(saved.view(*batch_shape, 300), 0.3, True, inplace=True).sum().backward()


# --- model.fast_cpu: false, the same models without the CPU speed layer ---------------------

FAST_LAYERS = (Dropout, MultiHeadAttention, FeedForward, AttentionPool)


def _fast_flags(model: torch.nn.Module) -> set[bool]:
    return {m.fast for m in model.modules() if isinstance(m, FAST_LAYERS)}


def _train_step(model: torch.nn.Module) -> None:
    tokens, grid, mask = _inputs()
    model.train()(tokens, grid=grid, grid_mask=mask).sum().backward()


@pytest.mark.parametrize("arch", model_names())
def test_fast_cpu_false_trains_without_the_kernels(arch: str, monkeypatch) -> None:
    """The switch reaches every layer when the model is built; with it off, dropout and
    attention are torch's own and a training step never loads numba's kernels."""
    def no_kernels():
        raise RuntimeError("the numba kernels were asked for")

    monkeypatch.setattr(dropout_module, "_numba_kernels", no_kernels)
    torch.manual_seed(0)
    plain = create_model(tiny_lrcn_cfg(arch=arch, dropout=0.3, fast_cpu=False), VOCAB, ANSWERS)
    assert _fast_flags(plain) <= {False}
    _train_step(plain)
    assert all(p.grad is not None for n, p in plain.named_parameters() if "embed" not in n)
    fast = create_model(tiny_lrcn_cfg(arch=arch, dropout=0.3), VOCAB, ANSWERS)
    assert _fast_flags(fast) <= {True}
    if _fast_flags(fast):  # the patch bites: the default model does ask for the kernels
        with pytest.raises(RuntimeError, match="numba kernels"):
            _train_step(fast)


@pytest.mark.parametrize("arch", model_names())
def test_fast_cpu_true_and_false_are_the_same_function(arch: str) -> None:
    """The same seed gives the same weights either way, and equal outputs in eval mode."""
    models = []
    for fast in (True, False):
        torch.manual_seed(0)
        models.append(create_model(tiny_lrcn_cfg(arch=arch, fast_cpu=fast), VOCAB, ANSWERS))
    fast, plain = models
    torch.testing.assert_close(fast.state_dict(), plain.state_dict(), rtol=0, atol=0)
    tokens, grid, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(tokens, grid=grid, grid_mask=mask),
                                   plain.eval()(tokens, grid=grid, grid_mask=mask),
                                   rtol=0, atol=0)
