"""``lrcn train --init SRC``: a run that starts from another run's weights and vocabularies
(a new optimiser, the schedule from epoch 0), with any config whose tensors match: the
layer-residual placement included (``model.lrm`` adds no parameters)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (
    VQA2Layout, assert_one_line_error, read_metrics, run_cli, tiny_set_args, trained_run,
)
from lrcn.cli import build_parser, train_config
from lrcn.config import RunConfig, load_config
from lrcn.data import WordVocab
from lrcn.data.batches import batch_loader
from lrcn.data.pipeline import model_inputs
from lrcn.engine.checkpoint import (
    load_checkpoint, resolve_checkpoint, save_checkpoint, weight_mismatch,
)
from lrcn.engine.inference import load_model
from lrcn.engine.setup import check_train_config, setup_run
from lrcn.errors import LrcnError

# The source: LRCN-ED without the layer-residual mechanism (as MCAN), one tiny epoch.
SOURCE = ["--variant", "ed", "--lrm", "none", "--epochs", "1", *tiny_set_args(),
          "--set", "data.train_limit=200", "--set", "data.val_limit=50", "--json"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.mktemp("init") / "source", *SOURCE)


def cli_config(*argv: str) -> RunConfig:
    return train_config(build_parser().parse_args(["train", *map(str, argv)]))


def answers_of(run_model: torch.nn.Module, batch: dict) -> torch.Tensor:
    run_model.eval()
    with torch.no_grad():
        return run_model.forward_all(**model_inputs(batch, torch.device("cpu"))).answer


# --------------------------------------------------------------------------- config


def test_init_starts_from_the_source_config(source: Path) -> None:
    """Without --config the base is the source run's config; the flags and --set apply on
    top; with --config the base is that preset."""
    saved = load_checkpoint(source).config
    cfg = cli_config("--init", source, "--lrm", "sa", "--set", "train.lr=1e-4")
    assert cfg.train.init == str(source)
    assert (cfg.model.lrm, cfg.train.lr) == ("sa", 1e-4)
    cfg.model.lrm, cfg.train.lr, cfg.train.init = "none", saved.train.lr, None
    assert cfg == saved

    preset = cli_config("--config", "easyvqa", "--init", source)
    assert preset.train.init == str(source) and preset.model == load_config("easyvqa").model


def test_init_rescales_the_source_schedule_as_a_preset_is(source: Path,
                                                          tmp_path: Path) -> None:
    """The source's schedule is stated for its epochs: --epochs N rescales it (follow_epochs);
    decay epochs given for this run that do not fit it are an error, as for any run."""
    ckpt = load_checkpoint(source)
    t = ckpt.config.train
    t.epochs, t.warmup_epochs, t.decay_epochs = 13, 3, [10, 12]  # the paper's (MCAN's)
    path = tmp_path / "paper"
    save_checkpoint(path, ckpt)

    cfg = cli_config("--init", path, "--epochs", "2")
    assert (cfg.train.epochs, cfg.train.warmup_epochs, cfg.train.decay_epochs) == (2, 1, [])
    assert cli_config("--init", path).train.decay_epochs == [10, 12]  # as the source states
    cfg = cli_config("--init", path, "--epochs", "2", "--set", "train.decay_epochs=[10,12]")
    with pytest.raises(LrcnError, match=r"decay epoch\(s\) \[10, 12\] never take effect"):
        check_train_config(cfg)


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(LrcnError, match=f"--init {tmp_path / 'nope'}: checkpoint not found"):
        cli_config("--init", tmp_path / "nope")


# --------------------------------------------------------------------------- weights


def test_init_run_holds_the_source_weights_and_vocabularies(source: Path,
                                                            tmp_path: Path) -> None:
    """Before any step, LRCN-ED (lrm sa) initialised from the lrm-none source has the source's
    weights tensor for tensor and its vocabularies, yet computes another function; with the
    source's own placement it computes the source's."""
    ckpt = load_checkpoint(source)
    run = setup_run(cli_config("--init", source, "--lrm", "sa"), tmp_path / "sa")
    assert run.cfg.model.lrm == "sa" and run.saved is None and run.progress.epoch == 0
    state = run.model.state_dict()
    assert state.keys() == ckpt.model_state.keys()
    for name, tensor in ckpt.model_state.items():
        assert torch.equal(state[name], tensor), name
    assert run.data.word_vocab == ckpt.word_vocab
    assert run.data.answer_vocab == ckpt.answer_vocab

    batch = next(iter(batch_loader(run.train_split, len(run.data.answer_vocab), 16,
                                   shuffle=False)))
    original = answers_of(load_model(source).model, batch)
    assert not torch.allclose(answers_of(run.model, batch), original, atol=1e-4)
    same = setup_run(cli_config("--init", source), tmp_path / "none")
    torch.testing.assert_close(answers_of(same.model, batch), original)


def test_init_on_other_data_keeps_the_source_vocabularies(source: Path, tmp_path: Path,
                                                          vqa2_layout: VQA2Layout) -> None:
    """Fine-tuned on another dataset, the embedding rows and answer logits keep their meaning:
    both vocabularies are the source's, not built from the new data; a training answer outside
    the source's answer vocabulary (the counts 1, 2, 3) has no target."""
    ckpt = load_checkpoint(source)
    cfg = cli_config("--init", source, "--lrm", "sa", "--dataset", "vqa2", "--data-root",
                     vqa2_layout.root)
    run = setup_run(cfg, tmp_path / "vqa2")
    assert run.data.train.name == "train2014"
    assert run.data.word_vocab == ckpt.word_vocab
    assert run.data.answer_vocab == ckpt.answer_vocab
    own = WordVocab.build([r.question for r in run.data.train.records])
    assert own != ckpt.word_vocab  # the data alone would give another vocabulary
    split = run.train_split
    for i, record in enumerate(split.records):
        has_target = bool((split.target_index[i] >= 0).any())
        counts = record.question.startswith("How many")
        assert has_target != counts, (record.question, split.target_index[i])


@pytest.mark.parametrize("argv,fragments", [
    (["--layers", "2"], ["32 tensor(s) missing from the checkpoint: net.question_blocks.1."]),
    (["--set", "model.d_model=32"],
     ["tensor(s) of another shape (checkpoint vs model): net.lstm.weight_ih_l0 [64, 16] vs "
      "[128, 16]"]),
])
def test_tensors_that_do_not_match_are_named(source: Path, tmp_path: Path, argv: list[str],
                                             fragments: list[str]) -> None:
    path = resolve_checkpoint(source) / "model.safetensors"  # the weights file is named
    with pytest.raises(LrcnError) as info:
        setup_run(cli_config("--init", source, *argv), tmp_path / "run")
    message = str(info.value)
    assert message.startswith(f"--init {source}: the weights of {path} do not fit the model "
                              "this run's config describes: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not (tmp_path / "run").exists()


def test_weight_mismatch_counts_each_kind() -> None:
    model = {f"layer{i}.weight": torch.zeros(2, 2) for i in range(5)}
    state = {"layer0.weight": torch.zeros(2, 2), "layer1.weight": torch.zeros(3, 2),
             "extra.bias": torch.zeros(2)}
    assert weight_mismatch(model, dict(model)) == ""
    assert weight_mismatch(model, state) == (
        "3 tensor(s) missing from the checkpoint: layer2.weight, layer3.weight, layer4.weight; "
        "1 tensor(s) unexpected (not in the model): extra.bias; "
        "1 tensor(s) of another shape (checkpoint vs model): layer1.weight [3, 2] vs [2, 2]")
    assert weight_mismatch(model, {}, shown=2) == (
        "5 tensor(s) missing from the checkpoint: layer0.weight, layer1.weight, ... (3 more)")


# --------------------------------------------------------------------------- command line


def test_cli_init_trains_and_resumes(source: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    """``lrcn train --init SRC --lrm sa``: a run from epoch 0 at the schedule's first lr whose
    config.yaml and checkpoints record train.init; resumed, it needs no source any more (its
    last checkpoint has the weights and vocabularies)."""
    copy = tmp_path / "mcan"
    shutil.copytree(source, copy)
    out = tmp_path / "lrcn-ed"
    with caplog.at_level("INFO", logger="lrcn.engine.setup"):
        result = run_cli(capsys, "train", "--init", copy, "--lrm", "sa", "--epochs", "1",
                         "--out", out, "--json")
    assert result.code == 0, result.err
    assert f"initialised from {copy} (81 tensors)" in caplog.text  # 79 + the grid reduction's
    config = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert config["train"]["init"] == str(copy) and config["model"]["lrm"] == "sa"
    cfg = load_config(str(out / "config.yaml"))
    assert [m["epoch"] for m in read_metrics(out)] == [0]
    assert read_metrics(out)[0]["lr"] == pytest.approx(cfg.train.lr)  # epoch 0 of its schedule
    loaded = load_model(out)  # the checkpoint rebuilds its model
    assert loaded.checkpoint.config.train.init == str(copy)
    assert loaded.word_vocab == load_checkpoint(copy).word_vocab
    first = load_checkpoint(out / "checkpoints" / "last")
    assert first.optimizer_state is not None

    shutil.rmtree(copy)  # the resumed run reads its own last checkpoint, not the source
    caplog.clear()
    with caplog.at_level("INFO", logger="lrcn.engine.setup"):
        result = run_cli(capsys, "train", "--resume", out, "--epochs", "2", "--json")
    assert result.code == 0, result.err
    assert "initialised from" not in caplog.text
    assert [m["epoch"] for m in read_metrics(out)] == [0, 1]
    last = load_checkpoint(out / "checkpoints" / "last")
    assert last.epoch == 1 and last.config.train.init == str(copy)
    assert last.word_vocab == first.word_vocab and last.answer_vocab == first.answer_vocab


def test_cli_init_mismatch_is_one_line(source: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    result = run_cli(capsys, "train", "--init", source, "--variant", "cst", "--out", out)
    assert_one_line_error(result, "train", f"--init {source}: the weights of",
                          "missing from the checkpoint: ")
    assert not out.exists()


def test_init_reads_no_glove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The word embeddings come with the source's weights: its GloVe file is not read (here:
    gone), and word_dim stays the source's."""
    glove = tmp_path / "glove.txt"
    words = ("what", "color", "is", "the", "shape", "circle")
    glove.write_text("".join(f"{w} " + " ".join([f"0.{i}"] * 25) + "\n"
                             for i, w in enumerate(words)), encoding="utf-8")
    src = tmp_path / "runs" / "glove"
    result = run_cli(capsys, "train", "--out", src, "--glove", glove, *SOURCE)
    assert result.code == 0, result.err
    assert load_checkpoint(src).config.model.word_dim == 25
    glove.unlink()
    run = setup_run(cli_config("--init", src, "--lrm", "sa"), tmp_path / "runs" / "init")
    assert run.cfg.model.word_dim == 25
    assert torch.equal(run.model.state_dict()["net.embed.weight"],
                       load_checkpoint(src).model_state["net.embed.weight"])
