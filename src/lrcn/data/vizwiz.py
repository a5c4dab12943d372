"""Reader for VizWiz-VQA exactly as published on vizwiz.org, validated as it is read.

Layout under the dataset root (the files as downloaded, no renaming):

* ``Annotations/<split>.json`` (or ``annotations/<split>.json``): a JSON list of
  ``{"image", "question", "answers": [{"answer", "answer_confidence"}] x 10,
  "answer_type", "answerable"}``; ``test`` records have only ``image`` and ``question``;
* images ``<root>/<split>/VizWiz_<split>_<8 digits>.jpg``.

VizWiz has one question per image and its evaluation server keys answers by image, so a
record's ``question_id`` is its image file name. Images are not opened while reading;
``lrcn.data.check_images`` checks them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lrcn.json_records import (
    check_record,
    find_json,
    load_json,
    record_list,
    record_name,
    short_repr,
)
from lrcn.data.records import VQARecord, VQASplit
from lrcn.data.registry import need_root, register_dataset
from lrcn.errors import LrcnError

__all__ = [
    "ANSWER_TYPES",
    "CONFIDENCES",
    "VIZWIZ_SPLITS",
    "describe_vizwiz_record",
    "read_vizwiz",
    "read_vizwiz_file",
    "vizwiz_image_name",
]

VIZWIZ_SPLITS = ("train", "val", "test")
SPLITS_WITHOUT_ANSWERS = frozenset({"test"})
ANSWER_TYPES = frozenset({"yes/no", "number", "other", "unanswerable"})
CONFIDENCES = frozenset({"yes", "maybe", "no"})
JSON_DIRS = ("Annotations", "annotations")
NUM_ANSWERS = 10
# Keys this reader uses (and so requires); other keys are ignored.
QUESTION_KEYS = {"image": str, "question": str}
ANSWER_KEYS = {"answers": list, "answer_type": str, "answerable": int}


def vizwiz_image_name(split: str, index: int) -> str:
    """The published image file name, ``VizWiz_<split>_<index:08d>.jpg``."""
    return f"VizWiz_{split}_{index:08d}.jpg"


def read_vizwiz(root: str | Path, split: str) -> VQASplit:
    """Read one VizWiz-VQA split into records, checking the annotation file as published.

    Raises LrcnError naming the file and record for unreadable JSON, records missing
    ``image`` or ``question``, duplicate images and, where a record has answers (always in
    ``train``/``val``), other than ten answers, confidences other than yes/maybe/no, an
    ``answer_type`` outside ``ANSWER_TYPES`` or ``answerable`` other than 0/1.
    ``test`` records without answers get answers, answer_type and answerable None.
    """
    root = Path(root)
    if split not in VIZWIZ_SPLITS:
        raise LrcnError(f"VizWiz has no split {split!r}; known splits: {', '.join(VIZWIZ_SPLITS)}")
    if not root.is_dir():
        raise LrcnError(f"VizWiz root folder not found: {root}")
    path = find_json(root, f"{split}.json", JSON_DIRS, "VizWiz annotation file ")
    entries = read_vizwiz_file(path, answers_required=split not in SPLITS_WITHOUT_ANSWERS)
    records = []
    for entry in entries:
        image = entry["image"]
        has_answers = "answers" in entry
        records.append(
            VQARecord(
                question_id=image,
                image_key=f"{split}/{image}",
                question=entry["question"],
                answers=tuple(a["answer"] for a in entry["answers"]) if has_answers else None,
                answer_type=entry["answer_type"] if has_answers else None,
                answerable=bool(entry["answerable"]) if has_answers else None,
            )
        )
    return VQASplit(name=split, records=records, image_root=root)


@register_dataset("vizwiz", train_split="train", val_split="val", metric="vizwiz")
def _load_vizwiz(root: str | None, split: str) -> VQASplit:
    root = need_root("vizwiz", root, "Annotations/<split>.json and the train/val/test image "
                     "folders")
    return read_vizwiz(root, split)


def read_vizwiz_file(path: str | os.PathLike[str],
                     answers_required: bool = True) -> list[dict[str, Any]]:
    """Read one VizWiz annotation file (a JSON list of records), checked record by record.

    Args:
        path: the annotation file, e.g. ``Annotations/val.json``.
        answers_required: whether every record must carry answers (``train``/``val``);
            when False (``test``) only records that have ``answers`` are checked for them.

    Returns:
        The records as in the file, each with a bare ``image`` name seen only once and a
        ``question``; records with answers have ten checked answers, a known
        ``answer_type`` and ``answerable`` 0 or 1. Raises LrcnError naming the file and
        the record otherwise.
    """
    path = Path(path)
    entries = record_list(path, load_json(path, "annotation"), None, "annotation")
    first_index: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = describe_vizwiz_record(entry, i)
        check_record(path, entry, where, QUESTION_KEYS)
        image = entry["image"]
        if not image or "/" in image or "\\" in image:
            raise LrcnError(f"{path}: {where}: 'image' must be a bare file name, got {image!r}")
        if image in first_index:
            raise LrcnError(
                f"{path}: {where}: duplicate image {image!r} "
                f"(first at {record_name(None, first_index[image])})"
            )
        first_index[image] = i
        if answers_required or "answers" in entry:
            _check_answers(path, entry, where)
    return entries


def describe_vizwiz_record(entry: Any, index: int) -> str:
    """``record 3 (image 'VizWiz_val_00000003.jpg')``, for messages."""
    name = record_name(None, index)
    if isinstance(entry, dict) and entry.get("image") is not None:
        name += f" (image {short_repr(entry['image'])})"
    return name


def _check_answers(path: Path, entry: dict[str, Any], where: str) -> None:
    """Ten answers with a string answer and a known confidence, a known answer type and
    ``answerable`` 0 or 1."""
    check_record(path, entry, where, ANSWER_KEYS)
    answers = entry["answers"]
    if len(answers) != NUM_ANSWERS:
        raise LrcnError(f"{path}: {where}: has {len(answers)} answers, expected {NUM_ANSWERS}")
    for j, answer in enumerate(answers):
        check_record(path, answer, f"{where}: answers[{j}]",
                     {"answer": str, "answer_confidence": str})
        if answer["answer_confidence"] not in CONFIDENCES:
            raise LrcnError(
                f"{path}: {where}: answers[{j}]: answer_confidence "
                f"{answer['answer_confidence']!r} is not one of {', '.join(sorted(CONFIDENCES))}"
            )
    if entry["answer_type"] not in ANSWER_TYPES:
        raise LrcnError(
            f"{path}: {where}: answer_type {entry['answer_type']!r} is not one of "
            f"{', '.join(sorted(ANSWER_TYPES))}"
        )
    if entry["answerable"] not in (0, 1):  # an integer already: check_record refuses bools
        raise LrcnError(f"{path}: {where}: answerable must be 0 or 1, got {entry['answerable']!r}")
