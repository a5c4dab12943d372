"""A training run's TensorBoard event files, in ``RUN/tb/`` (``tensorboard --logdir RUN/tb``).

Every scalar is on one axis, the optimizer steps done: a step's loss and learning rate at
the steps done before it (``epoch * steps_per_epoch + step``), an epoch's metrics at the
steps done at its end, the hyperparameters at the run's last step. One axis is what lets a
resumed run hide what its killed predecessor wrote after its checkpoint: the writer opens with
``purge_step`` = the steps done at the checkpoint, and TensorBoard drops the earlier files'
events at and after that step, on every tag at once (points on a second axis, such as epoch
numbers, would be dropped or kept wrongly). An epoch that ended exactly at the checkpoint is
dropped with the rest and written again (`RunLog.__init__`).

TensorBoard reads a run's event files in name order, and a purge applies to the files before
its own: each session writes one file (the hyperparameters too), named after every earlier one
(`_after_earlier_files`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from lrcn.config import RunConfig
from lrcn.engine import distributed
from lrcn.engine.checkpointer import Progress

TB_DIR = "tb"  # in the run folder
# SummaryWriter's file names: events.out.tfevents.<seconds, 10 digits>.<host>.<pid>.<counter>
EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d{10})\.")


class RunLog:
    """The scalars of a training run, for TensorBoard; does nothing when disabled or off rank 0.

    Writing a scalar queues it for the writer's thread: no host sync, no random number. The
    events are flushed at each epoch's end (`epoch`), before its checkpoint, so a killed run
    keeps them up to its last epoch.

    Args:
        out_dir: the run folder; the event files go to ``out_dir/tb``.
        steps_per_epoch: optimizer steps per epoch.
        progress: where the run starts: a resumed run's checkpoint, or the start.
        enabled: ``train.tensorboard``.
    """

    def __init__(self, out_dir: Path, steps_per_epoch: int, progress: Progress,
                 enabled: bool = True) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.writer = None
        if not (enabled and distributed.is_main()):
            return
        from torch.utils.tensorboard import SummaryWriter  # imported only by runs that write

        start = self.global_step(progress.epoch, progress.step)
        _after_earlier_files(out_dir / TB_DIR)
        self.writer = SummaryWriter(str(out_dir / TB_DIR), purge_step=start)
        for entry in progress.history:  # the purge drops an epoch that ended at `start`
            if self.global_step(entry["epoch"] + 1, 0) >= start:
                self.epoch(entry)

    def global_step(self, epoch: int, step: int) -> int:
        """The x axis: the optimizer steps done before step `step` (0-based) of `epoch`."""
        return epoch * self.steps_per_epoch + step

    def step(self, global_step: int, loss_per_question: float, lr: float) -> None:
        """One optimizer step: its loss per question (this process's share) and lr."""
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss_per_question, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, entry: dict[str, Any]) -> None:
        """A finished epoch, its metrics.jsonl entry, at the steps done at its end; flushed."""
        if self.writer is None:
            return
        step = self.global_step(entry["epoch"] + 1, 0)
        for tag, value in epoch_scalars(entry).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def hparams(self, cfg: RunConfig, best: dict[str, Any]) -> None:
        """The config (``section.key``, lists as text) with the best epoch's metrics (its
        metrics.jsonl entry `best`, as ``hparams/<tag>``) for TensorBoard's HPARAMS tab."""
        if self.writer is None:
            return
        config = {f"{section}.{key}": value if isinstance(value, (bool, int, float, str))
                  else str(value)
                  for section, fields in dataclasses.asdict(cfg).items()
                  for key, value in fields.items() if value is not None}
        metrics = {f"hparams/{tag}": value for tag, value in epoch_scalars(best).items()
                   if not tag.startswith("time/")}
        metrics["hparams/best_epoch"] = best["epoch"] + 1
        # SummaryWriter.add_hparams's writes, into this file: add_hparams opens another one (in
        # a sub-run named by the time, or with run_name "." beside this one, in any order)
        from torch.utils.tensorboard.summary import hparams

        step = self.global_step(cfg.train.epochs, 0)
        for summary in hparams(config, metrics):
            self.writer.file_writer.add_summary(summary, step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _after_earlier_files(folder: Path) -> None:
    """Wait, if need be, for the second after the newest event file's in `folder`: a file named
    in the same second may sort before it (its pid or counter has fewer digits). Only a run
    resumed in the second its predecessor started waits."""
    stamps = [int(m.group(1)) for p in folder.glob("events.out.tfevents.*")
              if (m := EVENT_FILE.match(p.name))]
    wait = max(stamps, default=0) + 1 - time.time()
    if 0 < wait <= 1:  # more: another machine's clock, which waiting would not fix
        time.sleep(wait)


def epoch_scalars(entry: dict[str, Any]) -> dict[str, float]:
    """The scalars of a metrics.jsonl entry, by tag: ``val/overall``, ``val/<answer type>``,
    ``val/answerability_ap`` and ``_f1`` (those the evaluation gave), ``train/epoch_loss``,
    ``time/train_seconds``."""
    val = entry["val"]
    scalars = {"val/overall": val.get("overall")}
    scalars.update({f"val/{answer_type}": accuracy
                    for answer_type, accuracy in val.get("per_answer_type", {}).items()})
    if "answerability" in val:
        scalars["val/answerability_ap"] = val["answerability"]["average_precision"]
        scalars["val/answerability_f1"] = val["answerability"]["f1"]
    scalars.update({"train/epoch_loss": entry["train_loss"],
                    "time/train_seconds": entry["train_seconds"]})
    return {tag: value for tag, value in scalars.items() if value is not None}

