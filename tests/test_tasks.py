"""Answerability and answer prediction (VizWiz tasks): heads, losses, training, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import read_metrics, run_cli, tiny_set_args
from lrcn.config import ModelConfig
from lrcn.engine.checkpoint import load_checkpoint
from lrcn.engine.losses import answer_loss, task_loss
from lrcn.errors import LrcnError
from lrcn.evaluation.vizwiz import score_vizwiz_files
from lrcn.models import create_model
from lrcn.models.vqa_model import VQAOutput
from vizwiz_layout import TEST, TRAIN, VAL, make_vizwiz_layout


def test_soft_score_bce_is_the_papers_loss() -> None:
    logits = torch.randn(3, 5)
    target = torch.tensor([[0.0, 1.0, 0.3, 0, 0], [0.6, 0, 0, 0, 0], [0.0] * 5])
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    assert answer_loss(logits, target, "bce").item() == pytest.approx(expected.item())


def test_cross_entropy_on_the_most_common_answer() -> None:
    logits = torch.randn(3, 5)
    # row 0: answer 1 most common; row 1: tie 0.6/0.6 -> the first (2); row 2: none in vocab
    target = torch.tensor([[0.3, 1.0, 0.3, 0, 0], [0, 0, 0.6, 0.6, 0], [0.0] * 5])
    expected = F.cross_entropy(logits[:2], torch.tensor([1, 2]), reduction="sum")
    assert answer_loss(logits, target, "ce").item() == pytest.approx(expected.item())
    with pytest.raises(LrcnError, match="answer_loss = 'mse' is not one of bce, ce"):
        answer_loss(logits, target, "mse")


def test_task_loss_uses_the_heads_of_the_task() -> None:
    answer, answerable = torch.randn(4, 6), torch.randn(4)
    out = VQAOutput(answer, answerable, torch.zeros(4, 1), torch.zeros(4, 1))
    batch = {"target": torch.zeros(4, 6).index_fill_(1, torch.tensor([2]), 1.0),
             "answerable": torch.tensor([1.0, 0.0, 1.0, 0.0])}
    a = answer_loss(answer, batch["target"])
    b = F.binary_cross_entropy_with_logits(answerable, batch["answerable"], reduction="sum")
    assert task_loss(out, batch, "answer", "bce", 0.5).item() == pytest.approx(a.item())
    assert task_loss(out, batch, "answerable", "bce", 0.5).item() == pytest.approx(b.item())
    assert task_loss(out, batch, "both", "bce", 0.5).item() == pytest.approx((a + 0.5 * b).item())


@pytest.mark.parametrize("arch", ["lrcn", "cnn_lstm", "text_only", "image_only"])
def test_answerability_head_on_every_model(arch: str) -> None:
    cfg = ModelConfig(arch=arch, task="both", image_encoder="features", feature_channels=8,
                      d_model=16, heads=2, ffn_dim=32, layers=1, word_dim=8, pool_hidden=8,
                      fused_dim=12)
    model = create_model(cfg, vocab_size=20, num_answers=7).eval()
    plain = create_model(ModelConfig(**{**cfg.__dict__, "task": "answer"}), 20, 7)
    tokens = torch.tensor([[3, 4, 5, 0], [6, 0, 0, 0]])
    out = model.forward_all(tokens, grid=torch.randn(2, 2, 2, 8))
    assert out.answer.shape == (2, 7) and out.answerable.shape == (2,)
    assert plain.answerable_head is None
    assert model.num_parameters() == plain.num_parameters() + 12 + 1
    with pytest.raises(LrcnError, match="model.task must be one of answer, answerable, both, got 'maybe'"):
        create_model(ModelConfig(**{**cfg.__dict__, "task": "maybe"}), 20, 7)


@pytest.fixture(scope="module")
def vizwiz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vizwiz_layout(tmp_path_factory.mktemp("vizwiz"))


def test_train_both_tasks_on_vizwiz_then_write_both_submissions(
        vizwiz_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    # A learning rate at which two steps learn something: val scores are not all zero.
    result = run_cli(capsys, "train", "--dataset", "vizwiz", "--data-root", vizwiz_root,
                     "--train-split", "train", "--val-split", "val", "--task", "both",
                     "--epochs", "2", "--lr", "1e-2", "--set", "train.warmup_epochs=0",
                     "--out", run, "--json", *tiny_set_args())
    assert result.code == 0, result.err
    summary = result.json
    # The summary is the best epoch's (by answer accuracy) val record of metrics.jsonl ...
    best = max(read_metrics(run), key=lambda m: m["val"]["overall"])
    assert summary["best_epoch"] == best["epoch"] + 1 and summary["num_questions"] == len(VAL)
    assert summary["overall"] == best["val"]["overall"]
    assert summary["per_answer_type"] == best["val"]["per_answer_type"]
    assert summary["answerability"] == best["val"]["answerability"]
    assert set(summary["per_answer_type"]) == {"other", "unanswerable", "yes/no"}
    assert set(summary["answerability"]) == {"average_precision", "f1"}
    # ... which `lrcn evaluate` of best.pt reproduces from the two files it writes: the
    # answers scored by the official VizWiz rule, and the answerability AP and F1 recomputed
    # here (sklearn-free) from the written probabilities and the annotated labels.
    best_val = run_cli(capsys, "evaluate", "--checkpoint", run, "--split", "val",
                       "--results", tmp_path / "best_val.json", "--json")
    assert best_val.code == 0, best_val.err
    scored = score_vizwiz_files(vizwiz_root / "Annotations" / "val.json",
                                best_val.json["results"])
    assert scored["overall"] == pytest.approx(summary["overall"], abs=1e-9)
    assert scored["per_answer_type"] == pytest.approx(summary["per_answer_type"], abs=1e-9)
    probabilities = json.loads(Path(best_val.json["answerable_results"]).read_text())
    assert [p["image"] for p in probabilities] == [f"VizWiz_val_{i:08d}.jpg"
                                                  for i in range(len(VAL))]
    labels = [int(answer_type != "unanswerable") for _, _, answer_type, _ in VAL]
    unanswerable = [1 - label for label in labels]
    p_unanswerable = [1.0 - p["answerable"] for p in probabilities]
    assert summary["answerability"]["average_precision"] == pytest.approx(
        100.0 * average_precision(unanswerable, p_unanswerable), abs=1e-9)
    assert summary["answerability"]["f1"] == pytest.approx(
        100.0 * f1_score(unanswerable, [p > 0.5 for p in p_unanswerable]), abs=1e-9)

    result = run_cli(capsys, "evaluate", "--checkpoint", run, "--split", "test", "--json")
    assert result.code == 0, result.err
    answers = json.loads(Path(result.json["results"]).read_text())
    answerable = json.loads(Path(result.json["answerable_results"]).read_text())
    images = [f"VizWiz_test_{i:08d}.jpg" for i in range(2)]
    assert [a["image"] for a in answers] == images and all(isinstance(a["answer"], str)
                                                           for a in answers)
    assert [a["image"] for a in answerable] == images
    # Each written answer and P(answerable) is what `lrcn predict` (one image, its own
    # preprocessing) says about that test image and question.
    for i, (_, question) in enumerate(TEST):
        single = run_cli(capsys, "predict", "--checkpoint", run, "--image",
                         vizwiz_root / "test" / images[i], "--question", question,
                         "--top-k", "1", "--json")
        assert single.code == 0, single.err
        assert answers[i]["answer"] == single.json["answers"][0]["answer"]
        assert answerable[i]["answerable"] == pytest.approx(single.json["answerable"],
                                                            rel=1e-5, abs=1e-7)

    # the val split scored by evaluate equals what the last epoch logged
    result = run_cli(capsys, "evaluate", "--checkpoint", run / "checkpoints" / "last",
                     "--split", "val", "--json")
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val"]
    assert result.json["overall"] == pytest.approx(last["overall"])
    assert result.json["answerability"] == pytest.approx(last["answerability"])
    # ... and so does the official scoring of the two submission files it wrote
    scored = run_cli(capsys, "score", "--format", "vizwiz", "--annotations",
                     vizwiz_root / "Annotations" / "val.json", "--results",
                     result.json["results"], "--answerable", result.json["answerable_results"],
                     "--json")
    assert scored.code == 0, scored.err
    assert scored.json["overall"] == pytest.approx(last["overall"])
    assert scored.json["answerability"] == pytest.approx(last["answerability"])
    wrong = run_cli(capsys, "score", "--format", "vizwiz", "--annotations",
                    vizwiz_root / "Annotations" / "val.json", "--results",
                    result.json["results"], "--answerable", answerable_path_of_test(answerable,
                                                                                  tmp_path))
    assert wrong.code == 2 and "not for the images of" in wrong.err


def average_precision(labels: list[int], scores: list[float]) -> float:
    """sklearn's average precision, sum over thresholds of (R_n - R_{n-1}) * P_n, with one
    threshold per distinct score, from the highest down."""
    ranked = sorted(zip(scores, labels), reverse=True)
    positives = sum(labels)
    tp = fp = 0
    ap = recall = 0.0
    i = 0
    while i < len(ranked):
        score = ranked[i][0]
        while i < len(ranked) and ranked[i][0] == score:
            tp, fp, i = tp + ranked[i][1], fp + 1 - ranked[i][1], i + 1
        ap += (tp / positives - recall) * tp / (tp + fp)
        recall = tp / positives
    return ap


def f1_score(labels: list[int], predicted: list[bool]) -> float:
    tp = sum(1 for y, p in zip(labels, predicted) if y and p)
    wrong = sum(1 for y, p in zip(labels, predicted) if bool(y) != p)
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def answerable_path_of_test(records: list, tmp_path: Path) -> Path:
    """An answerability submission for other images (the test split's)."""
    path = tmp_path / "test_answerable.json"
    path.write_text(json.dumps(records))
    return path


def test_answerable_task_alone_and_ce_answer_loss(vizwiz_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "train", "--dataset", "vizwiz", "--data-root", vizwiz_root,
                     "--task", "answerable", "--epochs", "1", "--out", tmp_path / "a", "--json",
                     *tiny_set_args())
    assert result.code == 0, result.err and "answerability" in result.json
    result = run_cli(capsys, "train", "--dataset", "vizwiz", "--data-root", vizwiz_root,
                     "--answer-loss", "ce", "--epochs", "1", "--out", tmp_path / "b", "--json",
                     *tiny_set_args())
    assert result.code == 0, result.err
    assert "answerability" not in result.json  # task answer: no answerability head


def test_answerability_needs_labels(vqa2_layout, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", vqa2_layout.root,
                     "--task", "both", "--epochs", "1", "--out", tmp_path / "r",
                     *tiny_set_args())
    assert result.code == 2 and "needs answerability labels" in result.err
    assert not (tmp_path / "r").exists()


def test_missing_or_corrupt_image_is_an_error_or_a_listed_skip(
        vizwiz_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    root = tmp_path / "vizwiz"
    shutil.copytree(vizwiz_root, root)
    (root / "train" / "VizWiz_train_00000001.jpg").unlink()
    (root / "train" / "VizWiz_train_00000002.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    base = ["train", "--dataset", "vizwiz", "--data-root", root, "--epochs", "1", "--json",
            *tiny_set_args()]
    result = run_cli(capsys, *base, "--out", tmp_path / "fail")
    assert result.code == 2 and "VizWiz_train_0000000" in result.err
    assert not (tmp_path / "fail").exists()

    result = run_cli(capsys, *base, "--out", tmp_path / "skip", "--skip-invalid")
    assert result.code == 0, result.err
    assert result.json["skipped"] == 2
    skipped = json.loads((tmp_path / "skip" / "skipped.json").read_text())
    assert sorted(s["question_id"] for s in skipped) == ["VizWiz_train_00000001.jpg",
                                                         "VizWiz_train_00000002.jpg"]
    assert all(s["split"] == "train" and s["reason"] for s in skipped)
    # the skipped questions are gone before anything is built from them: "blue" occurs only
    # in the question about image 2 ("Is this blue?")
    assert TRAIN[2][1] == "Is this blue?"
    assert "blue" not in load_checkpoint(tmp_path / "skip").word_vocab


def test_compare_trains_each_model_and_writes_the_table(
        vizwiz_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    result = run_cli(capsys, "compare", "--dataset", "vizwiz", "--data-root", vizwiz_root,
                     "--models", "lrcn,cnn_lstm,text_only,image_only", "--task", "both",
                     "--epochs", "1", "--out", out, "--json", *tiny_set_args())
    assert result.code == 0, result.err
    rows = result.json["models"]
    assert [r["model"] for r in rows] == ["lrcn", "cnn_lstm", "text_only", "image_only"]
    for r in rows:  # a compare is a sweep over model.arch: OUT/arch-<model>/seed<k>
        run = out / f"arch-{r['model']}" / "seed0"
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert r["answer_accuracy"] == round(last["val"]["overall"], 2)
        assert r["answerability_ap"] == round(last["val"]["answerability"]["average_precision"], 2)
        assert load_checkpoint(run).config.model.arch == r["model"]
    table = (out / "comparison.md").read_text()
    assert table.count("\n| ") == 5 and "| text_only |" in table
    csv_lines = (out / "comparison.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,answer_accuracy,answerability_ap") and len(csv_lines) == 5
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = run_cli(capsys, "compare", "--dataset", "vizwiz", "--data-root", vizwiz_root,
                    "--models", "lrcn,mcan", "--out", tmp_path / "other", *tiny_set_args())
    assert again.code == 2 and "unknown model(s) mcan" in again.err
    again = run_cli(capsys, "compare", "--dataset", "vizwiz", "--data-root", vizwiz_root,
                    "--models", "lrcn", "--out", out, *tiny_set_args())
    assert again.code == 2 and f"{out} holds another sweep (its grid" in again.err
