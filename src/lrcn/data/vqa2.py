"""Reader for VQA-v2 exactly as published on visualqa.org, validated as it is read.

Layout under the dataset root (the files as downloaded, no renaming):

* ``v2_OpenEnded_mscoco_<split>_questions.json`` and, for ``train2014``/``val2014``,
  ``v2_mscoco_<split>_annotations.json``, each looked for in ``<root>``, then
  ``<root>/Questions``, ``<root>/questions``, ``<root>/Annotations``,
  ``<root>/annotations`` (the first folder holding it wins);
* COCO images ``<root>/<image_dir>/COCO_<image_dir>_<image_id:012d>.jpg`` where
  ``image_dir`` is the split, except ``test-dev2015`` whose images are in ``test2015``;
* the Visual Genome QA augmentation as openvqa/TRAR distribute it, split ``vg``:
  ``VG_questions.json`` and ``VG_annotations.json`` in the same two formats, about COCO
  images (VG ids are COCO ids of train2014 or val2014 images).

Images are not opened while reading (443k questions); ``check_images`` checks them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lrcn.json_records import check_record, find_json, iter_unique_records
from lrcn.data.records import VQARecord, VQASplit
from lrcn.data.registry import need_root, register_dataset
from lrcn.errors import LrcnError

VQA2_SPLITS = ("train2014", "val2014", "test2015", "test-dev2015", "vg")
VG_SPLIT = "vg"
SPLITS_WITHOUT_ANSWERS = frozenset({"test2015", "test-dev2015"})
ANSWER_TYPES = frozenset({"yes/no", "number", "other"})
JSON_DIRS = ("", "Questions", "questions", "Annotations", "annotations")
NUM_ANSWERS = 10
# Keys this reader uses (and so requires); other published keys are ignored.
QUESTION_KEYS = {"question_id": int, "image_id": int, "question": str}
ANNOTATION_KEYS = {
    "question_id": int, "image_id": int, "answer_type": str, "question_type": str,
    "multiple_choice_answer": str, "answers": list,
}
# The VG files are converted from Visual Genome's one answer per question: answer_type and
# question_type may be absent (or null) and there may be fewer than ten answers (usually the
# one answer, repeated).
VG_OPTIONAL_KEYS = ("answer_type", "question_type")
VG_ANNOTATION_KEYS = {k: v for k, v in ANNOTATION_KEYS.items() if k not in VG_OPTIONAL_KEYS}


def questions_filename(split: str) -> str:
    return "VG_questions.json" if split == VG_SPLIT else f"v2_OpenEnded_mscoco_{split}_questions.json"


def annotations_filename(split: str) -> str:
    return "VG_annotations.json" if split == VG_SPLIT else f"v2_mscoco_{split}_annotations.json"


def image_dir(split: str) -> str:
    """The COCO image folder of a split: the split itself, test2015 for test-dev2015."""
    return "test2015" if split == "test-dev2015" else split


def image_key(split: str, image_id: int) -> str:
    folder = image_dir(split)
    return f"{folder}/COCO_{folder}_{image_id:012d}.jpg"


def read_vqa2(root: str | Path, split: str) -> VQASplit:
    """Read one VQA-v2 split into records, checking the files as published.

    Raises LrcnError naming the file and record for unreadable or truncated JSON, missing
    keys, duplicate question ids, annotations without a question (or the reverse), records
    with other than ten answers and answer types other than yes/no, number, other.
    Test splits (``test2015``, ``test-dev2015``) have no annotations: answers are None.
    """
    root = Path(root)
    if split not in VQA2_SPLITS:
        raise LrcnError(f"VQA-v2 has no split {split!r}; known splits: {', '.join(VQA2_SPLITS)}")
    if not root.is_dir():
        raise LrcnError(f"VQA-v2 root folder not found: {root}")

    q_path = find_json(root, questions_filename(split), JSON_DIRS)
    questions = read_questions_file(q_path)
    annotations = None
    if split not in SPLITS_WITHOUT_ANSWERS:
        a_path = find_json(root, annotations_filename(split), JSON_DIRS)
        annotations = read_annotations_file(a_path, vg=split == VG_SPLIT)
        _check_pairing(questions, annotations, q_path, a_path)
    image_dirs = _coco_image_dirs(root, questions, q_path) if split == VG_SPLIT else None

    records = []
    for qid, q in questions.items():
        a = annotations[qid] if annotations is not None else None
        folder = image_dirs[q["image_id"]] if image_dirs is not None else split
        records.append(
            VQARecord(
                question_id=qid,
                image_key=image_key(folder, q["image_id"]),
                question=q["question"],
                answers=tuple(x["answer"] for x in a["answers"]) if a else None,
                answer_type=a.get("answer_type") if a else None,
                multiple_choice_answer=a["multiple_choice_answer"] if a else None,
                question_type=a.get("question_type") if a else None,
            )
        )
    return VQASplit(name=split, records=records, image_root=root)


@register_dataset("vqa2", train_split="train2014", val_split="val2014")
def _load_vqa2(root: str | None, split: str) -> VQASplit:
    root = need_root("vqa2", root, "the VQA-v2 question/annotation JSON files and the COCO "
                     "image folders")
    return read_vqa2(root, split)


def _coco_image_dirs(
    root: Path, questions: dict[int, dict[str, Any]], q_path: Path
) -> dict[int, str]:
    """For VG questions: image id -> the COCO folder (train2014 or val2014) holding it.

    VQA-v2's train and val questions cover every COCO 2014 image, so their question files
    (read for image ids only) say where each image lives, with or without the image folders.
    """
    folder_of: dict[int, str] = {}
    for split in ("train2014", "val2014"):
        path = find_json(root, questions_filename(split), JSON_DIRS)
        for q in read_questions_file(path).values():
            folder_of.setdefault(q["image_id"], split)
    out = {}
    for qid, q in questions.items():
        folder = folder_of.get(q["image_id"])
        if folder is None:
            raise LrcnError(
                f"{q_path}: question_id {qid}: image_id {q['image_id']} is not a COCO "
                "train2014 or val2014 image (it is in neither VQA-v2 questions file)"
            )
        out[q["image_id"]] = folder
    return out


def check_images(split: VQASplit, show: int = 5) -> None:
    """Raise LrcnError when image files of a split are missing, naming the first few.

    Lists each image folder once instead of probing every file, so a 443k-question split
    is checked in seconds.
    """
    listings: dict[Path, set[str]] = {}
    missing: dict[str, Any] = {}  # image_key -> first question id using it
    for record in split.records:
        if record.image_key in missing:
            continue
        path = split.image_path(record.image_key)
        folder = path.parent
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder))
            except OSError:
                listings[folder] = set()
        if path.name not in listings[folder]:
            missing[record.image_key] = record.question_id
    if missing:
        first = [f"{split.image_path(k)} (question_id {q!r})" for k, q in list(missing.items())[:show]]
        raise LrcnError(
            f"split {split.name}: {len(missing)} image file(s) missing under {split.image_root}, "
            f"first: {'; '.join(first)}"
        )


def read_questions_file(path: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """Read an official VQA questions file: question id -> question record, in file order.

    Each question needs ``question_id`` and ``image_id`` (int) and ``question`` (str);
    ids must be unique. Raises LrcnError naming the file and record otherwise.
    """
    records = iter_unique_records(Path(path), "questions", "questions", QUESTION_KEYS)
    return {q["question_id"]: q for _, q in records}


def read_annotations_file(
    path: str | os.PathLike[str], vg: bool = False
) -> dict[int, dict[str, Any]]:
    """Read an official VQA annotation file: question id -> annotation record, in file order.

    Each annotation needs the keys of ``ANNOTATION_KEYS`` with their types, a unique
    ``question_id``, ten ``answers`` objects with a string ``answer`` and an
    ``answer_type`` of yes/no, number or other. Raises LrcnError naming the file and
    record otherwise. With ``vg`` (``VG_annotations.json``), ``answer_type`` and
    ``question_type`` are optional (checked where present) and one to ten answers are
    accepted.
    """
    path = Path(path)
    out: dict[int, dict[str, Any]] = {}
    keys = VG_ANNOTATION_KEYS if vg else ANNOTATION_KEYS
    for where, a in iter_unique_records(path, "annotations", "annotation", keys):
        answers = a["answers"]
        if not (0 < len(answers) <= NUM_ANSWERS if vg else len(answers) == NUM_ANSWERS):
            expected = f"1 to {NUM_ANSWERS}" if vg else str(NUM_ANSWERS)
            raise LrcnError(f"{path}: {where}: has {len(answers)} answers, expected {expected}")
        for j, ans in enumerate(answers):
            check_record(path, ans, f"{where}: answers[{j}]", {"answer": str})
        if vg and a.get("question_type") is not None:
            check_record(path, a, where, {"question_type": str})
        answer_type = a.get("answer_type")
        if (answer_type is not None or not vg) and (
            not isinstance(answer_type, str) or answer_type not in ANSWER_TYPES
        ):
            raise LrcnError(
                f"{path}: {where}: answer_type {a['answer_type']!r} is not one of "
                f"{', '.join(sorted(ANSWER_TYPES))}"
            )
        out[a["question_id"]] = a
    return out


def _check_pairing(
    questions: dict[int, dict[str, Any]],
    annotations: dict[int, dict[str, Any]],
    q_path: Path,
    a_path: Path,
) -> None:
    """Every question has one annotation and vice versa, about the same image."""
    for qid in annotations:
        if qid not in questions:
            raise LrcnError(f"{a_path}: annotation for question_id {qid} has no question in {q_path}")
    for qid, q in questions.items():
        a = annotations.get(qid)
        if a is None:
            raise LrcnError(f"{q_path}: question_id {qid} has no annotation in {a_path}")
        if a["image_id"] != q["image_id"]:
            raise LrcnError(
                f"{a_path}: annotation for question_id {qid} is about image {a['image_id']}, "
                f"but its question in {q_path} is about image {q['image_id']}"
            )
