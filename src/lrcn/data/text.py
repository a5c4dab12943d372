"""Questions as word indices: the tokenizer, the word vocabulary and GloVe vectors.

The tokenizer is the one MCAN/TRAR/LRCN use, so vocabularies and GloVe coverage match the
published models. A vocabulary is a plain list of words; it is saved as a JSON-safe dict
inside checkpoints so a trained model can be rebuilt without pickle.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from lrcn.errors import LrcnError

PAD = "<pad>"
UNK = "<unk>"
PAD_INDEX = 0
UNK_INDEX = 1

_STRIP = re.compile(r"[.,'!?\"()*#:;]")
_SPACE = re.compile(r"[-/]")

# Vector sizes of the published GloVe files (twitter: 25..200; 6B: 50..300; 42B/840B: 300).
GLOVE_DIMS = (25, 50, 100, 200, 300)


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


def load_glove(
    path: str | Path,
    vocab: WordVocab,
    dim: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, float]:
    """Embedding matrix for ``vocab`` from a GloVe text file, read in one streaming pass.

    Each line is a word followed by ``dim`` numbers; the word is everything before the
    last ``dim`` space-separated fields, because words in the 840B file contain spaces.
    Only vocabulary words are kept (exact match, first occurrence), so the 5.6 GB file
    never sits in memory.

    ``dim`` when None is read from the first line: the number of its trailing fields that
    parse as numbers (at most all but one, the word), which must be a published GloVe size
    (25, 50, 100, 200, 300); otherwise pass ``dim`` explicitly. Every line is checked to
    have at least ``dim + 1`` fields; the numbers are parsed, and checked, on the lines of
    vocabulary words only, which keeps the pass I/O-bound.

    Args:
        path: the GloVe ``.txt`` file.
        vocab: the words to look up.
        dim: vector size, or None to infer it.
        seed: seed of the generator for the rows of words not found.

    Returns:
        The (len(vocab), dim) float matrix (row 0, ``<pad>``, is zero; words not found
        get N(0, 0.1²) rows) and the coverage: the fraction of vocabulary words other than
        ``<pad>``/``<unk>`` that were found.
    """
    path = Path(path)
    if not path.is_file():
        raise LrcnError(f"GloVe file not found: {path}")
    if dim is not None and dim < 1:
        raise LrcnError(f"{path}: vector size must be >= 1, got {dim}")
    vectors: dict[int, list[float]] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n ")
            except UnicodeDecodeError as exc:
                raise LrcnError(f"{path}, line {lineno}: not valid UTF-8 ({exc.reason})") from None
            if not line:
                continue  # blank lines (e.g. at the end of the file) carry no vector
            if dim is None:
                dim = _infer_dim(line, path)
            parts = line.rsplit(" ", dim)
            if len(parts) != dim + 1 or not parts[0]:
                raise LrcnError(
                    f"{path}, line {lineno}: expected a word and {dim} numbers, found "
                    f"{len(line.split(' '))} fields (pass dim explicitly if {dim} is wrong)"
                )
            index = vocab.index(parts[0])
            if index == UNK_INDEX or index in vectors:
                continue
            vectors[index] = _parse_vector(parts[1:], path, lineno)
    if dim is None:
        raise LrcnError(f"{path}: the GloVe file is empty")

    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(vocab), dim, generator=generator) * 0.1  # (V, dim)
    matrix[PAD_INDEX] = 0.0
    for index, values in vectors.items():
        matrix[index] = torch.tensor(values)
    num_words = len(vocab) - 2
    coverage = len(vectors) / num_words if num_words else 0.0
    return matrix, coverage


def _infer_dim(first_line: str, path: Path) -> int:
    fields = first_line.split(" ")
    trailing = 0
    for field in reversed(fields[1:]):  # the first field is always (part of) the word
        if not _is_number(field):
            break
        trailing += 1
    if trailing not in GLOVE_DIMS:
        raise LrcnError(
            f"{path}, line 1: cannot infer the vector size ({trailing} trailing numbers is "
            f"not a GloVe size {', '.join(map(str, GLOVE_DIMS))}); pass dim explicitly"
        )
    return trailing


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _parse_vector(fields: list[str], path: Path, lineno: int) -> list[float]:
    try:
        values = [float(x) for x in fields]
    except ValueError:
        bad = next(x for x in fields if not _is_number(x))
        raise LrcnError(f"{path}, line {lineno}: {bad!r} is not a number") from None
    if not all(math.isfinite(v) for v in values):
        raise LrcnError(f"{path}, line {lineno}: vector has a non-finite value")
    return values
