"""TensorBoard event files in RUN/tb/: read back as TensorBoard reads them, they hold one
training-loss point per optimizer step and one validation point per epoch, equal to
metrics.jsonl, also after a run killed anywhere and resumed; --no-tensorboard writes none and
trains the same weights."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import VQA2Layout, read_metrics, run_cli, run_cli_uncaptured, tiny_set_args
from lrcn.engine import distributed
from lrcn.engine.checkpoint import load_checkpoint
from lrcn.engine.checkpointer import Checkpointer, Progress
from lrcn.engine.step import OptimizerStep
from lrcn.engine.tensorboard import RunLog

STEPS_PER_EPOCH = 3  # 24 training questions, 8 per step
EPOCHS = 2


def train_args(layout: VQA2Layout, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "vqa2", "--data-root", str(layout.root), "--out", str(out),
            "--batch-size", "8", "--epochs", str(EPOCHS), "--json", *tiny_set_args(), *extra]


@pytest.fixture(scope="module")
def tb_run(vqa2_layout: VQA2Layout, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two uninterrupted epochs of three steps."""
    out = tmp_path_factory.mktemp("tb") / "run"
    result = run_cli_uncaptured(*train_args(vqa2_layout, out))
    assert result.code == 0, result.err
    return out


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's tb/ as TensorBoard shows it: (step, value) by tag, purged
    events dropped."""
    accumulator = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def f32(value: float) -> float:
    """What an event file holds of a number: a float32."""
    return float(np.float32(value))


def assert_tb_matches_metrics(run: Path) -> None:
    """One point per epoch of each epoch scalar, at the steps done at its end, equal to
    metrics.jsonl; one training loss and lr per optimizer step; hparams at the last step."""
    metrics, points = read_metrics(run), scalars(run)
    assert [m["epoch"] for m in metrics] == list(range(EPOCHS))
    ends = [(m["epoch"] + 1) * STEPS_PER_EPOCH for m in metrics]
    assert points["val/overall"] == [(s, f32(m["val"]["overall"])) for s, m in zip(ends, metrics)]
    answer_types = metrics[0]["val"]["per_answer_type"]
    assert set(answer_types) == {"yes/no", "number", "other"}
    for answer_type in answer_types:
        assert points[f"val/{answer_type}"] == [
            (s, f32(m["val"]["per_answer_type"][answer_type])) for s, m in zip(ends, metrics)]
    assert points["train/epoch_loss"] == [(s, f32(m["train_loss"])) for s, m in zip(ends, metrics)]
    assert points["time/train_seconds"] == [(s, f32(m["train_seconds"]))
                                            for s, m in zip(ends, metrics)]
    steps = list(range(EPOCHS * STEPS_PER_EPOCH))
    assert [s for s, _ in points["train/loss"]] == steps
    assert points["train/lr"] == [(s, f32(metrics[s // STEPS_PER_EPOCH]["lr"])) for s in steps]
    best = max(metrics, key=lambda m: m["val"]["overall"])  # the first of equals, as training
    assert points["hparams/val/overall"] == [(ends[-1], f32(best["val"]["overall"]))]
    assert points["hparams/best_epoch"] == [(ends[-1], best["epoch"] + 1)]


def test_scalars_equal_the_metrics(tb_run: Path) -> None:
    assert_tb_matches_metrics(tb_run)
    (events,) = (tb_run / "tb").iterdir()  # the hparams too: no second file or sub-run
    assert events.name.startswith("events.out.tfevents.")


def test_warmup_steps_raise_the_lr_step_by_step(vqa2_layout: VQA2Layout, tmp_path: Path) -> None:
    """train.warmup_steps 4 over two epochs of 3 steps: lr x 1/4, 2/4, 3/4, then the epoch's."""
    out = tmp_path / "run"
    result = run_cli_uncaptured(*train_args(vqa2_layout, out, "--set", "train.warmup_steps=4"))
    assert result.code == 0, result.err
    metrics = read_metrics(out)
    factors = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert scalars(out)["train/lr"] == [
        (s, f32(metrics[s // STEPS_PER_EPOCH]["lr"] * f)) for s, f in enumerate(factors)]


def test_loss_points_are_the_steps_losses_per_question(tb_run: Path) -> None:
    """The mean of an epoch's step losses is its loss per question (equal steps of 8)."""
    losses = [v for _, v in scalars(tb_run)["train/loss"]]
    for m in read_metrics(tb_run):
        epoch = losses[m["epoch"] * STEPS_PER_EPOCH:(m["epoch"] + 1) * STEPS_PER_EPOCH]
        assert np.mean(epoch) == pytest.approx(m["train_loss"], rel=1e-6)


def test_hparams_hold_the_config(tb_run: Path) -> None:
    events = [e for path in sorted((tb_run / "tb").iterdir())
              for e in EventFileLoader(str(path)).Load()]
    infos = [plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
             for e in events for v in e.summary.value if v.tag == "_hparams_/session_start_info"]
    assert len(infos) == 1
    hparams = infos[0].session_start_info.hparams
    assert hparams["train.batch_size"].number_value == 8
    assert hparams["train.epochs"].number_value == EPOCHS
    assert hparams["data.dataset"].string_value == "vqa2"
    assert hparams["model.d_model"].number_value == 16
    assert hparams["train.betas"].string_value == "(0.9, 0.98)"  # sequences as text
    assert hparams["train.tensorboard"].number_value == 1  # torch writes a bool as a number


def test_no_tensorboard_writes_nothing_and_trains_the_same(
        tb_run: Path, vqa2_layout: VQA2Layout, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    result = run_cli(capsys, *train_args(vqa2_layout, run, "--no-tensorboard"))
    assert result.code == 0, result.err
    assert not (run / "tb").exists()
    a, b = (load_checkpoint(r / "checkpoints" / "last").model_state for r in (run, tb_run))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert [m["val"] for m in read_metrics(run)] == [m["val"] for m in read_metrics(tb_run)]


def kill_at_call(monkeypatch: pytest.MonkeyPatch, owner: type, name: str, call: int) -> None:
    """Make method `name` of `owner` raise KeyboardInterrupt at its `call`-th call (1-based):
    a kill there, the run stops at once, saving nothing more."""
    original: Callable = getattr(owner, name)
    calls = []

    def killed(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, killed)


# (train.checkpoint_every, the class and method whose call number N kills the run); with 3
# steps an epoch, what the last checkpoint holds then and what tb/ holds beyond it
KILLS = {
    # last at the end of epoch 1 (step 3); tb/ has step 3's loss
    "in epoch 2, before a checkpoint": ("2", OptimizerStep, "__call__", 5),
    # last at epoch 1, step 2; tb/ has step 2's loss and epoch 1's metrics
    "after the evaluation, before its checkpoint": ("2", Checkpointer, "end_epoch", 1),
    # last.pt after epoch 1's last step, the epoch not recorded; tb/ has its metrics
    "after a checkpoint at the last step": ("3", Checkpointer, "end_epoch", 1),
}


@pytest.mark.parametrize("kill", KILLS, ids=list(KILLS))
def test_killed_and_resumed_run_has_one_point_per_step_and_epoch(
        kill: str, vqa2_layout: VQA2Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    every, owner, name, call = KILLS[kill]
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        kill_at_call(patch, owner, name, call)
        result = run_cli(capsys, *train_args(vqa2_layout, run,
                                             "--set", f"train.checkpoint_every={every}"))
    assert result.code == 130, result.err
    result = run_cli(capsys, "train", "--resume", run, "--json")
    assert result.code == 0, result.err
    assert_tb_matches_metrics(run)


def test_a_finished_run_trained_longer(vqa2_layout: VQA2Layout, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """One epoch, then --resume --epochs 2: epoch 1's point, which ends where the resumed
    run starts, is not lost, and the first hparams are replaced."""
    run = tmp_path / "run"
    result = run_cli(capsys, *train_args(vqa2_layout, run), "--epochs", "1")
    assert result.code == 0, result.err
    assert [s for s, _ in scalars(run)["val/overall"]] == [STEPS_PER_EPOCH]
    result = run_cli(capsys, "train", "--resume", run, "--epochs", str(EPOCHS), "--json")
    assert result.code == 0, result.err
    assert_tb_matches_metrics(run)


def test_run_log_writes_only_on_rank_0_when_enabled(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {"epoch": 0, "train_loss": 1.0, "train_seconds": 2.0, "val": {"overall": 50.0}}
    with RunLog(tmp_path / "off", STEPS_PER_EPOCH, Progress(), enabled=False) as tb:
        tb.step(0, 1.0, 1e-4)
        tb.epoch(entry)
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    with RunLog(tmp_path / "rank1", STEPS_PER_EPOCH, Progress()) as tb:
        tb.step(0, 1.0, 1e-4)
        tb.epoch(entry)
    assert list(tmp_path.iterdir()) == []


def test_a_new_event_file_sorts_after_the_earlier_ones(tmp_path: Path) -> None:
    """TensorBoard reads the files in name order, and a purge applies to those before it: a
    run resumed in the second its predecessor started must not sort first."""
    (tmp_path / "tb").mkdir()
    earlier = tmp_path / "tb" / f"events.out.tfevents.{int(time.time()):010d}.~.1.0"  # last
    earlier.write_bytes(b"")                                                        # that second
    RunLog(tmp_path, STEPS_PER_EPOCH, Progress()).close()
    assert sorted(p.name for p in (tmp_path / "tb").iterdir())[0] == earlier.name
