"""Dataset readers (easy-VQA, VQA-v2) and the dataset registry."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import conftest
from conftest import write_json
from lrcn.data import registry
from lrcn.data.easyvqa import read_easyvqa
from lrcn.data.records import VQARecord, VQASplit
from lrcn.data.registry import dataset_names, load_split, register_dataset
from lrcn.data.vqa2 import check_images, read_vqa2
from lrcn.errors import LrcnError

# --- easy-VQA (the installed package) -------------------------------------------------


@pytest.mark.parametrize(
    ("split", "num_questions", "num_images"), [("train", 38_575, 4_000), ("test", 9_673, 1_000)]
)
def test_easyvqa_counts(split: str, num_questions: int, num_images: int) -> None:
    data = read_easyvqa(split)
    assert data.name == split and len(data.records) == num_questions
    assert len({r.image_key for r in data.records}) == num_images
    assert [r.question_id for r in data.records[:3]] == [0, 1, 2]
    assert data.image_root.name == split and data.image_root.parent.name == "data"
    check_images(data)  # every image file is there


def test_easyvqa_records() -> None:
    data = read_easyvqa("test")
    answers = {r.multiple_choice_answer for r in data.records}
    assert len(answers) == 13 and {"yes", "no", "circle"} <= answers
    for r in data.records[:200]:
        assert r.answers == (r.multiple_choice_answer,) * 10
        assert r.answer_type == ("yes/no" if r.multiple_choice_answer in ("yes", "no") else "other")
        assert r.image_key.startswith("images/") and r.image_key.endswith(".png")
    first = data.records[0]
    assert data.image_path(first.image_key).is_file()


def test_easyvqa_unknown_split() -> None:
    with pytest.raises(LrcnError, match="known splits: train, test"):
        read_easyvqa("val")


# --- a tiny VQA-v2 layout, in the published schema -------------------------------------

SAMPLES = [  # (question_id, image_id, question, answer_type, answers)
    (42000, 42, "What color is the bus?", "other", ["red"] * 8 + ["Red", "maroon"]),
    (42001, 42, "How many wheels?", "number", ["4"] * 6 + ["four"] * 3 + ["6"]),
    (7000, 7, "Is it raining?", "yes/no", ["no"] * 10),
]


def questions_json(split: str, samples: list = SAMPLES) -> dict[str, Any]:
    return conftest.questions_json(split, samples)


def annotations_json(split: str, samples: list = SAMPLES) -> dict[str, Any]:
    return conftest.annotations_json(split, samples)


def write_images(root: Path, folder: str, image_ids: set[int]) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i in image_ids:
        Image.new("RGB", (8, 6), (i % 256, 0, 0)).save(
            root / folder / f"COCO_{folder}_{i:012d}.jpg", "JPEG")


def make_val(root: Path, questions: Any = None, annotations: Any = None) -> tuple[Path, Path]:
    """val2014 with the JSON files in Questions/ and Annotations/, as often unpacked."""
    q = write_json(root / "Questions" / "v2_OpenEnded_mscoco_val2014_questions.json",
                   questions_json("val2014") if questions is None else questions)
    a = write_json(root / "Annotations" / "v2_mscoco_val2014_annotations.json",
                   annotations_json("val2014") if annotations is None else annotations)
    write_images(root, "val2014", {42, 7})
    return q, a


def test_read_vqa2_val(tmp_path: Path) -> None:
    make_val(tmp_path)
    data = read_vqa2(tmp_path, "val2014")
    assert data.name == "val2014" and data.image_root == tmp_path and data.has_answers
    assert [r.question_id for r in data.records] == [42000, 42001, 7000]
    first = data.records[0]
    assert first == VQARecord(
        question_id=42000, image_key="val2014/COCO_val2014_000000000042.jpg",
        question="What color is the bus?", answers=tuple(SAMPLES[0][4]),
        answer_type="other", multiple_choice_answer="red", question_type="what color",
    )
    assert data.records[1].answer_type == "number"
    assert [r.question_type for r in data.records] == ["what color", "how many", "is it"]
    check_images(data)
    assert data.image_path(first.image_key).is_file()


def test_read_vqa2_test_dev_uses_test2015_images(tmp_path: Path) -> None:
    write_json(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
               questions_json("test-dev2015"))
    write_images(tmp_path, "test2015", {42, 7})
    data = read_vqa2(str(tmp_path), "test-dev2015")
    assert not data.has_answers
    assert data.records[2].image_key == "test2015/COCO_test2015_000000000007.jpg"
    assert all(r.answers is None and r.answer_type is None and r.question_type is None
               for r in data.records)
    check_images(data)


def test_read_vqa2_json_in_lowercase_folders(tmp_path: Path) -> None:
    write_json(tmp_path / "questions" / "v2_OpenEnded_mscoco_train2014_questions.json",
               questions_json("train2014"))
    write_json(tmp_path / "annotations" / "v2_mscoco_train2014_annotations.json",
               annotations_json("train2014"))
    data = read_vqa2(tmp_path, "train2014")
    assert data.records[0].image_key == "train2014/COCO_train2014_000000000042.jpg"


def test_check_images_lists_missing_files(tmp_path: Path) -> None:
    make_val(tmp_path)
    (tmp_path / "val2014" / "COCO_val2014_000000000007.jpg").unlink()
    data = read_vqa2(tmp_path, "val2014")
    with pytest.raises(LrcnError, match=r"1 image file\(s\) missing") as info:
        check_images(data)
    assert "COCO_val2014_000000000007.jpg (question_id 7000)" in str(info.value)

    empty = VQASplit("x", data.records, tmp_path / "nowhere")
    with pytest.raises(LrcnError, match="2 image file"):
        check_images(empty)


def test_read_vqa2_missing_files(tmp_path: Path) -> None:
    with pytest.raises(LrcnError, match="root folder not found"):
        read_vqa2(tmp_path / "nope", "val2014")
    with pytest.raises(LrcnError, match="v2_OpenEnded_mscoco_val2014_questions.json not found"):
        read_vqa2(tmp_path, "val2014")
    write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", questions_json("val2014"))
    with pytest.raises(LrcnError, match="v2_mscoco_val2014_annotations.json not found"):
        read_vqa2(tmp_path, "val2014")
    with pytest.raises(LrcnError, match="known splits: train2014, val2014, test2015, test-dev2015"):
        read_vqa2(tmp_path, "val2017")


Mutation = Callable[[dict, dict], None]


def _set(path: list, value: Any) -> Mutation:
    """A mutation setting questions/annotations[...] = value (or deleting for None)."""
    def mutate(q: dict, a: dict) -> None:
        target = {"q": q, "a": a}[path[0]]
        for key in path[1:-1]:
            target = target[key]
        if value is None:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


def _append(which: str, index: int, changes: dict) -> Mutation:
    def mutate(q: dict, a: dict) -> None:
        items = q["questions"] if which == "q" else a["annotations"]
        items.append({**copy.deepcopy(items[index]), **changes})
    return mutate


@pytest.mark.parametrize(
    ("mutation", "bad_file", "message"),
    [
        (_set(["q", "questions"], None), "questions", "missing key 'questions'"),
        (_set(["a", "annotations"], {}), "annotations", "'annotations' must be a list"),
        (_set(["q", "questions", 1, "image_id"], None), "questions",
         r"questions\[1\] \(question_id 42001\): missing key 'image_id'"),
        (_set(["q", "questions", 2, "question_id"], "7000"), "questions",
         r"questions\[2\] .*'question_id' must be an integer, got a string"),
        (_set(["a", "annotations", 0, "answer_type"], None), "annotations",
         r"annotations\[0\] \(question_id 42000\): missing key 'answer_type'"),
        (_set(["a", "annotations", 1, "answers", 3, "answer"], None), "annotations",
         r"annotations\[1\] \(question_id 42001\): answers\[3\]: missing key 'answer'"),
        (_append("q", 0, {"question": "again?"}), "questions",
         r"questions\[3\] \(question_id 42000\): "
         r"duplicate question_id 42000 \(first at questions\[0\]\)"),
        (_append("a", 2, {}), "annotations",
         r"annotations\[3\] \(question_id 7000\): "
         r"duplicate question_id 7000 \(first at annotations\[2\]\)"),
        (_append("a", 2, {"question_id": 7001}), "annotations",
         "annotation for question_id 7001 has no question"),
        (_append("q", 2, {"question_id": 7001}), "questions",
         "question_id 7001 has no annotation"),
        (_set(["a", "annotations", 2, "image_id"], 8), "annotations",
         "question_id 7000 is about image 8, but its question .* is about image 7"),
        (_set(["a", "annotations", 1, "answers", 9], None), "annotations",
         r"annotations\[1\] \(question_id 42001\): has 9 answers, expected 10"),
        (_set(["a", "annotations", 2, "answer_type"], "unanswerable"), "annotations",
         r"annotations\[2\] \(question_id 7000\): answer_type 'unanswerable' is not one of"),
        (_set(["a", "annotations", 1, "question_type"], None), "annotations",
         r"annotations\[1\] \(question_id 42001\): missing key 'question_type'"),
        (_set(["a", "annotations", 1, "question_type"], 5), "annotations",
         r"annotations\[1\] \(question_id 42001\): 'question_type' must be a string, "
         r"got an integer 5"),
    ],
)
def test_read_vqa2_validation_errors(
    tmp_path: Path, mutation: Mutation, bad_file: str, message: str
) -> None:
    questions, annotations = questions_json("val2014"), annotations_json("val2014")
    mutation(questions, annotations)
    q_path, a_path = make_val(tmp_path, questions, annotations)
    with pytest.raises(LrcnError, match=message) as info:
        read_vqa2(tmp_path, "val2014")
    assert str(q_path if bad_file == "questions" else a_path) in str(info.value)


def test_read_vqa2_vg_question_type_optional(vqa2_layout: conftest.VQA2Layout,
                                             tmp_path: Path) -> None:
    """VG annotations may lack question_type (None), or carry one, which must be a string."""
    root = tmp_path / "vqa2"
    shutil.copytree(vqa2_layout.root, root)
    assert all(r.question_type is None for r in read_vqa2(root, "vg").records)
    data = json.loads((root / "VG_annotations.json").read_text(encoding="utf-8"))
    data["annotations"][0]["question_type"] = "what color"
    data["annotations"][1]["question_type"] = None  # null is absent, as for answer_type
    write_json(root / "VG_annotations.json", data)
    records = read_vqa2(root, "vg").records
    assert [r.question_type for r in records[:3]] == ["what color", None, None]
    data["annotations"][2]["question_type"] = 3
    write_json(root / "VG_annotations.json", data)
    with pytest.raises(LrcnError, match=r"VG_annotations.json: annotations\[2\] \(question_id "
                                        r"7002\): 'question_type' must be a string, got an "
                                        r"integer 3"):
        read_vqa2(root, "vg")


@pytest.mark.parametrize(("text", "message"), [
    ('{"questions": [{"image_id": 4', "not valid JSON"),
    ("", "the questions file is empty"),
    ("\xff\xfe", "not valid JSON"),
])
def test_read_vqa2_unreadable_json(tmp_path: Path, text: str, message: str) -> None:
    q_path, _ = make_val(tmp_path)
    q_path.write_bytes(text.encode("latin-1"))
    with pytest.raises(LrcnError, match=message) as info:
        read_vqa2(tmp_path, "val2014")
    assert str(q_path) in str(info.value)


# --- registry --------------------------------------------------------------------------


def test_registry_names_and_loading(tmp_path: Path) -> None:
    assert {"easyvqa", "vqa2"} <= set(dataset_names())
    assert len(load_split("easyvqa", None, "test").records) == 9_673
    make_val(tmp_path)
    assert len(load_split("vqa2", tmp_path, "val2014").records) == 3


def test_registry_errors() -> None:
    with pytest.raises(LrcnError, match="unknown dataset 'coco'; known datasets: .*easyvqa.*vqa2"):
        load_split("coco", None, "train")
    with pytest.raises(LrcnError, match="vqa2 needs a data root"):
        load_split("vqa2", None, "train2014")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("easyvqa")(lambda root, split: VQASplit(split, [], Path(".")))


def test_register_a_new_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    monkeypatch.setattr(registry, "_DEFAULT_SPLITS", dict(registry._DEFAULT_SPLITS))

    @register_dataset("tiny")
    def read_tiny(root: str | None, split: str) -> VQASplit:
        return VQASplit(split, [VQARecord(1, "a.png", "what?")], Path(root or "."))

    assert "tiny" in dataset_names()
    assert load_split("tiny", tmp_path, "train").image_root == tmp_path
    assert registry.default_splits("tiny") == ("train", "val")
