"""Checkpoints that rebuild the exact model from their files alone and never run code on load.

A checkpoint is a folder (`save_checkpoint`; a run keeps ``checkpoints/best`` and
``checkpoints/last``):

* ``model.safetensors``: the model's state dict (safetensors: tensors and nothing else);
* ``config.json``: the resolved config (`config_to_dict`: its data, model and train
  sections) with the ``format``, ``version``, ``epoch`` and ``metrics`` of the checkpoint;
* ``word_vocab.json``, ``answer_vocab.json``: the vocabularies (their ``to_dict``);
* ``resume.pt``, in ``last`` only: what ``lrcn train --resume`` alone needs, the optimiser
  state and the training progress (position, metrics history, random states as tensors and
  lists of ints), a ``torch.save`` of plain containers read with
  ``torch.load(weights_only=True)``, which refuses anything that would need unpickling
  arbitrary objects.

The folder is built beside its place and swapped in whole (`lrcn.fileio.replace_folder`) and
read from one version of it (`lrcn.fileio.read_folder`). An exported model
(`lrcn.engine.export_hf`) is the same files plus a model card.

Earlier versions of lrcn wrote one file, ``checkpoints/best.pt`` and ``last.pt``: a
``torch.save`` of all of the above (`LEGACY_VERSION`). Every reader still takes one
(`load_checkpoint`); a resumed run rewrites its own as folders
(`upgrade_legacy_checkpoints`).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors.torch import load_file, save_file

from lrcn.config import RunConfig, config_from_dict, config_to_dict
from lrcn.data.answers import AnswerVocab
from lrcn.data.text import WordVocab
from lrcn.errors import LrcnError
from lrcn.fileio import building_folder, current_folder, fsync_folder, read_folder
from lrcn.json_records import is_int, load_json, short_repr

FORMAT = "lrcn-checkpoint"
VERSION = 2         # a checkpoint folder
LEGACY_VERSION = 1  # one .pt file, written by earlier versions

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
WORD_VOCAB_FILE = "word_vocab.json"
ANSWER_VOCAB_FILE = "answer_vocab.json"
RESUME_FILE = "resume.pt"
META_KEYS = ("format", "version", "epoch", "metrics")  # config.json's keys beside the config
CONFIG_SECTIONS = ("data", "model", "train")

ONNX_SUFFIX = ".onnx"  # an exported ONNX model (lrcn.engine.export_onnx), not a checkpoint
CHECKPOINTS = "checkpoints"  # a run's checkpoint folders: best, last
BEST, LAST = "best", "last"


@dataclass
class Checkpoint:
    config: RunConfig
    word_vocab: WordVocab
    answer_vocab: AnswerVocab
    model_state: dict[str, torch.Tensor]
    epoch: int
    metrics: dict[str, Any]
    optimizer_state: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None  # last: where training stands (trainer.Progress)


# --------------------------------------------------------------------------- writing

def save_checkpoint(folder: Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` as the checkpoint folder `folder`, replacing any there: built beside it
    and swapped in, so that a kill at any instant leaves the old checkpoint or the new one
    (`lrcn.fileio.replace_folder`)."""
    with building_folder(folder, replace=True) as staging:
        write_checkpoint_files(staging, ckpt)


def write_checkpoint_files(folder: Path, ckpt: Checkpoint) -> list[str]:
    """Write the files of `ckpt` into the existing, empty `folder` (the caller makes it
    durable); their names. ``resume.pt`` only with an optimiser state or progress."""
    meta = {"format": FORMAT, "version": VERSION, "epoch": ckpt.epoch, "metrics": ckpt.metrics}
    _write_json(folder / CONFIG_FILE, {**meta, **config_to_dict(ckpt.config)})
    save_file(_separate_tensors(ckpt.model_state), folder / MODEL_FILE,
              metadata={"format": "pt"})  # "pt": PyTorch tensors, as the Hub's tools expect
    # safetensors creates its file 0600: give it the usual mode (0666 less the umask), which
    # config.json got when it was created
    shutil.copymode(folder / CONFIG_FILE, folder / MODEL_FILE)
    _write_json(folder / WORD_VOCAB_FILE, ckpt.word_vocab.to_dict())
    _write_json(folder / ANSWER_VOCAB_FILE, ckpt.answer_vocab.to_dict())
    names = [MODEL_FILE, CONFIG_FILE, WORD_VOCAB_FILE, ANSWER_VOCAB_FILE]
    resume = {key: value for key, value in (("optimizer", ckpt.optimizer_state),
                                            ("progress", ckpt.progress)) if value is not None}
    if resume:
        torch.save({"format": FORMAT, "version": VERSION, **resume}, folder / RESUME_FILE)
        names.append(RESUME_FILE)
    return names


def _separate_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every tensor that shares storage with an earlier one (tied weights), or
    is not contiguous, copied: safetensors stores each tensor's own bytes and refuses shared
    storage. Loading the copies into a model with tied weights sets both to the same values.
    lrcn's models tie none today, so nothing is copied."""
    seen: set[tuple[torch.device, int]] = set()
    out = {}
    for name, tensor in state.items():
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        elif tensor.numel():
            seen.add(storage)
        out[name] = tensor
    return out


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- finding

def run_checkpoint(run_dir: Path, name: str) -> Path | None:
    """The checkpoint `name` (`BEST` or `LAST`) of the run in `run_dir`: its folder (also
    while a swap is interrupted: `lrcn.fileio.current_folder`), else the ``NAME.pt`` of an
    earlier version; None when it has neither."""
    folder = run_dir / CHECKPOINTS / name
    if current_folder(folder) is not None:
        return folder
    legacy = folder.with_name(f"{name}.pt")
    return legacy if legacy.is_file() else None


def is_checkpoint_folder(path: Path) -> bool:
    """Whether `path` is a checkpoint folder (it has model.safetensors or config.json)."""
    folder = current_folder(path)
    return folder is not None and any((folder / name).exists()
                                      for name in (MODEL_FILE, CONFIG_FILE))


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint `path` names: a checkpoint folder or a ``.pt`` file means itself, a run
    folder its best checkpoint, else its last (folders before files of earlier versions)."""
    path = Path(path)
    if path.suffix.lower() == ONNX_SUFFIX and path.is_file():
        raise LrcnError(f"{path} is an ONNX model, which only lrcn predict and lrcn serve "
                        "take; give the run or checkpoint folder it was exported from")
    if path.is_file() or is_checkpoint_folder(path):
        return path
    if path.is_dir():
        for name in (BEST, LAST):
            found = run_checkpoint(path, name)
            if found is not None:
                return found
        raise LrcnError(f"no checkpoint in {path}: it is neither a run folder with "
                        f"{CHECKPOINTS}/{BEST} or {CHECKPOINTS}/{LAST} (or their .pt files of "
                        f"earlier versions) nor a checkpoint folder with {MODEL_FILE} and "
                        f"{CONFIG_FILE}")
    hint = ""
    if path.suffix == ".pt" and is_checkpoint_folder(path.with_suffix("")):
        hint = f" (checkpoints are folders now: {path.with_suffix('')})"
    raise LrcnError(f"checkpoint not found: {path}{hint}")


# --------------------------------------------------------------------------- reading

def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint safely (`resolve_checkpoint`: a folder, a run folder or a ``.pt``
    file of an earlier version). Every fault is an LrcnError naming the file."""
    path = resolve_checkpoint(path)
    if path.is_file():
        return _load_legacy(path, map_location)
    try:
        return read_folder(path, lambda folder: _load_folder(folder, map_location))
    except FileNotFoundError:  # deleted since it was found
        raise LrcnError(f"checkpoint not found: {path}") from None
    except OSError as exc:  # swapped by a writer at every attempt
        raise LrcnError(f"cannot read checkpoint {path}: {exc.strerror}") from None


def _load_folder(folder: Path, map_location: str) -> Checkpoint:
    config_file = folder / CONFIG_FILE
    meta = load_json(config_file, "checkpoint config")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LrcnError(f"{config_file} is not an lrcn checkpoint config (its \"format\" is "
                        f"not {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise LrcnError(f"{config_file}: checkpoint version "
                        f"{short_repr(meta.get('version'))} is not supported")
    _check_fields(config_file, meta, ("epoch", "metrics"))
    missing = [section for section in CONFIG_SECTIONS if section not in meta]
    if missing:
        raise LrcnError(f"{config_file}: the checkpoint config lacks its "
                        f"{', '.join(map(repr, missing))} section(s)")
    config = config_from_dict({k: v for k, v in meta.items() if k not in META_KEYS},
                              f"checkpoint {config_file}")
    word_vocab = _read_vocab(folder / WORD_VOCAB_FILE, WordVocab, "word vocabulary")
    answer_vocab = _read_vocab(folder / ANSWER_VOCAB_FILE, AnswerVocab, "answer vocabulary")
    model_state = _read_weights(folder / MODEL_FILE, map_location)
    resume: dict[str, Any] = {}
    if (folder / RESUME_FILE).exists():
        resume = _torch_load(folder / RESUME_FILE, map_location)
        if not isinstance(resume, dict) or resume.get("format") != FORMAT:
            raise LrcnError(f"{folder / RESUME_FILE} is not an lrcn resume file")
        _check_fields(folder / RESUME_FILE, resume, ("optimizer", "progress"))
    return Checkpoint(config, word_vocab, answer_vocab, model_state, meta["epoch"],
                      meta.get("metrics") or {}, resume.get("optimizer"), resume.get("progress"))


def _read_vocab(path: Path, kind: type[WordVocab] | type[AnswerVocab], what: str) -> Any:
    try:
        return kind.from_dict(load_json(path, what))
    except LrcnError as exc:
        message = str(exc)
        raise LrcnError(message if str(path) in message else f"{path}: {message}") from None


def _read_weights(path: Path, map_location: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LrcnError(f"{path}: checkpoint weights file not found")
    try:
        return load_file(path, device=map_location)
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise LrcnError(f"cannot read the weights {path} (truncated, or not a safetensors "
                        f"file?): {_first_line(exc)}") from None


def _load_legacy(path: Path, map_location: str) -> Checkpoint:
    """A checkpoint file of an earlier version: one torch.save of every part."""
    payload = _torch_load(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LrcnError(f"{path} is not an lrcn checkpoint")
    if payload.get("version") != LEGACY_VERSION:
        raise LrcnError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    for key in ("config", "word_vocab", "answer_vocab", "model", "epoch"):
        if key not in payload:
            raise LrcnError(f"{path}: checkpoint lacks {key!r}")
    state = payload["model"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise LrcnError(f"{path}: checkpoint 'model' must map parameter names to tensors")
    _check_fields(path, payload, ("epoch", "metrics", "optimizer", "progress"))
    try:
        word_vocab = WordVocab.from_dict(payload["word_vocab"])
        answer_vocab = AnswerVocab.from_dict(payload["answer_vocab"])
    except LrcnError as exc:
        raise LrcnError(f"{path}: {exc}") from None
    return Checkpoint(
        config=config_from_dict(payload["config"], f"checkpoint {path}"),
        word_vocab=word_vocab,
        answer_vocab=answer_vocab,
        model_state=state,
        epoch=payload["epoch"],
        metrics=payload.get("metrics", {}),
        optimizer_state=payload.get("optimizer"),
        progress=payload.get("progress"),
    )


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
        raise LrcnError(
            f"cannot read checkpoint {path} (truncated or not a checkpoint?): {_first_line(exc)}"
        ) from None


def _torch_load(path: Path, map_location: str) -> Any:
    """A torch.save file of tensors and plain containers (`read_torch_file`), refusing a file
    that is not a zip-format torch file before unpickling anything."""
    if not zipfile.is_zipfile(path):
        raise LrcnError(f"{path} is not a PyTorch checkpoint file (truncated, or another format: "
                        "old-style and plain pickles are never unpickled)")
    return read_torch_file(path, map_location)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_fields(path: Path, values: dict[str, Any], keys: tuple[str, ...]) -> None:
    """The epoch, metrics, optimiser state and progress among `keys` have the types saving
    gives them (a missing one passes: the caller requires what it needs)."""
    if "epoch" in keys:
        epoch = values.get("epoch")
        if not is_int(epoch) or epoch < 0:
            raise LrcnError(f"{path}: checkpoint 'epoch' must be an integer >= 0, "
                            f"got {short_repr(epoch)}")
    for key in keys:
        if key != "epoch" and values.get(key) is not None and not isinstance(values[key], dict):
            raise LrcnError(f"{path}: checkpoint {key!r} must be a dict, "
                            f"got {type(values[key]).__name__}")


# --------------------------------------------------------------------------- using

def load_weights(model: torch.nn.Module, state: dict[str, Any], path: Path,
                 source: str | None = None) -> None:
    """Load the checkpoint's weights into `model`, or say which parameter does not fit.

    torch's first line only says "Error(s) in loading state_dict for VQAModel:"; the next
    names the first parameter at fault (size mismatch, missing or unexpected keys). A
    checkpoint folder is named by its weights file.

    `source`: the weights are another run's, for the model this run's config describes
    (``lrcn train --init``, named so in the error); a mismatch then lists every kind of
    tensor at fault, the first few names and a count of each (`weight_mismatch`)."""
    if not path.is_file():
        path = path / MODEL_FILE
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


def upgrade_legacy_checkpoints(run_dir: Path) -> list[Path]:
    """Rewrite the ``best.pt`` and ``last.pt`` of an earlier version in `run_dir` as
    checkpoint folders, then delete them; the files deleted. A folder already there is newer
    (written since the run was resumed) and is kept. Each folder is whole before any file is
    deleted, so a kill here leaves both forms, and readers take the folder."""
    checkpoints = run_dir / CHECKPOINTS
    legacy = [name for name in (BEST, LAST) if (checkpoints / f"{name}.pt").is_file()]
    for name in legacy:
        if current_folder(checkpoints / name) is None:
            save_checkpoint(checkpoints / name, load_checkpoint(checkpoints / f"{name}.pt"))
    for name in legacy:
        (checkpoints / f"{name}.pt").unlink()
    if legacy:
        fsync_folder(checkpoints)
    return [checkpoints / f"{name}.pt" for name in legacy]
