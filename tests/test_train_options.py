"""Training options for speed and memory: gradient accumulation, the fused Adam, bf16
autocast, torch.compile and DataLoader workers give the training they stand in for, and
settings that cannot run are refused before anything is written."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from conftest import Result, read_metrics, run_cli, tiny_set_args
from easyvqa_store import ADAM_EPS, store_args
from lrcn.cli import build_parser, train_config
from lrcn.data import load_split
from lrcn.evaluation.score import score_vqa
from lrcn.engine import setup, step
from lrcn.engine.checkpoint import load_checkpoint
from lrcn.models import create_model
from conftest import assert_refused


def _train(capsys: pytest.CaptureFixture[str], out: Path, *extra: object) -> Result:
    result = run_cli(capsys, "train", "--out", out, "--json", *tiny_set_args(), *extra)
    assert result.code == 0, result.err
    return result


def _losses(run: Path) -> list[float]:
    return [epoch["train_loss"] for epoch in read_metrics(run)]


def _one_step(store: Path) -> list[str]:
    """One optimizer step of 8 questions of the tiny LRCN on grids, no evaluation."""
    return ["--set", "data.train_limit=8", "--batch-size", "8", "--epochs", "1",
            "--val-split", "none", *store_args(store), *ADAM_EPS]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = (load_checkpoint(run / "checkpoints" / "last").model_state for run in (a, b))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)


def test_accumulation_gives_the_whole_batch_gradient(
        easyvqa_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One step of 8 questions as 2 micro-batches of 4: the same weights as one batch of 8."""
    one_step = _one_step(easyvqa_store)
    _train(capsys, tmp_path / "whole", *one_step)
    _train(capsys, tmp_path / "micro", *one_step, "--accumulate", "2")
    assert _losses(tmp_path / "micro") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-6)
    _assert_same_weights(tmp_path / "micro", tmp_path / "whole")
    assert load_checkpoint(tmp_path / "micro").config.train.accumulate == 2


def test_fused_adam_matches_the_for_loop_adam() -> None:
    cfg = train_config(build_parser().parse_args(["train", *tiny_set_args()]))
    torch.manual_seed(0)
    model = create_model(cfg.model, 20, 5)
    reference = copy.deepcopy(model)
    fused = step.make_optimizer(model, cfg.train)
    assert fused.defaults["fused"] and not fused.defaults["foreach"]  # CPU has the fused kernel
    t = cfg.train
    loop = torch.optim.Adam(reference.parameters(), lr=t.lr, betas=t.betas, eps=t.eps,
                            foreach=False)
    for _ in range(2):  # the second step reads the moments the first one left
        for p, q in zip(model.parameters(), reference.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_compile_trains_as_eager_and_saves_plain_keys(
        easyvqa_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Compiled with the aot_eager backend: the graphs that inductor would compile, forward
    and backward, traced and run; inductor's C++ build of their kernels takes a minute on a
    2-core CPU (cold cache) and is torch's to test."""
    compiled = []

    def compile_aot_eager(module: torch.nn.Module) -> torch.nn.Module:
        compiled.append(type(module).__name__)
        return torch_compile(module, backend="aot_eager")

    torch_compile = torch.compile
    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    one_step = _one_step(easyvqa_store)
    _train(capsys, tmp_path / "eager", *one_step)
    _train(capsys, tmp_path / "compiled", *one_step, "--compile")
    assert compiled == ["TrainingStep"]
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-5)
    _assert_same_weights(tmp_path / "compiled", tmp_path / "eager")
    state = load_checkpoint(tmp_path / "compiled").model_state
    assert not [key for key in state if "_orig_mod." in key or key.startswith("model.")]


def test_bf16_autocast_trains_close_to_fp32(
        easyvqa_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not setup.bf16_supported(torch.device("cpu")):  # this project's CPU: AVX-512 BF16
        pytest.skip("this CPU has no bfloat16 kernels")
    run = ["--set", "data.train_limit=16", "--batch-size", "8", "--epochs", "1",
           "--set", "data.val_limit=20", *store_args(easyvqa_store)]
    reference = _train(capsys, tmp_path / "fp32", *run).json
    summary = _train(capsys, tmp_path / "bf16", *run, "--precision", "bf16").json
    bf16, fp32 = _losses(tmp_path / "bf16"), _losses(tmp_path / "fp32")
    assert bf16 == pytest.approx(fp32, rel=2e-2) and bf16 != fp32  # close, but rounded
    # Two steps from the same seed: the bf16 weights answer as the fp32 ones do, give or take
    # one of the 20 val questions.
    assert summary["num_questions"] == reference["num_questions"] == 20
    assert summary["overall"] == pytest.approx(reference["overall"], abs=100 / 20)
    # Evaluation runs in fp32: the val accuracy the bf16 run reported is exactly what an fp32
    # `lrcn evaluate` of its checkpoint scores on those 20 questions (the first of the split).
    results = tmp_path / "bf16-results.json"
    evaluated = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "bf16", "--split",
                        "test", "--results", results, "--json")
    assert evaluated.code == 0, evaluated.err
    val = load_split("easyvqa", None, "test").records[:20]
    predicted = {r["question_id"]: r["answer"]
                 for r in json.loads(results.read_text(encoding="utf-8"))}
    rescored = score_vqa({r.question_id: r.answers for r in val},
                         {r.question_id: r.answer_type for r in val},
                         {r.question_id: predicted[r.question_id] for r in val})
    assert rescored.overall == pytest.approx(summary["overall"], abs=1e-9)
    assert rescored.per_answer_type == pytest.approx(summary["per_answer_type"], abs=1e-9)
    state = load_checkpoint(tmp_path / "bf16").model_state
    assert all(v.dtype != torch.bfloat16 for v in state.values())


def test_workers_load_the_same_batches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two worker processes (kept across epochs) decode the same batches in the same order."""
    run = ["--set", "data.train_limit=24", "--batch-size", "8", "--epochs", "2",
           "--val-split", "none", "--set", "data.cache_images=false"]
    _train(capsys, tmp_path / "main", *run)
    _train(capsys, tmp_path / "workers", *run, "--workers", "2")
    assert _losses(tmp_path / "workers") == pytest.approx(_losses(tmp_path / "main"), rel=1e-6)


@pytest.mark.parametrize("argv, env, fragments", [
    (["--batch-size", "10", "--accumulate", "4"], {},
     ["train.batch_size 10 must be divisible by train.accumulate (4)", "processes (1)"]),
    (["--accumulate", "0"], {}, ["train.accumulate must be at least 1, got 0"]),
    (["--workers", "-1"], {}, ["train.num_workers must be 0 or more, got -1"]),
    (["--set", "train.precision=fp16"], {}, ["train.precision must be one of fp32, bf16"]),
    (["--batch-size", "7"], {"WORLD_SIZE": "2"},
     ["train.batch_size 7 must be divisible", "the number of processes (2)"]),
])
def test_settings_that_cannot_run_are_refused(
        argv: list[str], env: dict[str, str], fragments: list[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Checked in every process before any joins the group: a plain error, nothing written."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run_cli(capsys, "train", "--out", tmp_path / "run", *tiny_set_args(), *argv)
    assert_refused(result, "train", *fragments, absent=(tmp_path / "run",))


def test_bf16_on_a_device_without_it_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(setup, "bf16_supported", lambda device: False)
    result = run_cli(capsys, "train", "--out", tmp_path / "run", "--precision", "bf16",
                     *tiny_set_args())
    assert_refused(result, "train", "--precision bf16: this CPU", "does not support bfloat16",
                   "use --precision fp32", absent=(tmp_path / "run",))


def test_compare_refuses_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = run_cli(capsys, "compare", "--dataset", "easyvqa", "--out", tmp_path / "cmp")
    assert_refused(result, "compare", "run lrcn train under torchrun for each model",
                   absent=(tmp_path / "cmp",))


def test_features_read_the_stores_grids_as_they_are(caplog: pytest.LogCaptureFixture) -> None:
    """The easyvqa preset reduces its small CNN's grid; --features does not reduce a store's
    grids (region lists cannot be) unless asked, and a paper preset keeps its own reduction."""
    def config(*argv: str):
        return train_config(build_parser().parse_args(["train", *argv]))

    with caplog.at_level("INFO", logger="lrcn"):
        cfg = config("--features", "store")
    assert (cfg.model.image_encoder, cfg.model.grid_reduction) == ("features", "none")
    assert "model.grid_reduction conv -> none: easyvqa reduces the grid of its image encoder" \
        in caplog.text
    assert config().model.grid_reduction == "conv"  # from pixels: the preset's
    asked = config("--features", "store", "--set", "model.grid_reduction=avgpool")
    assert asked.model.grid_reduction == "avgpool"
    paper = config("--config", "lrcn-ed-sa-6", "--features", "store")
    assert (paper.model.image_encoder, paper.model.grid_reduction) == ("features", "conv")
