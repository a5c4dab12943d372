"""VizWiz-VQA in its official layout: the reader, its validation, the registry and the CLI."""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_set_args, write_json
from vizwiz_layout import TRAIN, VAL, annotation, annotations, make_vizwiz_layout
from lrcn.cli import main
from lrcn.data import check_images, load_split, read_vizwiz
from lrcn.data.records import VQARecord
from lrcn.data.registry import dataset_names, default_splits
from lrcn.data.vizwiz import ANSWER_TYPES, CONFIDENCES, VIZWIZ_SPLITS, vizwiz_image_name
from lrcn.errors import LrcnError
from lrcn.evaluation.vizwiz import score_vizwiz_files, vizwiz_accuracy

@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny layout shared (read-only) by the module."""
    return make_vizwiz_layout(tmp_path_factory.mktemp("vizwiz"))


# --- reading ---------------------------------------------------------------------------


def test_constants() -> None:
    assert VIZWIZ_SPLITS == ("train", "val", "test")
    assert ANSWER_TYPES == {"yes/no", "number", "other", "unanswerable"}
    assert CONFIDENCES == {"yes", "maybe", "no"}
    assert vizwiz_image_name("val", 42) == "VizWiz_val_00000042.jpg"


@pytest.mark.parametrize("via_registry", [False, True])
def test_read_train_and_val(layout: Path, via_registry: bool) -> None:
    def read(split: str):
        return load_split("vizwiz", layout, split) if via_registry else read_vizwiz(layout, split)

    train, val = read("train"), read("val")
    assert train.name == "train" and train.image_root == layout and train.has_answers
    assert [r.question_id for r in train.records] == [
        f"VizWiz_train_{i:08d}.jpg" for i in range(6)]
    assert train.records[0] == VQARecord(
        question_id="VizWiz_train_00000000.jpg", image_key="train/VizWiz_train_00000000.jpg",
        question="What color is this shirt?",
        answers=("red",) * 8 + ("Red", "dark red"),  # as published, not normalised
        answer_type="other", answerable=True, multiple_choice_answer=None,
    )
    blurry = train.records[3]
    assert blurry.answerable is False and blurry.answer_type == "unanswerable"
    assert blurry.answers == ("unanswerable",) * 7 + ("unsuitable",) * 3
    assert [r.answer_type for r in val.records] == ["other", "unanswerable", "yes/no"]
    assert [r.answerable for r in val.records] == [True, False, True]
    assert val.records[2].image_key == "val/VizWiz_val_00000002.jpg"
    check_images(train)
    check_images(val)
    assert val.image_path(val.records[0].image_key).is_file()


@pytest.mark.parametrize("via_registry", [False, True])
def test_read_test_split_has_no_answers(layout: Path, via_registry: bool) -> None:
    test = load_split("vizwiz", str(layout), "test") if via_registry else read_vizwiz(layout, "test")
    assert not test.has_answers
    assert test.records == [
        VQARecord("VizWiz_test_00000000.jpg", "test/VizWiz_test_00000000.jpg",
                  "What color is this?"),
        VQARecord("VizWiz_test_00000001.jpg", "test/VizWiz_test_00000001.jpg",
                  "What is in this box?"),
    ]
    check_images(test)


def test_test_record_with_answers_keeps_them(tmp_path: Path) -> None:
    records = annotations("test")
    records[1] = {**annotation("test", 1, VAL[1]), "question": "What is in this box?"}
    write_json(tmp_path / "Annotations" / "test.json", records)
    test = read_vizwiz(tmp_path, "test")
    assert test.records[0].answers is None and test.records[0].answerable is None
    assert test.records[1].answers == ("unanswerable",) * 8 + ("soup",) * 2
    assert test.records[1].answer_type == "unanswerable" and test.records[1].answerable is False


def test_check_images_names_a_missing_image(tmp_path: Path) -> None:
    make_vizwiz_layout(tmp_path)
    (tmp_path / "val" / "VizWiz_val_00000001.jpg").unlink()
    val = read_vizwiz(tmp_path, "val")  # images are not opened while reading
    with pytest.raises(LrcnError, match=r"1 image file\(s\) missing") as info:
        check_images(val)
    assert "VizWiz_val_00000001.jpg (question_id 'VizWiz_val_00000001.jpg')" in str(info.value)


def test_annotations_in_lowercase_folder(tmp_path: Path) -> None:
    make_vizwiz_layout(tmp_path, folder="annotations")
    assert len(read_vizwiz(tmp_path, "train").records) == 6


def test_missing_root_file_and_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(LrcnError, match="VizWiz root folder not found: .*nope"):
        read_vizwiz(tmp_path / "nope", "val")
    with pytest.raises(LrcnError, match="val.json not found; looked in") as info:
        read_vizwiz(tmp_path, "val")
    assert str(tmp_path / "Annotations") in str(info.value)
    assert str(tmp_path / "annotations") in str(info.value)
    with pytest.raises(LrcnError, match="VizWiz has no split 'train2014'; known splits: "
                                        "train, val, test"):
        read_vizwiz(tmp_path, "train2014")


def test_registry_entry() -> None:
    assert "vizwiz" in dataset_names()
    assert default_splits("vizwiz") == ("train", "val")
    with pytest.raises(LrcnError, match="vizwiz needs a data root"):
        load_split("vizwiz", None, "train")


# --- validation ------------------------------------------------------------------------

Mutation = Callable[[list], Any]


def _set(index: int, key: str, value: Any, answer: int | None = None) -> Mutation:
    """Set (or delete, for None) ``key`` of record ``index`` or of its ``answers[answer]``."""
    def mutate(records: list) -> list:
        target = records[index] if answer is None else records[index]["answers"][answer]
        if value is None:
            del target[key]
        else:
            target[key] = value
        return records
    return mutate


def _replace(index: int, value: Any) -> Mutation:
    def mutate(records: list) -> list:
        records[index] = value
        return records
    return mutate


def _drop_answer(index: int) -> Mutation:
    def mutate(records: list) -> list:
        records[index]["answers"].pop()
        return records
    return mutate


def _duplicate(index: int) -> Mutation:
    def mutate(records: list) -> list:
        return [*records, {**copy.deepcopy(records[index]), "question": "again?"}]
    return mutate


V1 = r"record 1 \(image 'VizWiz_val_00000001.jpg'\)"
V2 = r"record 2 \(image 'VizWiz_val_00000002.jpg'\)"


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda records: {"annotations": records},
         "the annotation file must be a JSON list of objects, got an object"),
        (_replace(1, "VizWiz_val_00000001.jpg"), "record 1: expected an object, got a string"),
        (_set(1, "image", None), "record 1: missing key 'image'"),
        (_set(1, "image", 1), r"record 1 \(image 1\): 'image' must be a string, got an integer"),
        (_set(1, "image", "val/VizWiz_val_00000001.jpg"),
         r"record 1 \(image 'val/VizWiz_val_00000001.jpg'\): 'image' must be a bare file name"),
        (_set(1, "question", None), V1 + ": missing key 'question'"),
        (_set(1, "question", ["what?"]), V1 + ": 'question' must be a string, got a list"),
        (_duplicate(0), r"record 3 \(image 'VizWiz_val_00000000.jpg'\): duplicate image "
                        r"'VizWiz_val_00000000.jpg' \(first at record 0\)"),
        (_set(1, "answers", None), V1 + ": missing key 'answers'"),
        (_set(1, "answers", "unanswerable"), V1 + ": 'answers' must be a list, got a string"),
        (_drop_answer(2), V2 + ": has 9 answers, expected 10"),
        (_set(2, "answer", None, answer=4), V2 + r": answers\[4\]: missing key 'answer'"),
        (_set(2, "answer", 3, answer=4), V2 + r": answers\[4\]: 'answer' must be a string"),
        (_set(2, "answer_confidence", "sure", answer=7),
         V2 + r": answers\[7\]: answer_confidence 'sure' is not one of maybe, no, yes"),
        (_set(2, "answer_confidence", None, answer=7),
         V2 + r": answers\[7\]: missing key 'answer_confidence'"),
        (_set(1, "answer_type", "unanswerable?"),
         V1 + ": answer_type 'unanswerable\\?' is not one of number, other, unanswerable, yes/no"),
        (_set(1, "answer_type", None), V1 + ": missing key 'answer_type'"),
        (_set(1, "answerable", 2), V1 + ": answerable must be 0 or 1, got 2"),
        (_set(1, "answerable", True), V1 + ": 'answerable' must be an integer, got a boolean"),
        (_set(1, "answerable", "0"), V1 + ": 'answerable' must be an integer, got a string"),
        (_set(1, "answerable", None), V1 + ": missing key 'answerable'"),
    ],
)
def test_validation_errors(tmp_path: Path, mutation: Mutation, message: str) -> None:
    path = write_json(tmp_path / "Annotations" / "val.json", mutation(annotations("val")))
    with pytest.raises(LrcnError, match=message) as info:
        read_vizwiz(tmp_path, "val")
    assert str(info.value).startswith(f"{path}: ")


def test_test_record_with_bad_answers_is_an_error(tmp_path: Path) -> None:
    records = annotations("test")
    records[1] = annotation("test", 1, VAL[1])
    records[1]["answers"][0]["answer_confidence"] = "certain"
    path = write_json(tmp_path / "Annotations" / "test.json", records)
    with pytest.raises(LrcnError, match=r"record 1 \(image 'VizWiz_test_00000001.jpg'\): "
                                        r"answers\[0\]: answer_confidence 'certain'") as info:
        read_vizwiz(tmp_path, "test")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ('[{"image": "VizWiz_val_00000000.jpg", ', "not valid JSON"),
    ("", "the annotation file is empty"),
])
def test_unreadable_json(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "Annotations" / "val.json"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LrcnError, match=message) as info:
        read_vizwiz(tmp_path, "val")
    assert str(path) in str(info.value)


# --- the CLI, end to end ---------------------------------------------------------------


def test_cli_train_then_evaluate_test(layout: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    capsys.readouterr()
    # Two epochs at a learning rate that lets the tiny model learn something in two steps.
    code = main(["train", "--dataset", "vizwiz", "--data-root", str(layout), "--epochs", "2",
                 "--lr", "1e-2", "--set", "train.warmup_epochs=0", "--out", str(run), "--json",
                 *tiny_set_args()])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    trained = json.loads(captured.out.strip().splitlines()[-1])
    assert trained["num_questions"] == len(VAL) == 3
    assert set(trained["per_answer_type"]) == {"other", "unanswerable", "yes/no"}
    # At least as good on val as always giving the most common training answer
    # ("unanswerable": 33.3); the untrained model answers "1" everywhere and scores 0.
    most_common = Counter(a for *_, answers in TRAIN for a in answers).most_common(1)[0][0]
    baseline = 100 * sum(vizwiz_accuracy(most_common, s[3]) for s in VAL) / len(VAL)
    assert most_common == "unanswerable" and baseline == pytest.approx(100 / 3)
    assert trained["overall"] >= baseline - 1e-9, trained

    # The val accuracy training reported is the official VizWiz scoring of the answers that
    # `lrcn evaluate` of its best checkpoint writes.
    val_results = tmp_path / "val_results.json"
    code = main(["evaluate", "--checkpoint", str(run), "--split", "val", "--results",
                 str(val_results), "--json"])
    assert code == 0, capsys.readouterr().err
    scored = score_vizwiz_files(layout / "Annotations" / "val.json", val_results)
    assert scored["num_questions"] == 3
    assert scored["overall"] == pytest.approx(trained["overall"], abs=1e-9)
    assert scored["per_answer_type"] == pytest.approx(trained["per_answer_type"], abs=1e-9)
    capsys.readouterr()

    code = main(["evaluate", "--checkpoint", str(run), "--split", "test", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert "overall" not in summary and summary["dataset"] == "vizwiz"
    results = Path(summary["results"])
    assert results == run / "results" / "vizwiz_test.json"
    written = json.loads(results.read_text(encoding="utf-8"))
    # VizWiz's submission format: [{"image", "answer"}]
    assert [r["image"] for r in written] == [vizwiz_image_name("test", i) for i in range(2)]
    assert all(set(r) == {"image", "answer"} and r["answer"] for r in written)
    assert "answerable_results" not in summary  # task answer: no answerability head
