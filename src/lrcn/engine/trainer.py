"""The training loop: plain, seeded, resumable, with the paper's optimiser and schedule.

The pieces live beside it: `setup` (config checks, data, model, encoded splits), `step` (one
optimiser step), `checkpointer` (run state and the crash-safe write order), `signals`
(Ctrl-C and SIGTERM as a request to stop after the step) and `tensorboard` (RUN/tb/).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lrcn.config import RunConfig, TrainConfig, save_config
from lrcn.config.schedule import warmup_step_factor
from lrcn.data.batches import batch_loader, set_epoch, shard_length
from lrcn.data.registry import dataset_metric
from lrcn.engine import distributed
from lrcn.engine.checkpoint import LAST, run_checkpoint
from lrcn.engine.checkpointer import (
    Checkpointer, Progress, epoch_loss_over_processes, set_rng_state,
)
from lrcn.engine.inference import predict_split
from lrcn.engine.setup import Run, setup_run
from lrcn.engine.signals import StopRequest, TrainingInterrupted
from lrcn.engine.step import OptimizerStep, make_optimizer, training_step
from lrcn.engine.tensorboard import RunLog
from lrcn.errors import LrcnError
from lrcn.evaluation import build_evaluator
from lrcn.fileio import atomic_write

log = logging.getLogger(__name__)


def train(cfg: RunConfig, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate every epoch, keep best and last checkpoints; return the summary.

    With `resume`, continue the run in `out_dir` from its last checkpoint where it stopped,
    as if it had not: the same weights, metrics and best epoch (`Checkpointer`). Under torchrun every
    process runs this with the same `out_dir`; they train one model together (DDP, each on
    its share of every batch) and only rank 0 writes files.
    """
    run = setup_run(cfg, out_dir, resume)
    cfg, t, progress, model, device = run.cfg, run.cfg.train, run.progress, run.model, run.device
    if progress.epoch >= t.epochs:
        log.info("%s has trained all its %d epochs: nothing to do (raise --epochs to train "
                 "longer)", out_dir, t.epochs)
        return _summary(out_dir, run)
    step = training_step(model, t, device)  # with DDP: every process is here, past its checks
    optimizer = _start_optimizer(run, out_dir)
    checkpointer = Checkpointer(out_dir, cfg, run.data.word_vocab, run.data.answer_vocab, model,
                                optimizer, progress, device)
    _write_run_files(run, out_dir, checkpointer)
    loader = _train_loader(run)
    run_step = OptimizerStep(step, optimizer, t)
    tb = RunLog(out_dir, _steps_per_epoch(loader, t), progress, enabled=t.tensorboard)
    with StopRequest() as stop, tb:
        try:
            while progress.epoch < t.epochs:
                epoch, lr = progress.epoch, run.lrs[progress.epoch]
                for group in optimizer.param_groups:
                    group["lr"] = lr
                train_loss = train_one_epoch(run_step, loader, t, progress, stop, checkpointer,
                                             tb)
                start = time.perf_counter()
                val = evaluate_split(run) if run.val_split is not None else {}
                entry = {"epoch": epoch, "lr": lr, "train_loss": train_loss,
                         "skipped_steps": progress.skipped,
                         "train_seconds": round(progress.seconds, 2),
                         "eval_seconds": round(time.perf_counter() - start, 2), "val": val}
                _log_epoch(entry, t, progress.seconds)
                tb.epoch(entry)  # before metrics.jsonl and last: see lrcn.engine.tensorboard
                best = progress.history[progress.best] if progress.best is not None else None
                path = checkpointer.end_epoch(entry, not val or best is None
                                             or _score(val, model.task) > _score(best["val"], model.task))
                if distributed.any_process(stop.requested, device):
                    raise TrainingInterrupted(f"saved {path} at the end of epoch {epoch + 1}; "
                                              f"continue with: lrcn train --resume {out_dir}")
        except KeyboardInterrupt as exc:
            if isinstance(exc, TrainingInterrupted):
                raise
            raise TrainingInterrupted(
                "stopped at once, without saving; continue from the last checkpoint with: "
                f"lrcn train --resume {out_dir}") from None
        tb.hparams(cfg, progress.history[progress.best])
    return _summary(out_dir, run)


def _start_optimizer(run: Run, out_dir: Path) -> torch.optim.Optimizer:
    """The optimiser, and the random streams of dropout: seed + rank in each process, or
    where a resumed run's processes left them."""
    rank = distributed.rank()
    torch.manual_seed(run.cfg.train.seed + rank)  # dropout: another stream in each process
    optimizer = make_optimizer(run.model, run.cfg.train)
    if run.saved is not None:
        try:
            optimizer.load_state_dict(run.saved.optimizer_state)
        except (ValueError, KeyError) as exc:
            raise LrcnError(f"{run_checkpoint(out_dir, LAST)}: its optimizer state does "
                            f"not fit the model: {exc}") from None
        rngs = run.saved.progress.get("rng", [])
        if rank < len(rngs):  # its own states; a process the run did not have keeps seed + rank
            set_rng_state(rngs[rank], run.device)
        if rank:  # the loss of the epoch so far is in rank 0's sums
            run.progress.loss, run.progress.questions = 0.0, 0
        log.info("resuming %s at epoch %d/%d, step %d", out_dir, run.progress.epoch + 1,
                 run.cfg.train.epochs, run.progress.step)
    world = distributed.world_size()
    if world > 1:
        log.info("training in %d processes, %d questions each per optimizer step", world,
                 run.cfg.train.batch_size // world)
    return optimizer


def _write_run_files(run: Run, out_dir: Path, checkpointer: Checkpointer) -> None:
    """The run folder, made only once the data and model are known to be good (rank 0)."""
    if not distributed.is_main():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(run.cfg, out_dir / "config.yaml")
    if run.cfg.data.skip_invalid:
        atomic_write(out_dir / "skipped.json",
                     lambda f: f.write(json.dumps(run.data.skipped, indent=1).encode("utf-8")))
    if run.saved is not None:
        checkpointer.follow_last()


def _train_loader(run: Run) -> DataLoader:
    t = run.cfg.train
    pin_memory = run.device.type == "cuda" if t.pin_memory is None else t.pin_memory
    return batch_loader(run.train_split, len(run.data.answer_vocab), t.batch_size // t.accumulate,
                        shuffle=True, seed=t.seed * 1000, num_workers=t.num_workers,
                        group_by_image=t.group_by_image, image_group_size=t.image_group_size,
                        rank=distributed.rank(),
                        world_size=distributed.world_size(), pin_memory=pin_memory)


def _steps_per_epoch(loader: DataLoader, t: TrainConfig) -> int:
    """Optimizer steps per epoch: one per `accumulate` micro-batches, the last maybe fewer."""
    return -(-len(loader) // t.accumulate)


def _steps(loader: Iterable[dict[str, torch.Tensor]],
           accumulate: int) -> Iterator[list[dict[str, torch.Tensor]]]:
    """The loader's micro-batches in groups of `accumulate`, one group per optimizer step (the
    last group of an epoch may be smaller)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == accumulate:
            yield group
            group = []
    if group:
        yield group


def train_one_epoch(run_step: OptimizerStep, loader: DataLoader, t: TrainConfig,
                    progress: Progress, stop: StopRequest, checkpointer: Checkpointer,
                    tb: RunLog) -> float:
    """Train epoch ``progress.epoch`` of the shuffled training split from its step
    ``progress.step`` on; returns the mean loss per question over every process.

    `progress` and `tb` follow each optimizer step. The last checkpoint is saved (by every
    process together) every ``train.checkpoint_every`` steps, and before stopping at a Ctrl-C
    (TrainingInterrupted) or after ``train.max_bad_steps`` non-finite losses in a row
    (LrcnError).
    """
    rank, world = distributed.rank(), distributed.world_size()
    device = run_step.device
    set_epoch(loader, progress.epoch, progress.step * t.accumulate)  # skip the steps done
    run_step.step.train()
    real = shard_length(len(loader.dataset), rank, world)
    seen = progress.step * t.batch_size // world  # this process's questions already trained
    clock = time.perf_counter() - progress.seconds
    epoch_lr = run_step.optimizer.param_groups[0]["lr"]
    epoch = f"epoch {progress.epoch + 1}/{t.epochs}"
    bar = tqdm(_steps(loader, t.accumulate), desc=epoch, total=_steps_per_epoch(loader, t),
               initial=progress.step, leave=False, disable=None if rank == 0 else True)
    for batches in bar:
        global_step = tb.global_step(progress.epoch, progress.step)
        lr = epoch_lr * warmup_step_factor(global_step, t.warmup_steps)
        if global_step < t.warmup_steps:  # after the warm-up the epoch's lr stands
            for group in run_step.optimizer.param_groups:
                group["lr"] = lr
        keep = []
        for batch in batches:
            size = batch["tokens"].shape[0]
            keep.append(min(size, max(0, real - seen)))  # the rest pads this process's last batch
            seen += size
        loss, stepped = run_step(batches, keep)
        tb.step(global_step, loss / max(sum(keep), 1), lr)
        progress.step += 1
        progress.seconds = time.perf_counter() - clock
        if stepped:
            progress.loss += loss
            progress.questions += sum(keep)
            progress.bad_in_a_row = 0
            bar.set_postfix(loss=f"{progress.loss / max(progress.questions, 1):.3f}")
        else:
            progress.skipped += 1
            progress.bad_in_a_row += 1
            log.warning("%s, step %d: non-finite loss or gradient (loss %s), optimizer step "
                        "skipped (%d in a row)", epoch, progress.step, loss,
                        progress.bad_in_a_row)
            if t.max_bad_steps and progress.bad_in_a_row >= t.max_bad_steps:
                path = checkpointer.save_last()
                raise LrcnError(
                    f"{t.max_bad_steps} optimizer steps in a row had a non-finite loss or "
                    f"gradient (NaN or inf), the last at {epoch}, step {progress.step}: stopped "
                    f"(train.max_bad_steps); {path} holds the weights from before them. Lower "
                    "the learning rate, set train.grad_clip, or look for NaN or inf in the data")
        if distributed.any_process(stop.requested, device):
            path = checkpointer.save_last()
            raise TrainingInterrupted(
                f"saved {path} at {epoch}, step {progress.step}; continue with: "
                f"lrcn train --resume {path.parent.parent}")
        if t.checkpoint_every and progress.step % t.checkpoint_every == 0:
            checkpointer.save_last()
    loss, questions = epoch_loss_over_processes(progress, device)
    return loss / max(questions, 1)


def evaluate_split(run: Run) -> dict[str, Any]:
    """The validation metrics, from predictions all processes make together.

    Each process predicts its share of the records (rank 0's BatchNorm statistics, the saved
    ones, copied to all first); the evaluator gathers the shares in record order, so the
    metrics are the single-process ones. No metrics for a split without answers.
    """
    distributed.sync_buffers(run.model)
    evaluator = build_evaluator(dataset_metric(run.cfg.data.dataset), run.val_split.records,
                                gather=distributed.all_gather_objects)
    predict_split(run.model, run.val_split, run.data.answer_vocab, run.cfg.train.eval_batch_size,
                  run.device, evaluator, rank=distributed.rank(),
                  world_size=distributed.world_size())
    return evaluator.evaluate() if run.val_split.target_index is not None else {}


def _log_epoch(entry: dict[str, Any], t: TrainConfig, seconds: float) -> None:
    val = entry["val"]
    log.info("epoch %d/%d: loss %.4f, val accuracy %s%s (%.0f s)", entry["epoch"] + 1,
             t.epochs, entry["train_loss"], f"{val['overall']:.2f}%" if val else "n/a",
             ", answerability AP {average_precision:.2f} F1 {f1:.2f}".format(
                 **val["answerability"]) if "answerability" in val else "", seconds)


def _score(val: dict[str, Any], task: str) -> float:
    """What picks the best epoch: answer accuracy, or answerability AP for that task alone."""
    if task == "answerable":
        return val["answerability"]["average_precision"]
    return val["overall"]


def _summary(out_dir: Path, run: Run) -> dict[str, Any]:
    """What ``lrcn train`` prints: the run, the best epoch's validation metrics."""
    progress = run.progress
    best = progress.history[progress.best]
    summary = {"run_dir": str(out_dir), "epochs": run.cfg.train.epochs,
               "best_epoch": best["epoch"] + 1, "train_loss": progress.history[-1]["train_loss"],
               "skipped_steps": sum(e["skipped_steps"] for e in progress.history),
               "parameters": run.model.num_parameters()}
    if run.cfg.data.skip_invalid:
        summary["skipped"] = len(run.data.skipped)
    if run.data.glove_coverage is not None:
        summary["glove_coverage"] = round(100 * run.data.glove_coverage, 2)
    summary.update(best["val"])
    return summary
