"""Streaming VQA evaluator (detectron2-style: reset / process / evaluate) and results files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrcn.data.records import VQARecord
from lrcn.fileio import atomic_write
from lrcn.errors import LrcnError
from lrcn.vqa_accuracy import aggregate, question_accuracy


METRICS = ("vqa", "vizwiz")


class VQAEvaluator:
    """Collects predictions for the records of one split and scores them officially.

    Args:
        records: the split's records, addressed by row.
        metric: ``vqa`` (VQA-v2's evaluator) or ``vizwiz`` (VizWiz's: only the prediction is
            normalised). Answerability (average precision and F1 of "unanswerable") is scored
            when answerability probabilities were processed and the records carry the label.
    """

    def __init__(self, records: list[VQARecord], metric: str = "vqa") -> None:
        if metric not in METRICS:
            raise LrcnError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        self.records = records
        self.metric = metric
        self.reset()

    def reset(self) -> None:
        self.predictions: dict[int, str] = {}
        self.answerable: dict[int, float] = {}

    def process(self, rows: list[int], answers: list[str],
                answerable: list[float] | None = None) -> None:
        """Record each row's predicted answer and, optionally, its P(answerable)."""
        self.predictions.update(zip(rows, answers))
        if answerable is not None:
            self.answerable.update(zip(rows, answerable))

    def results(self) -> list[dict[str, Any]]:
        """``[{"question_id", "answer"}]`` in record order, as the evaluation server expects."""
        return [
            {"question_id": self.records[row].question_id, "answer": answer}
            for row, answer in sorted(self.predictions.items())
        ]

    def vizwiz_results(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """VizWiz's two submissions: ``[{"image", "answer"}]`` and ``[{"image", "answerable"}]``
        (None without an answerability head). The question id of a VizWiz record is its image."""
        answers = [{"image": r["question_id"], "answer": r["answer"]} for r in self.results()]
        answerable = None
        if self.answerable:
            answerable = [{"image": self.records[row].question_id, "answerable": p}
                          for row, p in sorted(self.answerable.items())]
        return answers, answerable

    def evaluate(self) -> dict[str, Any]:
        """Accuracy (percent) over the processed records, aggregated by
        :func:`~lrcn.vqa_accuracy.aggregate`: overall, per answer type and, when
        records carry question types, ``per_question_type`` and ``question_type_counts``;
        and ``answerability: {"average_precision", "f1"}`` when it can be scored."""
        from lrcn.evaluation.vizwiz import answerability_metrics, vizwiz_accuracy

        accuracy = question_accuracy if self.metric == "vqa" else vizwiz_accuracy
        per_question, types, question_types = {}, {}, {}
        for row, answer in self.predictions.items():
            record = self.records[row]
            if record.answers is None:
                raise LrcnError("cannot score a split without answers; write a results file instead")
            per_question[row] = accuracy(answer, record.answers)
            types[row] = record.answer_type or "other"
            question_types[row] = record.question_type
        report = aggregate(per_question, types, question_types) if per_question else {}
        report["num_questions"] = len(per_question)
        rows = sorted(self.answerable)
        if rows and all(self.records[r].answerable is not None for r in rows):
            report["answerability"] = answerability_metrics(
                [int(self.records[r].answerable) for r in rows], [self.answerable[r] for r in rows])
        return report


def write_results(results: list[dict[str, Any]], path: Path) -> None:
    """Write a results file atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(results).encode("utf-8")))
