"""VizWiz metrics as the official VizWiz API computes them, and ``lrcn score --format vizwiz``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import raises_naming as _raises, Result, run_cli
from lrcn.errors import LrcnError
from lrcn.evaluation.vizwiz import (
    answerability_metrics,
    normalize_vizwiz_prediction,
    read_vizwiz_annotations,
    read_vizwiz_results,
    score_vizwiz,
    score_vizwiz_files,
    vizwiz_accuracy,
)
from lrcn.vqa_accuracy import CONTRACTIONS, VIZWIZ_CONTRACTIONS, question_accuracy

DATA = Path(__file__).parent / "data" / "vizwiz_eval"
VQA_DATA = Path(__file__).parent / "data" / "vqa_eval"
TOL = 1e-6
TYPO = "\u2019"  # the typographic apostrophe of the VizWiz contraction table


# --------------------------------------------------------------------------- helpers


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _expected() -> dict[str, Any]:
    return json.loads((DATA / "expected.json").read_text(encoding="utf-8"))


def _record(image: str, answers: list[str], answer_type: str = "other",
            answerable: int = 1) -> dict[str, Any]:
    """A VizWiz annotation record; ``answers`` padded to ten with 'unanswerable'."""
    answers = answers + ["unanswerable"] * (10 - len(answers))
    return {"image": image, "question": "what is this?", "answer_type": answer_type,
            "answerable": answerable,
            "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]}


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    """Three annotated images and results for all three, with P(answerable)."""
    ann = _write(tmp_path / "ann.json", [
        _record("VizWiz_val_00000000.jpg", ["two"] * 10, "number"),
        _record("VizWiz_val_00000001.jpg", ["yes"] * 4, "yes/no"),
        _record("VizWiz_val_00000002.jpg", [], "unanswerable", answerable=0),
    ])
    res = _write(tmp_path / "res.json", [
        {"image": "VizWiz_val_00000000.jpg", "answer": "two", "answerable": 0.9},
        {"image": "VizWiz_val_00000001.jpg", "answer": "Yes!", "answerable": 0.4},
        {"image": "VizWiz_val_00000002.jpg", "answer": "unanswerable", "answerable": 0.2},
    ])
    return ann, res


def _assert_cli_error(result: Result, *fragments: str) -> None:
    assert result.code == 2
    assert "Traceback" not in result.err and result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrcn score: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --------------------------------------------------------------------------- conformance


def test_conformance_cases_reproduced() -> None:
    expected = _expected()
    summary = score_vizwiz_files(DATA / "annotations.json", DATA / "results.json")
    per_question = summary["per_question"]
    assert set(per_question) == set(expected["perQuestion"])
    for image, value in expected["perQuestion"].items():
        assert per_question[image] == pytest.approx(value, abs=TOL), image
    assert summary["overall"] == pytest.approx(expected["overall"], abs=TOL)
    assert set(summary["per_answer_type"]) == set(expected["perAnswerType"])
    for answer_type, value in expected["perAnswerType"].items():
        assert summary["per_answer_type"][answer_type] == pytest.approx(value, abs=TOL)
    unanswerability = expected["unanswerability"]
    assert summary["answerability"]["average_precision"] == pytest.approx(
        unanswerability["average_precision"], abs=TOL)
    assert summary["answerability"]["f1"] == pytest.approx(unanswerability["f1_score"], abs=TOL)
    assert summary["num_questions"] == len(expected["perQuestion"])


def test_conformance_set_separates_the_rules() -> None:
    """The conformance cases fail the VQA-v2 rule and an ASCII contraction table."""
    expected = _expected()["perQuestion"]
    annotations = read_vizwiz_annotations(DATA / "annotations.json")
    results = {r["image"]: r["answer"] for r in read_vizwiz_results(DATA / "results.json")}
    vqa2_wrong = sum(
        abs(100 * question_accuracy(results[rec["image"]], [a["answer"] for a in rec["answers"]])
            - expected[rec["image"]]) > TOL
        for rec in annotations)
    assert vqa2_wrong > 50
    typographic = [rec for rec in annotations
                   if any(TYPO in a["answer"] for a in rec["answers"])
                   and results[rec["image"]] == "dont know"]
    assert typographic and all(expected[rec["image"]] > 0 for rec in typographic)


def test_answerability_metrics_conformance() -> None:
    annotations = read_vizwiz_annotations(DATA / "annotations.json")
    results = {r["image"]: r["answerable"] for r in read_vizwiz_results(DATA / "results.json")}
    metrics = answerability_metrics([rec["answerable"] for rec in annotations],
                                    [results[rec["image"]] for rec in annotations])
    expected = _expected()["unanswerability"]
    assert metrics["average_precision"] == pytest.approx(expected["average_precision"], abs=TOL)
    assert metrics["f1"] == pytest.approx(expected["f1_score"], abs=TOL)


# --------------------------------------------------------------------------- accuracy rule


@pytest.mark.parametrize(("prediction", "answers", "vizwiz", "vqa2"), [
    # Humans are never normalised: a prediction equal to every human answer can score 0.
    ("two", ["two"] * 10, 0.0, 1.0),
    ("Two", ["Two"] * 10, 0.0, 1.0),
    ("two", ["Two"] * 10, 0.0, 0.0),
    (" yes", [" yes"] * 10, 0.0, 1.0),    # humans are not even stripped
    ("yes", ["yes "] * 10, 0.0, 1.0),
    # The prediction is always normalised, even when all ten humans agree.
    ("Two.", ["2"] * 10, 1.0, 0.0),
    ("The Dog!\n", ["dog"] * 10, 1.0, 0.0),
    # Humans disagreeing: VQA-v2 normalises them ("two" -> "2"), VizWiz does not.
    ("2", ["2"] * 3 + ["two"] * 7, 0.9, 1.0),
    ("yes", ["yes"] * 2 + ["Yes"] * 8, 0.6, 1.0),
    # Typographic contractions.
    ("dont know", [f"don{TYPO}t know"] * 10, 1.0, 0.0),
    ("dont know", ["don't know"] * 10, 0.0, 0.0),
    ("dont know", ["don't know"] * 5 + ["dont know"] * 5, 0.0, 1.0),
])
def test_differences_from_vqa2(prediction: str, answers: list[str], vizwiz: float,
                               vqa2: float) -> None:
    assert vizwiz_accuracy(prediction, answers) == pytest.approx(vizwiz)
    assert question_accuracy(prediction, answers) == pytest.approx(vqa2)


@pytest.mark.parametrize(("matches", "expected"), [
    (0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_levels(matches: int, expected: float) -> None:
    answers = ["red"] * matches + ["blue"] * (10 - matches)
    assert vizwiz_accuracy("Red", answers) == pytest.approx(expected)


@pytest.mark.parametrize(("prediction", "expected"), [
    ("dont", f"don{TYPO}t"),
    ("The Dont!", f"don{TYPO}t"),
    ("twas", f"{TYPO}twas"),
    ("hed've", "hed've"),                    # ASCII key: not in the VizWiz table
    (f"hed{TYPO}ve", f"he{TYPO}d{TYPO}ve"),
    # The official table keeps ASCII in two keys and eight values.
    ("couldn'tve", f"couldn{TYPO}t{TYPO}ve"),
    ("hadn'tve", f"hadn{TYPO}t{TYPO}ve"),
    (f"couldn{TYPO}tve", f"couldn{TYPO}tve"),
    ("cant", "can't"), ("aint", "ain't"), ("arent", "aren't"), ("couldve", "could've"),
    ("couldnt", "couldn't"), ("weve", "we've"), ("wheres", "where's"), ("whove", "who've"),
    ("Three Dogs\t", "3 dogs"),
])
def test_prediction_normalisation(prediction: str, expected: str) -> None:
    assert normalize_vizwiz_prediction(prediction) == expected


def test_vizwiz_contraction_table() -> None:
    assert len(VIZWIZ_CONTRACTIONS) == len(CONTRACTIONS)
    ascii_values = {k for k, v in VIZWIZ_CONTRACTIONS.items() if "'" in v}
    assert ascii_values == {"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres",
                            "whove"}
    assert {k for k in VIZWIZ_CONTRACTIONS if "'" in k} == {"couldn'tve", "hadn'tve"}
    assert CONTRACTIONS["dont"] == "don't"  # the VQA-v2 table is unchanged


def test_vizwiz_accuracy_needs_answers() -> None:
    with pytest.raises(ValueError):
        vizwiz_accuracy("yes", [])


# --------------------------------------------------------------------------- answerability


def test_answerability_by_hand() -> None:
    # Unanswerable = positive; scores 1 - p = 0.1, 0.6, 0.4, 0.8 for labels 0, 1, 1, 0.
    # Ranked: 0.8 (neg), 0.6 (pos: P 1/2, R 1/2), 0.4 (pos: P 2/3, R 1): AP = 7/12.
    # Predicted unanswerable (1 - p > 0.5): images 1 and 3: TP 1, FP 1, FN 1: F1 = 1/2.
    metrics = answerability_metrics([1, 0, 0, 1], [0.9, 0.4, 0.6, 0.2])
    assert metrics == pytest.approx({"average_precision": 100 * 7 / 12, "f1": 50.0})


def test_answerability_threshold_is_strict() -> None:
    # p = 0.5 gives 1 - p = 0.5, not > 0.5: predicted answerable, a missed unanswerable.
    metrics = answerability_metrics([False, False, True], [0.5, 0.4, 0.9])
    assert metrics["f1"] == pytest.approx(100 * 2 / 3)
    assert metrics["average_precision"] == pytest.approx(100.0)


@pytest.mark.parametrize(("labels", "probs"), [
    ([1, 0], [0.5]), ([], []), ([1, 2], [0.5, 0.5]), ([1, 0], [0.5, 1.5]),
])
def test_answerability_bad_input(labels: list[int], probs: list[float]) -> None:
    with pytest.raises(ValueError):
        answerability_metrics(labels, probs)


# --------------------------------------------------------------------------- files


def test_small_scores(small: tuple[Path, Path]) -> None:
    ann, res = small
    summary = score_vizwiz_files(ann, res)
    # 'two' -> '2' matches no 'two'; 'Yes!' -> 'yes' matches 4 of 10; 'unanswerable' all.
    assert summary["per_question"] == pytest.approx({
        "VizWiz_val_00000000.jpg": 0.0, "VizWiz_val_00000001.jpg": 100.0,
        "VizWiz_val_00000002.jpg": 100.0})
    assert summary["per_answer_type"] == pytest.approx(
        {"number": 0.0, "unanswerable": 100.0, "yes/no": 100.0})
    assert summary["overall"] == pytest.approx(200 / 3)
    assert summary["num_questions"] == 3
    # 1 - p = 0.1, 0.6, 0.8: the one unanswerable image ranks first (AP 100); two are
    # above 0.5, one of them answerable: TP 1, FP 1, FN 0: F1 2/3.
    assert summary["answerability"] == pytest.approx(
        {"average_precision": 100.0, "f1": 100 * 2 / 3})


def test_results_without_answerable(small: tuple[Path, Path], tmp_path: Path) -> None:
    ann, res = small
    plain = _write(tmp_path / "plain.json", [
        {k: v for k, v in r.items() if k != "answerable"}
        for r in json.loads(res.read_text(encoding="utf-8"))])
    summary = score_vizwiz_files(ann, plain)
    assert "answerability" not in summary
    with_p = score_vizwiz_files(ann, res)
    assert summary["per_question"] == with_p["per_question"]


def _results_cases() -> list[tuple[Any, tuple[str, ...]]]:
    ok = {"image": "a.jpg", "answer": "yes", "answerable": 0.5}
    return [
        ("", ("empty",)),
        ('[{"image": "a.jpg", "answer": "yes"}', ("not valid JSON",)),
        ({"image": "a.jpg"}, ("JSON list", "an object")),
        ([ok, 5], ("record 1", "expected an object")),
        ([{"answer": "yes"}], ("record 0", "missing key 'image'")),
        ([{"image": "a.jpg"}], ("record 0 (image 'a.jpg')", "missing key 'answer'")),
        ([{"image": 3, "answer": "yes"}], ("record 0", "'image' must be a string")),
        ([{"image": "a.jpg", "answer": None}], ("record 0", "'answer' must be a string")),
        ([ok, {**ok, "image": "b.jpg"}, ok],
         ("record 2 (image 'a.jpg')", "duplicate image", "record 0")),
        ([{**ok, "answerable": 1.5}], ("record 0 (image 'a.jpg')", "[0, 1]", "1.5")),
        ([{**ok, "answerable": -0.1}], ("record 0", "[0, 1]", "-0.1")),
        ([{**ok, "answerable": "0.5"}], ("record 0", "[0, 1]", "a string")),
        ([{**ok, "answerable": True}], ("record 0", "[0, 1]", "a boolean")),
        ([{**ok, "answerable": None}], ("record 0", "[0, 1]", "null")),
        ('[{"image": "a.jpg", "answer": "yes", "answerable": NaN}]', ("record 0", "[0, 1]")),
        ([ok, {"image": "b.jpg", "answer": "no"}],
         ("record 1 (image 'b.jpg')", "some results have 'answerable' (record 0)",
          "do not (record 1)")),
        ([{"image": "b.jpg", "answer": "no"}, ok], ("record 1", "(record 0)")),
    ]


@pytest.mark.parametrize(("content", "fragments"), _results_cases())
def test_read_results_errors(tmp_path: Path, content: Any, fragments: tuple[str, ...]) -> None:
    path = tmp_path / "my_results.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content),
                    encoding="utf-8")
    with _raises(path, *fragments):
        read_vizwiz_results(path)


def test_read_results_ok(tmp_path: Path) -> None:
    records = [{"image": "a.jpg", "answer": " Yes\n", "answerable": 1, "extra": 1},
               {"image": "b.jpg", "answer": "", "answerable": 0.0}]
    assert read_vizwiz_results(_write(tmp_path / "r.json", records)) == records
    assert read_vizwiz_results(_write(tmp_path / "e.json", [])) == []


def test_read_annotations_errors(tmp_path: Path) -> None:
    good = _record("a.jpg", ["yes"])
    cases = [
        ([], ("no records", "nothing to score against")),
        ([{k: v for k, v in good.items() if k != "answers"}],
         ("record 0 (image 'a.jpg')", "missing key 'answers'")),
        ([{**good, "answerable": 2}], ("record 0", "answerable must be 0 or 1")),
        ([{**good, "answer_type": "colour"}], ("record 0", "answer_type 'colour'")),
        ([good, good], ("record 1", "duplicate image 'a.jpg'")),
    ]
    for data, fragments in cases:
        path = _write(tmp_path / "my_annotations.json", data)
        with _raises(path, *fragments):
            read_vizwiz_annotations(path)


def test_coverage_messages(small: tuple[Path, Path], tmp_path: Path) -> None:
    ann, res = small
    records = json.loads(res.read_text(encoding="utf-8"))
    extra = {"image": "VizWiz_val_00000999.jpg", "answer": "no", "answerable": 0.5}
    partial = _write(tmp_path / "partial.json", records[1:] + [extra])
    with _raises(partial, "ann.json", "do not cover exactly the annotated images",
                 "1 annotated images have no result (e.g. 'VizWiz_val_00000000.jpg')",
                 "1 results are for images not in the annotations "
                 "(e.g. record 2 (image 'VizWiz_val_00000999.jpg'))"):
        score_vizwiz_files(ann, partial)


def test_score_vizwiz_lists_a_few_missing() -> None:
    annotations = [_record(f"{i}.jpg", ["yes"]) for i in range(8)]
    with pytest.raises(LrcnError) as info:
        score_vizwiz(annotations, [])
    assert ("8 annotated images have no result "
            "(e.g. '0.jpg', '1.jpg', '2.jpg', '3.jpg', '4.jpg', ...)") in str(info.value)


# --------------------------------------------------------------------------- CLI


def test_cli_conformance(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    expected = _expected()
    out = tmp_path / "per_question.json"
    result = run_cli(capsys, "score", "--format", "vizwiz", "--annotations",
                     DATA / "annotations.json", "--results", DATA / "results.json",
                     "--per-question", out, "--json")
    assert result.code == 0, result.err
    summary = result.json
    assert set(summary) == {"overall", "per_answer_type", "num_questions", "answerability"}
    assert summary["overall"] == pytest.approx(expected["overall"], abs=TOL)
    assert summary["per_answer_type"] == pytest.approx(expected["perAnswerType"], abs=TOL)
    assert summary["num_questions"] == len(expected["perQuestion"])
    assert summary["answerability"] == pytest.approx(
        {"average_precision": expected["unanswerability"]["average_precision"],
         "f1": expected["unanswerability"]["f1_score"]}, abs=TOL)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == pytest.approx(expected["perQuestion"], abs=TOL)


def test_cli_human_output(capsys: pytest.CaptureFixture[str], small: tuple[Path, Path]) -> None:
    ann, res = small
    result = run_cli(capsys, "score", "--format", "vizwiz", "--annotations", ann,
                     "--results", res)
    assert result.code == 0, result.err
    assert "accuracy: 66.67%" in result.out
    assert "unanswerable" in result.out
    assert "Unanswerability AP: 100.00%  F1: 66.67%" in result.out


def test_cli_default_format_is_vqa2(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--annotations", VQA_DATA / "annotations.json", "--results",
            VQA_DATA / "results.json", "--json"]
    default = run_cli(capsys, "score", *args)
    explicit = run_cli(capsys, "score", "--format", "vqa2", *args)
    assert default.code == explicit.code == 0, default.err
    expected = json.loads((VQA_DATA / "expected.json").read_text(encoding="utf-8"))
    assert default.json["overall"] == pytest.approx(expected["overall"], abs=TOL)
    assert default.json == explicit.json
    assert "answerability" not in default.json
    # VizWiz annotations are not VQA-v2 annotations: scoring them as such fails cleanly.
    wrong = run_cli(capsys, "score", "--annotations", DATA / "annotations.json",
                    "--results", DATA / "results.json")
    _assert_cli_error(wrong, "annotations.json")


def test_cli_errors(capsys: pytest.CaptureFixture[str], small: tuple[Path, Path],
                    tmp_path: Path) -> None:
    ann, res = small
    records = json.loads(res.read_text(encoding="utf-8"))

    def score(results: Path, *extra: Any) -> Result:
        return run_cli(capsys, "score", "--format", "vizwiz", "--annotations", ann,
                       "--results", results, *extra, "--json")

    missing = _write(tmp_path / "missing.json", records[:2])
    _assert_cli_error(score(missing), str(missing), "ann.json",
                      "1 annotated images have no result", "'VizWiz_val_00000002.jpg'")
    extra = _write(tmp_path / "extra.json", records + [
        {"image": "VizWiz_val_00000007.jpg", "answer": "no", "answerable": 0.1}])
    _assert_cli_error(score(extra), str(extra),
                      "record 3 (image 'VizWiz_val_00000007.jpg')", "not in the annotations")
    bad_p = copy.deepcopy(records)
    bad_p[1]["answerable"] = 1.2
    bad = _write(tmp_path / "bad_p.json", bad_p)
    _assert_cli_error(score(bad), str(bad), "record 1 (image 'VizWiz_val_00000001.jpg')",
                      "'answerable'", "[0, 1]")
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(records)[:-10], encoding="utf-8")
    _assert_cli_error(score(cut), str(cut), "not valid JSON")
    cut_ann = tmp_path / "cut_ann.json"
    cut_ann.write_text(ann.read_text(encoding="utf-8")[:-3], encoding="utf-8")
    _assert_cli_error(run_cli(capsys, "score", "--format", "vizwiz", "--annotations", cut_ann,
                              "--results", res), str(cut_ann), "not valid JSON")
    _assert_cli_error(score(res, "--questions", ann), "--questions is not used")
