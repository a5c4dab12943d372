"""Scoring of result files: conformance with the official evaluator and every error path."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import raises_naming as _raises
from conftest import run_cli

from lrcn.errors import LrcnError
from lrcn.evaluation.score import (
    ScoreReport,
    read_results,
    read_vqa_annotations,
    score_files,
    score_vqa,
    write_per_question,
)

DATA = Path(__file__).parent / "data" / "vqa_eval"
VIZWIZ_DATA = Path(__file__).parent / "data" / "vizwiz_eval"
TOL = 1e-6


# --------------------------------------------------------------------------- helpers


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _answers(*texts: str) -> list[dict[str, Any]]:
    """Ten answer records; the given texts first, then 'yes' for the rest."""
    texts = texts + ("yes",) * (10 - len(texts))
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1}
            for i, t in enumerate(texts)]


def _annotation(qid: int, answer_type: str = "yes/no", answers: Any = None,
                question_type: str = "is") -> dict[str, Any]:
    return {"question_id": qid, "image_id": 1, "question_type": question_type,
            "answer_type": answer_type, "multiple_choice_answer": "yes",
            "answers": _answers() if answers is None else answers}


def _annotations_file(path: Path, annotations: list[Any]) -> Path:
    return _write(path, {"info": {}, "license": {}, "data_type": "mscoco",
                         "data_subtype": "val2014", "annotations": annotations})


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    """Two annotated questions and a results file answering both."""
    ann = _annotations_file(tmp_path / "ann.json", [
        _annotation(1, "yes/no", _answers("no", "no")),
        _annotation(2, "number", _answers("2", "two", "2", "3")),
    ])
    res = _write(tmp_path / "res.json", [{"question_id": 1, "answer": "yes"},
                                         {"question_id": 2, "answer": "2"}])
    return ann, res


# --------------------------------------------------------------------------- conformance


def test_conformance_cases_reproduced() -> None:
    expected = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
    report = score_files(DATA / "annotations.json", DATA / "results.json",
                         DATA / "questions.json")
    per_question = {int(k): v for k, v in expected["perQuestion"].items()}
    assert set(report.per_question) == set(per_question)
    for qid, value in per_question.items():
        assert report.per_question[qid] == pytest.approx(value, abs=TOL), qid
    assert report.overall == pytest.approx(expected["overall"], abs=TOL)
    assert set(report.per_answer_type) == set(expected["perAnswerType"])
    for answer_type, value in expected["perAnswerType"].items():
        assert report.per_answer_type[answer_type] == pytest.approx(value, abs=TOL)
    assert set(report.per_question_type) == set(expected["perQuestionType"])
    for question_type, value in expected["perQuestionType"].items():
        assert report.per_question_type[question_type] == pytest.approx(value, abs=TOL)
    assert report.question_type_counts == {"how many": 149, "is the": 130, "what is the": 121}
    summary = report.to_dict()
    assert summary == {"overall": report.overall,
                       "per_answer_type": report.per_answer_type,
                       "per_question_type": report.per_question_type,
                       "question_type_counts": report.question_type_counts,
                       "num_questions": len(per_question)}


def test_conformance_without_questions_file() -> None:
    with_q = score_files(DATA / "annotations.json", DATA / "results.json",
                         DATA / "questions.json")
    without = score_files(DATA / "annotations.json", DATA / "results.json")
    assert without == with_q


def test_small_scores(small: tuple[Path, Path]) -> None:
    ann, res = small
    report = score_files(ann, res)
    # q1: 8 of 10 say yes -> 100; q2: '2','two','2' normalise to three '2's -> 90.
    assert report.per_question == pytest.approx({1: 100.0, 2: 90.0})
    assert report.per_answer_type == pytest.approx({"number": 90.0, "yes/no": 100.0})
    assert report.overall == pytest.approx(95.0)
    assert isinstance(report, ScoreReport)


# --------------------------------------------------------------------------- read_results


@pytest.mark.parametrize(("content", "fragments"), [
    ("", ("empty",)),
    ('[{"question_id": 1, "answer": "yes"}', ("not valid JSON",)),
    ("{not json", ("not valid JSON", "line 1")),
    (b'["\xff"]', ("not a UTF-8 JSON file",)),
    ('{"question_id": 1, "answer": "yes"}', ("JSON list", "an object")),
    ('[{"question_id": 1, "answer": "yes"}, 5]', ("record 1", "expected an object")),
    ('[{"answer": "yes"}]', ("record 0", "missing key 'question_id'")),
    ('[{"question_id": 1}]', ("record 0", "missing key 'answer'")),
    ('[{"question_id": "1", "answer": "yes"}]', ("record 0", "must be an integer", "string")),
    ('[{"question_id": 1.0, "answer": "yes"}]', ("record 0", "must be an integer")),
    ('[{"question_id": true, "answer": "yes"}]', ("record 0", "must be an integer", "boolean")),
    ('[{"question_id": 1, "answer": 2}]', ("record 0", "'answer' must be a string")),
    ('[{"question_id": 1, "answer": null}]', ("record 0", "'answer' must be a string")),
    ('[{"question_id": 1, "answer": "a"}, {"question_id": 2, "answer": "b"}, '
     '{"question_id": 1, "answer": "c"}]', ("record 2", "duplicate question_id 1", "record 0")),
])
def test_read_results_errors(tmp_path: Path, content: str | bytes,
                             fragments: tuple[str, ...]) -> None:
    path = tmp_path / "my_results.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with _raises(path, *fragments):
        read_results(path)


def test_read_results_missing_file_and_directory(tmp_path: Path) -> None:
    with _raises(tmp_path / "absent.json", "not found"):
        read_results(tmp_path / "absent.json")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with _raises(folder, "directory"):
        read_results(folder)


def test_read_results_ok(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.json", [{"question_id": 5, "answer": " Yes\n", "extra": 1},
                                        {"question_id": -3, "answer": ""}])
    assert read_results(path) == {5: " Yes\n", -3: ""}
    assert read_results(_write(tmp_path / "e.json", [])) == {}


# --------------------------------------------------------------------------- annotations


def _ann_cases() -> list[tuple[Any, tuple[str, ...]]]:
    good = _annotation(7)
    no_type = {k: v for k, v in good.items() if k != "answer_type"}
    no_question_type = {k: v for k, v in good.items() if k != "question_type"}
    no_answers = {k: v for k, v in good.items() if k != "answers"}
    no_qid = {k: v for k, v in good.items() if k != "question_id"}
    answer_without_text = _answers()
    del answer_without_text[3]["answer"]
    answer_not_str = _answers()
    answer_not_str[4]["answer"] = 4
    same_records = [{"answer": "yes"}] * 10
    same_ids = _answers("no")
    same_ids[1]["answer_id"] = 1
    same_ids[1]["answer"] = "no"
    return [
        ([], ("annotation file must be a JSON object", "a list")),
        ({"questions": []}, ("missing key 'annotations'",)),
        ({"annotations": {}}, ("'annotations' must be a list",)),
        ({"annotations": []}, ("empty",)),
        ({"annotations": [good, "x"]}, ("annotations[1]", "expected an object")),
        ({"annotations": [no_qid]}, ("annotations[0]", "missing key 'question_id'")),
        ({"annotations": [{**good, "question_id": False}]}, ("annotations[0]", "integer")),
        ({"annotations": [good, _annotation(8), good]},
         ("annotations[2]", "question_id 7", "duplicate", "annotations[0]")),
        ({"annotations": [no_type]}, ("annotations[0]", "missing key 'answer_type'")),
        ({"annotations": [no_answers]}, ("annotations[0]", "missing key 'answers'")),
        ({"annotations": [{**good, "answer_type": None}]}, ("'answer_type' must be a string",)),
        ({"annotations": [no_question_type]}, ("annotations[0]", "missing key 'question_type'")),
        ({"annotations": [good, {**_annotation(8), "question_type": ["is"]}]},
         ("annotations[1] (question_id 8): 'question_type' must be a string, got a list",)),
        ({"annotations": [{**good, "answers": "yes"}]}, ("'answers' must be a list",)),
        ({"annotations": [{**good, "answers": _answers()[:9]}]},
         ("question_id 7", "has 9 answers, expected 10")),
        ({"annotations": [{**good, "answers": _answers() + _answers()[:1]}]},
         ("has 11 answers",)),
        ({"annotations": [{**good, "answers": ["yes"] * 10}]},
         ("annotations[0] (question_id 7): answers[0]: expected an object",)),
        ({"annotations": [{**good, "answers": answer_without_text}]},
         ("annotations[0] (question_id 7): answers[3]: missing key 'answer'",)),
        ({"annotations": [{**good, "answers": answer_not_str}]},
         ("annotations[0] (question_id 7): answers[4]: 'answer' must be a string",)),
        ({"annotations": [{**good, "answers": same_records}]}, ("identical",)),
        ({"annotations": [{**good, "answers": same_ids}]}, ("identical",)),
    ]


@pytest.mark.parametrize(("data", "fragments"), _ann_cases())
def test_read_annotations_errors(tmp_path: Path, data: Any, fragments: tuple[str, ...]) -> None:
    path = _write(tmp_path / "my_annotations.json", data)
    with _raises(path, *fragments):
        read_vqa_annotations(path)


def test_read_annotations_unreadable(tmp_path: Path) -> None:
    with _raises(tmp_path / "nope.json", "not found"):
        read_vqa_annotations(tmp_path / "nope.json")
    path = tmp_path / "cut.json"
    path.write_text(json.dumps({"annotations": [_annotation(1)]})[:-7], encoding="utf-8")
    with _raises(path, "not valid JSON"):
        read_vqa_annotations(path)


def test_read_annotations_ok(tmp_path: Path) -> None:
    answers = _answers("no", "2")
    del answers[5]["answer_id"]  # distinct records still pass without every answer_id
    path = _annotations_file(tmp_path / "a.json", [
        _annotation(3, "other", answers, question_type="what is the")])
    by_qid, types, question_types = read_vqa_annotations(path)
    assert by_qid == {3: ["no", "2"] + ["yes"] * 8}
    assert types == {3: "other"}
    assert question_types == {3: "what is the"}


# --------------------------------------------------------------------------- coverage


def test_score_vqa_coverage_message() -> None:
    answers = {q: ["yes"] * 10 for q in range(10)}
    types = {q: "yes/no" for q in answers}
    predictions = {q: "yes" for q in range(3, 10)} | {100: "no", 101: "no"}
    with pytest.raises(LrcnError) as info:
        score_vqa(answers, types, predictions)
    message = str(info.value)
    assert "3 annotated questions have no result" in message
    assert "e.g. 0, 1, 2" in message
    assert "2 results are for questions not in the annotations" in message
    assert "e.g. 100, 101" in message


def test_score_vqa_many_missing_lists_a_few() -> None:
    answers = {q: ["yes"] * 10 for q in range(50)}
    with pytest.raises(LrcnError, match=r"50 annotated questions have no result \(e.g. 0, 1, 2, 3, 4, \.\.\.\)"):
        score_vqa(answers, {q: "yes/no" for q in answers}, {})


def test_score_files_results_incomplete(small: tuple[Path, Path], tmp_path: Path) -> None:
    ann, _ = small
    res = _write(tmp_path / "partial_results.json", [{"question_id": 1, "answer": "yes"},
                                                     {"question_id": 9, "answer": "no"}])
    with _raises(res, "1 annotated questions have no result (e.g. 2)",
                 "1 results are for questions not in the annotations (e.g. 9)"):
        score_files(ann, res)


def test_score_files_questions_mismatch(small: tuple[Path, Path], tmp_path: Path) -> None:
    ann, res = small
    questions = _write(tmp_path / "my_questions.json", {"questions": [
        {"image_id": 1, "question": "is it?", "question_id": 1},
        {"image_id": 1, "question": "how many?", "question_id": 3},
    ]})
    with _raises(questions, "ann.json", "1 annotated questions are not in the questions file",
                 "1 questions have no annotation (e.g. 3)"):
        score_files(ann, res, questions)


@pytest.mark.parametrize(("data", "fragments"), [
    ({"annotations": []}, ("missing key 'questions'",)),
    ({"questions": [{"question": "x"}]}, ("questions[0]", "missing key 'question_id'")),
    ({"questions": [{"image_id": 1, "question": "?", "question_id": 1}] * 2},
     ("questions[1]", "question_id 1", "duplicate", "questions[0]")),
])
def test_score_files_bad_questions_file(small: tuple[Path, Path], tmp_path: Path,
                                        data: Any, fragments: tuple[str, ...]) -> None:
    ann, res = small
    questions = _write(tmp_path / "my_questions.json", data)
    with _raises(questions, *fragments):
        score_files(ann, res, questions)


def test_score_files_matching_questions(small: tuple[Path, Path], tmp_path: Path) -> None:
    ann, res = small
    questions = _write(tmp_path / "q.json", {"questions": [
        {"image_id": 1, "question": "?", "question_id": q} for q in (2, 1)]})
    assert score_files(ann, res, questions) == score_files(ann, res)


# --------------------------------------------------------------------------- writing


def test_write_per_question_round_trip(tmp_path: Path) -> None:
    report = score_files(DATA / "annotations.json", DATA / "results.json")
    out = tmp_path / "per_question.json"
    out.write_text("old content", encoding="utf-8")  # replaced, not appended to
    write_per_question(report, out)
    loaded = json.loads(out.read_text(encoding="utf-8"))
    assert {int(k): v for k, v in loaded.items()} == report.per_question
    assert sorted(os.listdir(tmp_path)) == ["per_question.json"]  # no temporary left


def test_write_per_question_uses_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = ScoreReport(overall=30.0, per_answer_type={"other": 30.0},
                         per_question={2: 30.000000000000004, 1: 0.0})
    out = tmp_path / "pq.json"
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        assert not Path(dst).exists()  # nothing at the destination until the rename
        assert Path(src).parent == Path(dst).parent
        assert json.loads(Path(src).read_text(encoding="utf-8")) == {"1": 0.0,
                                                                      "2": 30.000000000000004}
        renames.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_per_question(report, out)
    assert len(renames) == 1 and renames[0][1] == str(out)
    assert json.loads(out.read_text(encoding="utf-8")) == {"1": 0.0, "2": 30.000000000000004}


def test_write_per_question_failure_leaves_nothing(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    report = ScoreReport(overall=0.0, per_answer_type={}, per_question={1: 0.0})
    out = tmp_path / "pq.json"

    def failing(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing)
    with _raises(out, "No space left"):
        write_per_question(report, out)
    assert os.listdir(tmp_path) == []


def test_write_per_question_missing_folder(tmp_path: Path) -> None:
    report = ScoreReport(overall=0.0, per_answer_type={}, per_question={1: 0.0})
    out = tmp_path / "no_such_dir" / "pq.json"
    with _raises(out, "cannot write"):
        write_per_question(report, out)


# --------------------------------------------------------------------------- question types

# Question type -> how many of each of its questions' ten answers are "yes": predicting "yes"
# scores 0, 0.3, 0.6, 0.9 for 0..3, so the types score 0, 15, 30, ... 90 percent.
TYPED_YES_COUNTS = {"why": [0], "what is": [0, 1], "how many": [1], "is the": [1, 2],
                    "what color": [2], "are there": [2, 3], "is this": [3]}
TYPED_PERCENT = {"why": 0.0, "what is": 15.0, "how many": 30.0, "is the": 45.0,
                 "what color": 60.0, "are there": 75.0, "is this": 90.0}


@pytest.fixture
def typed(tmp_path: Path) -> tuple[Path, Path]:
    """Seven question types, cutting across answer types, and results answering "yes"."""
    annotations, qid = [], 0
    for question_type, yes_counts in TYPED_YES_COUNTS.items():
        for n in yes_counts:
            qid += 1
            answer_type = ("yes/no", "other", "number")[qid % 3]
            annotations.append(_annotation(qid, answer_type, _answers(*["no"] * (10 - n)),
                                           question_type=question_type))
    ann = _annotations_file(tmp_path / "typed_ann.json", annotations)
    res = _write(tmp_path / "typed_res.json",
                 [{"question_id": q, "answer": "yes"} for q in range(1, qid + 1)])
    return ann, res


def test_score_json_per_question_type(typed: tuple[Path, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    ann, res = typed
    result = run_cli(capsys, "score", "--annotations", ann, "--results", res, "--json")
    assert result.code == 0, result.err
    summary = result.json
    assert summary["per_question_type"] == pytest.approx(TYPED_PERCENT, abs=TOL)
    assert summary["question_type_counts"] == {t: len(v) for t, v in TYPED_YES_COUNTS.items()}
    assert summary["num_questions"] == 10
    assert summary["overall"] == pytest.approx(45.0, abs=TOL)
    assert set(summary["per_answer_type"]) == {"yes/no", "other", "number"}


def _section(out: str, title: str) -> list[str]:
    """The indented lines under the line starting with ``title``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("  ")),
               len(lines))
    return lines[start:end]


def test_score_human_names_worst_and_best_question_types(
        typed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ann, res = typed
    result = run_cli(capsys, "score", "--annotations", ann, "--results", res)
    assert result.code == 0, result.err
    worst = _section(result.out, "worst 3 of 7 question types:")
    best = _section(result.out, "best 3 of 7 question types:")
    assert [line.split('"')[1] for line in worst] == ["why", "what is", "how many"]
    assert [line.split('"')[1] for line in best] == ["is this", "are there", "what color"]
    assert "0.00%  (1 question)" in worst[0] and "15.00%  (2 questions)" in worst[1]
    assert "90.00%  (1 question)" in best[0]
    assert '"is the"' not in result.out  # the middle type is left out


def test_score_human_lists_few_question_types_all(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "score", "--annotations", DATA / "annotations.json",
                     "--results", DATA / "results.json")
    assert result.code == 0, result.err
    lines = _section(result.out, "question types, worst first:")
    assert [line.split('"')[1] for line in lines] == ["what is the", "how many", "is the"]
    assert "52.64%  (121 questions)" in lines[0]
    # VizWiz has no question types: nothing about them is printed.
    vizwiz = run_cli(capsys, "score", "--format", "vizwiz",
                     "--annotations", VIZWIZ_DATA / "annotations.json",
                     "--results", VIZWIZ_DATA / "results.json")
    assert vizwiz.code == 0, vizwiz.err
    assert "answer accuracy" in vizwiz.out and "question type" not in vizwiz.out
