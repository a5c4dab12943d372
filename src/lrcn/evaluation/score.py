"""Scoring of VQA result files exactly as the official VQA-v2 evaluator scores them.

The per-question rule lives in :mod:`lrcn.evaluation.vqa_accuracy`; this module reads the
files as users have them on disk (results as the evaluation server takes them, the
official annotation and question files), checks them with messages that name the file,
the record and the fault, and aggregates like the official ``vqaEval.py``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrcn.errors import LrcnError
from lrcn.evaluation.vqa_accuracy import aggregate, question_accuracy

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

NUM_HUMAN_ANSWERS = 10
_EXAMPLES = 5  # how many example ids a coverage message lists


@dataclass(frozen=True)
class ScoreReport:
    """VQA accuracy in percent: overall, per answer type and (unrounded) per question."""

    overall: float
    per_answer_type: dict[str, float]
    per_question: dict[int, float] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (per-question values left out)."""
        return {
            "overall": self.overall,
            "per_answer_type": dict(self.per_answer_type),
            "num_questions": len(self.per_question),
        }


# --------------------------------------------------------------------------- reading


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """A JSON-ish name for the type of a parsed value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_json(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a JSON file, turning every way of failing into an LrcnError naming it."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise LrcnError(f"{p}: {what} file not found") from None
    except IsADirectoryError:
        raise LrcnError(f"{p}: expected a {what} file, found a directory") from None
    except OSError as exc:
        raise LrcnError(f"{p}: cannot read the {what} file: {exc.strerror or exc}") from None
    if not raw.strip():
        raise LrcnError(f"{p}: the {what} file is empty")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LrcnError(
            f"{p}: not valid JSON (truncated or corrupt?): {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        ) from None
    except UnicodeDecodeError as exc:
        raise LrcnError(f"{p}: not a UTF-8 JSON file: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise LrcnError(f"{p}: JSON nested too deeply to be a {what} file") from None


def _int_id(path: Path, where: str, record: Mapping[str, Any], key: str = "question_id") -> int:
    if key not in record:
        raise LrcnError(f"{path}: {where}: missing key {key!r} (keys: {sorted(record)[:8]})")
    value = record[key]
    if not _is_int(value):
        raise LrcnError(
            f"{path}: {where}: {key!r} must be an integer, got {_kind(value)} {_short(value)}"
        )
    return value


def _records(path: Path, data: Any, container: str | None, what: str) -> list[Any]:
    """The list of records: the document itself, or ``data[container]``."""
    if container is None:
        if not isinstance(data, list):
            raise LrcnError(
                f"{path}: a {what} file must be a JSON list of objects, got {_kind(data)}"
            )
        return data
    if not isinstance(data, dict):
        raise LrcnError(
            f"{path}: a {what} file must be a JSON object with key {container!r}, "
            f"got {_kind(data)}"
        )
    if container not in data:
        raise LrcnError(
            f"{path}: missing key {container!r} at the top level of the {what} file "
            f"(keys: {sorted(data)[:8]})"
        )
    records = data[container]
    if not isinstance(records, list):
        raise LrcnError(f"{path}: {container!r} must be a list, got {_kind(records)}")
    return records


def _record_name(container: str | None, index: int) -> str:
    return f"record {index}" if container is None else f"{container}[{index}]"


def read_results(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read a results file as the evaluation server takes it.

    The file is a JSON list of ``{"question_id": int, "answer": str}``; other keys are
    ignored. Returns question id -> predicted answer.
    """
    p = Path(path)
    records = _records(p, _load_json(p, "results"), None, "results")
    predictions: dict[int, str] = {}
    first_index: dict[int, int] = {}
    for i, rec in enumerate(records):
        where = _record_name(None, i)
        if not isinstance(rec, dict):
            raise LrcnError(f"{p}: {where}: expected an object, got {_kind(rec)} {_short(rec)}")
        qid = _int_id(p, where, rec)
        if "answer" not in rec:
            raise LrcnError(f"{p}: {where} (question_id {qid}): missing key 'answer'")
        answer = rec["answer"]
        if not isinstance(answer, str):
            raise LrcnError(
                f"{p}: {where} (question_id {qid}): 'answer' must be a string, "
                f"got {_kind(answer)} {_short(answer)}"
            )
        if qid in predictions:
            raise LrcnError(
                f"{p}: {where}: duplicate question_id {qid} (first at record {first_index[qid]})"
            )
        predictions[qid] = answer
        first_index[qid] = i
    return predictions


def _answer_records_distinct(answers: Sequence[Mapping[str, Any]]) -> bool:
    """Whether no two answer records are equal (the official leave-one-out needs it)."""
    ids = [a.get("answer_id") for a in answers]
    if all(_is_int(i) or isinstance(i, str) for i in ids) and len(set(ids)) == len(ids):
        return True
    return all(answers[i] != answers[j]
               for i in range(len(answers)) for j in range(i + 1, len(answers)))


def read_vqa_annotations(
    path: str | os.PathLike[str],
) -> tuple[dict[int, list[str]], dict[int, str]]:
    """Read an official VQA annotation file.

    Returns (question id -> the ten human answers, question id -> answer type). Every
    annotation needs ``question_id`` (int), ``answer_type`` (str) and ten ``answers``
    objects with a string ``answer``; no two of them may be identical records, because the
    official evaluator leaves an answer out by record equality (published files give
    every answer a distinct ``answer_id``).
    """
    p = Path(path)
    container = "annotations"
    records = _records(p, _load_json(p, "annotation"), container, "annotation")
    if not records:
        raise LrcnError(f"{p}: 'annotations' is empty: there is nothing to score against")
    answers_by_qid: dict[int, list[str]] = {}
    answer_types: dict[int, str] = {}
    first_index: dict[int, int] = {}
    for i, rec in enumerate(records):
        where = _record_name(container, i)
        if not isinstance(rec, dict):
            raise LrcnError(f"{p}: {where}: expected an object, got {_kind(rec)} {_short(rec)}")
        qid = _int_id(p, where, rec)
        where = f"{where} (question_id {qid})"
        if qid in answers_by_qid:
            raise LrcnError(
                f"{p}: {where}: duplicate question_id (first at annotations[{first_index[qid]}])"
            )
        for key in ("answer_type", "answers"):
            if key not in rec:
                raise LrcnError(f"{p}: {where}: missing key {key!r}")
        answer_type = rec["answer_type"]
        if not isinstance(answer_type, str):
            raise LrcnError(
                f"{p}: {where}: 'answer_type' must be a string, got {_kind(answer_type)} "
                f"{_short(answer_type)}"
            )
        answers = rec["answers"]
        if not isinstance(answers, list):
            raise LrcnError(f"{p}: {where}: 'answers' must be a list, got {_kind(answers)}")
        if len(answers) != NUM_HUMAN_ANSWERS:
            raise LrcnError(
                f"{p}: {where}: has {len(answers)} answers, expected {NUM_HUMAN_ANSWERS}"
            )
        texts: list[str] = []
        for j, ans in enumerate(answers):
            if not isinstance(ans, dict):
                raise LrcnError(
                    f"{p}: {where}: answers[{j}] must be an object, got {_kind(ans)} "
                    f"{_short(ans)}"
                )
            if "answer" not in ans:
                raise LrcnError(f"{p}: {where}: answers[{j}] is missing key 'answer'")
            text = ans["answer"]
            if not isinstance(text, str):
                raise LrcnError(
                    f"{p}: {where}: answers[{j}]['answer'] must be a string, got "
                    f"{_kind(text)} {_short(text)}"
                )
            texts.append(text)
        if not _answer_records_distinct(answers):
            raise LrcnError(
                f"{p}: {where}: two answer records are identical; the official evaluator "
                "would drop both when leaving one out (give each a distinct 'answer_id')"
            )
        answers_by_qid[qid] = texts
        answer_types[qid] = answer_type
        first_index[qid] = i
    return answers_by_qid, answer_types


def read_question_ids(path: str | os.PathLike[str]) -> list[int]:
    """Question ids of an official questions file (``{"questions": [{"question_id"...}]}``)."""
    p = Path(path)
    container = "questions"
    records = _records(p, _load_json(p, "questions"), container, "questions")
    ids: list[int] = []
    first_index: dict[int, int] = {}
    for i, rec in enumerate(records):
        where = _record_name(container, i)
        if not isinstance(rec, dict):
            raise LrcnError(f"{p}: {where}: expected an object, got {_kind(rec)} {_short(rec)}")
        qid = _int_id(p, where, rec)
        if qid in first_index:
            raise LrcnError(
                f"{p}: {where}: duplicate question_id {qid} "
                f"(first at questions[{first_index[qid]}])"
            )
        first_index[qid] = i
        ids.append(qid)
    return ids


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
) -> ScoreReport:
    """Score predictions against the human answers with the official VQA accuracy.

    Like the official ``loadRes``, the predictions must cover exactly the annotated
    questions (LrcnError otherwise). Aggregates are means of the unrounded per-question
    accuracies, in percent.
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
    summary = aggregate(accuracy, {qid: answer_types[qid] for qid in accuracy})
    return ScoreReport(
        overall=summary["overall"],
        per_answer_type=summary["per_answer_type"],
        per_question={qid: 100.0 * acc for qid, acc in accuracy.items()},
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
    answers_by_qid, answer_types = read_vqa_annotations(annotations)
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
        return score_vqa(answers_by_qid, answer_types, predictions)
    except LrcnError as exc:
        raise LrcnError(f"{Path(results)} (scored against {Path(annotations)}): {exc}") from None


# --------------------------------------------------------------------------- writing


def write_per_question(report: ScoreReport, path: str | os.PathLike[str]) -> None:
    """Write ``{question_id: accuracy percent}`` as a JSON object, atomically.

    The JSON goes to a temporary file in the same folder, which is then renamed over
    ``path``, so readers never see a half-written file.
    """
    p = Path(path)
    payload = {str(qid): report.per_question[qid] for qid in sorted(report.per_question)}
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL: never clobber someone else's file; mode 0o666 lets the umask apply.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise LrcnError(f"{p}: cannot write the per-question file: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LrcnError(f"{p}: cannot write the per-question file: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
