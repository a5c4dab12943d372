"""The record every dataset reader returns: one question about one image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VQARecord:
    """One VQA sample, independent of the dataset it came from.

    Attributes:
        question_id: the dataset's id for the question (int for VQA-v2 and easy-VQA).
        image_key: path of the image relative to its split's image root; also the key
            that identifies the image (and its cached features) within a split.
        question: the question text as published.
        answers: the ten human answers, or None where the split has no answers (test).
        answer_type: ``yes/no``, ``number``, ``other`` (VizWiz adds ``unanswerable``).
        answerable: whether the question can be answered from the image, when known.
        multiple_choice_answer: the dataset's single "most common" answer when given.
        question_type: the annotation's question type (VQA-v2: the question's first words,
            e.g. ``what color is the``, ``how many``), when known.
    """

    question_id: int | str
    image_key: str
    question: str
    answers: tuple[str, ...] | None = None
    answer_type: str | None = None
    answerable: bool | None = None
    multiple_choice_answer: str | None = None
    question_type: str | None = None


@dataclass
class VQASplit:
    """The records of one split and where their images live."""

    name: str
    records: list[VQARecord]
    image_root: Path

    def image_path(self, image_key: str) -> Path:
        return self.image_root / image_key

    @property
    def has_answers(self) -> bool:
        return all(r.answers is not None for r in self.records)
