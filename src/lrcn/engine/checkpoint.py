"""Checkpoints that rebuild the exact model from the file alone and never run code on load.

A checkpoint is a ``torch.save`` of plain containers only (dicts, lists, strings, numbers
and tensors): the resolved config, both vocabularies, the model's state dict and, in the
last checkpoint, the optimiser state. It is read with ``torch.load(weights_only=True)``,
which refuses anything that would need unpickling arbitrary objects.
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


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint safely; a run folder resolves to its best checkpoint."""
    path = resolve_checkpoint(path)
    if not zipfile.is_zipfile(path):
        raise LrcnError(f"{path} is not a PyTorch checkpoint file (truncated, or another format)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise LrcnError(
            f"refusing to load {path}: it needs unpickling arbitrary objects{what}, "
            "which could run code"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LrcnError(
            f"cannot read checkpoint {path} (truncated or not a checkpoint?): {detail}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LrcnError(f"{path} is not an lrcn checkpoint")
    if payload.get("version") != VERSION:
        raise LrcnError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    try:
        return Checkpoint(
            config=config_from_dict(payload["config"], f"checkpoint {path}"),
            word_vocab=WordVocab.from_dict(payload["word_vocab"]),
            answer_vocab=AnswerVocab.from_dict(payload["answer_vocab"]),
            model_state=payload["model"],
            epoch=int(payload["epoch"]),
            metrics=payload.get("metrics", {}),
            optimizer_state=payload.get("optimizer"),
        )
    except KeyError as exc:
        raise LrcnError(f"{path}: checkpoint lacks {exc}") from None
