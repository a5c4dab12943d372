"""Streaming VQA evaluator (detectron2-style: reset / process / evaluate) and results files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrcn.data.records import VQARecord
from lrcn.fileio import atomic_write
from lrcn.errors import LrcnError
from lrcn.evaluation.vqa_accuracy import aggregate, question_accuracy


class VQAEvaluator:
    """Collects predicted answers for the records of one split and scores them officially."""

    def __init__(self, records: list[VQARecord]) -> None:
        self.records = records
        self.reset()

    def reset(self) -> None:
        self.predictions: dict[int, str] = {}

    def process(self, rows: list[int], answers: list[str]) -> None:
        """Record the predicted answer of each record row."""
        self.predictions.update(zip(rows, answers))

    def results(self) -> list[dict[str, Any]]:
        """``[{"question_id", "answer"}]`` in record order, as the evaluation server expects."""
        return [
            {"question_id": self.records[row].question_id, "answer": answer}
            for row, answer in sorted(self.predictions.items())
        ]

    def evaluate(self) -> dict[str, Any]:
        """Overall and per-answer-type accuracy (percent) over the processed records."""
        per_question, types = {}, {}
        for row, answer in self.predictions.items():
            record = self.records[row]
            if record.answers is None:
                raise LrcnError("cannot score a split without answers; write a results file instead")
            per_question[row] = question_accuracy(answer, record.answers)
            types[row] = record.answer_type or "other"
        report = aggregate(per_question, types)
        report["num_questions"] = len(per_question)
        return report


def write_results(results: list[dict[str, Any]], path: Path) -> None:
    """Write a results file atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(results).encode("utf-8")))
