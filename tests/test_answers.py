"""Answer vocabulary and soft-score targets."""

from __future__ import annotations

import json

import pytest
import torch

from lrcn.data.answers import AnswerVocab, dense_targets, encode_targets, training_answer
from lrcn.data.records import VQARecord
from lrcn.errors import LrcnError


def rec(answers: list[str] | None, mca: str | None = None, qid: int = 0) -> VQARecord:
    return VQARecord(
        question_id=qid, image_key="x.jpg", question="q?",
        answers=None if answers is None else tuple(answers), multiple_choice_answer=mca,
    )


@pytest.mark.parametrize(
    ("matches", "score"), [(1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0)]
)
def test_soft_target_per_number_of_matches(matches: int, score: float) -> None:
    vocab = AnswerVocab(["cat", "dog"])
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    targets = dict(vocab.targets(rec(answers)))
    assert targets[0] == pytest.approx(score)
    assert targets[1] == pytest.approx({1: 0.3, 2: 0.6, 3: 0.9}.get(10 - matches, 1.0))


def test_soft_targets_normalise_when_answers_differ() -> None:
    vocab = AnswerVocab(["2", "3", "yes"])
    answers = ["Two", "2", "two.", "2", "three", "3", "3", "yes", "no", "2"]
    targets = vocab.targets(rec(answers))
    # 'Two', 'two.' and '2' are all '2' after normalisation: 5 matches; '3' has 3.
    assert targets == [(0, pytest.approx(1.0)), (1, pytest.approx(0.9)), (2, pytest.approx(0.3))]


def test_soft_targets_drop_answers_outside_vocab_and_need_answers() -> None:
    vocab = AnswerVocab(["red"])
    assert vocab.targets(rec(["blue"] * 10)) == []
    with pytest.raises(LrcnError, match="question_id 7"):
        vocab.targets(rec(None, qid=7))


def test_training_answer_prefers_multiple_choice_answer() -> None:
    assert training_answer(rec(["cat"] * 10, mca="Two Dogs.")) == "2 dogs"
    # without it: the most common processed answer, ties broken by first occurrence
    assert training_answer(rec(["Dog", "cat", "dog", "cat"])) == "dog"
    assert training_answer(rec(["cat", "Dog", "dog", "cat"])) == "cat"
    with pytest.raises(LrcnError, match="question_id 3"):
        training_answer(rec(None, qid=3))


def _records() -> list[VQARecord]:
    mcas = ["yes"] * 5 + ["no"] * 4 + ["2"] * 2 + ["red", "blue", "Two"]
    return [rec([m] * 10, mca=m, qid=i) for i, m in enumerate(mcas)]


def test_answer_vocab_order_min_count_and_max_size() -> None:
    records = _records()
    assert AnswerVocab.build(records).answers == ["yes", "no", "2", "blue", "red"]
    assert AnswerVocab.build(records, min_count=2).answers == ["yes", "no", "2"]
    assert AnswerVocab.build(records, min_count=4).answers == ["yes", "no"]
    assert AnswerVocab.build(records, max_size=4).answers == ["yes", "no", "2", "blue"]
    with pytest.raises(LrcnError, match="at least 6"):
        AnswerVocab.build(records, min_count=6)


def test_answer_vocab_lookup_and_round_trip() -> None:
    vocab = AnswerVocab.build(_records())
    assert vocab.index("no") == 1 and vocab.index("purple") is None
    assert vocab.answer(2) == "2" and len(vocab) == 5
    restored = AnswerVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab
    with pytest.raises(LrcnError, match="AnswerVocab"):
        AnswerVocab.from_dict({"type": "WordVocab", "words": []})


def test_encode_and_dense_targets() -> None:
    vocab = AnswerVocab(["yes", "no", "2", "3"])
    records = [
        rec(["yes"] * 10),
        rec(["2"] * 4 + ["3"] * 3 + ["no"] * 2 + ["maybe"]),
        rec(["purple"] * 10),
    ]
    indices, scores = encode_targets(records, vocab)
    assert indices.shape == scores.shape == (3, 10)
    assert indices.dtype == torch.long and scores.dtype == torch.float32
    assert indices[0].tolist() == [0] + [-1] * 9
    assert indices[1, :3].tolist() == [1, 2, 3] and (indices[1, 3:] == -1).all()
    assert (indices[2] == -1).all() and (scores[2] == 0).all()

    dense = dense_targets(indices, scores, len(vocab))
    expected = torch.tensor([[1.0, 0, 0, 0], [0, 0.6, 1.0, 0.9], [0, 0, 0, 0]])
    assert torch.allclose(dense, expected)
    assert dense_targets(indices[1:2], scores[1:2], 4).shape == (1, 4)
