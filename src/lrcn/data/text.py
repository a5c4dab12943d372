"""Questions as word indices: the tokenizer and the word vocabulary.

The tokenizer is the one MCAN/TRAR/LRCN use, so vocabularies and GloVe coverage match the
published models. A vocabulary is a plain list of words; it is saved as a JSON-safe dict
inside checkpoints so a trained model can be rebuilt without pickle.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lrcn.errors import LrcnError

PAD = "<pad>"
UNK = "<unk>"
PAD_INDEX = 0
UNK_INDEX = 1

_STRIP = re.compile(r"[.,'!?\"()*#:;]")
_SPACE = re.compile(r"[-/]")


def tokenize(question: str) -> list[str]:
    """Split a question into words as MCAN does.

    Lower-case, delete the punctuation ``. , ' ! ? " ( ) * # : ;``, turn ``-`` and ``/``
    into spaces, then split on whitespace.
    """
    text = _STRIP.sub("", question.lower())
    return _SPACE.sub(" ", text).split()


class WordVocab:
    """Question words to indices: 0 is ``<pad>``, 1 is ``<unk>``, then the words."""

    def __init__(self, words: Sequence[str]) -> None:
        """Build from the words after the two special tokens, in index order."""
        words = list(words)
        if len(set(words)) != len(words):
            raise LrcnError("word vocabulary: duplicate words")
        if PAD in words or UNK in words:
            raise LrcnError(f"word vocabulary: {PAD} and {UNK} are reserved")
        self._itos = [PAD, UNK, *words]
        # <pad> is left out of the lookup so a literal "<pad>" in a question becomes <unk>.
        self._stoi = {w: i for i, w in enumerate(self._itos) if i != PAD_INDEX}

    @classmethod
    def build(cls, questions: Iterable[str], min_count: int = 1) -> WordVocab:
        """Vocabulary of the training questions' words seen at least ``min_count`` times.

        Words are ordered by frequency, then alphabetically, so the same questions always
        give the same indices.
        """
        if min_count < 1:
            raise LrcnError(f"word vocabulary: min_count must be >= 1, got {min_count}")
        counts = Counter(tok for q in questions for tok in tokenize(q))
        counts.pop(PAD, None)
        counts.pop(UNK, None)
        kept = [w for w, n in counts.items() if n >= min_count]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, word: object) -> bool:
        return word in self._stoi and word != UNK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordVocab) and self._itos == other._itos

    def __repr__(self) -> str:
        return f"WordVocab({len(self)} entries)"

    @property
    def words(self) -> list[str]:
        """All entries in index order, the two special tokens included."""
        return list(self._itos)

    def index(self, word: str) -> int:
        """Index of a word, ``UNK_INDEX`` when it is not in the vocabulary."""
        return self._stoi.get(word, UNK_INDEX)

    def word(self, index: int) -> str:
        return self._itos[index]

    def encode(self, question: str, max_len: int = 14) -> list[int]:
        """Word indices of a question, truncated or padded with 0 to ``max_len``.

        Raises LrcnError for a question without any word; the caller adds which record.
        """
        _check_max_len(max_len)
        tokens = tokenize(question)
        if not tokens:
            raise LrcnError(f"question {question!r} has no words after tokenization")
        ids = [self._stoi.get(t, UNK_INDEX) for t in tokens[:max_len]]
        return ids + [PAD_INDEX] * (max_len - len(ids))

    def encode_many(
        self,
        questions: Sequence[str],
        max_len: int = 14,
        keys: Sequence[object] | None = None,
    ) -> torch.Tensor:
        """Encode a list of questions into a LongTensor (N, max_len).

        Args:
            questions: the question texts.
            max_len: tokens kept per question.
            keys: optional record names (e.g. question ids) used in error messages.
        """
        _check_max_len(max_len)
        rows = []
        for i, q in enumerate(questions):
            try:
                rows.append(self.encode(q, max_len))
            except LrcnError as exc:
                name = f"question_id {keys[i]!r}" if keys is not None else f"question #{i}"
                raise LrcnError(f"{name}: {exc}") from None
        return torch.tensor(rows, dtype=torch.long).view(-1, max_len)  # (N, max_len)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, for checkpoints."""
        return {"type": "WordVocab", "words": list(self._itos)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordVocab:
        """Inverse of ``to_dict``."""
        words = data.get("words") if isinstance(data, dict) else None
        if (
            not isinstance(words, list)
            or data.get("type") != "WordVocab"
            or words[:2] != [PAD, UNK]
            or not all(isinstance(w, str) for w in words)
        ):
            raise LrcnError("word vocabulary: not a saved WordVocab (expected to_dict() output)")
        return cls(words[2:])


def _check_max_len(max_len: int) -> None:
    if max_len < 1:
        raise LrcnError(f"max_len must be >= 1, got {max_len}")
