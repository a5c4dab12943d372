"""The training loop: plain, seeded, resumable, with the paper's optimiser and schedule."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from lrcn.config import RunConfig, TrainConfig, changed_fields, save_config
from lrcn.data import AnswerVocab, WordVocab, check_images, load_split
from lrcn.data.images import find_unreadable
from lrcn.data.registry import dataset_metric
from lrcn.data.glove import cached_glove
from lrcn.data.batches import EncodedSplit, batch_loader, set_epoch, shard_length
from lrcn.data.records import VQASplit
from lrcn.engine import distributed
from lrcn.engine.checkpoint import Checkpoint, load_checkpoint, load_weights, save_checkpoint
from lrcn.engine.evaluator import VQAEvaluator
from lrcn.fileio import atomic_write, remove_unfinished_writes
from lrcn.engine.curves import plot_curves
from lrcn.engine.memory import keep_freed_memory
from lrcn.engine.losses import ANSWER_LOSSES, task_loss
from lrcn.data.pipeline import encode_for_model, model_inputs
from lrcn.engine.inference import predict_split, resolve_device
from lrcn.config.schedule import (
    describe_schedule, epochs_for_samples, image_passes_per_epoch, lr_per_epoch,
)
from lrcn.errors import LrcnError
from lrcn.features.grids import open_stores
from lrcn.models import VQAModel, create_model
from lrcn.models.vqa_model import VQAOutput

log = logging.getLogger(__name__)

GLOVE_CACHE_DIR = ".glove_cache"  # beside the run folders: runs/.glove_cache/
PRECISIONS = ("fp32", "bf16")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunData:
    """The splits of a run and what is built from them before the model exists."""

    train: VQASplit
    val: VQASplit | None
    word_vocab: WordVocab
    answer_vocab: AnswerVocab
    word_vectors: torch.Tensor | None
    glove_coverage: float | None = None
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # --skip-invalid


def prepare_data(cfg: RunConfig, glove_cache: Path | None = None) -> RunData:
    """Read the splits, build the vocabularies (and GloVe vectors), check feature stores.

    The answer vocabulary comes from ``data.answer_vocab_splits`` when set (MCAN/TRAR/LRCN:
    train2014+val2014 with answer_min_count 9), else from the training split. A model that
    reads feature stores takes its input channel count from them.
    """
    d = cfg.data
    parts: dict[str, VQASplit] = {}  # each split file is read once, whatever combinations use it
    train_split = load_split(d.dataset, d.data_root, d.train_split, parts)
    val_split = load_split(d.dataset, d.data_root, d.val_split, parts) if d.val_split else None
    # New split objects: the cached parts may be shared with the vocabulary's splits.
    train_split = dataclasses.replace(train_split, records=train_split.records[: d.train_limit])
    if val_split is not None:
        val_split = dataclasses.replace(val_split, records=val_split.records[: d.val_limit])
        if set(d.val_split.split("+")) & set(d.train_split.split("+")):
            log.warning("the validation split %s overlaps the training split %s: its accuracy "
                        "says nothing about unseen data", d.val_split, d.train_split)
    if not train_split.has_answers:
        raise LrcnError(f"training split {d.train_split!r} has no answers")
    skipped: list[dict[str, Any]] = []
    if d.skip_invalid and cfg.model.image_encoder != "features":
        train_split = drop_unreadable_images(train_split, skipped)
        if val_split is not None:
            val_split = drop_unreadable_images(val_split, skipped)
    if d.answer_vocab_splits and d.answer_vocab_splits != d.train_split:
        vocab_records = load_split(d.dataset, d.data_root, d.answer_vocab_splits, parts).records
    else:
        vocab_records = train_split.records
    word_vocab = WordVocab.build([r.question for r in train_split.records], d.min_word_count)
    answer_vocab = AnswerVocab.build(vocab_records, d.answer_min_count, d.answer_max_size)
    word_vectors = coverage = None
    if d.glove:
        word_vectors, coverage = cached_glove(d.glove, word_vocab, glove_cache)
        if word_vectors.shape[1] != cfg.model.word_dim:
            log.info("word_dim set to %d, the size of the GloVe vectors", word_vectors.shape[1])
            cfg.model.word_dim = word_vectors.shape[1]
        log.info("GloVe %s covers %.1f%% of %d words", d.glove, 100 * coverage, len(word_vocab) - 2)
    if cfg.model.image_encoder == "features":
        channels = open_stores(d.features)[0].channels
        if channels != cfg.model.feature_channels:
            log.info("model.feature_channels set to %d, the channels of the feature stores", channels)
            cfg.model.feature_channels = channels
    elif d.features:
        raise LrcnError("data.features is set but model.image_encoder is "
                        f"{cfg.model.image_encoder!r}; set model.image_encoder: features")
    log.info("%s: %d questions, %s: %s questions; %d words, %d answers (from %s)",
             train_split.name, len(train_split.records), d.val_split,
             len(val_split.records) if val_split else "no", len(word_vocab), len(answer_vocab),
             d.answer_vocab_splits or d.train_split)
    return RunData(train_split, val_split, word_vocab, answer_vocab, word_vectors, coverage,
                   skipped)


def drop_unreadable_images(split: VQASplit, skipped: list[dict[str, Any]]) -> VQASplit:
    """The split without the records whose image is missing or unreadable (``--skip-invalid``);
    each dropped record is appended to `skipped` and counted in the log."""
    keys = sorted({r.image_key for r in split.records})
    bad = find_unreadable([split.image_path(k) for k in keys])
    if not bad:
        return split
    reason = {str(path): why for path, why in bad.items()}
    kept = []
    for record in split.records:
        why = reason.get(str(split.image_path(record.image_key)))
        if why is None:
            kept.append(record)
        else:
            skipped.append({"split": split.name, "question_id": record.question_id,
                            "image": record.image_key, "reason": why})
    log.warning("split %s: skipped %d questions about %d unreadable images (--skip-invalid; "
                "listed in the run's skipped.json), first: %s", split.name,
                len(split.records) - len(kept), len(bad), next(iter(reason.values())))
    if not kept:
        raise LrcnError(f"split {split.name}: every image is missing or unreadable")
    return dataclasses.replace(split, records=kept)


def check_train_config(cfg: RunConfig, resume: bool = False) -> None:
    """Refuse training settings that cannot run, before any process group or file exists.

    Every process checks the same config, so under torchrun all of them stop with the same
    message instead of waiting for each other. The schedule must fit the epochs of a run that
    starts; a `resume`d run keeps its saved schedule as it is (it may not change it).
    """
    t = cfg.train
    for name in ("epochs", "batch_size", "eval_batch_size", "accumulate"):
        if getattr(t, name) < 1:
            raise LrcnError(f"train.{name} must be at least 1, got {getattr(t, name)}")
    if t.samples is not None and t.samples < 1:
        raise LrcnError(f"train.samples must be at least 1 (or null), got {t.samples}")
    for name in ("num_workers", "checkpoint_every", "max_bad_steps", "warmup_epochs"):
        if getattr(t, name) < 0:
            raise LrcnError(f"train.{name} must be 0 or more, got {getattr(t, name)}")
    if not resume:  # a resumed run keeps its saved schedule, which it may not change
        if t.warmup_epochs >= t.epochs:
            raise LrcnError(f"train.warmup_epochs {t.warmup_epochs} must be less than "
                            f"train.epochs {t.epochs}: the run would end before its learning "
                            "rate reaches train.lr")
        late = [e for e in t.decay_epochs if e >= t.epochs]
        if late:
            raise LrcnError(f"train.decay_epochs {t.decay_epochs}: decay epoch(s) {late} never "
                            f"take effect in a run of {t.epochs} epochs (decay epoch e lowers the "
                            "lr from the (e+1)-th epoch on); set them below train.epochs or "
                            "remove them")
    if t.answer_loss not in ANSWER_LOSSES:
        raise LrcnError(f"train.answer_loss must be one of {', '.join(ANSWER_LOSSES)}, "
                        f"got {t.answer_loss!r}")
    world = distributed.launched_world_size()
    if t.batch_size % (t.accumulate * world):
        raise LrcnError(
            f"train.batch_size {t.batch_size} must be divisible by train.accumulate "
            f"({t.accumulate}) x the number of processes ({world}): each optimizer step's batch "
            f"is split into {t.accumulate * world} equal micro-batches")
    if t.group_by_image and world > 1:
        raise LrcnError("train.group_by_image cannot be used with several processes (torchrun): "
                        "it keeps an image's questions in one batch, which the processes split")
    device = resolve_device(t.device)
    if t.precision not in PRECISIONS:
        raise LrcnError(f"train.precision must be one of {', '.join(PRECISIONS)}, "
                        f"got {t.precision!r}")
    if t.precision == "bf16" and not bf16_supported(device):
        what = (f"the GPU ({torch.cuda.get_device_name()})" if device.type == "cuda"
                else "this CPU (no oneDNN bfloat16 kernels: it needs AVX-512 or AMX)")
        raise LrcnError(f"--precision bf16: {what} does not support bfloat16; "
                        "use --precision fp32")


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively (torch's own queries: an Ampere or newer
    GPU; on the CPU, oneDNN's bfloat16 kernels)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class TrainingStep(nn.Module):
    """The model's forward and loss on one batch: what torch.compile compiles and DDP wraps.

    The VQAModel inside stays an eager module: evaluation runs it directly and checkpoints
    save its state dict (keys without ``_orig_mod.`` or ``module.``).
    """

    def __init__(self, model: VQAModel, t: TrainConfig, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.answer_loss = t.answer_loss
        self.answerable_weight = t.answerable_weight
        self.device = device

    def forward(self, batch: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
        """The summed loss of the first `keep` questions of a batch from `batch_loader` (the
        others pad the last batch of a process)."""
        out = self.model.forward_all(**model_inputs(batch, self.device))
        if keep < out.answer.shape[0]:
            out = VQAOutput(out.answer[:keep], None if out.answerable is None
                            else out.answerable[:keep], out.image_weights, out.question_weights)
            batch = {k: v[:keep] for k, v in batch.items() if k in ("target", "answerable")}
        return task_loss(out, batch, self.model.task, self.answer_loss, self.answerable_weight)


def training_step(model: VQAModel, t: TrainConfig, device: torch.device) -> nn.Module:
    """`TrainingStep`, compiled with ``train.compile``, wrapped in DDP with several processes.

    DDP wraps the compiled module (not the reverse), so its ``no_sync`` between the
    micro-batches of a step and its gradient hooks work as in eager mode.
    """
    step: nn.Module = TrainingStep(model, t, device)
    if t.compile:
        step = torch.compile(step)
    if distributed.world_size() > 1:
        step = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda"
                                       else None)
    return step


def make_optimizer(model: VQAModel, t: TrainConfig) -> torch.optim.Optimizer:
    """The paper's Adam over the trainable parameters (lr is set per epoch by the schedule):
    torch's fused kernel where it has one for the parameters' device, else foreach."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in _get_fused_kernels_supported_devices() for p in trainable)
    return torch.optim.Adam(trainable, lr=t.lr, betas=t.betas, eps=t.eps,
                            weight_decay=t.weight_decay, fused=fused or None,
                            foreach=None if fused else True)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast for the forward pass and loss; nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step(step: nn.Module, batches: list[dict[str, torch.Tensor]],
               optimizer: torch.optim.Optimizer, t: TrainConfig,
               keep: list[int] | None = None) -> tuple[float, bool]:
    """One optimiser step over micro-batches from `batch_loader`; returns the summed loss and
    whether the optimiser stepped.

    Each micro-batch (its first ``keep[i]`` questions; all without `keep`) is forwarded and
    backwarded in turn, so the gradients add up to the gradient of their summed loss, then
    the optimiser steps once. `step` comes from `training_step`. Under DDP the loss is scaled
    by the number of processes, since DDP averages their gradients: the result is the
    gradient of the loss summed over every process's questions, as one process computes it.

    A non-finite loss (NaN or inf) in any process, or a non-finite gradient norm with
    ``train.grad_clip``, skips the step in every process: no weight or Adam state changes.
    """
    optimizer.zero_grad(set_to_none=True)
    world = distributed.world_size()
    device = next(step.parameters()).device
    summed = torch.zeros((), dtype=torch.float64, device=device)  # read once: no sync per batch
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        sync = nullcontext() if last or world == 1 else step.no_sync()  # all-reduce once
        with sync:
            with autocast(device, t.precision):
                loss = step(batch, batch["tokens"].shape[0] if keep is None else keep[i])
            (loss * world).backward()
        summed += loss.detach().double()
    total = summed.item()
    finite = math.isfinite(total)
    if t.grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(step.parameters(), t.grad_clip)
        finite = finite and bool(torch.isfinite(norm))
    if distributed.any_process(not finite, device):
        return total, False
    optimizer.step()
    return total, True


@dataclass
class Progress:
    """Where a run stands: what last.pt saves (as plain values) and a resumed run restores.

    The position is the optimizer steps done in the epoch being trained; the next batch is
    found from it, since the data order depends only on the seed and the epoch.
    """

    epoch: int = 0                 # the epoch being trained, 0-based (= epochs once finished)
    step: int = 0                  # optimizer steps done in it, skipped ones included
    loss: float = 0.0              # summed training loss of the epoch so far (this process's;
    questions: int = 0             # ...all processes' in last.pt) and its number of questions
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


def save_last(path: Path, cfg: RunConfig, data: RunData, model: VQAModel,
              optimizer: torch.optim.Optimizer, progress: Progress, device: torch.device) -> Path:
    """Write last.pt: the weights, the Adam state and `progress` with every process's random
    states and the loss summed over processes. Every process calls it together; rank 0 writes."""
    rngs = distributed.all_gather_objects(rng_state(device))
    loss, questions = _epoch_loss_over_processes(progress, device)
    if distributed.is_main():
        state = {**dataclasses.asdict(progress), "loss": loss, "questions": questions,
                 "rng": rngs}
        epoch = progress.epoch if progress.step else max(progress.epoch - 1, 0)  # the weights'
        save_checkpoint(path, Checkpoint(
            cfg, data.word_vocab, data.answer_vocab, model.state_dict(), epoch,
            progress.history[-1] if progress.history else {}, optimizer.state_dict(), state))
    return path


def _epoch_loss_over_processes(progress: Progress, device: torch.device) -> tuple[float, int]:
    """The epoch's summed training loss and its number of questions, over every process."""
    sums = distributed.all_reduce_sum(torch.tensor([progress.loss, progress.questions],
                                                   dtype=torch.float64, device=device))
    return sums[0].item(), int(sums[1].item())


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what was saved and how to resume."""


class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM during training, as a request to stop after the current step.

    The first SIGINT only sets `requested`: the loop saves last.pt after the step (or after
    the epoch's evaluation) and stops. A second one stops at once without saving, in a single
    process; under torchrun every process gets SIGINT from the terminal and again from
    torchrun, so repeats are ignored there. Python delivers signals to the main thread only:
    elsewhere nothing is installed and Ctrl-C is a plain KeyboardInterrupt.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)  # SIGTERM: what job schedulers send first

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and distributed.launched_world_size() == 1:
            raise KeyboardInterrupt
        if not self.requested and distributed.is_main():
            log.warning("interrupted: saving a checkpoint after this step "
                        "(Ctrl-C again to stop at once, without saving)")
        self.requested = True


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


def train_one_epoch(step: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    t: TrainConfig, progress: Progress, stop: StopRequest,
                    save: Callable[[], Path]) -> float:
    """Train epoch ``progress.epoch`` of the shuffled training split from its step
    ``progress.step`` on; returns the mean loss per question over every process.

    `progress` follows each optimizer step. ``save()`` writes last.pt (every process calls it
    at the same steps): every ``train.checkpoint_every`` steps, and before stopping at a
    Ctrl-C (TrainingInterrupted) or after ``train.max_bad_steps`` non-finite losses in a row
    (LrcnError).
    """
    rank, world = distributed.rank(), distributed.world_size()
    device = next(step.parameters()).device
    set_epoch(loader, progress.epoch, progress.step * t.accumulate)  # skip the steps done
    step.train()
    real = shard_length(len(loader.dataset), rank, world)
    seen = progress.step * t.batch_size // world  # this process's questions already trained
    clock = time.perf_counter() - progress.seconds
    epoch = f"epoch {progress.epoch + 1}/{t.epochs}"
    bar = tqdm(_steps(loader, t.accumulate), desc=epoch, total=-(-len(loader) // t.accumulate),
               initial=progress.step, leave=False, disable=None if rank == 0 else True)
    for batches in bar:
        keep = []
        for batch in batches:
            size = batch["tokens"].shape[0]
            keep.append(min(size, max(0, real - seen)))  # the rest pads this process's last batch
            seen += size
        loss, stepped = train_step(step, batches, optimizer, t, keep)
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
                path = save()
                raise LrcnError(
                    f"{t.max_bad_steps} optimizer steps in a row had a non-finite loss or "
                    f"gradient (NaN or inf), the last at {epoch}, step {progress.step}: stopped "
                    f"(train.max_bad_steps); {path} holds the weights from before them. Lower "
                    "the learning rate, set train.grad_clip, or look for NaN or inf in the data")
        if distributed.any_process(stop.requested, device):
            path = save()
            raise TrainingInterrupted(
                f"saved {path} at {epoch}, step {progress.step}; continue with: "
                f"lrcn train --resume {path.parent.parent}")
        if t.checkpoint_every and progress.step % t.checkpoint_every == 0:
            save()
    loss, questions = _epoch_loss_over_processes(progress, device)
    return loss / max(questions, 1)


def evaluate_split(model: VQAModel, split: EncodedSplit, answer_vocab: AnswerVocab,
                   t: TrainConfig, device: torch.device, metric: str) -> VQAEvaluator:
    """Predictions for every record of a split, made by all processes together.

    Each process predicts its share of the records (rank 0's BatchNorm statistics, the saved
    ones, copied to all first) and the shares are gathered into every process's evaluator
    in record order, as one process makes them; the metrics are then the single-process ones.
    """
    distributed.sync_buffers(model)
    evaluator = predict_split(model, split, answer_vocab, t.eval_batch_size, device,
                              metric=metric, rank=distributed.rank(),
                              world_size=distributed.world_size())
    if distributed.world_size() > 1:
        shares = distributed.all_gather_objects((evaluator.predictions, evaluator.answerable))
        evaluator.predictions = dict(sorted(p for share, _ in shares for p in share.items()))
        evaluator.answerable = dict(sorted(a for _, share in shares for a in share.items()))
    return evaluator


# Fields a resumed run may change: they change neither what is computed nor the data (whose
# location may move: data_root, features, glove, as long as they stay set or unset).
RESUMABLE_CHANGES = ("train.epochs", "train.samples", "train.device", "train.num_workers", "train.pin_memory",
                     "train.eval_batch_size", "train.compile", "train.accumulate",
                     "train.checkpoint_every", "train.max_bad_steps", "train.keep_freed_memory",
                     "data.cache_images",
                     "data.image_cache_gb")
MOVABLE = ("data.data_root", "data.features", "data.glove")


def resume_checkpoint(cfg: RunConfig, out_dir: Path) -> tuple[Checkpoint | None, Progress]:
    """The last checkpoint of the run in `out_dir` and its progress, once `cfg` is known to
    continue it; no checkpoint when the run saved none yet (it then starts from the start)."""
    path = out_dir / "checkpoints" / "last.pt"
    if not (out_dir / "config.yaml").is_file():
        raise LrcnError(f"no run to resume in {out_dir}: it has no config.yaml")
    if not path.is_file():
        log.warning("%s holds no checkpoint yet: training it from the start", out_dir)
        return None, Progress()
    ckpt = load_checkpoint(path)
    if ckpt.progress is None or ckpt.optimizer_state is None:
        raise LrcnError(f"{path} holds no training progress (written by an older lrcn?): "
                        "it cannot be resumed")
    for name, old, new in changed_fields(ckpt.config, cfg):
        if name not in RESUMABLE_CHANGES and not (name in MOVABLE and bool(old) == bool(new)):
            raise LrcnError(f"cannot resume {out_dir} with {name} = {new!r}: the run was "
                            f"trained with {old!r} (a resumed run may change only "
                            f"{', '.join(RESUMABLE_CHANGES)}, and move its data)")
    progress = Progress.from_checkpoint(ckpt, path)
    if distributed.is_main():  # a killed run may have left a write unfinished
        for stale in remove_unfinished_writes(out_dir):
            log.info("removed %s, left by an interrupted write", stale)
    least = progress.epoch + (progress.step > 0)
    if cfg.train.epochs < least:
        raise LrcnError(f"cannot resume {out_dir} with train.epochs = {cfg.train.epochs}: the "
                        f"run has trained {least} epoch(s) already, in part or whole")
    return ckpt, progress


def train(cfg: RunConfig, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate every epoch, keep best and last checkpoints; return the summary.

    With `resume`, continue the run in `out_dir` from its last.pt where it stopped, as if it
    had not: the same weights, metrics and best epoch (`Progress`, `RESUMABLE_CHANGES`).
    Under torchrun every process runs this with the same `out_dir`; they train one model
    together (DDP, each on its share of every batch) and only rank 0 writes files.
    """
    check_train_config(cfg, resume)
    saved, progress = None, Progress()
    if resume:
        saved, progress = resume_checkpoint(cfg, out_dir)
    elif (out_dir / "checkpoints").exists() or (out_dir / "metrics.jsonl").exists():
        raise LrcnError(f"{out_dir} already holds a training run; choose another --out, or "
                        f"continue it with --resume {out_dir}")
    t = cfg.train
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    seed_everything(t.seed)  # the same initial weights in every process
    device = distributed.local_device(resolve_device(t.device))
    if device.type == "cpu" and t.keep_freed_memory:
        keep_freed_memory()  # large CPU activations reuse freed memory instead of page faults
    data = prepare_data(cfg, glove_cache=out_dir.parent / GLOVE_CACHE_DIR)
    num_answers = len(data.answer_vocab)
    model = create_model(cfg.model, len(data.word_vocab), num_answers, data.word_vectors).to(device)
    if not resume:  # a resumed run has its epochs already
        records = data.train.records
        epochs_for_samples(t, len(records), image_passes_per_epoch(
            len(records), len({r.image_key for r in records}), grouped=t.group_by_image,
            pixels=model.net.uses_image and cfg.model.image_encoder != "features"))
    lrs = lr_per_epoch(t)  # also in config.yaml (save_config)
    log.info("lr schedule: %s", describe_schedule(lrs))
    log.info("model %s-%s, %.2f M parameters (excluding word embeddings)", cfg.model.arch,
             cfg.model.variant, model.net.num_parameters() / 1e6)
    if saved is not None:
        if (data.word_vocab.to_dict(), data.answer_vocab.to_dict()) != (
                saved.word_vocab.to_dict(), saved.answer_vocab.to_dict()):
            raise LrcnError(f"cannot resume {out_dir}: its data now gives other word or answer "
                            "vocabularies than the run was trained with (the data changed)")
        load_weights(model, saved.model_state, out_dir / "checkpoints" / "last.pt")
        if progress.epoch >= t.epochs:
            log.info("%s has trained all its %d epochs: nothing to do (raise --epochs to train "
                     "longer)", out_dir, t.epochs)
            return _summary(out_dir, cfg, data, model, progress)
        log.info("resuming %s at epoch %d/%d, step %d", out_dir, progress.epoch + 1, t.epochs,
                 progress.step)
    if model.net.uses_image and model.encoder is not None and not cfg.data.skip_invalid:
        for split in (data.train, data.val):  # decoded per batch, one missing is found late
            if split is not None:
                check_images(split)
    train_split = encode_for_model(data.train, data.word_vocab, data.answer_vocab, cfg.data,
                                   model.image_input(), device)
    if model.task != "answer" and train_split.answerable is None:
        raise LrcnError(f"model.task {model.task} needs answerability labels, and training split "
                        f"{data.train.name!r} of dataset {cfg.data.dataset} has none (VizWiz has)")
    metric = dataset_metric(cfg.data.dataset)
    val_split = None
    if data.val is not None:
        val_split = encode_for_model(data.val, data.word_vocab, data.answer_vocab, cfg.data,
                                     model.image_input(), device)
    step = training_step(model, t, device)  # with DDP: every process is here, past its checks
    torch.manual_seed(t.seed + rank)  # dropout: another stream in each process
    optimizer = make_optimizer(model, t)
    if saved is not None:
        try:
            optimizer.load_state_dict(saved.optimizer_state)
        except (ValueError, KeyError) as exc:
            raise LrcnError(f"{out_dir / 'checkpoints' / 'last.pt'}: its optimizer state does "
                            f"not fit the model: {exc}") from None
        rngs = saved.progress.get("rng", [])
        if rank < len(rngs):  # its own states; a process the run did not have keeps seed + rank
            set_rng_state(rngs[rank], device)
        if rank:  # the loss of the epoch so far is in rank 0's sums
            progress.loss, progress.questions = 0.0, 0
    if world > 1:
        log.info("training in %d processes, %d questions each per optimizer step", world,
                 t.batch_size // world)
    ckpt_dir = out_dir / "checkpoints"
    metrics_path = out_dir / "metrics.jsonl"
    # The run folder is made only once the data and model are known to be good.
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        if cfg.data.skip_invalid:
            atomic_write(out_dir / "skipped.json",
                         lambda f: f.write(json.dumps(data.skipped, indent=1).encode("utf-8")))
        if saved is not None:
            # Killed between the writes of an epoch's end, metrics.jsonl may be a line ahead
            # of last.pt, and best.pt an epoch behind: both follow last.pt again.
            _write_jsonl(metrics_path, progress.history)
            if progress.step == 0 and progress.best == len(progress.history) - 1:
                _save_best(ckpt_dir / "best.pt", cfg, data, model, progress)

    pin_memory = device.type == "cuda" if t.pin_memory is None else t.pin_memory
    loader = batch_loader(train_split, num_answers, t.batch_size // t.accumulate, shuffle=True,
                          seed=t.seed * 1000, num_workers=t.num_workers,
                          group_by_image=t.group_by_image, rank=rank, world_size=world,
                          pin_memory=pin_memory)
    save = functools.partial(save_last, ckpt_dir / "last.pt", cfg, data, model, optimizer,
                             progress, device)
    with StopRequest() as stop:
        try:
            while progress.epoch < t.epochs:
                epoch = progress.epoch
                lr = lrs[epoch]
                for group in optimizer.param_groups:
                    group["lr"] = lr
                train_loss = train_one_epoch(step, loader, optimizer, t, progress, stop, save)
                start = time.perf_counter()
                val = {}
                if val_split is not None:
                    evaluator = evaluate_split(model, val_split, data.answer_vocab, t, device,
                                               metric)
                    if val_split.target_index is not None:
                        val = evaluator.evaluate()
                entry = {"epoch": epoch, "lr": lr, "train_loss": train_loss,
                         "skipped_steps": progress.skipped,
                         "train_seconds": round(progress.seconds, 2),
                         "eval_seconds": round(time.perf_counter() - start, 2), "val": val}
                log.info("epoch %d/%d: loss %.4f, val accuracy %s%s (%.0f s)", epoch + 1,
                         t.epochs, train_loss, f"{val['overall']:.2f}%" if val else "n/a",
                         ", answerability AP {average_precision:.2f} F1 {f1:.2f}".format(
                             **val["answerability"]) if "answerability" in val else "",
                         progress.seconds)
                best = progress.history[progress.best] if progress.best is not None else None
                progress.end_epoch(entry, not val or best is None
                                   or _score(val, model.task) > _score(best["val"], model.task))
                if main:
                    _write_jsonl(metrics_path, progress.history)
                path = save()  # before best.pt: see the resume above
                if main:
                    if progress.best == epoch:
                        _save_best(ckpt_dir / "best.pt", cfg, data, model, progress)
                    plot_curves(progress.history, out_dir / "curves.png")
                if distributed.any_process(stop.requested, device):
                    raise TrainingInterrupted(f"saved {path} at the end of epoch {epoch + 1}; "
                                              f"continue with: lrcn train --resume {out_dir}")
        except KeyboardInterrupt as exc:
            if isinstance(exc, TrainingInterrupted):
                raise
            raise TrainingInterrupted(
                "stopped at once, without saving; continue from the last checkpoint with: "
                f"lrcn train --resume {out_dir}") from None
    return _summary(out_dir, cfg, data, model, progress)


def _save_best(path: Path, cfg: RunConfig, data: RunData, model: VQAModel,
               progress: Progress) -> None:
    """best.pt: the weights of the best epoch, which are the model's now, and its metrics."""
    entry = progress.history[progress.best]
    save_checkpoint(path, Checkpoint(cfg, data.word_vocab, data.answer_vocab, model.state_dict(),
                                     entry["epoch"], entry))


def _summary(out_dir: Path, cfg: RunConfig, data: RunData, model: VQAModel,
             progress: Progress) -> dict[str, Any]:
    """What ``lrcn train`` prints: the run, the best epoch's validation metrics."""
    best = progress.history[progress.best]
    summary = {"run_dir": str(out_dir), "epochs": cfg.train.epochs,
               "best_epoch": best["epoch"] + 1, "train_loss": progress.history[-1]["train_loss"],
               "skipped_steps": sum(e["skipped_steps"] for e in progress.history),
               "parameters": model.num_parameters()}
    if cfg.data.skip_invalid:
        summary["skipped"] = len(data.skipped)
    if data.glove_coverage is not None:
        summary["glove_coverage"] = round(100 * data.glove_coverage, 2)
    summary.update(best["val"])
    return summary


def _score(val: dict[str, Any], task: str) -> float:
    """What picks the best epoch: answer accuracy, or answerability AP for that task alone."""
    if task == "answerable":
        return val["answerability"]["average_precision"]
    return val["overall"]


def _write_jsonl(path: Path, entries: list[dict[str, Any]]) -> None:
    """One JSON line per entry, written atomically so the file is never seen half-written."""
    text = "".join(json.dumps(entry) + "\n" for entry in entries)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
