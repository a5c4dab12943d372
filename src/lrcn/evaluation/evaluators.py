"""Evaluators of one split's predictions, one class per official metric (detectron2 style).

The contract is detectron2's ``DatasetEvaluator``: ``reset()``, ``process(...)`` batch by
batch, then ``evaluate() -> {metric: value}``; ``write_results(path)`` writes the files the
metric's evaluation server accepts. Under several processes each one processes its share of
the records; given a ``gather`` function (the engine passes
``lrcn.engine.distributed.all_gather_objects``), ``evaluate`` and ``write_results`` first
merge every process's share, so they are collectives that every process calls, and each
returns what one process given all records would.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lrcn.data.records import VQARecord
from lrcn.errors import LrcnError
from lrcn.evaluation.vizwiz import answerability_metrics, vizwiz_accuracy
from lrcn.fileio import atomic_write
from lrcn.vqa_accuracy import aggregate, question_accuracy

__all__ = [
    "EVALUATORS", "ClevrEvaluator", "DatasetEvaluator", "Gather", "VQAEvaluator",
    "VizWizEvaluator",
    "build_evaluator", "metric_names",
]

# This process's share in, every process's share out (in rank order), in every process.
Gather = Callable[[Any], list[Any]]

Answers = dict[int, str]        # row of the split -> predicted answer
Answerable = dict[int, float]   # row of the split -> predicted P(answerable)


class DatasetEvaluator(ABC):
    """Collects the predictions for the records of one split, scores them and writes them.

    Subclasses give the per-question accuracy rule (`accuracy`) and the submission files
    (`_write`); they may add metrics (`_score`).

    Args:
        records: the split's records, addressed by row.
        gather: merges the processes' shares (see the module docstring); None for one process.
    """

    accuracy_name = "accuracy"  # what the metric is called, e.g. in a model card

    def __init__(self, records: Sequence[VQARecord], gather: Gather | None = None) -> None:
        self.records = records
        self._gather = gather
        self.reset()

    def reset(self) -> None:
        """Forget every prediction processed so far."""
        self._answers: Answers = {}
        self._answerable: Answerable = {}

    def process(self, rows: Sequence[int], answers: Sequence[str],
                answerable: Sequence[float] | None = None) -> None:
        """Record each row's predicted answer and, with that head, its P(answerable)."""
        if len(answers) != len(rows) or (answerable is not None and len(answerable) != len(rows)):
            raise ValueError(f"{len(rows)} rows, {len(answers)} answers and "
                             f"{'no' if answerable is None else len(answerable)} "
                             "answerability probabilities")
        self._answers.update(zip(rows, answers))
        if answerable is not None:
            self._answerable.update(zip(rows, answerable))

    def evaluate(self) -> dict[str, Any]:
        """Accuracy (percent) over the processed records of all processes, aggregated by
        :func:`~lrcn.vqa_accuracy.aggregate`: ``overall``, ``per_answer_type`` and, when
        records carry question types, ``per_question_type`` and ``question_type_counts``;
        then ``num_questions`` (and what a subclass adds)."""
        return self._score(*self._gathered())

    def write_results(self, path: str | os.PathLike[str]) -> dict[str, str]:
        """Write the submission file(s) of all processes' predictions, atomically, in record
        order; return the paths written by name (``results``, ...). Under several processes
        each writes the same bytes."""
        return self._write(Path(path), *self._gathered())

    # ----------------------------------------------------------------------- for subclasses

    @staticmethod
    @abstractmethod
    def accuracy(prediction: str, answers: Sequence[str]) -> float:
        """The metric's accuracy in [0, 1] of one prediction against the human answers."""

    @abstractmethod
    def _write(self, path: Path, answers: Answers, answerable: Answerable) -> dict[str, str]:
        """Write the submission file(s) at `path` (and beside it); the paths by name."""

    def _gathered(self) -> tuple[Answers, Answerable]:
        """Every process's predictions (this one's without `gather`), in record order."""
        share = (self._answers, self._answerable)
        shares = [share] if self._gather is None else self._gather(share)
        answers = dict(sorted(item for a, _ in shares for item in a.items()))
        answerable = dict(sorted(item for _, p in shares for item in p.items()))
        return answers, answerable

    def _score(self, answers: Answers, answerable: Answerable) -> dict[str, Any]:
        """The report of `evaluate` on every process's predictions."""
        per_question, answer_types, question_types = {}, {}, {}
        for row, answer in answers.items():
            record = self.records[row]
            if record.answers is None:
                raise LrcnError("cannot score a split without answers; write a results file instead")
            per_question[row] = self.accuracy(answer, record.answers)
            answer_types[row] = record.answer_type or "other"
            question_types[row] = record.question_type
        report = aggregate(per_question, answer_types, question_types) if per_question else {}
        report["num_questions"] = len(per_question)
        return report


class VQAEvaluator(DatasetEvaluator):
    """VQA-v2's official accuracy; the results file is ``[{"question_id", "answer"}]``.

    P(answerable), when processed, is neither scored nor written.
    """

    accuracy_name = "VQA accuracy"
    accuracy = staticmethod(question_accuracy)

    def _write(self, path: Path, answers: Answers, answerable: Answerable) -> dict[str, str]:
        _write_json(path, [{"question_id": self.records[row].question_id, "answer": answer}
                           for row, answer in answers.items()])
        return {"results": str(path)}


class VizWizEvaluator(DatasetEvaluator):
    """VizWiz's accuracy (only the prediction is normalised) and, with P(answerable)
    processed and labels on the records, ``answerability: {"average_precision", "f1"}``.

    VizWiz takes two submissions (a record's question id is its image): the answers
    ``[{"image", "answer"}]`` and, with an answerability head, ``[{"image", "answerable"}]``
    in ``<stem>_answerable.json`` beside them.
    """

    accuracy_name = "VizWiz accuracy"
    accuracy = staticmethod(vizwiz_accuracy)

    def _score(self, answers: Answers, answerable: Answerable) -> dict[str, Any]:
        report = super()._score(answers, answerable)
        labels = [self.records[row].answerable for row in answerable]
        if labels and all(label is not None for label in labels):
            report["answerability"] = answerability_metrics(
                [int(label) for label in labels], list(answerable.values()))
        return report

    def _write(self, path: Path, answers: Answers, answerable: Answerable) -> dict[str, str]:
        _write_json(path, [{"image": self.records[row].question_id, "answer": answer}
                           for row, answer in answers.items()])
        written = {"results": str(path)}
        if answerable:
            answerable_path = path.with_name(path.stem + "_answerable.json")
            _write_json(answerable_path, [{"image": self.records[row].question_id,
                                           "answerable": p} for row, p in answerable.items()])
            written["answerable_results"] = str(answerable_path)
        return written


class ClevrEvaluator(DatasetEvaluator):
    """CLEVR's accuracy: the prediction equals the one answer, exactly, as CLEVR papers and
    openvqa's CLEVR evaluation score it; ``per_question_type`` is by the category of each
    question's program (``lrcn.data.clevr.QUESTION_CATEGORIES``). The results file is
    ``[{"question_index", "answer"}]``.
    """

    accuracy_name = "CLEVR accuracy"

    @staticmethod
    def accuracy(prediction: str, answers: Sequence[str]) -> float:
        return float(prediction == answers[0])

    def _write(self, path: Path, answers: Answers, answerable: Answerable) -> dict[str, str]:
        _write_json(path, [{"question_index": self.records[row].question_id, "answer": answer}
                           for row, answer in answers.items()])
        return {"results": str(path)}


def _write_json(path: Path, results: list[dict[str, Any]]) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(results).encode("utf-8")))


# The metric names datasets register with (`lrcn.data.registry.register_dataset`).
EVALUATORS: dict[str, type[DatasetEvaluator]] = {
    "vqa": VQAEvaluator, "vizwiz": VizWizEvaluator, "clevr": ClevrEvaluator,
}


def metric_names() -> list[str]:
    """The metrics an evaluator exists for, sorted."""
    return sorted(EVALUATORS)


def build_evaluator(metric: str, records: Sequence[VQARecord],
                    gather: Gather | None = None) -> DatasetEvaluator:
    """The evaluator of `metric` (a dataset's, `lrcn.data.registry.dataset_metric`) for
    `records`; LrcnError listing the known metrics for any other name."""
    if metric not in EVALUATORS:
        raise LrcnError(f"unknown metric {metric!r}; known: {', '.join(metric_names())}")
    return EVALUATORS[metric](records, gather)
