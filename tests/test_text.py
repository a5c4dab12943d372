"""Tokenizer, word vocabulary and GloVe loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lrcn.data.glove import load_glove
from lrcn.data.text import PAD_INDEX, UNK_INDEX, WordVocab, tokenize
from lrcn.errors import LrcnError


@pytest.mark.parametrize(
    ("question", "tokens"),
    [
        ("What color is the cat?", ["what", "color", "is", "the", "cat"]),
        ("Is this a man's t-shirt?", ["is", "this", "a", "mans", "t", "shirt"]),
        ('He said "hi" (twice)!', ["he", "said", "hi", "twice"]),
        ("Up/down, left:right; #1 *star*", ["up", "down", "leftright", "1", "star"]),
        ("  many\tspaces\n here ", ["many", "spaces", "here"]),
        ("What is 3.5?", ["what", "is", "35"]),
        ("?!...", []),
        ("", []),
    ],
)
def test_tokenize(question: str, tokens: list[str]) -> None:
    assert tokenize(question) == tokens


QUESTIONS = [
    "What is the dog doing?",
    "What color is the cat?",
    "Is the cat black?",
    "Is there a dog?",
]


def test_vocab_order_is_frequency_then_alphabetical() -> None:
    vocab = WordVocab.build(QUESTIONS)
    # is:4, the:3, cat/dog/what:2, then the singletons alphabetically
    assert vocab.words == [
        "<pad>", "<unk>", "is", "the", "cat", "dog", "what",
        "a", "black", "color", "doing", "there",
    ]
    assert WordVocab.build(reversed(QUESTIONS)) == vocab  # order of input does not matter
    assert len(vocab) == 12


def test_vocab_min_count() -> None:
    vocab = WordVocab.build(QUESTIONS, min_count=2)
    assert vocab.words == ["<pad>", "<unk>", "is", "the", "cat", "dog", "what"]
    assert vocab.index("black") == UNK_INDEX


def test_encode_pads_truncates_and_maps_unknown_words() -> None:
    vocab = WordVocab.build(QUESTIONS)
    ids = vocab.encode("Is the zebra black?", max_len=6)
    assert ids == [vocab.index("is"), vocab.index("the"), UNK_INDEX, vocab.index("black"), 0, 0]
    assert vocab.encode("what is the dog doing", max_len=2) == [vocab.index("what"), vocab.index("is")]
    # a literal special token in a question is an unknown word, never padding
    assert vocab.encode("<pad>", max_len=2)[0] == UNK_INDEX


def test_encode_many_shape_and_values() -> None:
    vocab = WordVocab.build(QUESTIONS)
    out = vocab.encode_many(QUESTIONS, max_len=14)
    assert out.dtype == torch.long and out.shape == (4, 14)
    assert out[1].tolist() == vocab.encode(QUESTIONS[1], 14)
    assert vocab.encode_many([], max_len=3).shape == (0, 3)


def test_question_without_words_is_an_error() -> None:
    vocab = WordVocab.build(QUESTIONS)
    with pytest.raises(LrcnError, match="no words"):
        vocab.encode("?!")
    with pytest.raises(LrcnError, match="question_id 42"):
        vocab.encode_many(["is it?", "..."], keys=[41, 42])
    with pytest.raises(LrcnError, match="question #1"):
        vocab.encode_many(["is it?", ""])


def test_vocab_round_trip_through_json() -> None:
    vocab = WordVocab.build(QUESTIONS)
    restored = WordVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab
    assert restored.encode("is the cat black") == vocab.encode("is the cat black")
    with pytest.raises(LrcnError, match="WordVocab"):
        WordVocab.from_dict({"words": ["a", "b"]})


# --- GloVe --------------------------------------------------------------------------


def _write_glove(path: Path, rows: list[tuple[str, list[float]]], extra: str = "") -> Path:
    lines = [" ".join([word, *(f"{v:.4f}" for v in vec)]) for word, vec in rows]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def test_glove_coverage_vectors_and_multiword_tokens(tmp_path: Path) -> None:
    vocab = WordVocab(["cat", "dog", "at&t co", "zebra"])
    path = _write_glove(
        tmp_path / "glove.txt",
        [
            (",", [0.5, 0.5, 0.5, 0.5]),
            (". . .", [9.0, 9.0, 9.0, 9.0]),  # 840B-style token with spaces
            ("cat", [0.1, 0.2, 0.3, 0.4]),
            ("at&t co", [1.0, -1.0, 2.0, -2.0]),
            ("dog", [-0.5, 0.25, 0.0, 1.5]),
            ("dog", [7.0, 7.0, 7.0, 7.0]),  # a repeated word: the first line wins
            ("<unk>", [3.0, 3.0, 3.0, 3.0]),
        ],
    )
    matrix, coverage = load_glove(path, vocab, dim=4)
    assert matrix.shape == (6, 4) and matrix.dtype == torch.float32
    assert coverage == pytest.approx(3 / 4)
    assert torch.equal(matrix[PAD_INDEX], torch.zeros(4))
    assert torch.allclose(matrix[vocab.index("cat")], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert torch.allclose(matrix[vocab.index("at&t co")], torch.tensor([1.0, -1.0, 2.0, -2.0]))
    assert torch.allclose(matrix[vocab.index("dog")], torch.tensor([-0.5, 0.25, 0.0, 1.5]))
    # rows of words not found are small, random and reproducible
    zebra = matrix[vocab.index("zebra")]
    assert 0 < zebra.abs().max() < 1
    again, _ = load_glove(path, vocab, dim=4)
    assert torch.equal(again, matrix)
    assert not torch.equal(matrix[UNK_INDEX], torch.full((4,), 3.0))


def test_glove_dim_inferred_from_first_line(tmp_path: Path) -> None:
    vocab = WordVocab(["cat", "1.5"])
    rows = [("1.5", [0.0] * 50), ("cat", [float(i) / 100 for i in range(50)])]
    path = _write_glove(tmp_path / "glove.6B.50d.txt", rows)  # first word is a number
    matrix, coverage = load_glove(path, vocab)
    assert matrix.shape == (4, 50) and coverage == 1.0
    assert matrix[vocab.index("cat"), 49].item() == pytest.approx(0.49)

    odd = _write_glove(tmp_path / "odd.txt", [("cat", [0.1] * 7)])
    with pytest.raises(LrcnError, match="pass dim explicitly"):
        load_glove(odd, vocab)
    assert load_glove(odd, vocab, dim=7)[0].shape == (4, 7)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("cat 0.1 0.2", "line 3: expected a word and 4 numbers"),
        ("cat 0.1 x 0.3 0.4", "line 3: 'x' is not a number"),
        ("cat 0.1 nan 0.3 0.4", "line 3: vector has a non-finite value"),
    ],
)
def test_glove_malformed_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = _write_glove(
        tmp_path / "glove.txt",
        [("the", [0.1, 0.2, 0.3, 0.4]), ("dog", [0.1, 0.2, 0.3, 0.4])],
        extra=bad_line + "\n",
    )
    with pytest.raises(LrcnError, match=message) as info:
        load_glove(path, WordVocab(["cat", "dog"]), dim=4)
    assert str(path) in str(info.value)


def test_glove_missing_and_empty_file(tmp_path: Path) -> None:
    vocab = WordVocab(["cat"])
    with pytest.raises(LrcnError, match="not found"):
        load_glove(tmp_path / "nope.txt", vocab)
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(LrcnError, match="empty"):
        load_glove(tmp_path / "empty.txt", vocab)
