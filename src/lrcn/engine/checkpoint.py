"""Checkpoints that rebuild the exact model from the file alone and never run code on load.

A checkpoint is a ``torch.save`` of plain containers only (dicts, lists, strings, numbers
and tensors): the resolved config, both vocabularies, the model's state dict and, in the
last checkpoint, the optimiser state and the training progress a resumed run continues from
(position in the data, metrics history, random states as tensors and lists of ints). It is
read with ``torch.load(weights_only=True)``, which refuses anything that would need
unpickling arbitrary objects.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lrcn.config import RunConfig, config_from_dict, config_to_dict
from lrcn.data.answers import AnswerVocab
from lrcn.json_records import is_int, short_repr
from lrcn.data.text import WordVocab
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write

FORMAT = "lrcn-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    config: RunConfig
    word_vocab: WordVocab
    answer_vocab: AnswerVocab
    model_state: dict[str, torch.Tensor]
    epoch: int
    metrics: dict[str, Any]
    optimizer_state: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None  # last.pt: where training stands (trainer.Progress)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config_to_dict(ckpt.config),
        "word_vocab": ckpt.word_vocab.to_dict(),
        "answer_vocab": ckpt.answer_vocab.to_dict(),
        "model": ckpt.model_state,
        "epoch": ckpt.epoch,
        "metrics": ckpt.metrics,
    }
    if ckpt.optimizer_state is not None:
        payload["optimizer"] = ckpt.optimizer_state
    if ckpt.progress is not None:
        payload["progress"] = ckpt.progress
    atomic_write(path, lambda f: torch.save(payload, f))


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder means its best checkpoint (else its last); a file means itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                return candidate
        raise LrcnError(f"no checkpoints/best.pt or checkpoints/last.pt in run folder {path}")
    if not path.is_file():
        raise LrcnError(f"checkpoint not found: {path}")
    return path


def read_torch_file(path: Path, map_location: str = "cpu", trust_pickle: bool = False,
                    refusal_hint: str = "") -> Any:
    """``torch.load`` of `path` with ``weights_only=True`` (unless `trust_pickle`), every way
    of failing turned into an LrcnError naming the file; `refusal_hint` ends the message that
    refuses a file needing arbitrary unpickling."""
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a pickle at all (a JSON file, garbage): nothing to trust
            raise LrcnError(f"cannot read {path}: not a PyTorch checkpoint "
                            f"({str(exc).strip().splitlines()[0][:120]})") from None
        what = f" ({found.group(1)})"
        raise LrcnError(
            f"refusing to load {path}: it needs unpickling arbitrary objects{what}, "
            f"which could run code{refusal_hint}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LrcnError(
            f"cannot read checkpoint {path} (truncated or not a checkpoint?): {detail}"
        ) from None


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint safely; a run folder resolves to its best checkpoint."""
    path = resolve_checkpoint(path)
    if not zipfile.is_zipfile(path):
        raise LrcnError(f"{path} is not a PyTorch checkpoint file (truncated, or another format: "
                        "old-style and plain pickles are never unpickled)")
    payload = read_torch_file(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LrcnError(f"{path} is not an lrcn checkpoint")
    if payload.get("version") != VERSION:
        raise LrcnError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    for key in ("config", "word_vocab", "answer_vocab", "model", "epoch"):
        if key not in payload:
            raise LrcnError(f"{path}: checkpoint lacks {key!r}")
    _check_fields(path, payload)
    try:
        word_vocab = WordVocab.from_dict(payload["word_vocab"])
        answer_vocab = AnswerVocab.from_dict(payload["answer_vocab"])
    except LrcnError as exc:
        raise LrcnError(f"{path}: {exc}") from None
    return Checkpoint(
        config=config_from_dict(payload["config"], f"checkpoint {path}"),
        word_vocab=word_vocab,
        answer_vocab=answer_vocab,
        model_state=payload["model"],
        epoch=payload["epoch"],
        metrics=payload.get("metrics", {}),
        optimizer_state=payload.get("optimizer"),
        progress=payload.get("progress"),
    )


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: Path,
                 source: str | None = None) -> None:
    """Load the checkpoint's weights into `model`, or say which parameter does not fit.

    torch's first line only says "Error(s) in loading state_dict for VQAModel:"; the next
    names the first parameter at fault (size mismatch, missing or unexpected keys).

    `source`: the weights are another run's, for the model this run's config describes
    (``lrcn train --init``, named so in the error); a mismatch then lists every kind of
    tensor at fault, the first few names and a count of each (`weight_mismatch`)."""
    if source is not None:
        mismatch = weight_mismatch(model.state_dict(), state)
        if mismatch:
            raise LrcnError(f"{source}: the weights of {path} do not fit the model this run's "
                            f"config describes: {mismatch}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
        if len(detail) > 300:
            detail = detail[:300] + "..."
        raise LrcnError(f"checkpoint {path} does not match the model its config describes: "
                        f"{detail}") from None


def weight_mismatch(expected: dict[str, torch.Tensor], state: dict[str, Any],
                    shown: int = 3) -> str:
    """What keeps `state` from loading strictly where `expected` (a model's state dict) is:
    the tensors missing from it, those it has that the model lacks, and those of another
    shape, each kind counted with its first `shown` names; "" when it fits."""
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    shapes = [f"{name} {list(state[name].shape)} vs {list(tensor.shape)}"
              for name, tensor in expected.items()
              if name in state and tuple(state[name].shape) != tuple(tensor.shape)]
    parts = []
    for names, what in ((missing, "missing from the checkpoint"),
                        (unexpected, "unexpected (not in the model)"),
                        (shapes, "of another shape (checkpoint vs model)")):
        if names:
            more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
            parts.append(f"{len(names)} tensor(s) {what}: {', '.join(names[:shown])}{more}")
    return "; ".join(parts)


def _check_fields(path: Path, payload: dict[str, Any]) -> None:
    """The weights, epoch, metrics and optimiser state have the types saving gives them."""
    state = payload["model"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise LrcnError(f"{path}: checkpoint 'model' must map parameter names to tensors")
    epoch = payload["epoch"]
    if not is_int(epoch) or epoch < 0:
        raise LrcnError(f"{path}: checkpoint 'epoch' must be an integer >= 0, "
                        f"got {short_repr(epoch)}")
    for key in ("metrics", "optimizer", "progress"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            raise LrcnError(f"{path}: checkpoint {key!r} must be a dict, "
                            f"got {type(payload[key]).__name__}")
