"""Training in two processes (torchrun, gloo on the CPU) is training in one: each process
takes its share of every batch, the losses and weights are the single process's, one process
evaluates the checkpoint to the accuracy the run logged, and only rank 0 writes."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lrcn
from conftest import read_metrics, run_cli, tiny_set_args
from easyvqa_store import ADAM_EPS, store_args, write_easyvqa_store
from lrcn.data import load_split
from lrcn.data.batches import EncodedSplit, batch_loader, set_epoch, shard_length
from lrcn.data.records import VQARecord
from lrcn.engine import distributed
from lrcn.engine.checkpoint import load_checkpoint
from lrcn.data.pipeline import encode_for_model
from lrcn.engine.inference import load_model, predict_split
from lrcn.evaluation import build_evaluator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(cwd: Path, *argv: object, processes: int = 2) -> subprocess.CompletedProcess:
    """``lrcn train ARGV`` in `processes` processes on this machine, as a user starts it."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               "--master-port", str(free_port()), "-m", "lrcn", "train", *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def summary_of(result: subprocess.CompletedProcess) -> dict:
    """The one JSON summary on stdout (rank 0's; the other processes print nothing)."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def _rows_split(n: int) -> EncodedSplit:
    """A split of n questions about one image: enough for the loader to batch rows."""
    return EncodedSplit(name="rows", records=[None] * n, tokens=torch.ones(n, 1, dtype=torch.long),
                        image_keys=["image"], image_rows=torch.zeros(n, dtype=torch.long),
                        images=None, target_index=None, target_score=None)


@pytest.mark.parametrize("n", [32, 31, 25])
def test_each_process_takes_its_share_of_every_batch(n: int) -> None:
    """Process r's batch b is positions b*B + r, b*B + r + 2, ... < (b+1)*B of the single
    process's order (torch.randperm seeded with seed + epoch); padding follows its last."""
    split, batch = _rows_split(n), 8
    for epoch in (0, 3):
        single = batch_loader(split, 1, batch, shuffle=True, seed=5)
        set_epoch(single, epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(5 + epoch)).tolist()
        assert [row for b in single for row in b["rows"].tolist()] == order
        sizes = []
        for rank in range(2):
            loader = batch_loader(split, 1, batch, shuffle=True, seed=5, rank=rank, world_size=2)
            set_epoch(loader, epoch)
            shares = [b["rows"].tolist() for b in loader]
            sizes.append([len(share) for share in shares])
            real = shard_length(n, rank, 2)
            flat = [row for share in shares for row in share]
            assert flat[:real] == order[rank::2]
            assert flat[real:] == order[: len(flat) - real]  # padding: the order's start
            for b, share in enumerate(shares):
                assert share[: real - b * batch // 2] == order[b * batch + rank:(b + 1) * batch:2]
        assert sizes[0] == sizes[1] and len(sizes[0]) == -(-n // batch)  # steps in lockstep


def _gloo_records() -> list[VQARecord]:
    return [VQARecord(question_id=f"{i}.jpg", image_key=f"{i}.jpg", question="what?",
                      answers=("red",) * 7 + ("blue",) * 3, answer_type="other",
                      answerable=i % 3 != 0) for i in range(11)]


def _predict(rows: range) -> tuple[list[int], list[str], list[float]]:
    return list(rows), ["red" if r % 2 else "blue" for r in rows], [r / 10 for r in rows]


def _evaluate_in_group(rank: int, world_size: int, port: int, out: Path) -> None:
    """Process `rank` of a gloo group: its share of the rows in a VizWiz evaluator gathered
    by `all_gather_objects`; writes the report and results files under out/<rank>."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        evaluator = build_evaluator("vizwiz", _gloo_records(),
                                    gather=distributed.all_gather_objects)
        evaluator.process(*_predict(range(rank, 11, world_size)))
        report = evaluator.evaluate()
        evaluator.write_results(out / str(rank) / "results.json")
        (out / str(rank) / "report.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_evaluators_gather_with_all_gather_objects(tmp_path: Path) -> None:
    """Two gloo processes, each evaluating its share, report and write what one process does."""
    one = build_evaluator("vizwiz", _gloo_records(), gather=distributed.all_gather_objects)
    one.process(*_predict(range(11)))
    expected = one.evaluate()
    assert "answerability" in expected
    one.write_results(tmp_path / "one" / "results.json")
    mp.spawn(_evaluate_in_group, args=(2, free_port(), tmp_path), nprocs=2)
    for rank in ("0", "1"):
        assert json.loads((tmp_path / rank / "report.json").read_text()) == expected
        for name in ("results.json", "results_answerable.json"):
            assert ((tmp_path / rank / name).read_bytes()
                    == (tmp_path / "one" / name).read_bytes()), (rank, name)


def test_two_processes_train_as_one(easyvqa_store: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """29 questions in batches of 8, two epochs; each process accumulates 2 micro-batches of
    2 per step, and the last micro-batch of rank 1 is only padding. Evaluated on the whole
    test split, split between the processes (9,673 questions: padded too)."""
    args = [*tiny_set_args(), *store_args(easyvqa_store), *ADAM_EPS, "--batch-size", "8",
            "--set", "data.train_limit=29", "--epochs", "2", "--seed", "3", "--json"]
    ddp = torchrun(tmp_path, "--out", tmp_path / "ddp", "--accumulate", "2", *args)
    assert ddp.returncode == 0, ddp.stderr
    one = run_cli(capsys, "train", "--out", tmp_path / "one", *args)
    assert one.code == 0, one.err

    ddp_epochs, one_epochs = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert [e["train_loss"] for e in ddp_epochs] == pytest.approx(
        [e["train_loss"] for e in one_epochs], rel=1e-4)
    assert [e["val"] for e in ddp_epochs] == [e["val"] for e in one_epochs]
    ddp_state = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last").model_state
    one_state = load_checkpoint(tmp_path / "one" / "checkpoints" / "last").model_state
    assert ddp_state.keys() == one_state.keys()  # no "module." prefix
    for key in one_state:
        torch.testing.assert_close(ddp_state[key], one_state[key], rtol=1e-4, atol=1e-4, msg=key)

    # One process evaluates the DDP checkpoint to the accuracy the DDP run logged.
    logged = summary_of(ddp)
    result = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "ddp", "--split", "test",
                     "--json")
    assert result.code == 0, result.err
    assert result.json["num_questions"] == logged["num_questions"] == 9673
    assert result.json["overall"] == logged["overall"]
    assert result.json["per_answer_type"] == logged["per_answer_type"]


def nan_image_store(out: Path, records: int) -> Path:
    """The easy-VQA store with a NaN grid for the image of fewest of the first `records`
    training questions (so that few steps hold it)."""
    first = [r.image_key for r in load_split("easyvqa", None, "train").records[:records]]
    return write_easyvqa_store(out, nan_key=min(first, key=first.count))


def test_processes_skip_non_finite_steps_together_and_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One image's grid is NaN: only the process whose share of a batch holds it sees a NaN
    loss, and every process skips that step (the other's weights would take the NaN gradients
    DDP averages otherwise). Trained one epoch, then resumed for a second (each process takes
    its own random state from last.pt), the run is the single process's."""
    store = nan_image_store(tmp_path / "store", 64)
    # One schedule for a run of 1 epoch resumed to 2 and a run of 2: the preset's would be
    # rescaled to each run's length (a warm-up epoch in the second only).
    args = [*tiny_set_args(), *store_args(store), *ADAM_EPS, "--batch-size", "8",
            "--set", "data.train_limit=64", "--val-split", "none", "--seed", "3", "--json",
            "--set", "train.warmup_epochs=0", "--set", "train.decay_epochs=[]"]
    ddp = torchrun(tmp_path, "--out", tmp_path / "ddp", "--epochs", "1", *args)
    assert ddp.returncode == 0, ddp.stderr
    ddp = torchrun(tmp_path, "--resume", tmp_path / "ddp", "--epochs", "2", "--json")
    assert ddp.returncode == 0, ddp.stderr
    assert "resuming" in ddp.stderr and "non-finite loss" not in ddp.stderr.split("resuming")[0]
    one = run_cli(capsys, "train", "--out", tmp_path / "one", "--epochs", "2", *args)
    assert one.code == 0, one.err

    ddp_epochs, one_epochs = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    skipped = [e["skipped_steps"] for e in one_epochs]
    assert [e["skipped_steps"] for e in ddp_epochs] == skipped and 0 < min(skipped) < 8
    assert summary_of(ddp)["skipped_steps"] == sum(skipped)
    assert [e["train_loss"] for e in ddp_epochs] == pytest.approx(
        [e["train_loss"] for e in one_epochs], rel=1e-4)
    ddp_last = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last")
    one_last = load_checkpoint(tmp_path / "one" / "checkpoints" / "last")
    assert len(ddp_last.progress["rng"]) == 2  # each process's random state
    for key, value in one_last.model_state.items():
        assert torch.isfinite(ddp_last.model_state[key]).all(), key
        torch.testing.assert_close(ddp_last.model_state[key], value, rtol=1e-4, atol=1e-4,
                                   msg=key)


def test_only_rank_0_writes(tmp_path: Path) -> None:
    """The default model (small CNN with BatchNorm, from pixels) and the default run folder,
    whose time-stamped name every process takes from rank 0."""
    ddp = torchrun(tmp_path, *tiny_set_args(), "--set", "data.train_limit=16", "--set",
                   "data.val_limit=21", "--batch-size", "8", "--epochs", "2", "--json")
    assert ddp.returncode == 0, ddp.stderr
    (run,) = (tmp_path / "runs").iterdir()  # one run folder
    summary = summary_of(ddp)
    assert summary["run_dir"] == str(Path("runs") / run.name)
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    checkpoint = ["answer_vocab.json", "config.json", "model.safetensors", "word_vocab.json"]
    assert files[:-1] == [*(f"checkpoints/best/{f}" for f in checkpoint),
                          *(f"checkpoints/last/{f}" for f in sorted([*checkpoint, "resume.pt"])),
                          "config.yaml", "curves.png", "metrics.jsonl"]
    assert files[-1].startswith("tb/events.out.tfevents.")  # one event file: rank 0's
    epochs = read_metrics(run)
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert ddp.stderr.count("epoch 2/2: loss") == 1  # only rank 0 logs progress

    # Evaluation used rank 0's BatchNorm statistics, the saved ones: one process agrees.
    loaded = load_model(run)
    split = load_split("easyvqa", None, "test")
    split = dataclasses.replace(split, records=split.records[:21])
    encoded = encode_for_model(split, loaded.word_vocab, loaded.answer_vocab,
                               loaded.checkpoint.config.data, loaded.model.image_input(),
                               loaded.device)
    evaluator = build_evaluator("vqa", encoded.records)
    val = predict_split(loaded.model, encoded, loaded.answer_vocab, 256, loaded.device,
                        evaluator).evaluate()
    assert val == epochs[summary["best_epoch"] - 1]["val"]


def test_an_error_ends_every_process(tmp_path: Path) -> None:
    """A bad split, found after the processes joined the group: each says so and exits."""
    ddp = torchrun(tmp_path, "--out", tmp_path / "run", *tiny_set_args(),
                   "--train-split", "nope")
    assert ddp.returncode != 0
    # The first to fail exits with 2 and torchrun stops the other (which may say so first).
    assert "lrcn train: error: easy-VQA has no split 'nope'" in ddp.stderr
    assert "exitcode  : 2" in ddp.stderr
    assert f'File "{Path(lrcn.__file__).parent}' not in ddp.stderr  # no traceback of ours
    assert not (tmp_path / "run").exists()
