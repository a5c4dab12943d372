"""Answers as classes: the answer vocabulary and soft-score training targets.

VQA is trained as classification over the frequent training answers. Targets are the
official per-answer accuracies ("soft scores", METRICS.md), so the loss rewards exactly
what the evaluator scores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lrcn.data.records import VQARecord
from lrcn.errors import LrcnError
from lrcn.vqa_accuracy import normalize_answer, soft_scores

MAX_ANSWERS = 10  # human answers per question in VQA-v2, VizWiz and easy-VQA


def training_answer(record: VQARecord) -> str:
    """The one processed answer a training record contributes to the vocabulary.

    ``normalize_answer(multiple_choice_answer)`` when the record has one, else the
    processed most common of its answers (ties: the first in order).
    """
    if record.multiple_choice_answer is not None:
        return normalize_answer(record.multiple_choice_answer)
    if not record.answers:
        raise LrcnError(
            f"question_id {record.question_id!r}: no answers to build an answer "
            "vocabulary from (is this a test split?)"
        )
    processed = [normalize_answer(a) for a in record.answers]
    counts = Counter(processed)
    # Counter.most_common keeps first-seen order among equal counts.
    return counts.most_common(1)[0][0]


class AnswerVocab:
    """The candidate answers a model chooses from, most frequent first."""

    def __init__(self, answers: Sequence[str]) -> None:
        """Build from the answers in index order."""
        answers = list(answers)
        if len(set(answers)) != len(answers):
            raise LrcnError("answer vocabulary: duplicate answers")
        self._itos = answers
        self._stoi = {a: i for i, a in enumerate(answers)}

    @classmethod
    def build(
        cls,
        records: Iterable[VQARecord],
        min_count: int = 1,
        max_size: int | None = None,
    ) -> AnswerVocab:
        """Vocabulary of the training records' processed answers (see ``training_answer``).

        Keeps answers seen at least ``min_count`` times, most frequent first, ties in
        alphabetical order, at most ``max_size`` of them.
        """
        if min_count < 1:
            raise LrcnError(f"answer vocabulary: min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < 1:
            raise LrcnError(f"answer vocabulary: max_size must be >= 1, got {max_size}")
        counts = Counter(training_answer(r) for r in records)
        kept = sorted((a for a, n in counts.items() if n >= min_count),
                      key=lambda a: (-counts[a], a))
        if not kept:
            raise LrcnError(f"answer vocabulary: no answer occurs at least {min_count} times")
        return cls(kept[:max_size])

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, answer: object) -> bool:
        return answer in self._stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnswerVocab) and self._itos == other._itos

    def __repr__(self) -> str:
        return f"AnswerVocab({len(self)} answers)"

    @property
    def answers(self) -> list[str]:
        """All answers in index order."""
        return list(self._itos)

    def index(self, answer: str) -> int | None:
        """Index of an answer as stored (already processed), None when absent."""
        return self._stoi.get(answer)

    def answer(self, i: int) -> str:
        return self._itos[i]

    def targets(self, record: VQARecord) -> list[tuple[int, float]]:
        """Soft-score targets of a record as (answer index, score), by index.

        The scores are ``soft_scores(record.answers)``: the official accuracy a prediction
        of that answer would earn (0.3, 0.6, 0.9, 1.0 for 1, 2, 3, >=4 matches). Answers
        outside the vocabulary are dropped.
        """
        if record.answers is None:
            raise LrcnError(
                f"question_id {record.question_id!r}: no answers to make training targets "
                "from (is this a test split?)"
            )
        out = []
        for answer, score in soft_scores(record.answers).items():
            i = self._stoi.get(answer)
            if i is not None and score > 0:
                out.append((i, score))
        return sorted(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, for checkpoints."""
        return {"type": "AnswerVocab", "answers": list(self._itos)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerVocab:
        """Inverse of ``to_dict``."""
        answers = data.get("answers") if isinstance(data, dict) else None
        if (
            not isinstance(answers, list)
            or data.get("type") != "AnswerVocab"
            or not all(isinstance(a, str) for a in answers)
        ):
            raise LrcnError("answer vocabulary: not a saved AnswerVocab (expected to_dict() output)")
        return cls(answers)


def encode_targets(
    records: Sequence[VQARecord], vocab: AnswerVocab
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse soft-score targets of a whole split.

    Returns:
        indices: LongTensor (N, 10), answer indices padded with -1.
        scores: FloatTensor (N, 10), their scores padded with 0.
        A batch's dense (B, K) target is then one ``dense_targets`` scatter.
    """
    rows_i: list[list[int]] = []
    rows_s: list[list[float]] = []
    for record in records:
        pairs = vocab.targets(record)
        if len(pairs) > MAX_ANSWERS:
            raise LrcnError(
                f"question_id {record.question_id!r}: {len(pairs)} distinct answers, "
                f"at most {MAX_ANSWERS} are supported"
            )
        pad = MAX_ANSWERS - len(pairs)
        rows_i.append([i for i, _ in pairs] + [-1] * pad)
        rows_s.append([s for _, s in pairs] + [0.0] * pad)
    indices = torch.tensor(rows_i, dtype=torch.long).view(-1, MAX_ANSWERS)  # (N, 10)
    scores = torch.tensor(rows_s, dtype=torch.float32).view(-1, MAX_ANSWERS)  # (N, 10)
    return indices, scores


def dense_targets(indices: torch.Tensor, scores: torch.Tensor, num_answers: int) -> torch.Tensor:
    """Scatter sparse targets (B, 10) into a dense (B, num_answers) target.

    Padding (-1) adds a zero to column 0, which leaves a real score there unchanged.
    """
    dense = torch.zeros(indices.shape[0], num_answers, dtype=scores.dtype, device=scores.device)
    return dense.scatter_add_(1, indices.clamp(min=0), scores * (indices >= 0))  # (B, K)
