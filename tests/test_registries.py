"""What the CLI, validation and the run rules derive from the registries and the config fields:
every preset, dataset and option, parametrised over the registries themselves, so a new one is
tested the day it lands."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import run_cli
from lrcn.config import (
    RunConfig, flag_fields, load_config, preset_names, resumable_fields,
)
from lrcn.data.registry import dataset_metric, dataset_names, default_splits
from lrcn.errors import LrcnError
from lrcn.evaluation.evaluators import build_evaluator
from lrcn.models import create_model, model_names


def train_help(capsys: pytest.CaptureFixture[str]) -> str:
    """The options part of ``lrcn train --help``, on one line (argparse wraps lines)."""
    with pytest.raises(SystemExit) as stop:
        run_cli(capsys, "train", "--help")
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split("options:", 1)[1].split())


def help_of(help_text: str, flag: str, next_flag: str) -> str:
    return help_text.split(f" {flag} ", 1)[1].split(f" {next_flag} ", 1)[0]


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_is_valid_and_builds_its_model(preset: str) -> None:
    cfg = load_config(preset)
    cfg.validate()
    assert cfg.model.arch in model_names() and cfg.data.dataset in dataset_names()
    # d_model etc. as the preset states them; the image side reads small grids so the
    # paper-size models build quickly (image_encoder stays the preset's kind of input)
    model_cfg = dataclasses.replace(cfg.model, encoder_weights=None)
    model = create_model(model_cfg, vocab_size=20, num_answers=7, random_weights=True)
    assert model.task == cfg.model.task and model.num_parameters() > 0


@pytest.mark.parametrize("dataset", dataset_names())
def test_every_dataset_has_splits_an_evaluator_and_a_place_in_the_help(
        dataset: str, capsys: pytest.CaptureFixture[str]) -> None:
    train_split, val_split = default_splits(dataset)
    assert train_split and val_split and train_split != val_split
    evaluator = build_evaluator(dataset_metric(dataset), [])
    assert hasattr(evaluator, "process") and hasattr(evaluator, "evaluate")
    assert dataset in help_of(train_help(capsys), "--dataset", "--data-root")


@pytest.mark.parametrize("arch", model_names())
def test_every_model_is_offered_by_the_cli(arch: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert arch in help_of(train_help(capsys), "--model", "--task")


# --init names a run whose config becomes the base: test_init.py checks that flag.
PLAIN_FLAGS = [(s, f) for s, f in flag_fields() if f"{s}.{f.name}" != "train.init"]


@pytest.mark.parametrize("section, field", PLAIN_FLAGS,
                         ids=[f"{s}.{f.name}" for s, f in PLAIN_FLAGS])
def test_every_field_flag_sets_its_field(section: str, field: dataclasses.Field,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A field that declares a flag has it, with its choices, and the flag sets the field."""
    from lrcn.cli import build_parser, train_config

    flag, choices = field.metadata["flag"], field.metadata["choices"]
    help_text = train_help(capsys)
    assert flag in help_text
    if choices:
        assert f"{flag} {{{','.join(choices)}}}" in help_text
    default = getattr(getattr(RunConfig(), section), field.name)
    if isinstance(default, bool):  # off by default: --flag; on: --no-flag
        if default:
            flag = f"--no-{flag[2:]}"
        argv, expected = [], not default
    elif isinstance(default, (int, float)):
        expected = type(default)(3)
        argv = [str(expected)]
    elif isinstance(default, list):
        argv, expected = ["x"], ["x"]
    else:  # a string: another choice, a registered dataset, or any word
        expected = next((c for c in choices or () if c != default),
                        "vqa2" if field.name == "dataset" else "x")
        argv = [expected]
    cfg = train_config(build_parser().parse_args(["train", flag, *argv]))
    assert getattr(getattr(cfg, section), field.name) == expected


def test_resumable_fields_are_declared_on_the_fields() -> None:
    resumable, movable = resumable_fields()
    assert {"train.epochs", "train.device", "train.num_workers"} <= set(resumable)
    assert set(movable) == {"data.data_root", "data.features", "data.glove", "train.init"}
    assert not {"train.lr", "train.seed", "model.d_model", "data.dataset"} & set(resumable)


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "epochs", 0, "train.epochs must be at least 1, got 0"),
    ("train", "num_workers", -1, "train.num_workers must be 0 or more, got -1"),
    ("train", "samples", 0, "train.samples must be at least 1 (or null), got 0"),
    ("train", "precision", "fp16", "train.precision must be one of fp32, bf16, got 'fp16'"),
    ("model", "variant", "xx", "model.variant must be one of ed, st, cst, got 'xx'"),
    ("model", "dropout", 1.0, "model.dropout must be in [0, 1), got 1.0"),
    ("model", "heads", 0, "model.heads must be at least 1, got 0"),
    ("data", "image_size", 0, "data.image_size must be at least 1, got 0"),
])
def test_each_section_validates_its_own_fields(section: str, key: str, value: object,
                                               message: str) -> None:
    cfg = RunConfig()
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(LrcnError) as refused:
        cfg.validate()
    assert str(refused.value) == message
