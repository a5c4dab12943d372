"""The learning-rate schedule follows the run's length: a preset states it for its own epochs,
``--epochs`` rescales it (logged), a resumed run keeps it, and every run logs it and lists it
in config.yaml as the derived ``lr_per_epoch``."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from conftest import read_metrics, run_cli, tiny_set_args
from lrcn.cli import build_parser, train_config
from lrcn.config import (
    RunConfig,
    TrainConfig,
    config_to_dict,
    load_config,
    save_config,
)
from lrcn.engine.checkpoint import load_checkpoint
from lrcn.config.schedule import describe_schedule, lr_per_epoch, rescale_schedule
from lrcn.engine.setup import check_train_config
from lrcn.errors import LrcnError
from conftest import assert_refused


def _config(*argv: object) -> RunConfig:
    """``lrcn train``'s config for these flags, as the command resolves it."""
    return train_config(build_parser().parse_args(["train", *map(str, argv)]))


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="lrcn")
    return caplog


def _schedule_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith(("train.warmup_epochs", "train.decay_epochs",
                                          "train.epochs"))]


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(("epochs", "warmup", "decay", "new", "expected"), [
    (4, 1, [3], 4, (1, [3])),              # the stated length: as stated
    (4, 1, [3], 12, (1, [9])),             # the run
    (4, 1, [3], 6, (1, [5])),              # 4.5 rounds half up (round() would give 4)
    (4, 1, [3], 3, (1, [2])),
    (4, 1, [3], 2, (1, [])),               # 1.5 -> 2: not within the run, dropped
    (4, 1, [3], 1, (0, [])),               # the warm-up would fill the run
    (13, 3, [10, 12], 26, (3, [20, 24])),  # the paper's schedule, twice as long
    (13, 3, [10, 12], 6, (3, [5])),        # 5.5 -> 6 is past the run's end
    (13, 3, [10, 12], 4, (3, [])),         # 3.08 -> 3 is not after the warm-up
    (10, 0, [6, 7], 3, (0, [2])),          # 1.8 and 2.1 meet: one decay
    (4, 0, [2, 1], 8, (0, [2, 4])),        # strictly increasing whatever the stated order
])
def test_rescale_schedule(epochs: int, warmup: int, decay: list[int], new: int,
                          expected: tuple[int, list[int]]) -> None:
    stated = TrainConfig(epochs=epochs, warmup_epochs=warmup, decay_epochs=decay, lr=0.5)
    rescaled = rescale_schedule(stated, new)
    assert (rescaled.warmup_epochs, rescaled.decay_epochs) == expected
    assert rescaled.epochs == new and rescaled.lr == 0.5  # nothing else changes
    assert (stated.epochs, stated.warmup_epochs, stated.decay_epochs) == (epochs, warmup, decay)


def test_epochs_flag_rescales_the_preset_schedule(info_logs: pytest.LogCaptureFixture) -> None:
    """--epochs 12 on the 3-epoch easyvqa preset decays at epoch 8, not 2."""
    cfg = _config("--dataset", "vqa2", "--data-root", "D", "--config", "easyvqa", "--epochs", "12")
    assert (cfg.train.epochs, cfg.train.warmup_epochs, cfg.train.decay_epochs) == (12, 0, [8])
    assert _schedule_lines(info_logs) == [
        "train.decay_epochs [2] -> [8]: preset easyvqa states its schedule for 3 epochs, "
        "this run has 12"]
    assert lr_per_epoch(cfg.train).count(pytest.approx(0.0003 * 0.2)) == 4  # not 10 of 12


def test_set_epochs_rescales_and_logs_every_change(info_logs: pytest.LogCaptureFixture) -> None:
    cfg = _config("--config", "lrcn-ed-sa-6", "--set", "train.epochs=1")
    assert (cfg.train.warmup_epochs, cfg.train.decay_epochs) == (0, [])
    assert _schedule_lines(info_logs) == [
        "train.warmup_epochs 3 -> 0: preset lrcn-ed-sa-6 states its schedule for 13 epochs, "
        "this run has 1",
        "train.decay_epochs [10, 12] -> []: preset lrcn-ed-sa-6 states its schedule for 13 "
        "epochs, this run has 1"]
    info_logs.clear()
    cfg = _config("--config", "lrcn-ed-sa-6", "--epochs", "26")
    assert (cfg.train.warmup_epochs, cfg.train.decay_epochs) == (3, [20, 24])
    assert _schedule_lines(info_logs) == [
        "train.decay_epochs [10, 12] -> [20, 24]: preset lrcn-ed-sa-6 states its schedule "
        "for 13 epochs, this run has 26"]


def test_a_config_file_states_its_schedule_for_its_epochs(
        tmp_path: Path, info_logs: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 10\n  warmup_epochs: 2\n  decay_epochs: [5, 8]\n",
                    encoding="utf-8")
    assert _config("--config", path).train.decay_epochs == [5, 8]
    assert _schedule_lines(info_logs) == []  # its own length: nothing to adjust
    assert _config("--config", path, "--epochs", "20").train.decay_epochs == [10, 16]
    assert _schedule_lines(info_logs) == [
        f"train.decay_epochs [5, 8] -> [10, 16]: {path} states its schedule for 10 epochs, "
        "this run has 20"]


def test_decay_epochs_set_by_the_user_are_kept(info_logs: pytest.LogCaptureFixture) -> None:
    cfg = _config("--epochs", "12", "--set", "train.decay_epochs=[3]")
    assert (cfg.train.warmup_epochs, cfg.train.decay_epochs) == (0, [3])
    assert _schedule_lines(info_logs) == []
    # The warm-up the user sets is theirs too; the decay epochs still follow the epochs.
    cfg = _config("--epochs", "8", "--set", "train.warmup_epochs=2")
    assert (cfg.train.warmup_epochs, cfg.train.decay_epochs) == (2, [5])


def test_a_resumed_run_keeps_its_saved_schedule(
        tmp_path: Path, info_logs: pytest.LogCaptureFixture) -> None:
    """Also a run saved before lr_per_epoch existed (its config.yaml without the list)."""
    for name, write in (("new", save_config), ("old", _save_config_without_lr_per_epoch)):
        run = tmp_path / name
        run.mkdir()
        write(load_config("easyvqa"), run / "config.yaml")
        info_logs.clear()
        cfg = _config("--resume", run, "--epochs", "12")
        assert (cfg.train.epochs, cfg.train.warmup_epochs, cfg.train.decay_epochs) == (12, 0, [2])
        assert _schedule_lines(info_logs) == [
            "train.epochs 3 -> 12 on resume: the run keeps its saved schedule "
            "(warmup_epochs 0, decay_epochs [2])"]


def _save_config_without_lr_per_epoch(cfg: RunConfig, path: Path) -> None:
    """config.yaml as lrcn wrote it before the schedule was saved in it."""
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--epochs", "12", "--set", "train.decay_epochs=[3,12]"],
     ["train.decay_epochs [3, 12]: decay epoch(s) [12] never take effect in a run of 12 epochs"]),
    (["--set", "train.warmup_epochs=3"],
     ["train.warmup_epochs 3 must be less than train.epochs 3"]),
    (["--epochs", "1", "--set", "train.warmup_epochs=1"],
     ["train.warmup_epochs 1 must be less than train.epochs 1"]),
    (["--set", "train.warmup_epochs=-1"], ["train.warmup_epochs must be 0 or more, got -1"]),
])
def test_a_schedule_that_does_not_fit_the_run_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
        fragments: list[str]) -> None:
    out = tmp_path / "run"
    assert_refused(run_cli(capsys, "train", "--out", out, *extra), "train", *fragments,
                   absent=(out,))


def test_a_resumed_run_is_not_refused_for_its_saved_schedule() -> None:
    """Resumed with fewer epochs than it was started with (and has trained), or saved before
    this check: its schedule is the run's and may not change, so it does not have to fit."""
    cfg = load_config("easyvqa")
    cfg.train.epochs = 2  # decay epoch 2 is past the end
    check_train_config(cfg, resume=True)
    with pytest.raises(LrcnError, match=r"decay epoch\(s\) \[2\] never take effect"):
        check_train_config(cfg)


# --------------------------------------------------------------------------- lr per epoch


def test_lr_per_epoch() -> None:
    easyvqa = load_config("easyvqa").train
    assert lr_per_epoch(easyvqa) == pytest.approx([3e-4, 3e-4, 6e-5])
    assert describe_schedule(lr_per_epoch(easyvqa)) == "epochs 1-2 0.0003, epoch 3 6e-05"
    assert describe_schedule(lr_per_epoch(easyvqa), easyvqa.warmup_steps) == (
        "rising over the first 400 steps, epochs 1-2 0.0003, epoch 3 6e-05")
    paper = TrainConfig()
    assert lr_per_epoch(paper) == pytest.approx(
        [2.5e-5, 5e-5, 7.5e-5] + [1e-4] * 7 + [2e-5] * 2 + [4e-6])
    assert describe_schedule(lr_per_epoch(paper)) == (
        "epoch 1 2.5e-05, epoch 2 5e-05, epoch 3 7.5e-05, epochs 4-10 0.0001, "
        "epochs 11-12 2e-05, epoch 13 4e-06")
    assert lr_per_epoch(dataclasses.replace(paper, epochs=2)) == pytest.approx([2.5e-5, 5e-5])


# --------------------------------------------------------------------------- config.yaml


def test_config_yaml_lists_lr_per_epoch_and_reads_back(tmp_path: Path) -> None:
    cfg = _config("--epochs", "12")
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert saved["lr_per_epoch"] == pytest.approx(lr_per_epoch(cfg.train))
    assert saved["lr_per_epoch"] == [0.0003] * 8 + [6e-05] * 4  # readable values
    assert load_config(str(path)) == cfg
    assert _config("--config", path) == cfg  # lrcn train --config RUN/config.yaml repeats it


@pytest.mark.parametrize(("edit", "shown"), [
    (lambda d: d["lr_per_epoch"].__setitem__(0, 0.0001), "[0.0001, 0.0003, 6e-05]"),
    (lambda d: d["train"].__setitem__("lr", 0.001), "[0.0003, 0.0003, 6e-05]"),
    (lambda d: d["train"].__setitem__("epochs", 5), "[0.0003, 0.0003, 6e-05]"),
    (lambda d: d.__setitem__("lr_per_epoch", "fast"), "'fast'"),
    (lambda d: d.__setitem__("lr_per_epoch", None), "None"),
])
def test_an_lr_per_epoch_that_disagrees_is_refused(tmp_path: Path, edit, shown: str) -> None:
    path = tmp_path / "config.yaml"
    save_config(load_config("easyvqa"), path)
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(values)
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    with pytest.raises(LrcnError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: lr_per_epoch ")
    assert "disagrees with the train section" in message
    assert "derived from train.epochs, lr, warmup_epochs, decay_epochs and decay_rate" in message
    assert "edit those" in message
    assert shown in message


# --------------------------------------------------------------------------- a run


def test_a_run_logs_saves_and_trains_its_schedule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        info_logs: pytest.LogCaptureFixture) -> None:
    """8 questions, one step an epoch: the log, config.yaml, metrics and checkpoint agree;
    resumed with more epochs, the saved schedule goes on."""
    run = tmp_path / "run"
    result = run_cli(capsys, "train", "--out", run, "--epochs", "3", "--set",
                     "data.train_limit=8", "--batch-size", "8", "--val-split", "none",
                     "--json", *tiny_set_args())
    assert result.code == 0, result.err
    expected = [0.0003, 0.0003, 0.0003 * 0.2]  # the preset's 3 epochs: decay epoch 2
    assert ("lr schedule: rising over the first 400 steps, epochs 1-2 0.0003, epoch 3 6e-05"
            in info_logs.messages)
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["lr_per_epoch"] == pytest.approx(expected)
    assert [m["lr"] for m in read_metrics(run)] == pytest.approx(expected)
    # Checkpoints keep the config as before (no derived key): old and new ones load alike.
    saved = json.loads((run / "checkpoints" / "last" / "config.json").read_text("utf-8"))
    assert "lr_per_epoch" not in saved
    assert load_checkpoint(run / "checkpoints" / "last").config == load_config(
        str(run / "config.yaml"))

    info_logs.clear()
    result = run_cli(capsys, "train", "--resume", run, "--epochs", "5", "--json")
    assert result.code == 0, result.err
    assert [m["lr"] for m in read_metrics(run)] == pytest.approx(expected + [6e-05] * 2)
    assert any(re.match(r"train\.epochs 3 -> 5 on resume: the run keeps its saved schedule", m)
               for m in info_logs.messages)
    assert ("lr schedule: rising over the first 400 steps, epochs 1-2 0.0003, epochs 3-5 6e-05"
            in info_logs.messages)
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))[
        "lr_per_epoch"] == pytest.approx(expected + [6e-05] * 2)
