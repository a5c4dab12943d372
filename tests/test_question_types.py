"""Per-question-type accuracy end to end: ``lrcn train --json``, ``metrics.jsonl``,
``lrcn evaluate`` (JSON and human output) and ``lrcn score`` agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import VQA2Layout, read_metrics, run_cli, tiny_set_args

# The tiny layout's question types: the first two words of each question.
QUESTION_TYPES = {"what color", "how many", "is the"}


def test_train_evaluate_score_carry_per_question_type(
        vqa2_layout: VQA2Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    trained = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", vqa2_layout.root,
                      "--train-split", "train2014", "--val-split", "val2014", "--epochs", "1",
                      "--out", run, "--json", *tiny_set_args())
    assert trained.code == 0, trained.err
    summary = trained.json
    assert set(summary["per_question_type"]) == QUESTION_TYPES
    assert summary["question_type_counts"] == {"what color": 3, "how many": 3, "is the": 6}
    [epoch] = read_metrics(run)
    assert epoch["val"]["per_question_type"] == summary["per_question_type"]

    results = tmp_path / "val_results.json"
    evaluate = ["evaluate", "--checkpoint", run, "--split", "val2014", "--results", results]
    evaluated = run_cli(capsys, *evaluate, "--json")
    assert evaluated.code == 0, evaluated.err
    assert evaluated.json["per_question_type"] == pytest.approx(
        summary["per_question_type"], abs=1e-9)
    scored = run_cli(capsys, "score", "--annotations", vqa2_layout.val_annotations,
                     "--results", results, "--json")
    assert scored.code == 0, scored.err
    assert scored.json["per_question_type"] == pytest.approx(
        evaluated.json["per_question_type"], abs=1e-9)
    assert scored.json["question_type_counts"] == evaluated.json["question_type_counts"]

    human = run_cli(capsys, *evaluate)
    assert human.code == 0, human.err
    assert "question types, worst first:" in human.out
    for question_type, acc in evaluated.json["per_question_type"].items():
        assert f'"{question_type}"' in human.out and f"{acc:6.2f}%" in human.out
