"""Checkpoints as folders: model.safetensors, config.json and the vocabularies (and, in
``last``, resume.pt), read back exactly; no pickle but resume.pt; swapped in whole, so that a
kill at any instant and a reader at any instant see one whole version; the .pt files of
earlier versions still load everywhere, and a resumed old run continues in folders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import easy_vqa
import pytest
import torch

from conftest import (
    assert_one_line_error,
    make_legacy_run,
    read_metrics,
    run_cli,
    tiny_checkpoint,
    tiny_set_args,
    trained_run,
    write_legacy_checkpoint,
)
from lrcn.config import config_to_dict
from lrcn.engine.checkpoint import (
    ANSWER_VOCAB_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    RESUME_FILE,
    WORD_VOCAB_FILE,
    Checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from lrcn.engine.inference import load_model
from lrcn.errors import LrcnError
from lrcn.fileio import (
    aside_path,
    current_folder,
    read_folder,
    remove_unfinished_writes,
    replace_folder,
)

CHECKPOINT_FILES = sorted([MODEL_FILE, CONFIG_FILE, WORD_VOCAB_FILE, ANSWER_VOCAB_FILE])


def with_training_state(ckpt: Checkpoint) -> Checkpoint:
    """`ckpt` with an Adam state and progress as a run's last checkpoint holds them (int
    keys, tuples, random states as tensors and lists)."""
    ckpt.optimizer_state = {
        "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(3)}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.98), "params": [0, 1]}]}
    ckpt.progress = {"epoch": 1, "step": 5, "loss": 0.25, "history": [{"epoch": 0}],
                     "rng": [{"torch": torch.get_rng_state(), "python": [3, [1, 2], None]}]}
    return ckpt


def without_timings(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not k.endswith("_seconds")}


def assert_same_checkpoint(back: Checkpoint, ckpt: Checkpoint) -> None:
    """The same config, vocabularies, epoch, metrics (timings aside) and weights, bit for bit."""
    assert back.config == ckpt.config
    assert back.word_vocab == ckpt.word_vocab and back.answer_vocab == ckpt.answer_vocab
    assert back.epoch == ckpt.epoch
    assert without_timings(back.metrics) == without_timings(ckpt.metrics)
    assert back.model_state.keys() == ckpt.model_state.keys()
    for name, tensor in ckpt.model_state.items():
        assert back.model_state[name].dtype == tensor.dtype, name
        assert torch.equal(back.model_state[name], tensor), name


def is_pickle(path: Path) -> bool:
    """A torch.save zip or a plain pickle (protocol 2 and up start with 0x80)."""
    return zipfile.is_zipfile(path) or path.read_bytes()[:1] == b"\x80"


# --------------------------------------------------------------------------- the format


def test_round_trip(tmp_path: Path) -> None:
    ckpt = with_training_state(tiny_checkpoint())
    last = tmp_path / "checkpoints" / "last"
    save_checkpoint(last, ckpt)
    assert sorted(os.listdir(last.parent)) == ["last"]  # no staging folder left
    assert sorted(os.listdir(last)) == sorted([*CHECKPOINT_FILES, RESUME_FILE])
    back = load_checkpoint(last)
    assert_same_checkpoint(back, ckpt)
    assert back.optimizer_state["param_groups"] == ckpt.optimizer_state["param_groups"]
    assert back.optimizer_state["state"].keys() == {0}
    assert torch.equal(back.optimizer_state["state"][0]["exp_avg"],
                       ckpt.optimizer_state["state"][0]["exp_avg"])
    assert torch.equal(back.progress["rng"][0]["torch"], ckpt.progress["rng"][0]["torch"])
    assert {k: v for k, v in back.progress.items() if k != "rng"} == \
        {k: v for k, v in ckpt.progress.items() if k != "rng"}

    best = tmp_path / "checkpoints" / "best"
    save_checkpoint(best, tiny_checkpoint())  # no training state: no resume.pt
    assert sorted(os.listdir(best)) == CHECKPOINT_FILES
    back = load_checkpoint(tmp_path)  # the run folder means its best
    assert_same_checkpoint(back, tiny_checkpoint())
    assert back.optimizer_state is None and back.progress is None


def test_the_files_are_plain(tmp_path: Path) -> None:
    """config.json is the config as config_to_dict gives it with the checkpoint's own keys;
    the weights are safetensors (readable without lrcn), the vocabularies JSON."""
    from safetensors import safe_open

    ckpt = tiny_checkpoint()
    save_checkpoint(tmp_path / "best", ckpt)
    config = json.loads((tmp_path / "best" / CONFIG_FILE).read_text(encoding="utf-8"))
    assert config == {"format": "lrcn-checkpoint", "version": 2, "epoch": 3,
                      "metrics": ckpt.metrics, **config_to_dict(ckpt.config)}
    with safe_open(tmp_path / "best" / MODEL_FILE, framework="pt") as f:
        assert f.metadata() == {"format": "pt"} and set(f.keys()) == set(ckpt.model_state)
    words = json.loads((tmp_path / "best" / WORD_VOCAB_FILE).read_text(encoding="utf-8"))
    assert words == ckpt.word_vocab.to_dict()


def test_a_run_holds_no_pickle_but_resume_pt(tiny_easyvqa_run: Path) -> None:
    checkpoints = tiny_easyvqa_run / "checkpoints"
    assert sorted(os.listdir(checkpoints / "best")) == CHECKPOINT_FILES
    assert sorted(os.listdir(checkpoints / "last")) == sorted([*CHECKPOINT_FILES, RESUME_FILE])
    pickles = [str(p.relative_to(checkpoints)) for p in checkpoints.rglob("*")
               if p.is_file() and is_pickle(p)]
    assert pickles == ["last/resume.pt"]
    assert load_checkpoint(checkpoints / "best").optimizer_state is None


def test_shared_tensors_are_saved_apart(tmp_path: Path) -> None:
    """safetensors refuses tensors sharing storage (tied weights) and views: they are copied,
    and load as the same values."""
    ckpt = tiny_checkpoint()
    base = torch.arange(12.0)
    ckpt.model_state = {"tied.a": base, "tied.b": base, "view": base.view(3, 4).t()}
    save_checkpoint(tmp_path / "x", ckpt)
    back = load_checkpoint(tmp_path / "x").model_state
    assert torch.equal(back["tied.a"], base) and torch.equal(back["tied.b"], base)
    assert torch.equal(back["view"], base.view(3, 4).t())


def test_asking_for_the_old_file_names_the_folder(tmp_path: Path) -> None:
    """A checkpoint asked for by the name of an earlier version's file (best.pt) where only
    the folder is, is not found, with the folder named."""
    save_checkpoint(tmp_path / "checkpoints" / "best", tiny_checkpoint())
    with pytest.raises(LrcnError, match=r"not found: .*best\.pt \(checkpoints are folders now"):
        load_checkpoint(tmp_path / "checkpoints" / "best.pt")


# --------------------------------------------------------------------------- bad folders

def _break(folder: Path, name: str, content: bytes | None) -> Path:
    path = folder / name
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    return path


def _other_weights() -> bytes:
    from safetensors.torch import save

    state = dict(tiny_checkpoint().model_state)
    state["net.embed.weight"] = torch.zeros(3, 16)
    return save(state)


BROKEN = {  # case -> (file, new content or None to delete, message fragments)
    "no weights": (MODEL_FILE, None, ["checkpoint weights file not found"]),
    "no config": (CONFIG_FILE, None, ["checkpoint config file not found"]),
    "no word vocabulary": (WORD_VOCAB_FILE, None, ["word vocabulary file not found"]),
    "no answer vocabulary": (ANSWER_VOCAB_FILE, None, ["answer vocabulary file not found"]),
    "config not JSON": (CONFIG_FILE, b'{"format": "lrcn-ch', ["not valid JSON"]),
    "config of something else": (CONFIG_FILE, b'{"model_type": "bert"}',
                                 ["is not an lrcn checkpoint config"]),
    "config of a later version": (CONFIG_FILE, b'{"format": "lrcn-checkpoint", "version": 9}',
                                  ["checkpoint version 9 is not supported"]),
    "config without sections": (CONFIG_FILE,
                                b'{"format": "lrcn-checkpoint", "version": 2, "epoch": 0}',
                                ["lacks its 'data', 'model', 'train' section(s)"]),
    "truncated weights": (MODEL_FILE, b"\x10\x00\x00\x00\x00\x00\x00\x00{", [
        "cannot read the weights", "not a safetensors file?"]),
    "weights of another model": (MODEL_FILE, _other_weights(), [
        "does not match the model its config describes", "net.embed.weight"]),
    "word vocabulary not one": (WORD_VOCAB_FILE, b'{"words": 3}', ["not a saved WordVocab"]),
    "resume.pt a pickle": (RESUME_FILE, b"\x80\x04K\x01.", ["not a PyTorch checkpoint file"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_folder_is_one_error_naming_the_file(case: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    name, content, fragments = BROKEN[case]
    folder = tmp_path / "best"
    save_checkpoint(folder, with_training_state(tiny_checkpoint()))
    path = _break(folder, name, content)
    result = run_cli(capsys, "evaluate", "--checkpoint", folder, "--split", "test", "--json")
    assert_one_line_error(result, "evaluate", str(path), *fragments)


def test_a_config_field_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best", tiny_checkpoint())
    config = tmp_path / "best" / CONFIG_FILE
    values = json.loads(config.read_text(encoding="utf-8"))
    for key, value, message in (("epoch", "three", "'epoch' must be an integer"),
                                ("metrics", [1], "'metrics' must be a dict")):
        config.write_text(json.dumps({**values, key: value}), encoding="utf-8")
        with pytest.raises(LrcnError, match=message) as info:
            load_checkpoint(tmp_path / "best")
        assert str(config) in str(info.value)


# --------------------------------------------------------------------------- crash safety


def test_a_swap_interrupted_between_its_renames_is_recovered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after renaming the old folder aside and before renaming the new one in: the
    old checkpoint is read (and found in its run folder), and cleaning the run puts it back
    and drops the staging folder; the next save goes through."""
    import lrcn.fileio

    run = tmp_path / "run"
    last = run / "checkpoints" / "last"
    save_checkpoint(last, tiny_checkpoint(epoch=1))
    renames: list[tuple[str, str]] = []
    real_rename = os.rename

    def killed_at_second_rename(src: str, dst: str) -> None:
        renames.append((src, dst))
        if len(renames) == 2:
            raise KeyboardInterrupt  # what SIGKILL leaves, but the staging folder remains
        real_rename(src, dst)

    monkeypatch.setattr(lrcn.fileio.os, "rename", killed_at_second_rename)
    monkeypatch.setattr(lrcn.fileio.shutil, "rmtree", lambda *a, **k: None)  # killed: no cleanup
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(last, tiny_checkpoint(epoch=2))
    monkeypatch.undo()
    assert renames[0] == (last, aside_path(last))
    assert not last.exists() and current_folder(last) == aside_path(last)
    staging = Path(renames[1][0])
    assert staging.is_dir() and staging.name.endswith(".tmp")

    assert load_checkpoint(last).epoch == 1  # the old one, whole
    assert resolve_checkpoint(run) == last
    assert load_checkpoint(run).epoch == 1
    assert remove_unfinished_writes(run) == [staging, aside_path(last)]
    assert sorted(os.listdir(last.parent)) == ["last"] and load_checkpoint(last).epoch == 1
    save_checkpoint(last, tiny_checkpoint(epoch=2))
    assert load_checkpoint(last).epoch == 2 and sorted(os.listdir(last.parent)) == ["last"]


def test_a_swap_killed_after_its_renames_keeps_the_new_folder(tmp_path: Path) -> None:
    """The new folder is in place and part of the old one is left aside: the new one is
    read, and the old one deleted, by cleaning or by the next swap."""
    last = tmp_path / "last"
    save_checkpoint(last, tiny_checkpoint(epoch=2))
    shutil.copytree(last, aside_path(last))
    (aside_path(last) / MODEL_FILE).unlink()  # deleted in part
    assert load_checkpoint(last).epoch == 2
    assert remove_unfinished_writes(tmp_path) == [aside_path(last)]
    assert sorted(os.listdir(tmp_path)) == ["last"]

    os.rename(last, aside_path(last))  # killed between the renames, never cleaned
    staging = tmp_path / ".x.tmp"
    save_checkpoint(staging, tiny_checkpoint(epoch=3))
    replace_folder(staging, last)  # finishes the earlier swap first
    assert load_checkpoint(last).epoch == 3 and sorted(os.listdir(tmp_path)) == ["last"]


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import torch
from conftest import tiny_checkpoint
from lrcn.engine.checkpoint import save_checkpoint
ckpt = tiny_checkpoint()
print("ready", flush=True)
for i in range(1, 1000000):
    ckpt.epoch = i
    ckpt.model_state["net.embed.weight"] = torch.full_like(ckpt.model_state["net.embed.weight"], i)
    save_checkpoint(Path({folder!r}), ckpt)
"""


def test_sigkill_at_any_instant_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    """A process saving checkpoints in a loop, SIGKILLed at moments spread over a save: the
    checkpoint there is always one whole version (its weights are its epoch's), and cleaning
    leaves the folder alone."""
    folder = tmp_path / "checkpoints" / "last"
    code = WRITER.format(tests=str(Path(__file__).parent), folder=str(folder))
    seen = set()
    for delay in (0.05, 0.13, 0.21, 0.29, 0.37):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if current_folder(folder) is None:
            continue  # killed before the first save
        ckpt = load_checkpoint(folder)
        assert torch.equal(ckpt.model_state["net.embed.weight"],
                           torch.full_like(ckpt.model_state["net.embed.weight"], ckpt.epoch))
        seen.add(ckpt.epoch)
        remove_unfinished_writes(tmp_path)
        assert os.listdir(folder.parent) == ["last"]
        assert load_checkpoint(folder).epoch == ckpt.epoch
    assert seen  # some kill came after a save


def test_a_reader_never_sees_two_versions_mixed(tmp_path: Path) -> None:
    """While a writer swaps the folder over and over, every read (read_folder, as
    load_checkpoint reads) gets the files of one version. A swapped-out folder's inode number
    is soon reused by a new one; read_folder holds the folder open so that it cannot be (the
    check by inode number alone failed 3 rounds in 40)."""
    for round_ in range(30):
        _reads_while_swapping(tmp_path / f"round{round_}")


def _reads_while_swapping(tmp_path: Path) -> None:
    tmp_path.mkdir()
    folder = tmp_path / "x"
    stop = threading.Event()

    def version(i: int) -> Path:
        staging = tmp_path / f".x.{i}.tmp"
        staging.mkdir()
        for name in ("a", "b", "c"):
            (staging / name).write_text(str(i))
        return staging

    replace_folder(version(0), folder)

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            replace_folder(version(i), folder)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        reads = [read_folder(folder, lambda f: [(f / n).read_text() for n in ("a", "b", "c")])
                 for _ in range(300)]
    finally:
        stop.set()
        thread.join()
    assert all(len(set(r)) == 1 for r in reads), [r for r in reads if len(set(r)) > 1]


# --------------------------------------------------------------------------- earlier versions


@pytest.fixture(scope="module")
def legacy_run(tiny_easyvqa_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny run with best.pt and last.pt as an earlier version wrote them."""
    run = tmp_path_factory.mktemp("legacy") / "run"
    shutil.copytree(tiny_easyvqa_run, run)
    return make_legacy_run(run)


def test_an_old_run_still_evaluates_and_predicts(legacy_run: Path, tiny_easyvqa_run: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(os.listdir(legacy_run / "checkpoints")) == ["best.pt", "last.pt"]
    assert resolve_checkpoint(legacy_run) == legacy_run / "checkpoints" / "best.pt"
    assert_same_checkpoint(load_checkpoint(legacy_run), load_checkpoint(tiny_easyvqa_run))
    results = {}
    for name, checkpoint in (("old", legacy_run), ("new", tiny_easyvqa_run),
                             ("old file", legacy_run / "checkpoints" / "last.pt")):
        result = run_cli(capsys, "evaluate", "--checkpoint", checkpoint, "--split", "test",
                         "--json", "--results", tmp_path / f"{name}.json")
        assert result.code == 0, result.err
        results[name] = {k: v for k, v in result.json.items()
                         if k not in ("checkpoint", "results")}
    assert results["old"] == results["new"] == results["old file"]  # one epoch: best is last
    image = Path(easy_vqa.__file__).parent / "data" / "test" / "images" / "0.png"
    answers = [run_cli(capsys, "predict", "--checkpoint", checkpoint, "--image", image,
                       "--question", "what shape is it?", "--json").json["answers"]
               for checkpoint in (legacy_run, tiny_easyvqa_run)]
    assert answers[0] == answers[1]


def test_an_old_run_is_a_source_for_init(legacy_run: Path) -> None:
    from lrcn.engine.setup import load_init_source

    path, ckpt = load_init_source(str(legacy_run))
    assert path == legacy_run / "checkpoints" / "best.pt" and ckpt.epoch == 0


class Custom:
    """Any class of the user's: torch.save pickles it as an arbitrary object."""


def test_old_files_load_and_their_pickles_stay_refused(tmp_path: Path) -> None:
    ckpt = with_training_state(tiny_checkpoint())
    old = write_legacy_checkpoint(tmp_path / "old.pt", ckpt)
    back = load_checkpoint(old)
    assert_same_checkpoint(back, ckpt)
    assert back.optimizer_state["param_groups"] == ckpt.optimizer_state["param_groups"]
    evil = tmp_path / "evil.pt"
    ckpt.metrics = {"x": Custom()}
    write_legacy_checkpoint(evil, ckpt)
    with pytest.raises(LrcnError, match=r"refusing to load .*evil\.pt.*Custom"):
        load_model(evil)


RESUMABLE = [*tiny_set_args(), "--set", "model.dropout=0.1", "--set", "data.train_limit=64",
             "--set", "data.val_limit=20", "--batch-size", "8", "--json"]


def test_an_old_run_resumes_into_folders(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``lrcn train --resume`` of a run an earlier version wrote continues exactly as the same
    run in folders does, and leaves folders only."""
    first = trained_run(tmp_path / "first", *RESUMABLE, "--epochs", "1")
    old = make_legacy_run(shutil.copytree(first, tmp_path / "old"))
    for run in (first, old):
        result = run_cli(capsys, "train", "--resume", run, "--epochs", "2", "--json")
        assert result.code == 0, result.err
    assert sorted(os.listdir(old / "checkpoints")) == ["best", "last"]
    assert [without_timings(m) for m in read_metrics(old)] == \
        [without_timings(m) for m in read_metrics(first)]
    for name in ("best", "last"):
        a, b = (load_checkpoint(run / "checkpoints" / name) for run in (old, first))
        assert_same_checkpoint(a, b)
    a, b = (load_checkpoint(run / "checkpoints" / "last") for run in (old, first))
    for index, state in a.optimizer_state["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b.optimizer_state["state"][index][key])
    assert torch.equal(a.progress["rng"][0]["torch"], b.progress["rng"][0]["torch"])
