"""The ``lrcn`` command end to end on tiny data: train, evaluate, score, predict, errors.

Commands run in-process through ``lrcn.cli.main`` (fast); one test runs the installed
console script in a subprocess for the real exit codes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import (
    Result,
    VQA2Layout,
    assert_one_line_error,
    legacy_payload,
    make_vqa2_layout,
    run_cli,
    run_cli_uncaptured,
    tiny_set_args,
)
from lrcn.config import load_config
from lrcn.engine.checkpoint import load_checkpoint

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def torch_save_bytes(payload: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def vqa2_train_args(layout: VQA2Layout, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "vqa2", "--data-root", str(layout.root),
            "--train-split", "train2014", "--val-split", "val2014", "--out", str(out),
            "--json", *tiny_set_args(), *extra]


@pytest.fixture(scope="module")
def vqa2_run(vqa2_layout: VQA2Layout, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Result, Path]:
    """A two-epoch tiny training run on the VQA-v2 layout."""
    out = tmp_path_factory.mktemp("runs") / "vqa2-ed"
    return run_cli_uncaptured(*vqa2_train_args(vqa2_layout, out, "--epochs", "2")), out


@pytest.fixture(scope="module")
def easyvqa_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny epoch on the first 300/100 questions of the bundled easy-VQA."""
    out = tmp_path_factory.mktemp("runs") / "easyvqa"
    result = run_cli_uncaptured(
        "train", "--epochs", "1", "--out", out, "--json", *tiny_set_args(),
        "--set", "data.train_limit=300", "--set", "data.val_limit=100")
    assert result.code == 0, result.err
    return out


# --------------------------------------------------------------------------- train


def test_train_vqa2_run_folder(vqa2_run: tuple[Result, Path], vqa2_layout: VQA2Layout) -> None:
    result, run = vqa2_run
    assert result.code == 0, result.err
    summary = result.json
    assert summary["run_dir"] == str(run) and summary["epochs"] == 2
    # Every val question is scored once, and "overall" is the mean over questions: the
    # per-answer-type figures weighted by how many questions of each type val has (6 yes/no,
    # 3 number, 3 other), not their plain mean.
    counts = Counter(answer_type for _, _, _, answer_type, _ in vqa2_layout.val_samples)
    assert summary["num_questions"] == len(vqa2_layout.val_samples) == 12
    per_type = summary["per_answer_type"]
    assert set(per_type) == set(counts) == {"yes/no", "number", "other"}
    assert summary["overall"] == pytest.approx(
        sum(counts[t] * per_type[t] for t in counts) / sum(counts.values()), abs=1e-9)

    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.yaml", "curves.png", "metrics.jsonl", "tb"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "last"]

    cfg = load_config(str(run / "config.yaml"))
    assert cfg.data.dataset == "vqa2" and cfg.data.train_split == "train2014"
    assert cfg.model.d_model == 16 and cfg.model.layers == 1 and cfg.data.image_size == 32

    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["epoch"] for m in metrics] == [0, 1]
    assert all(m["train_loss"] > 0 and "overall" in m["val"] for m in metrics)
    best = max(metrics, key=lambda m: m["val"]["overall"])
    assert summary["best_epoch"] == best["epoch"] + 1
    assert summary["overall"] == best["val"]["overall"]
    assert per_type == best["val"]["per_answer_type"]
    assert summary["train_loss"] == metrics[-1]["train_loss"]

    png = run / "curves.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        image.verify()
    assert load_checkpoint(run / "checkpoints" / "last").epoch == 1
    assert load_checkpoint(run).epoch == best["epoch"]  # the run folder means its best


def test_evaluate_val_then_score(vqa2_run: tuple[Result, Path], vqa2_layout: VQA2Layout,
                                 capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trained, run = vqa2_run
    results = tmp_path / "val_results.json"
    ev = run_cli(capsys, "evaluate", "--checkpoint", run, "--dataset", "vqa2",
                 "--data-root", vqa2_layout.root, "--split", "val2014", "--results", results,
                 "--json")
    assert ev.code == 0, ev.err
    summary = ev.json
    assert summary["results"] == str(results) and summary["split"] == "val2014"
    assert summary["checkpoint"] == str(run / "checkpoints" / "best")
    # The best checkpoint scores on val exactly what training reported for it.
    assert summary["overall"] == pytest.approx(trained.json["overall"], abs=1e-9)
    assert summary["per_answer_type"] == pytest.approx(trained.json["per_answer_type"], abs=1e-9)
    assert summary["num_questions"] == 12

    written = json.loads(results.read_text(encoding="utf-8"))
    assert [r["question_id"] for r in written] == vqa2_layout.val_question_ids
    assert all(set(r) == {"question_id", "answer"} for r in written)
    vocab = load_checkpoint(run).answer_vocab
    assert all(r["answer"] in vocab for r in written)

    sc = run_cli(capsys, "score", "--annotations", vqa2_layout.val_annotations,
                 "--results", results, "--json")
    assert sc.code == 0, sc.err
    assert sc.json["overall"] == pytest.approx(summary["overall"], abs=1e-9)
    assert sc.json["per_answer_type"] == pytest.approx(summary["per_answer_type"], abs=1e-9)
    assert sc.json["num_questions"] == 12

    human = run_cli(capsys, "score", "--annotations", vqa2_layout.val_annotations,
                    "--results", results)
    assert human.code == 0 and human.out.startswith("answer accuracy: ")


def test_evaluate_test_split_writes_results_without_accuracy(
        vqa2_run: tuple[Result, Path], vqa2_layout: VQA2Layout,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, run = vqa2_run
    # No --data-root: the checkpoint's own data root is used; no --results: the default path.
    ev = run_cli(capsys, "evaluate", "--checkpoint", run / "checkpoints" / "last",
                 "--split", "test2015", "--json")
    assert ev.code == 0, ev.err
    summary = ev.json
    assert "overall" not in summary and "per_answer_type" not in summary
    path = run / "results" / "vqa_OpenEnded_mscoco_test2015_lrcn_results.json"
    assert summary["results"] == str(path) and summary["dataset"] == "vqa2"
    written = json.loads(path.read_text(encoding="utf-8"))
    assert [r["question_id"] for r in written] == vqa2_layout.test_question_ids
    assert all(isinstance(r["answer"], str) and r["answer"] for r in written)


@pytest.mark.parametrize("variant", ["ed", "st", "cst"])
def test_every_variant_trains(variant: str, vqa2_layout: VQA2Layout, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / variant
    result = run_cli(capsys, *vqa2_train_args(vqa2_layout, run, "--epochs", "1",
                                              "--variant", variant))
    assert result.code == 0, result.err
    assert result.json["epochs"] == 1 and "overall" in result.json
    ckpt = load_checkpoint(run)
    assert ckpt.config.model.variant == variant and ckpt.epoch == 0
    assert len((run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 1


# --------------------------------------------------------------------------- predict


def easyvqa_image() -> Path:
    import easy_vqa

    path = Path(easy_vqa.__file__).resolve().parent / "data" / "test" / "images" / "0.png"
    assert path.is_file()
    return path


def checkpoint_answer_scores(run: Path, image_path: Path, question: str) -> dict[str, float]:
    """answer -> sigmoid(logit) for every answer of the checkpoint's vocabulary, computed with
    the model rebuilt here from the checkpoint's config and weights."""
    from lrcn.data.images import load_image, normalize, resize_transform
    from lrcn.models import create_model

    ckpt = load_checkpoint(run)
    model = create_model(ckpt.config.model, len(ckpt.word_vocab), len(ckpt.answer_vocab))
    model.load_state_dict(ckpt.model_state)
    model.eval()
    d = ckpt.config.data
    tokens = torch.tensor([ckpt.word_vocab.encode(question, d.max_question_tokens)])
    pixels = resize_transform(d.image_size)(load_image(image_path).convert("RGB"))
    with torch.no_grad():
        grid = model.encode_images(normalize(pixels.unsqueeze(0)))
        probs = torch.sigmoid(model.forward_all(tokens, grid=grid).answer[0])
    return {ckpt.answer_vocab.answer(i): p for i, p in enumerate(probs.tolist())}


def test_predict_top_k(easyvqa_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "predict", "--checkpoint", easyvqa_run, "--image", easyvqa_image(),
                     "--question", "what color is the shape?", "--top-k", "3", "--json")
    assert result.code == 0, result.err
    summary = result.json
    assert summary["question"] == "what color is the shape?"
    answers = summary["answers"]
    assert isinstance(answers, list) and len(answers) == 3
    assert all(set(a) == {"answer", "score"} for a in answers)
    scores = [a["score"] for a in answers]
    assert scores == sorted(scores, reverse=True)
    vocab = load_checkpoint(easyvqa_run).answer_vocab
    assert all(a["answer"] in vocab for a in answers)
    assert len({a["answer"] for a in answers}) == 3
    # The scores are the sigmoids of the checkpoint's answer logits, recomputed here.
    expected = checkpoint_answer_scores(easyvqa_run, easyvqa_image(), "what color is the shape?")
    top = sorted(expected.items(), key=lambda kv: kv[1], reverse=True)[:3]
    assert [a["answer"] for a in answers] == [answer for answer, _ in top]
    assert scores == pytest.approx([score for _, score in top], rel=1e-5, abs=1e-7)

    # More than there are answers: every answer once. Human output: one line per answer.
    every = run_cli(capsys, "predict", "--checkpoint", easyvqa_run, "--image", easyvqa_image(),
                    "--question", "what shape is it?", "--top-k", "1000", "--json")
    assert every.code == 0 and sorted(a["answer"] for a in every.json["answers"]) == \
        sorted(vocab.answers)
    expected = checkpoint_answer_scores(easyvqa_run, easyvqa_image(), "what shape is it?")
    assert {a["answer"]: a["score"] for a in every.json["answers"]} == \
        pytest.approx(expected, rel=1e-5, abs=1e-7)
    human = run_cli(capsys, "predict", "--checkpoint", easyvqa_run, "--image", easyvqa_image(),
                    "--question", "what shape is it?", "--top-k", "2")
    assert human.code == 0 and human.out.splitlines()[0] == "Q: what shape is it?"
    assert len(human.out.splitlines()) == 3


# --------------------------------------------------------------------------- errors


def test_train_errors(vqa2_run: tuple[Result, Path], vqa2_layout: VQA2Layout, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--out", tmp_path / "run", "--epochs", "1", *tiny_set_args()]
    vqa2 = ["--dataset", "vqa2", "--train-split", "train2014", "--val-split", "val2014"]
    cases = [
        (vqa2, ["vqa2 needs a data root"]),
        ([*vqa2, "--data-root", tmp_path / "nowhere"],
         ["VQA-v2 root folder not found", str(tmp_path / "nowhere")]),
        (["--dataset", "vqa2", "--data-root", vqa2_layout.root, "--train-split", "train"],
         ["VQA-v2 has no split 'train'", "train2014"]),
        (["--dataset", "coco"], ["unknown dataset 'coco'", "easyvqa", "vqa2"]),
        (["--config", "nope"], ["unknown preset 'nope'", "known presets: ", "easyvqa"]),
        (["--config", tmp_path / "missing.yaml"], ["config file not found"]),
        ([*vqa2, "--data-root", vqa2_layout.root, "--train-split", "test2015"],
         ["training split 'test2015' has no answers"]),
        (["--set", "data.train_limit=abc"], ["train_limit must be int or null, got 'abc'"]),
        (["--set", "model.d_model=null"], ["d_model must be int, got None"]),
        (["--epochs", "0"], ["train.epochs must be at least 1, got 0"]),
        (["--batch-size", "0"], ["train.batch_size must be at least 1, got 0"]),
    ]
    for extra, fragments in cases:
        assert_one_line_error(run_cli(capsys, *base, *extra), "train", *fragments)
        assert not (tmp_path / "run").exists()  # nothing half-written
    # An existing run is never overwritten.
    _, run = vqa2_run
    before = (run / "checkpoints" / "last" / "model.safetensors").read_bytes()
    assert_one_line_error(run_cli(capsys, "train", "--out", run, *tiny_set_args()), "train",
                          "already holds a training run")
    assert (run / "checkpoints" / "last" / "model.safetensors").read_bytes() == before


def test_images_decoded_per_batch_fail_early_and_plainly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With ``data.cache_images: false`` an image is first read in its batch: a missing one
    is still refused before the run folder exists, and an unreadable one read by a DataLoader
    worker is the worker's one-line error, not torch's "Caught LrcnError in DataLoader
    worker process 0" with a traceback."""
    layout = make_vqa2_layout(tmp_path / "vqa2")
    image = layout.root / "train2014" / "COCO_train2014_000000000005.jpg"
    per_batch = ["--epochs", "1", "--set", "data.cache_images=false"]
    image.unlink()
    result = run_cli(capsys, *vqa2_train_args(layout, tmp_path / "run", *per_batch))
    assert_one_line_error(result, "train", "image file(s) missing", str(image))
    assert not (tmp_path / "run").exists()

    image.write_bytes(b"not an image")
    result = run_cli(capsys, *vqa2_train_args(layout, tmp_path / "run", *per_batch,
                                              "--workers", "1"))
    assert_one_line_error(result, "train", f"error: cannot read image {image}: cannot identify")
    assert "Caught" not in result.err and "worker" not in result.err


def test_train_on_vqa2_uses_its_default_splits(vqa2_layout: VQA2Layout, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", vqa2_layout.root,
                     "--epochs", "1", "--out", tmp_path / "run", "--json", *tiny_set_args())
    assert result.code == 0, result.err
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "train_split: train2014" in config and "val_split: val2014" in config


def test_evaluate_and_predict_errors(vqa2_run: tuple[Result, Path], vqa2_layout: VQA2Layout,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, run = vqa2_run
    missing = tmp_path / "missing.pt"
    truncated = tmp_path / "truncated.pt"
    data = torch_save_bytes(legacy_payload(load_checkpoint(run)))
    truncated.write_bytes(data[: len(data) // 3])
    image = vqa2_layout.root / "val2014" / "COCO_val2014_000000000011.jpg"
    cases = [
        ("evaluate", ["--checkpoint", missing, "--split", "val2014"],
         ["checkpoint not found", str(missing)]),
        ("evaluate", ["--checkpoint", truncated, "--split", "val2014"],
         ["not a PyTorch checkpoint file", str(truncated)]),
        ("evaluate", ["--checkpoint", tmp_path, "--split", "val2014"],
         [f"no checkpoint in {tmp_path}", "checkpoints/best or checkpoints/last"]),
        ("evaluate", ["--checkpoint", run / "checkpoints" / "best.pt", "--split", "val2014"],
         ["checkpoint not found", "checkpoints are folders now",
          str(run / "checkpoints" / "best")]),
        ("evaluate", ["--checkpoint", run, "--dataset", "coco", "--split", "val"],
         ["unknown dataset 'coco'"]),
        ("evaluate", ["--checkpoint", run, "--split", "val2017"], ["VQA-v2 has no split 'val2017'"]),
        ("evaluate", ["--checkpoint", run, "--split", "val2014", "--batch-size", "0"],
         ["--batch-size must be at least 1"]),
        ("predict", ["--checkpoint", missing, "--image", image, "--question", "what color?"],
         ["checkpoint not found", str(missing)]),
        ("predict", ["--checkpoint", run, "--image", tmp_path / "no.jpg", "--question", "what?"],
         ["image not found", str(tmp_path / "no.jpg")]),
        ("predict", ["--checkpoint", run, "--image", image, "--question", "???"],
         ["'???'", "no words"]),
        ("predict", ["--checkpoint", run, "--image", image, "--question", "what?",
                     "--top-k", "0"], ["--top-k must be at least 1"]),
    ]
    for command, extra, fragments in cases:
        assert_one_line_error(run_cli(capsys, command, *extra, "--json"), command, *fragments)


def test_score_errors(vqa2_layout: VQA2Layout, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    ids = vqa2_layout.val_question_ids
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps([{"question_id": q, "answer": "yes"} for q in ids[1:]]),
                       encoding="utf-8")
    result = run_cli(capsys, "score", "--annotations", vqa2_layout.val_annotations,
                     "--results", partial, "--json")
    assert_one_line_error(result, "score", str(partial), "do not cover exactly",
                          "1 annotated questions have no result", str(ids[0]))

    result = run_cli(capsys, "score", "--annotations", tmp_path / "none.json",
                     "--results", partial)
    assert_one_line_error(result, "score", "annotation file not found")


def test_console_script_exit_codes(vqa2_layout: VQA2Layout, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("lrcn")
    assert script.is_file(), "the lrcn console script is not installed in this environment"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), *map(str, argv)], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120, check=False)

    bad = run("train", "--config", "nope", "--json")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "easyvqa" in lines[0]
    assert lines[0].startswith("lrcn train: error: unknown preset 'nope'; known presets: ")
    assert not (tmp_path / "runs").exists()

    usage = run("evaluate", "--split", "val2014")  # --checkpoint is required
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert "--checkpoint" in usage.stderr

    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"question_id": q, "answer": "yes"}
                                   for q in vqa2_layout.val_question_ids]), encoding="utf-8")
    good = run("score", "--annotations", vqa2_layout.val_annotations, "--results", results,
               "--json")
    assert good.returncode == 0, good.stderr
    summary = json.loads(good.stdout.strip().splitlines()[-1])
    assert summary["num_questions"] == 12 and 0 < summary["overall"] < 100
