"""CLEVR v1.0 as published: the reader, exact-match scoring by question category, and the
CLI from training to the test split's results file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from PIL import Image

from conftest import assert_refused, read_metrics, run_cli, tiny_set_args, write_json
from lrcn.data import load_split
from lrcn.data.clevr import QUESTION_CATEGORIES, clevr_answer_type, read_clevr
from lrcn.data.registry import dataset_metric, default_splits
from lrcn.errors import LrcnError
from lrcn.evaluation import ClevrEvaluator, build_evaluator

COLORS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
SPLIT_COLORS = {"train": ["red", "green", "blue", "red", "blue", "green"],
                "val": ["green", "red", "blue"], "test": ["blue", "red"]}


def program(*functions: str) -> list[dict[str, Any]]:
    """A CLEVR program: a scene step, then each function applied to the step before."""
    steps = [{"inputs": [], "function": "scene", "value_inputs": []}]
    for f in functions:
        steps.append({"inputs": [len(steps) - 1], "function": f, "value_inputs": []})
    return steps


def questions_about(color: str) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(question, answer, program) about an image holding one cube of `color`."""
    other = "blue" if color != "blue" else "red"
    return [
        (f"Is there a {color} cube?", "yes", program("filter_color", "exist")),
        (f"Is there a {other} cube?", "no", program("filter_color", "exist")),
        ("What color is the cube?", color, program("filter_shape", "unique", "query_color")),
        ("How many cubes are there?", "1", program("filter_shape", "count")),
        (f"Are there more {color} things than {other} things?", "yes",
         program("filter_color", "count", "greater_than")),
        ("Is the big cube the same color as the small cube that is behind the cylinder left "
         "of the sphere?", "no", program("filter_shape", "unique", "equal_color")),
    ]


def question_records(split: str) -> list[dict[str, Any]]:
    """The ``questions`` of ``CLEVR_<split>_questions.json`` as published: test questions
    carry no answer, program or family."""
    out = []
    for image_index, color in enumerate(SPLIT_COLORS[split]):
        for question, answer, steps in questions_about(color):
            record = {"question_index": len(out), "image_index": image_index,
                      "image_filename": f"CLEVR_{split}_{image_index:06d}.png", "split": split,
                      "question": question}
            if split != "test":
                record.update(answer=answer, question_family_index=len(out) % 90,
                              program=steps)
            out.append(record)
    return out


def write_clevr(root: Path, mutate: Callable[[dict[str, Any]], None] | None = None,
                split: str = "val") -> Path:
    """A small CLEVR_v1.0 folder: train, val and test questions and their PNG images. A
    `mutate` function edits the parsed questions file of `split` before it is written."""
    for name, colors in SPLIT_COLORS.items():
        data = {"info": {"split": name, "version": "1.0"}, "questions": question_records(name)}
        if mutate is not None and name == split:
            mutate(data)
        write_json(root / "questions" / f"CLEVR_{name}_questions.json", data)
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        for i, color in enumerate(colors):
            image = Image.new("RGB", (48, 32), (120, 120, 120))
            image.paste(COLORS[color], (16, 8, 32, 24))
            image.save(root / "images" / name / f"CLEVR_{name}_{i:06d}.png")
    return root


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clevr(tmp_path_factory.mktemp("clevr") / "CLEVR_v1.0")


# --- the reader ---------------------------------------------------------------------------


def test_registry_entry() -> None:
    assert default_splits("clevr") == ("train", "val")
    assert dataset_metric("clevr") == "clevr"


def test_reads_the_published_layout(layout: Path) -> None:
    split = load_split("clevr", layout, "val")
    assert split.has_answers and len(split.records) == 18
    first = split.records[0]
    assert first.question_id == 0 and first.question == "Is there a green cube?"
    assert first.image_key == "images/val/CLEVR_val_000000.png"
    assert split.image_path(first.image_key).is_file()
    assert first.answers == ("yes",) * 10 and first.multiple_choice_answer == "yes"
    assert [(r.question_type, r.answer_type) for r in split.records[:6]] == [
        ("exist", "yes/no"), ("exist", "yes/no"), ("query_attribute", "other"),
        ("count", "number"), ("compare_numbers", "yes/no"), ("compare_attribute", "yes/no")]


def test_test_split_has_no_answers(layout: Path) -> None:
    split = read_clevr(layout, "test")
    assert len(split.records) == 12 and not split.has_answers
    assert all(r.answers is None and r.question_type is None for r in split.records)


def test_question_categories_cover_clevrs_answering_functions() -> None:
    assert set(QUESTION_CATEGORIES.values()) == {
        "exist", "count", "compare_numbers", "query_attribute", "compare_attribute"}
    assert len(QUESTION_CATEGORIES) == 13  # exist, count, 3 integer and 8 attribute functions
    assert [clevr_answer_type(a) for a in ("yes", "no", "3", "10", "cyan", "rubber")] == [
        "yes/no", "yes/no", "number", "number", "other", "other"]


def test_program_steps_named_type_are_read(tmp_path: Path) -> None:
    """The CLEVR generator's own output names a step's function ``type``."""
    def rename(data: dict[str, Any]) -> None:
        for q in data["questions"]:
            q["program"] = [{"type": s["function"], "inputs": s["inputs"]} for s in q["program"]]
    root = write_clevr(tmp_path / "c", rename)
    assert read_clevr(root, "val").records[3].question_type == "count"


def _drop(key: str, index: int = 4) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["questions"][index].pop(key)


def _set(key: str, value: Any, index: int = 4) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["questions"][index].__setitem__(key, value)


@pytest.mark.parametrize(("mutate", "fragments"), [
    (_drop("question"), ["questions[4] (question_index 4)", "missing key 'question'"]),
    (_set("question_index", "4"), ["questions[4]", "'question_index' must be an integer"]),
    (_set("question_index", 2), ["questions[4] (question_index 2)",
                                 "duplicate question_index 2 (first at questions[2])"]),
    (_set("image_filename", "val/CLEVR_val_000000.png"), ["questions[4]",
                                                          "must be a bare file name"]),
    (_set("split", "train"), ["questions[4]", "'split' is 'train'", "split 'val'"]),
    (_drop("answer"), ["questions[4]", "has no 'answer'", "questions[0] (question_index 0) "
                       "has", "all have answers or none do"]),
    (_set("answer", 3), ["questions[4]", "'answer' must be a string"]),
    (_set("program", []), ["questions[4]", "'program' must be a non-empty list"]),
    (_set("program", program("filter_color")), ["questions[4]", "last step",
                                                "not one of CLEVR's answering functions"]),
    (lambda data: data.pop("questions"), ["missing key 'questions'"]),
])
def test_malformed_questions_name_the_file_and_record(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        mutate: Callable[[dict[str, Any]], None], fragments: list[str]) -> None:
    root = write_clevr(tmp_path / "CLEVR_v1.0", mutate)
    with pytest.raises(LrcnError, match="CLEVR_val_questions.json"):
        read_clevr(root, "val")
    out = tmp_path / "run"
    result = run_cli(capsys, "train", "--dataset", "clevr", "--data-root", root,
                     "--epochs", "1", "--out", out, *tiny_set_args())
    assert_refused(result, "train", "CLEVR_val_questions.json", *fragments, absent=(out,))


def test_missing_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_clevr(tmp_path / "CLEVR_v1.0")
    with pytest.raises(LrcnError, match=r"CLEVR_testA_questions.json \(found: "
                                         r"CLEVR_test_questions.json, CLEVR_train_"):
        read_clevr(root, "testA")
    with pytest.raises(LrcnError, match="CLEVR root folder not found"):
        read_clevr(tmp_path / "nowhere", "val")
    (root / "images" / "train" / "CLEVR_train_000004.png").unlink()
    out = tmp_path / "run"
    result = run_cli(capsys, "train", "--dataset", "clevr", "--data-root", root,
                     "--epochs", "1", "--out", out, *tiny_set_args())
    assert_refused(result, "train", "CLEVR_train_000004.png", "question_id 24", absent=(out,))


# --- scoring ------------------------------------------------------------------------------


def test_exact_match_by_question_category(layout: Path, tmp_path: Path) -> None:
    records = read_clevr(layout, "val").records
    evaluator = build_evaluator("clevr", records)
    assert isinstance(evaluator, ClevrEvaluator)
    answers = [r.multiple_choice_answer for r in records]
    answers[2] = "red"      # a wrong colour (query_attribute)
    answers[3] = "one"      # not CLEVR's "1": exact match, no VQA normalisation
    answers[4] = "yes "     # nor stripping
    evaluator.process(list(range(len(records))), answers)
    report = evaluator.evaluate()
    assert report["overall"] == pytest.approx(100 * 15 / 18)
    assert report["per_question_type"] == pytest.approx({
        "exist": 100.0, "query_attribute": 200 / 3, "count": 200 / 3,
        "compare_numbers": 200 / 3, "compare_attribute": 100.0})
    assert report["question_type_counts"] == {
        "exist": 6, "query_attribute": 3, "count": 3, "compare_numbers": 3,
        "compare_attribute": 3}
    assert report["per_answer_type"]["number"] == pytest.approx(200 / 3)
    written = evaluator.write_results(tmp_path / "val.json")
    results = json.loads(Path(written["results"]).read_text(encoding="utf-8"))
    assert results[3] == {"question_index": 3, "answer": "one"} and len(results) == 18


# --- the CLI ------------------------------------------------------------------------------


def test_cli_train_evaluate_and_the_test_results(layout: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    result = run_cli(capsys, "train", "--dataset", "clevr", "--data-root", layout,
                     "--epochs", "2", "--out", run, "--json", *tiny_set_args())
    assert result.code == 0, result.err
    trained = result.json
    assert trained["num_questions"] == 18
    assert set(trained["per_question_type"]) == {
        "exist", "count", "compare_numbers", "query_attribute", "compare_attribute"}
    assert set(trained["per_answer_type"]) == {"yes/no", "number", "other"}
    assert read_metrics(run)[-1]["val"]["per_question_type"].keys() == \
        trained["per_question_type"].keys()
    # Questions are kept whole: the preset's bound is the longest training question (20 words)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["data"]["max_question_tokens"] == 20
    assert config["train"]["answer_loss"] == "ce"  # from own-data-clevr, CLEVR's preset

    val = run_cli(capsys, "evaluate", "--checkpoint", run, "--split", "val", "--json")
    assert val.code == 0, val.err
    best = max(m["val"]["overall"] for m in read_metrics(run))
    assert val.json["overall"] == pytest.approx(best)
    assert val.json["per_question_type"].keys() == trained["per_question_type"].keys()

    test = run_cli(capsys, "evaluate", "--checkpoint", run, "--split", "test", "--json")
    assert test.code == 0, test.err
    assert "overall" not in test.json
    results = Path(test.json["results"])
    assert results == run / "results" / "clevr_test.json"
    written = json.loads(results.read_text(encoding="utf-8"))
    assert [r["question_index"] for r in written] == list(range(12))  # every test question
    assert all(set(r) == {"question_index", "answer"} and r["answer"] for r in written)
