"""Users' own data: the preset a run starts from, and training length set by train.samples."""

from __future__ import annotations

import logging

import pytest
import yaml

from conftest import read_metrics, run_cli, tiny_set_args
from lrcn.cli import build_parser, train_config
from lrcn.config import (DEFAULT_PRESET, OWN_DATA_PRESET, TrainConfig, changed_fields,
                         default_preset, load_config)
from lrcn.config.schedule import epochs_for_samples, image_passes_per_epoch
from lrcn.engine.setup import check_train_config
from lrcn.errors import LrcnError


def _config(*argv: object):
    return train_config(build_parser().parse_args(["train", *map(str, argv)]))


@pytest.mark.parametrize(("dataset", "features", "preset"), [
    (None, False, DEFAULT_PRESET),
    ("easyvqa", False, DEFAULT_PRESET),
    ("easy-vizwiz", False, "easy-vizwiz"),      # a preset of its own name
    ("vqa2", False, OWN_DATA_PRESET),
    ("vizwiz", False, OWN_DATA_PRESET),
    ("relational-shapes", False, OWN_DATA_PRESET),
    ("clevr", False, "own-data-clevr"),         # an own-data preset for its kind of scene
    ("clevr", True, DEFAULT_PRESET),
    ("vqa2", True, DEFAULT_PRESET),             # feature stores: not trained from pixels
])
def test_default_preset(dataset, features, preset):
    assert default_preset(dataset, features) == preset


def test_own_data_runs_start_from_the_own_data_preset():
    cfg = _config("--dataset", "vizwiz", "--data-root", "D", "--task", "both")
    own = load_config(OWN_DATA_PRESET)
    assert cfg.model.position == own.model.position != "none"
    assert cfg.data.image_size == own.data.image_size
    assert cfg.train.samples == own.train.samples is not None
    assert (cfg.data.dataset, cfg.data.train_split, cfg.data.val_split) == ("vizwiz", "train", "val")
    assert cfg.model.task == "both"
    # the same dataset with --config keeps that preset; easy-VQA keeps the default
    assert _config("--dataset", "vqa2", "--config", "easyvqa").model.position == "none"
    assert _config().model.position == load_config(DEFAULT_PRESET).model.position


def test_the_clevr_preset_is_own_data_with_its_stated_changes():
    """own-data-clevr repeats own-data but for CLEVR's data, a wider CNN, cross-entropy and its
    sample budget: a change to own-data that it does not follow fails here."""
    changed = {name for name, _, _ in changed_fields(load_config(OWN_DATA_PRESET),
                                                      load_config("own-data-clevr"))}
    assert changed == {"data.dataset", "data.train_split", "data.val_split",
                       "model.encoder_channels", "train.samples", "train.answer_loss"}
    cfg = _config("--dataset", "clevr", "--data-root", "D")
    assert (cfg.model.encoder_channels, cfg.train.answer_loss) == (64, "ce")
    assert (cfg.data.train_split, cfg.data.val_split) == ("train", "val")


def test_paper_presets_keep_the_papers_model():
    for name in ("lrcn-ed-sa-6", "lrcn-st-sa-6", "lrcn-cst-sa-6", "lrcn-ed-sa-8"):
        assert load_config(name).model.position == "none"


@pytest.mark.parametrize(("samples", "questions", "epochs", "warmup", "decay"), [
    (500_000, 50_000, 10, 1, [8]),      # the stated length
    (500_000, 6_000, 83, 1, [66]),      # a small dataset: more epochs, the decay moved
    (500_000, 400_000, 1, 0, []),       # a large one: one epoch at least
    (500_000, 125_000, 4, 1, [3]),      # 3.2 -> 3
])
def test_samples_set_the_epochs_and_rescale_the_schedule(samples, questions, epochs, warmup,
                                                        decay, caplog):
    t = TrainConfig(epochs=10, samples=samples, warmup_epochs=1, decay_epochs=[8])
    with caplog.at_level(logging.INFO, logger="lrcn"):
        epochs_for_samples(t, questions)
    assert (t.epochs, t.warmup_epochs, t.decay_epochs) == (epochs, warmup, decay)
    if epochs != 10:
        assert (f"train.samples {samples} over {questions} training questions an epoch: "
                f"{epochs} epochs") in caplog.text


@pytest.mark.parametrize(("pixels", "grouped", "group_size", "passes"), [
    (False, True, None, 0), (False, False, None, 0),  # a feature store: no encoder pass
    (True, True, None, 500),                    # an image's questions share one pass
    (True, True, 3, 1500),                      # groups of 3, 3 and 2 questions: 3 passes
    (True, True, 8, 500), (True, True, 20, 500),
    (True, False, None, 4000), (True, False, 3, 4000),  # every question runs its image
])
def test_image_passes_per_epoch(pixels, grouped, group_size, passes):
    assert image_passes_per_epoch([8] * 500, pixels=pixels, grouped=grouped,
                                  group_size=group_size) == passes


def test_image_passes_count_towards_samples(caplog):
    """One question per photo (VizWiz) costs a pass each; eight per photo share one."""
    one_each = TrainConfig(epochs=10, samples=600_000, warmup_epochs=1, decay_epochs=[8])
    epochs_for_samples(one_each, 6000, image_passes_per_epoch([1] * 6000, True, True))
    eight_each = TrainConfig(epochs=10, samples=600_000, warmup_epochs=1, decay_epochs=[8])
    with caplog.at_level(logging.INFO, logger="lrcn"):
        epochs_for_samples(eight_each, 32000, image_passes_per_epoch([8] * 4000, True, True))
    assert (one_each.epochs, eight_each.epochs) == (50, 17)
    assert ("train.samples 600000 over 32000 training questions and 4000 image passes an "
            "epoch: 17 epochs") in caplog.text


def test_explicit_epochs_clear_samples():
    assert _config("--dataset", "vqa2", "--data-root", "D", "--epochs", "3").train.samples is None
    assert _config("--dataset", "vqa2", "--data-root", "D",
                   "--set", "train.epochs=3").train.samples is None
    both = _config("--dataset", "vqa2", "--data-root", "D", "--epochs", "3",
                   "--set", "train.samples=1000")
    assert (both.train.epochs, both.train.samples) == (3, 1000)


def test_bad_samples_are_refused():
    cfg = load_config(OWN_DATA_PRESET)
    cfg.train.samples = 0
    with pytest.raises(LrcnError, match="train.samples must be at least 1"):
        check_train_config(cfg)


def test_a_run_trains_as_many_epochs_as_its_samples_give(vqa2_layout, tmp_path, capsys):
    """The tiny VQA-v2 layout's training split, samples for three passes over it: its
    questions and, as the own-data preset groups them by image, one pass of each image."""
    from lrcn.data import load_split

    records = load_split("vqa2", vqa2_layout.root, "train2014").records
    questions = len(records) + len({r.image_key for r in records})
    run = tmp_path / "run"
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", vqa2_layout.root,
                     "--train-split", "train2014", "--val-split", "val2014", "--out", run,
                     "--json", "--set", f"train.samples={3 * questions}",
                     "--set", "data.image_size=32", *tiny_set_args())
    assert result.code == 0, result.err
    assert len(read_metrics(run)) == 3
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["epochs"] == 3 and len(saved["lr_per_epoch"]) == 3
    assert saved["model"]["position"] == load_config(OWN_DATA_PRESET).model.position
