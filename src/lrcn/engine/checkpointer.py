"""A training run's state on disk: where it stands (`Progress`), every process's random
states, and the crash-safe order of its writes (`Checkpointer`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrcn.config import RunConfig, changed_fields, resumable_fields
from lrcn.data import AnswerVocab, WordVocab
from lrcn.engine import distributed
from lrcn.engine.checkpoint import (
    BEST, CHECKPOINTS, LAST, Checkpoint, load_checkpoint, run_checkpoint, save_checkpoint,
    upgrade_legacy_checkpoints,
)
from lrcn.engine.curves import plot_curves
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write, remove_unfinished_writes
from lrcn.models import VQAModel

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands: what the last checkpoint saves (as plain values, in its resume.pt)
    and a resumed run restores.

    The position is the optimizer steps done in the epoch being trained; the next batch is
    found from it, since the data order depends only on the seed and the epoch.
    """

    epoch: int = 0                 # the epoch being trained, 0-based (= epochs once finished)
    step: int = 0                  # optimizer steps done in it, skipped ones included
    loss: float = 0.0              # summed training loss of the epoch so far (this process's;
    questions: int = 0             # ...all processes' in `last`) and its number of questions
    seconds: float = 0.0           # training time of the epoch so far
    skipped: int = 0               # steps of the epoch skipped for a non-finite loss
    bad_in_a_row: int = 0          # consecutive skipped steps
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # metrics.jsonl
    best: int | None = None        # the best epoch (index in history)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, path: Path) -> Progress:
        try:
            return cls(**{f.name: ckpt.progress[f.name] for f in dataclasses.fields(cls)})
        except KeyError as exc:
            raise LrcnError(f"{path}: checkpoint 'progress' lacks {exc}") from None

    def end_epoch(self, entry: dict[str, Any], is_best: bool) -> None:
        self.history.append(entry)
        if is_best:
            self.best = len(self.history) - 1
        self.epoch, self.step, self.loss, self.questions = self.epoch + 1, 0, 0.0, 0
        self.seconds, self.skipped = 0.0, 0


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random states as tensors and plain lists (loadable with weights_only)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"torch": torch.get_rng_state(), "python": [version, list(mt), gauss],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def epoch_loss_over_processes(progress: Progress, device: torch.device) -> tuple[float, int]:
    """The epoch's summed training loss and its number of questions, over every process."""
    sums = distributed.all_reduce_sum(torch.tensor([progress.loss, progress.questions],
                                                   dtype=torch.float64, device=device))
    return sums[0].item(), int(sums[1].item())


def resume_checkpoint(cfg: RunConfig, out_dir: Path) -> tuple[Checkpoint | None, Progress]:
    """The last checkpoint of the run in `out_dir` and its progress, once `cfg` is known to
    continue it; no checkpoint when the run saved none yet (it then starts from the start).

    `cfg` may differ from the run's only in the fields the config declares resumable
    (`resumable_fields`), and in where its data lies as long as it stays set or unset.
    """
    path = run_checkpoint(out_dir, LAST)
    if not (out_dir / "config.yaml").is_file():
        raise LrcnError(f"no run to resume in {out_dir}: it has no config.yaml")
    if path is None:
        log.warning("%s holds no checkpoint yet: training it from the start", out_dir)
        return None, Progress()
    ckpt = load_checkpoint(path)
    if ckpt.progress is None or ckpt.optimizer_state is None:
        raise LrcnError(f"{path} holds no training progress (written by an older lrcn?): "
                        "it cannot be resumed")
    resumable, movable = resumable_fields()
    for name, old, new in changed_fields(ckpt.config, cfg):
        if name not in resumable and not (name in movable and bool(old) == bool(new)):
            raise LrcnError(f"cannot resume {out_dir} with {name} = {new!r}: the run was "
                            f"trained with {old!r} (a resumed run may change only "
                            f"{', '.join(resumable)}, and move its data)")
    progress = Progress.from_checkpoint(ckpt, path)
    if distributed.is_main():  # a killed run may have left a write unfinished
        for stale in remove_unfinished_writes(out_dir):
            log.info("cleaned %s, left by an interrupted write", stale)
    least = progress.epoch + (progress.step > 0)
    if cfg.train.epochs < least:
        raise LrcnError(f"cannot resume {out_dir} with train.epochs = {cfg.train.epochs}: the "
                        f"run has trained {least} epoch(s) already, in part or whole")
    return ckpt, progress


class Checkpointer:
    """Writes a run's files so that a run killed at any moment resumes as if it had not been.

    Each written whole or not at all: the checkpoint folders ``checkpoints/last`` (the
    weights, and in its resume.pt the Adam state and `Progress` with every process's random
    states: all that ``lrcn train --resume`` needs) and ``checkpoints/best`` (the best
    epoch's weights and metrics), swapped in by `lrcn.fileio.replace_folder`; the files
    ``metrics.jsonl`` (one line per finished epoch) and ``curves.png`` by
    `lrcn.fileio.atomic_write`.

    The order at the end of an epoch (`end_epoch`) is metrics.jsonl, last, best, curves.png.
    Killed between them, metrics.jsonl may be a line ahead of last and best an epoch behind;
    `follow_last` (on resume) rewrites both from last, which is the truth. Within an epoch
    only last is written (`save_last`, every ``train.checkpoint_every`` steps and before a
    requested stop).

    Every process calls `save_last` and `end_epoch` together (they gather the random states
    and the loss over processes); only rank 0 writes.
    """

    def __init__(self, out_dir: Path, cfg: RunConfig, word_vocab: WordVocab,
                 answer_vocab: AnswerVocab, model: VQAModel, optimizer: torch.optim.Optimizer,
                 progress: Progress, device: torch.device) -> None:
        self.out_dir = out_dir
        self.last = out_dir / CHECKPOINTS / LAST
        self.best = out_dir / CHECKPOINTS / BEST
        self.metrics = out_dir / "metrics.jsonl"
        self.cfg, self.word_vocab, self.answer_vocab = cfg, word_vocab, answer_vocab
        self.model, self.optimizer, self.progress, self.device = model, optimizer, progress, device

    def save_last(self) -> Path:
        """Write the last checkpoint: the weights, the Adam state and the progress with every
        process's random states and the loss summed over processes."""
        progress = self.progress
        rngs = distributed.all_gather_objects(rng_state(self.device))
        loss, questions = epoch_loss_over_processes(progress, self.device)
        if distributed.is_main():
            state = {**dataclasses.asdict(progress), "loss": loss, "questions": questions,
                     "rng": rngs}
            epoch = progress.epoch if progress.step else max(progress.epoch - 1, 0)  # the weights'
            save_checkpoint(self.last, Checkpoint(
                self.cfg, self.word_vocab, self.answer_vocab, self.model.state_dict(), epoch,
                progress.history[-1] if progress.history else {}, self.optimizer.state_dict(),
                state))
        return self.last

    def end_epoch(self, entry: dict[str, Any], is_best: bool) -> Path:
        """Record a finished epoch's metrics and write its files in the crash-safe order."""
        self.progress.end_epoch(entry, is_best)
        if distributed.is_main():
            self._write_metrics()
        path = self.save_last()
        if distributed.is_main():
            if is_best:
                self._save_best()
            plot_curves(self.progress.history, self.out_dir / "curves.png")
        return path

    def follow_last(self) -> None:
        """On resume (rank 0): metrics.jsonl and best follow last again; the checkpoint
        files of an earlier version become folders (every process has read its own)."""
        self._write_metrics()
        progress = self.progress
        if progress.step == 0 and progress.best == len(progress.history) - 1:
            self._save_best()
        for old in upgrade_legacy_checkpoints(self.out_dir):
            log.info("rewrote %s as a checkpoint folder", old)

    def _save_best(self) -> None:
        """best: the weights of the best epoch, which are the model's now, and its metrics."""
        entry = self.progress.history[self.progress.best]
        save_checkpoint(self.best, Checkpoint(self.cfg, self.word_vocab, self.answer_vocab,
                                              self.model.state_dict(), entry["epoch"], entry))

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(entry) + "\n" for entry in self.progress.history)
        atomic_write(self.metrics, lambda f: f.write(text.encode("utf-8")))
