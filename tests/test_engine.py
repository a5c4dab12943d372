"""Engine: lr schedule, run config, checkpoints, seeded training."""

from __future__ import annotations

import os
import stat
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (
    TINY_SET, VQA2Layout, legacy_payload, read_metrics, run_cli, tiny_set_args,
    write_legacy_checkpoint,
)
from lrcn.cli import build_parser, train_config
from lrcn.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    config_from_dict,
    load_config,
    preset_names,
    save_config,
)
from lrcn.data.answers import AnswerVocab
from lrcn.data.text import WordVocab
from lrcn.engine.checkpoint import (
    Checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from lrcn.engine.inference import load_model
from lrcn.config.schedule import lr_factor
from lrcn.engine.trainer import train
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write, remove_unfinished_writes
from lrcn.models import create_model


# --------------------------------------------------------------------------- schedule


def test_paper_schedule_warmup_then_step_decay() -> None:
    t = TrainConfig()  # the paper's settings are the defaults
    assert (t.warmup_epochs, t.decay_epochs, t.decay_rate, t.epochs) == (3, [10, 12], 0.2, 13)
    factors = [lr_factor(e, t.warmup_epochs, t.decay_epochs, t.decay_rate) for e in range(14)]
    expected = [1 / 4, 2 / 4, 3 / 4] + [1.0] * 7 + [0.2, 0.2, 0.04, 0.04]
    assert factors == pytest.approx(expected, rel=1e-12)


def test_schedule_without_warmup_or_decay() -> None:
    assert [lr_factor(e, 0, [], 0.2) for e in range(3)] == [1.0, 1.0, 1.0]
    assert lr_factor(0, 1, [1], 0.5) == 0.5 and lr_factor(1, 1, [1], 0.5) == 0.5


# --------------------------------------------------------------------------- config


def test_presets_load() -> None:
    assert "easyvqa" in preset_names()
    for name in preset_names():
        assert isinstance(load_config(name), RunConfig)
    cfg = load_config("easyvqa")
    assert load_config(None) == cfg  # the default preset
    # every value the preset file sets reaches the config
    preset = yaml.safe_load((resources.files("lrcn") / "presets" / "easyvqa.yaml").read_text())
    for section, values in preset.items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, (section, key)
    assert cfg.data.dataset == "easyvqa" and cfg.model.image_encoder == "small_cnn"


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(LrcnError, match=r"unknown preset 'nope'; known presets: .*easyvqa"):
        load_config("nope")


def test_unknown_section_and_key_are_rejected() -> None:
    with pytest.raises(LrcnError, match=r"unknown section 'optim' \(expected data, model, train\)"):
        config_from_dict({"optim": {"lr": 1}})
    with pytest.raises(LrcnError, match=r"unknown key 'd_modle'; known keys: .*\bd_model\b"):
        config_from_dict({"model": {"d_modle": 32}})
    with pytest.raises(LrcnError, match="must be a mapping"):
        config_from_dict({"model": [1, 2]})


def _cli_config(*argv: str) -> RunConfig:
    return train_config(build_parser().parse_args(["train", *argv]))


def test_set_overrides() -> None:
    cfg = _cli_config("--set", "model.d_model=32", "--set", "train.lr=1e-4",
                      "--set", "train.grad_clip=1", "--set", "data.train_limit=20",
                      "--set", "train.betas=[0.8, 0.9]", "--set", "data.cache_images=false")
    assert cfg.model.d_model == 32 and type(cfg.model.d_model) is int
    assert cfg.train.lr == pytest.approx(1e-4) and type(cfg.train.lr) is float
    assert cfg.train.grad_clip == 1.0 and type(cfg.train.grad_clip) is float
    assert cfg.data.train_limit == 20 and cfg.data.cache_images is False
    assert cfg.train.betas == (0.8, 0.9)
    assert _cli_config("--set", "data.train_limit=null").data.train_limit is None


def test_flags_then_set_precedence() -> None:
    cfg = _cli_config("--epochs", "3", "--variant", "cst", "--lr", "0.5", "--set", "train.epochs=4")
    assert cfg.train.epochs == 4 and cfg.model.variant == "cst" and cfg.train.lr == 0.5


@pytest.mark.parametrize(("item", "message"), [
    ("model.d_model=abc", r"d_model must be int, got 'abc'"),
    ("model.d_model=true", r"d_model must be int, got True"),
    ("model.d_model=null", r"d_model must be int, got None"),
    ("model.d_model=1.5", r"d_model must be int, got 1.5"),
    ("model.dropout=yes", r"dropout must be float, got True"),
    ("data.train_limit=abc", r"train_limit must be int or null, got 'abc'"),
    ("train.lr=fast", r"lr must be float, got 'fast'"),
    ("data.cache_images=1", r"cache_images must be bool, got 1"),
    ("data.features=[1]", r"features must be a list of str, got \[1\]"),
    ("data.features=store", r"features must be list, got 'store'"),
    ("train.decay_epochs=[ten]", r"decay_epochs must be a list of int, got \['ten'\]"),
    ("model.nope=1", r"unknown key 'nope'; known keys: .*d_model"),
    ("optim.lr=1", r"expected SECTION.KEY=VALUE"),
    ("model.d_model", r"expected SECTION.KEY=VALUE"),
])
def test_set_rejects_bad_values(item: str, message: str) -> None:
    with pytest.raises(LrcnError, match=message):
        _cli_config("--set", item)


def test_yaml_file_config(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  d_model: 32\n  variant: st\ntrain:\n  lr: 0.01\n  betas: [0.9, 0.99]\n",
                    encoding="utf-8")
    cfg = load_config(str(path))
    assert cfg.model.d_model == 32 and cfg.model.variant == "st"
    assert cfg.train.lr == 0.01 and cfg.train.betas == (0.9, 0.99)
    # A file starts from the defaults, not from a preset.
    assert cfg.data == DataConfig() and cfg.model.heads == ModelConfig().heads

    for text, message in [("model: [\n", "not valid YAML"), ("- 1\n", "expected a mapping"),
                          ("train:\n  epochs: many\n", "epochs must be int")]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(LrcnError, match=message) as info:
            load_config(str(path))
        assert str(path) in str(info.value)
    with pytest.raises(LrcnError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_save_config_round_trip(tmp_path: Path) -> None:
    cfg = config_from_dict({"model": {"d_model": 48, "variant": "cst"},
                            "train": {"betas": [0.5, 0.6], "grad_clip": 2.0},
                            "data": {"data_root": "/x", "train_limit": 7}})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["betas"] == [0.5, 0.6]


# --------------------------------------------------------------------------- checkpoints


def _tiny_model_config() -> ModelConfig:
    return _cli_config(*[arg for item in TINY_SET for arg in ("--set", item)]).model


def _checkpoint(epoch: int = 3) -> Checkpoint:
    cfg = RunConfig(model=_tiny_model_config())
    words = WordVocab(["what", "color", "is", "the", "shape"])
    answers = AnswerVocab(["red", "blue", "yes", "no"])
    torch.manual_seed(0)
    model = create_model(cfg.model, len(words), len(answers))
    return Checkpoint(cfg, words, answers, model.state_dict(), epoch,
                      {"epoch": epoch, "val": {"overall": 12.5}})


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    ckpt = _checkpoint()
    ckpt.optimizer_state = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    path = tmp_path / "checkpoints" / "last"
    save_checkpoint(path, ckpt)
    assert sorted(os.listdir(path.parent)) == ["last"]  # no staging folder left behind
    back = load_checkpoint(path)
    assert back.config == ckpt.config
    assert back.word_vocab == ckpt.word_vocab and back.answer_vocab == ckpt.answer_vocab
    assert back.epoch == 3 and back.metrics == ckpt.metrics
    assert back.optimizer_state == ckpt.optimizer_state
    assert back.model_state.keys() == ckpt.model_state.keys()
    for name, tensor in ckpt.model_state.items():
        assert torch.equal(back.model_state[name], tensor), name

    # The model rebuilt from the file alone has exactly the saved weights.
    loaded = load_model(tmp_path)  # a run folder resolves to its checkpoint
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, ckpt.model_state[name]), name
    assert not loaded.model.training


def test_resolve_checkpoint(tmp_path: Path) -> None:
    """A run folder means its best checkpoint, else its last, folders before the .pt files of
    earlier versions; a checkpoint folder or file means itself."""
    with pytest.raises(LrcnError, match="no checkpoint in .*checkpoints/best or checkpoints/last"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(LrcnError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "nope.pt")
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path) == checkpoints / "last.pt"
    (checkpoints / "last").mkdir()
    (checkpoints / "last" / "config.json").write_text("{}")
    assert resolve_checkpoint(tmp_path) == checkpoints / "last"
    (checkpoints / "best.pt").write_bytes(b"x")
    assert resolve_checkpoint(str(tmp_path)) == checkpoints / "best.pt"
    (checkpoints / "best").mkdir()
    (checkpoints / "best" / "model.safetensors").write_bytes(b"x")
    assert resolve_checkpoint(str(tmp_path)) == checkpoints / "best"
    assert resolve_checkpoint(checkpoints / "last.pt").name == "last.pt"
    assert resolve_checkpoint(checkpoints / "last") == checkpoints / "last"


UNPICKLED: list[str] = []


def _would_run(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Payload:
    """An arbitrary object: unpickling it calls a function (here harmless, could be os.system)."""

    def __reduce__(self):
        return (_would_run, ("ran",))


def test_checkpoint_with_pickled_object_is_refused(tmp_path: Path) -> None:
    ckpt = _checkpoint()
    path = tmp_path / "evil.pt"
    torch.save({**legacy_payload(ckpt), "epoch": 0, "metrics": {"x": Payload()}}, path)
    UNPICKLED.clear()
    with pytest.raises(LrcnError, match="refusing to load") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert UNPICKLED == []  # nothing ran
    with pytest.raises(LrcnError, match="refusing to load"):
        load_model(path)


def test_truncated_or_foreign_checkpoint(tmp_path: Path) -> None:
    good = write_legacy_checkpoint(tmp_path / "good.pt", _checkpoint())
    data = good.read_bytes()
    for name, content in [("half.pt", data[: len(data) // 2]), ("head.pt", data[:100]),
                          ("empty.pt", b"")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(LrcnError, match="not a PyTorch checkpoint file|cannot read checkpoint"
                           ) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        assert not message.rstrip().endswith(":")  # says what is wrong, even for an empty file

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(LrcnError, match="is not an lrcn checkpoint"):
        load_checkpoint(other)
    payload = torch.load(good, weights_only=True)
    torch.save({**payload, "version": 99}, other)
    with pytest.raises(LrcnError, match="checkpoint version 99 is not supported"):
        load_checkpoint(other)
    del payload["answer_vocab"]
    torch.save(payload, other)
    with pytest.raises(LrcnError, match="checkpoint lacks 'answer_vocab'"):
        load_checkpoint(other)


def test_checkpoint_not_matching_its_config(tmp_path: Path) -> None:
    ckpt = _checkpoint()
    ckpt.config.model.d_model = 32  # the weights are for d_model 16
    save_checkpoint(tmp_path / "x", ckpt)
    with pytest.raises(LrcnError, match="x/model.safetensors does not match the model its "
                                        "config describes"):
        load_model(tmp_path / "x")


def test_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.bin"
    atomic_write(path, lambda f: f.write(b"old"))
    assert path.read_bytes() == b"old" and os.listdir(path.parent) == ["file.bin"]

    def failing(f) -> None:
        f.write(b"half of the new cont")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert os.listdir(path.parent) == ["file.bin"]  # the temporary file is gone

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert path.read_bytes() == b"old" and os.listdir(path.parent) == ["file.bin"]

    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(path.parent) == ["file.bin"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_honours_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == mode


def test_every_file_of_a_run_is_group_readable(tmp_path: Path, capsys, vqa2_layout) -> None:
    """Under umask 022 a training run's files (config, metrics, checkpoints, curves, results,
    per-question scores) are 0644, as any other file the user makes."""
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", vqa2_layout.root,
                         "--epochs", "1", "--out", run, "--json", *tiny_set_args())
        assert result.code == 0, result.err
        result = run_cli(capsys, "evaluate", "--checkpoint", run, "--split", "val2014",
                         "--json")
        assert result.code == 0, result.err
    finally:
        os.umask(old)
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    written = {"config.yaml", "metrics.jsonl", "model.safetensors", "config.json",
               "word_vocab.json", "answer_vocab.json", "resume.pt", "curves.png"}
    assert written <= names, names
    assert len(files) > len(names & written)  # evaluation's results beside them
    modes = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_remove_unfinished_writes_takes_only_atomic_write_temporaries(tmp_path: Path) -> None:
    """What a SIGKILL inside atomic_write leaves: ``.NAME.XXXX.tmp`` beside NAME, at any depth."""
    killed = tmp_path / "checkpoints" / ".last.pt.x8k2m1.tmp"
    nested = tmp_path / "a" / "b" / ".metrics.jsonl.q0q0q0.tmp"
    for p in (killed, nested):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    kept = [tmp_path / "checkpoints" / "last.pt", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in kept:
        p.write_bytes(b"whole")
    assert remove_unfinished_writes(tmp_path) == sorted([killed, nested])
    assert not killed.exists() and not nested.exists() and all(p.exists() for p in kept)
    assert remove_unfinished_writes(tmp_path) == []


# --------------------------------------------------------------------------- training


def _tiny_run_config(layout: VQA2Layout, seed: int, epochs: int = 2) -> RunConfig:
    return _cli_config(
        "--dataset", "vqa2", "--data-root", str(layout.root), "--train-split", "train2014",
        "--val-split", "val2014", "--epochs", str(epochs), "--batch-size", "8",
        "--seed", str(seed), "--set", "model.dropout=0.1",
        *[arg for item in TINY_SET for arg in ("--set", item)])


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / name).model_state


def test_training_is_reproducible(vqa2_layout: VQA2Layout, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        runs[name] = tmp_path / name
        summary = train(_tiny_run_config(vqa2_layout, seed), runs[name])
        assert summary["run_dir"] == str(runs[name]) and summary["epochs"] == 2

    a, b, c = (read_metrics(runs[n]) for n in "abc")
    assert [m["epoch"] for m in a] == [0, 1]
    assert [m["train_loss"] for m in a] == [m["train_loss"] for m in b]
    assert [m["val"] for m in a] == [m["val"] for m in b]
    wa, wb, wc = (_weights(runs[n]) for n in "abc")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    assert [m["train_loss"] for m in a] != [m["train_loss"] for m in c]
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)

    # The learning rate follows the schedule (the default preset warms up for one epoch).
    cfg = load_config(str(runs["a"] / "config.yaml"))
    stated = _tiny_run_config(vqa2_layout, 3)
    # own-data's max_question_tokens null became the longest training question, 5 words
    assert stated.data.max_question_tokens is None and cfg.data.max_question_tokens == 5
    stated.data.max_question_tokens = 5
    assert cfg == stated
    factors = [lr_factor(e, cfg.train.warmup_epochs, cfg.train.decay_epochs,
                         cfg.train.decay_rate) for e in range(2)]
    assert [m["lr"] for m in a] == pytest.approx([cfg.train.lr * f for f in factors])

    last = load_checkpoint(runs["a"] / "checkpoints" / "last")
    best = load_checkpoint(runs["a"] / "checkpoints" / "best")
    assert last.epoch == 1 and last.optimizer_state is not None
    assert best.optimizer_state is None and best.metrics == a[best.epoch]


@pytest.mark.parametrize("item", ["train.epochs=0", "train.batch_size=0"])
def test_training_rejects_empty_runs(vqa2_layout: VQA2Layout, tmp_path: Path, item: str) -> None:
    cfg = _tiny_run_config(vqa2_layout, 0)
    key, _, value = item.partition("=")
    setattr(cfg.train, key.split(".")[1], int(value))
    with pytest.raises(LrcnError, match=f"{key} must be at least 1"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
