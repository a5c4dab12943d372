"""Scoring of VQA result files exactly as the official VQA-v2 evaluator scores them.

The per-question rule lives in :mod:`lrcn.vqa_accuracy`; this module reads the
files as users have them on disk (results as the evaluation server takes them, the
official annotation and question files), checks them with messages that name the file,
the record and the fault, and aggregates like the official ``vqaEval.py``.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrcn.json_records import describe_record, is_int, iter_unique_records
from lrcn.data.vqa2 import NUM_ANSWERS, read_annotations_file, read_questions_file
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write
from lrcn.vqa_accuracy import aggregate, question_accuracy

__all__ = [
    "NUM_HUMAN_ANSWERS",
    "ScoreReport",
    "read_results",
    "read_vqa_annotations",
    "read_question_ids",
    "score_vqa",
    "score_files",
    "write_per_question",
]

NUM_HUMAN_ANSWERS = NUM_ANSWERS
_EXAMPLES = 5  # how many example ids a coverage message lists
_RESULT_KEYS = {"question_id": int, "answer": str}  # other keys of a result are ignored


@dataclass(frozen=True)
class ScoreReport:
    """VQA accuracy in percent: overall, per answer type, per question type (empty when no
    question has a type) and (unrounded) per question; and how many questions each question
    type has."""

    overall: float
    per_answer_type: dict[str, float]
    per_question: dict[int, float] = field(repr=False)
    per_question_type: dict[str, float] = field(default_factory=dict)
    question_type_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (per-question values left out; the question-type
        keys only when there are question types)."""
        summary: dict[str, Any] = {
            "overall": self.overall,
            "per_answer_type": dict(self.per_answer_type),
            "num_questions": len(self.per_question),
        }
        if self.per_question_type:
            summary["per_question_type"] = dict(self.per_question_type)
            summary["question_type_counts"] = dict(self.question_type_counts)
        return summary


# --------------------------------------------------------------------------- reading


def read_results(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read a results file as the evaluation server takes it.

    The file is a JSON list of ``{"question_id": int, "answer": str}``; other keys are
    ignored. Returns question id -> predicted answer.
    """
    records = iter_unique_records(path, None, "results", _RESULT_KEYS)
    return {rec["question_id"]: rec["answer"] for _, rec in records}


def _answer_records_distinct(answers: Sequence[Mapping[str, Any]]) -> bool:
    """Whether no two answer records are equal (the official leave-one-out needs it)."""
    ids = [a.get("answer_id") for a in answers]
    if all(is_int(i) or isinstance(i, str) for i in ids) and len(set(ids)) == len(ids):
        return True
    return all(answers[i] != answers[j]
               for i in range(len(answers)) for j in range(i + 1, len(answers)))


def read_vqa_annotations(
    path: str | os.PathLike[str],
) -> tuple[dict[int, list[str]], dict[int, str], dict[int, str]]:
    """Read an official VQA annotation file.

    Returns (question id -> the ten human answers, question id -> answer type, question id
    -> question type). The file is checked as
    :func:`lrcn.data.vqa2.read_annotations_file` checks it; in addition no
    two answer records of a question may be identical, because the official evaluator
    leaves an answer out by record equality (published files give every answer a
    distinct ``answer_id``).
    """
    p = Path(path)
    annotations = read_annotations_file(p)
    if not annotations:
        raise LrcnError(f"{p}: 'annotations' is empty: there is nothing to score against")
    answers_by_qid: dict[int, list[str]] = {}
    answer_types: dict[int, str] = {}
    question_types: dict[int, str] = {}
    for i, (qid, rec) in enumerate(annotations.items()):
        if not _answer_records_distinct(rec["answers"]):
            raise LrcnError(
                f"{p}: {describe_record(rec, 'annotations', i)}: two answer records are "
                "identical; the official evaluator would drop both when leaving one out "
                "(give each a distinct 'answer_id')"
            )
        answers_by_qid[qid] = [ans["answer"] for ans in rec["answers"]]
        answer_types[qid] = rec["answer_type"]
        question_types[qid] = rec["question_type"]
    return answers_by_qid, answer_types, question_types


def read_question_ids(path: str | os.PathLike[str]) -> list[int]:
    """Question ids of an official questions file, in file order.

    The file is checked as :func:`lrcn.data.vqa2.read_questions_file` checks it.
    """
    return list(read_questions_file(path))


# --------------------------------------------------------------------------- scoring


def _examples(ids: Iterable[int]) -> str:
    ordered = sorted(ids)
    shown = ", ".join(str(i) for i in ordered[:_EXAMPLES])
    return shown + (", ..." if len(ordered) > _EXAMPLES else "")


def _coverage_problem(expected: Iterable[int], given: Iterable[int],
                      missing_what: str, unknown_what: str) -> str | None:
    """A message when ``given`` is not exactly ``expected``, else None."""
    expected_set, given_set = set(expected), set(given)
    missing = expected_set - given_set
    unknown = given_set - expected_set
    if not missing and not unknown:
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} {missing_what} (e.g. {_examples(missing)})")
    if unknown:
        parts.append(f"{len(unknown)} {unknown_what} (e.g. {_examples(unknown)})")
    return "; ".join(parts)


def score_vqa(
    answers_by_qid: Mapping[int, Sequence[str]],
    answer_types: Mapping[int, str],
    predictions: Mapping[int, str],
    question_types: Mapping[int, str | None] | None = None,
) -> ScoreReport:
    """Score predictions against the human answers with the official VQA accuracy.

    Like the official ``loadRes``, the predictions must cover exactly the annotated
    questions (LrcnError otherwise). Aggregates are means of the unrounded per-question
    accuracies, in percent (see :func:`~lrcn.vqa_accuracy.aggregate`; per
    question type when ``question_types`` gives any).
    """
    missing_types = set(answers_by_qid) - set(answer_types)
    if missing_types:
        raise ValueError(
            f"{len(missing_types)} annotated questions have no answer type "
            f"(e.g. {_examples(missing_types)})"
        )
    problem = _coverage_problem(
        answers_by_qid, predictions,
        "annotated questions have no result", "results are for questions not in the annotations",
    )
    if problem is not None:
        raise LrcnError(
            f"the results do not cover exactly the annotated questions: {problem}"
        )
    accuracy = {qid: question_accuracy(predictions[qid], answers)
                for qid, answers in answers_by_qid.items()}
    summary = aggregate(accuracy, answer_types, question_types)
    return ScoreReport(
        overall=summary["overall"],
        per_answer_type=summary["per_answer_type"],
        per_question={qid: 100.0 * acc for qid, acc in accuracy.items()},
        per_question_type=summary.get("per_question_type", {}),
        question_type_counts=summary.get("question_type_counts", {}),
    )


def score_files(
    annotations: str | os.PathLike[str],
    results: str | os.PathLike[str],
    questions: str | os.PathLike[str] | None = None,
) -> ScoreReport:
    """Read an annotation file and a results file and score them.

    When a questions file is given (the official evaluator loads it alongside), its
    question ids must be exactly the annotated ones.
    """
    answers_by_qid, answer_types, question_types = read_vqa_annotations(annotations)
    if questions is not None:
        problem = _coverage_problem(
            answers_by_qid, read_question_ids(questions),
            "annotated questions are not in the questions file",
            "questions have no annotation",
        )
        if problem is not None:
            raise LrcnError(
                f"{Path(questions)}: the questions do not match the annotations in "
                f"{Path(annotations)}: {problem}"
            )
    predictions = read_results(results)
    try:
        return score_vqa(answers_by_qid, answer_types, predictions, question_types)
    except LrcnError as exc:
        raise LrcnError(f"{Path(results)} (scored against {Path(annotations)}): {exc}") from None


# --------------------------------------------------------------------------- writing


def write_per_question(report: ScoreReport | Mapping[Any, float],
                       path: str | os.PathLike[str]) -> None:
    """Write ``{question_id: accuracy percent}`` as a JSON object, atomically.

    ``report`` is a :class:`ScoreReport` or the per-question mapping itself (e.g. VizWiz
    image -> accuracy). The JSON goes to a temporary file in the same folder, which is then
    renamed over ``path``, so readers never see a half-written file.
    """
    p = Path(path)
    per_question = report.per_question if isinstance(report, ScoreReport) else report
    payload = {str(qid): per_question[qid] for qid in sorted(per_question)}
    text = json.dumps(payload, allow_nan=False) + "\n"
    if not p.parent.is_dir():  # a mistyped --per-question path: not a folder to create
        raise LrcnError(f"{p}: cannot write the per-question file: {os.strerror(errno.ENOENT)}")
    try:
        atomic_write(p, lambda f: f.write(text.encode("utf-8")))
    except OSError as exc:
        raise LrcnError(f"{p}: cannot write the per-question file: {exc.strerror or exc}") from None
