"""No lost work: a run killed (SIGKILL) or interrupted (Ctrl-C) mid-epoch and resumed with
``lrcn train --resume`` ends as the uninterrupted run of the same seed (weights, Adam state,
random state, metrics, best epoch); a non-finite loss skips its step, and too many in a row
stop the run with a checkpoint."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import Result, read_metrics, run_cli, tiny_set_args, trained_run
from lrcn.engine import step
from lrcn.engine.checkpoint import load_checkpoint, save_checkpoint
from lrcn.errors import LrcnError
from conftest import assert_one_line_error
from lrcn.fileio import current_folder

# The tiny model with dropout (whose random state a resumed run must restore), 50 steps an
# epoch, the last checkpoint every 5 steps.
RUN = [*tiny_set_args(), "--set", "model.dropout=0.1", "--set", "data.train_limit=400",
       "--set", "data.val_limit=50", "--batch-size", "8", "--epochs", "2",
       "--set", "train.checkpoint_every=5", "--json"]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (in this process; one thread, as the subprocesses below)."""
    return trained_run(tmp_path_factory.mktemp("resume") / "whole", *RUN)


def start_training(out: Path) -> subprocess.Popen:
    """``lrcn train`` as a user starts it, in its own process."""
    return subprocess.Popen([sys.executable, "-m", "lrcn", "train", "--out", str(out), *RUN],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def progress_of(run: Path) -> dict[str, Any] | None:
    """The progress saved in the last checkpoint, or None before the first save (or while
    the writer outpaces this poll). The folder is swapped in whole while training writes it;
    load_checkpoint reads one version of it, and gives up after the writer has swapped it under
    each of its attempts, which a tiny model saving every 5 steps can do to a starved poller."""
    last = run / "checkpoints" / "last"
    if current_folder(last) is None:
        return None
    try:
        return load_checkpoint(last).progress
    except LrcnError as exc:
        if "changed while being read" in str(exc):
            return None
        raise


def wait_for_step(proc: subprocess.Popen, run: Path, epoch: int, timeout: float = 60) -> dict:
    """Poll the last checkpoint until it holds a mid-epoch step of `epoch`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = progress_of(run)
        if progress is not None and progress["epoch"] == epoch and progress["step"] > 0:
            return progress
        if proc.poll() is not None:
            pytest.fail(f"training ended before a checkpoint of epoch {epoch + 1}: "
                        f"{proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no mid-epoch checkpoint of epoch {epoch + 1} in {timeout} s")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a folder by name, for comparing versions of a checkpoint."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def resume(capsys: pytest.CaptureFixture[str], run: Path, *extra: str) -> Result:
    result = run_cli(capsys, "train", "--resume", run, "--json", *extra)
    assert result.code == 0, result.err
    return result


def without_timings(run: Path) -> list[dict]:
    return [{k: v for k, v in epoch.items() if not k.endswith("_seconds")}
            for epoch in read_metrics(run)]


def assert_same_run(run: Path, reference: Path) -> None:
    """The same final weights (last and best), Adam state, random state and metrics."""
    assert without_timings(run) == without_timings(reference)
    for name in ("last", "best"):
        a, b = (load_checkpoint(r / "checkpoints" / name) for r in (run, reference))
        assert a.epoch == b.epoch and a.model_state.keys() == b.model_state.keys()
        for key in a.model_state:
            torch.testing.assert_close(a.model_state[key], b.model_state[key], rtol=0, atol=0,
                                       msg=key)
    a, b = (load_checkpoint(r / "checkpoints" / "last") for r in (run, reference))
    assert a.optimizer_state["state"].keys() == b.optimizer_state["state"].keys()
    for index, state in a.optimizer_state["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(value, b.optimizer_state["state"][index][key], rtol=0,
                                       atol=0)
    assert torch.equal(a.progress["rng"][0]["torch"], b.progress["rng"][0]["torch"])


def test_killed_run_resumes_exactly(whole_run: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL in the second epoch, after a mid-epoch checkpoint: nothing to save then."""
    run = tmp_path / "killed"
    proc = start_training(run)
    wait_for_step(proc, run, epoch=1)
    proc.kill()
    proc.communicate()
    saved = progress_of(run)
    assert saved["epoch"] == 1 and 0 < saved["step"] < 50 and len(saved["history"]) == 1
    # the last checkpoint was read whole above; a write the kill interrupted is a staging
    # folder, which the resumed run removes (made here, in case the kill landed between writes)
    staging = run / "checkpoints" / ".last.k1ll3d.tmp"
    staging.mkdir(exist_ok=True)
    (staging / "model.safetensors").write_bytes(b"half a checkpoint")

    summary = resume(capsys, run).json
    assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert_same_run(run, whole_run)
    whole = read_metrics(whole_run)[-1]
    assert summary["overall"] == max(m["val"]["overall"] for m in without_timings(whole_run))
    assert summary["train_loss"] == whole["train_loss"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_saves_and_the_run_resumes_exactly(whole_run: Path, tmp_path: Path, sig: int,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """SIGINT (or a scheduler's SIGTERM) in the first epoch: the last checkpoint at the
    current step, one line, exit 130."""
    run = tmp_path / "interrupted"
    proc = start_training(run)
    seen = wait_for_step(proc, run, epoch=0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    saved = progress_of(run)
    assert saved["epoch"] == 0 and seen["step"] <= saved["step"] < 50
    last = err.strip().splitlines()[-1]
    assert last == (f"lrcn train: interrupted: saved {run / 'checkpoints' / 'last'} at epoch "
                    f"1/2, step {saved['step']}; continue with: lrcn train --resume {run}")

    resume(capsys, run)
    assert_same_run(run, whole_run)


def test_resuming_a_finished_run(whole_run: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The same epochs: nothing to do. More epochs: they follow. Another setting: refused."""
    before = folder_bytes(whole_run / "checkpoints" / "last")
    summary = resume(capsys, whole_run).json
    metrics = without_timings(whole_run)
    best = max(metrics, key=lambda m: m["val"]["overall"])  # the first of equals, as training
    assert summary["best_epoch"] == best["epoch"] + 1 and summary["epochs"] == 2
    assert summary["overall"] == best["val"]["overall"]
    assert folder_bytes(whole_run / "checkpoints" / "last") == before

    result = run_cli(capsys, "train", "--resume", whole_run, "--lr", "0.1")
    assert_one_line_error(result, "train", f"cannot resume {whole_run} with train.lr = 0.1",
                          "trained with 0.0003")
    result = run_cli(capsys, "train", "--resume", whole_run, "--epochs", "1")
    assert_one_line_error(result, "train", "train.epochs = 1", "trained 2 epoch(s)")
    assert folder_bytes(whole_run / "checkpoints" / "last") == before

    longer = tmp_path / "longer"
    shutil.copytree(whole_run, longer)
    resume(capsys, longer, "--epochs", "3", "--set", "train.checkpoint_every=0")
    metrics = without_timings(longer)
    assert [m["epoch"] for m in metrics] == [0, 1, 2] and metrics[:2] == without_timings(whole_run)
    assert load_checkpoint(longer / "checkpoints" / "last").config.train.epochs == 3


def test_resuming_weights_that_do_not_fit_is_refused(whole_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A last checkpoint whose weights do not fit the model (another lrcn wrote it, or it was
    edited): an error naming the file and the parameter, not torch's traceback."""
    run = tmp_path / "edited"
    shutil.copytree(whole_run, run)
    path = run / "checkpoints" / "last"
    ckpt = load_checkpoint(path)
    name = next(iter(ckpt.model_state))
    ckpt.model_state[name] = torch.zeros(3, 3)
    save_checkpoint(path, ckpt)
    result = run_cli(capsys, "train", "--resume", run, "--epochs", "3")
    assert_one_line_error(result, "train",
                          f"checkpoint {path / 'model.safetensors'} does not match the model", name)


# --------------------------------------------------------------------------- non-finite losses

SHORT = [*tiny_set_args(), "--set", "data.train_limit=64", "--batch-size", "8", "--epochs", "1",
         "--val-split", "none", "--json"]  # 8 optimizer steps


def poison_losses(monkeypatch: pytest.MonkeyPatch, steps: set[int], how: str) -> None:
    """Make the loss of the given optimizer steps (1-based) NaN or inf, or, with "gradient",
    leave it finite but give it a NaN gradient (d sqrt(x)/dx at 0, times 0)."""
    calls = []

    def task_loss(out: Any, *args: Any) -> torch.Tensor:
        calls.append(1)
        loss = original(out, *args)
        if len(calls) not in steps:
            return loss
        if how == "gradient":
            return loss + (out.answer * 0).sum().sqrt()
        return loss * float(how)

    original = step.task_loss
    monkeypatch.setattr(step, "task_loss", task_loss)


@pytest.mark.parametrize("how, extra", [("nan", []), ("inf", []),
                                        ("gradient", ["--set", "train.grad_clip=10"])])
def test_non_finite_steps_are_skipped(how: str, extra: list[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    poison_losses(monkeypatch, {3, 4}, how)
    result = run_cli(capsys, "train", "--out", tmp_path / "run", *SHORT, *extra)
    assert result.code == 0, result.err
    assert result.json["skipped_steps"] == 2
    (metrics,) = without_timings(tmp_path / "run")
    assert metrics["skipped_steps"] == 2 and math.isfinite(metrics["train_loss"])
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert all(torch.isfinite(v).all() for v in last.model_state.values())
    # Adam stepped 6 times of 8: no moment or step count saw the skipped ones.
    assert {int(s["step"]) for s in last.optimizer_state["state"].values()} == {6}


def test_too_many_non_finite_steps_stop_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    poison_losses(monkeypatch, set(range(1, 100)), "nan")
    run = tmp_path / "run"
    result = run_cli(capsys, "train", "--out", run, *SHORT, "--set", "train.max_bad_steps=3")
    assert result.code == 2
    assert_one_line_error(result, "train", "3 optimizer steps in a row had a non-finite loss",
                          "epoch 1/1, step 3", f"{run / 'checkpoints' / 'last'} holds the "
                          "weights from before them")
    last = load_checkpoint(run / "checkpoints" / "last")
    assert last.progress["step"] == 3 and last.progress["bad_in_a_row"] == 3
    assert last.optimizer_state["state"] == {}  # not one step taken
