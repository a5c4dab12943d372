"""GloVe word vectors for a vocabulary: one streaming pass over the text file, cached.

The 840B file is 5.6 GB with 2.2 M lines, so it is read once, line by line, keeping only
the vocabulary's words; the resulting matrix is cached beside the run folders so the next
run with the same file and vocabulary skips the pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import torch

from lrcn.data.text import PAD_INDEX, UNK_INDEX, WordVocab
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write

log = logging.getLogger(__name__)

# Vector sizes of the published GloVe files (twitter: 25..200; 6B: 50..300; 42B/840B: 300).
GLOVE_DIMS = (25, 50, 100, 200, 300)


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
    size_from = ""  # where the vector size comes from, when it is read from the file
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n ")
            except UnicodeDecodeError as exc:
                raise LrcnError(f"{path}, line {lineno}: not valid UTF-8 ({exc.reason})") from None
            if not line:
                continue  # blank lines (e.g. at the end of the file) carry no vector
            if dim is None:
                dim = _infer_dim(line, path, lineno)
                size_from = f" (the vector size, from line {lineno})"
            parts = line.rsplit(" ", dim)
            if len(parts) != dim + 1 or not parts[0]:
                raise LrcnError(
                    f"{path}, line {lineno}: expected a word and {dim} numbers, found "
                    f"{len(line.split(' '))} fields{size_from}"
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


def _infer_dim(first_line: str, path: Path, lineno: int) -> int:
    fields = first_line.split(" ")
    trailing = 0
    for field in reversed(fields[1:]):  # the first field is always (part of) the word
        if not _is_number(field):
            break
        trailing += 1
    if trailing not in GLOVE_DIMS:
        raise LrcnError(
            f"{path}, line {lineno}: cannot infer the vector size ({trailing} trailing numbers is "
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


def cached_glove(
    path: str | Path, vocab: WordVocab, cache_dir: Path | None
) -> tuple[torch.Tensor, float]:
    """``load_glove`` with its result cached in ``cache_dir`` (None: no cache).

    The cache key covers the file (resolved path, size, modification time) and the
    vocabulary's words, so a changed file or vocabulary is read afresh. A cache file that
    cannot be read is reported and replaced.
    """
    path = Path(path)
    if cache_dir is None or not path.is_file():
        return load_glove(path, vocab)
    stat = path.stat()
    key = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, vocab.words])
    cache = cache_dir / f"glove-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"
    if cache.is_file():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            matrix, coverage = saved["matrix"], float(saved["coverage"])
            if matrix.shape[0] == len(vocab):
                log.info("GloVe vectors of %s read from the cache %s", path, cache)
                return matrix, coverage
        except Exception as exc:  # noqa: BLE001 - a broken cache is rebuilt, not fatal
            log.warning("GloVe cache %s is unreadable (%s); reading %s again", cache, exc, path)
    matrix, coverage = load_glove(path, vocab)
    payload = {"matrix": matrix, "coverage": coverage, "glove": str(path)}
    atomic_write(cache, lambda f: torch.save(payload, f))
    log.info("GloVe vectors of %s cached in %s", path, cache)
    return matrix, coverage
