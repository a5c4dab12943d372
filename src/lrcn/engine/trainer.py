"""The training loop: plain, readable, seeded, with the paper's optimiser and schedule."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
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

from lrcn.config import RunConfig, TrainConfig, save_config
from lrcn.data import AnswerVocab, WordVocab, load_split
from lrcn.data.images import find_unreadable
from lrcn.data.registry import dataset_metric
from lrcn.data.glove import cached_glove
from lrcn.data.batches import EncodedSplit, batch_loader, set_epoch, shard_length
from lrcn.data.records import VQASplit
from lrcn.engine import distributed
from lrcn.engine.checkpoint import Checkpoint, save_checkpoint
from lrcn.engine.evaluator import VQAEvaluator
from lrcn.fileio import atomic_write
from lrcn.engine.curves import plot_curves
from lrcn.engine.losses import ANSWER_LOSSES, task_loss
from lrcn.engine.inference import encode_for_model, model_inputs, predict_split, resolve_device
from lrcn.engine.schedule import lr_factor
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


def check_train_config(cfg: RunConfig) -> None:
    """Refuse training settings that cannot run, before any process group or file exists.

    Every process checks the same config, so under torchrun all of them stop with the same
    message instead of waiting for each other.
    """
    t = cfg.train
    for name in ("epochs", "batch_size", "eval_batch_size", "accumulate"):
        if getattr(t, name) < 1:
            raise LrcnError(f"train.{name} must be at least 1, got {getattr(t, name)}")
    if t.num_workers < 0:
        raise LrcnError(f"train.num_workers must be 0 or more, got {t.num_workers}")
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
        out = self.model.forward_all(**model_inputs(self.model, batch, self.device))
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
               keep: list[int] | None = None) -> float:
    """One optimiser step over micro-batches from `batch_loader`; returns the summed loss.

    Each micro-batch (its first ``keep[i]`` questions; all without `keep`) is forwarded and
    backwarded in turn, so the gradients add up to the gradient of their summed loss, then
    the optimiser steps once. `step` comes from `training_step`. Under DDP the loss is scaled
    by the number of processes, since DDP averages their gradients: the result is the
    gradient of the loss summed over every process's questions, as one process computes it.
    """
    optimizer.zero_grad(set_to_none=True)
    world = distributed.world_size()
    device = next(step.parameters()).device
    total = 0.0
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        sync = nullcontext() if last or world == 1 else step.no_sync()  # all-reduce once
        with sync:
            with autocast(device, t.precision):
                loss = step(batch, batch["tokens"].shape[0] if keep is None else keep[i])
            (loss * world).backward()
        total += loss.item()
    if t.grad_clip:
        torch.nn.utils.clip_grad_norm_(step.parameters(), t.grad_clip)
    optimizer.step()
    return total


def train_one_epoch(step: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    t: TrainConfig, epoch: int) -> float:
    """One pass over the shuffled training split; returns the mean loss per question over
    every process."""
    set_epoch(loader, epoch)
    step.train()
    rank = distributed.rank()
    real = shard_length(len(loader.dataset), rank, distributed.world_size())
    seen, total, count = 0, 0.0, 0
    batches: list[dict[str, torch.Tensor]] = []
    keep: list[int] = []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
               disable=None if rank == 0 else True)
    for batch in bar:
        size = batch["tokens"].shape[0]
        batches.append(batch)
        keep.append(min(size, max(0, real - seen)))  # the rest pads this process's last batch
        seen += size
        if len(batches) == t.accumulate:
            total += train_step(step, batches, optimizer, t, keep)
            count += sum(keep)
            batches, keep = [], []
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}")
    if batches:  # the last, smaller step of the epoch
        total += train_step(step, batches, optimizer, t, keep)
        count += sum(keep)
    device = next(step.parameters()).device
    sums = distributed.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64,
                                                   device=device))
    return sums[0].item() / max(sums[1].item(), 1)


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


def train(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Train, evaluate every epoch, keep best and last checkpoints; return the summary.

    Under torchrun every process runs this with the same `out_dir`; they train one model
    together (DDP, each on its share of every batch) and only rank 0 writes files.
    """
    check_train_config(cfg)
    if (out_dir / "checkpoints").exists() or (out_dir / "metrics.jsonl").exists():
        raise LrcnError(f"{out_dir} already holds a training run; choose another --out")
    t = cfg.train
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    seed_everything(t.seed)  # the same initial weights in every process
    device = distributed.local_device(resolve_device(t.device))
    data = prepare_data(cfg, glove_cache=out_dir.parent / GLOVE_CACHE_DIR)
    num_answers = len(data.answer_vocab)
    model = create_model(cfg.model, len(data.word_vocab), num_answers, data.word_vectors).to(device)
    log.info("model %s-%s, %.2f M parameters (excluding word embeddings)", cfg.model.arch,
             cfg.model.variant, model.net.num_parameters() / 1e6)
    train_split = encode_for_model(data.train, data.word_vocab, data.answer_vocab, cfg.data,
                                   model, device)
    if model.task != "answer" and train_split.answerable is None:
        raise LrcnError(f"model.task {model.task} needs answerability labels, and training split "
                        f"{data.train.name!r} of dataset {cfg.data.dataset} has none (VizWiz has)")
    metric = dataset_metric(cfg.data.dataset)
    val_split = None
    if data.val is not None:
        val_split = encode_for_model(data.val, data.word_vocab, data.answer_vocab, cfg.data,
                                     model, device)
    step = training_step(model, t, device)  # with DDP: every process is here, past its checks
    torch.manual_seed(t.seed + rank)  # dropout: another stream in each process
    if world > 1:
        log.info("training in %d processes, %d questions each per optimizer step", world,
                 t.batch_size // world)
    # The run folder is made only once the data and model are known to be good.
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        if cfg.data.skip_invalid:
            atomic_write(out_dir / "skipped.json",
                         lambda f: f.write(json.dumps(data.skipped, indent=1).encode("utf-8")))

    optimizer = make_optimizer(model, t)
    pin_memory = device.type == "cuda" if t.pin_memory is None else t.pin_memory
    loader = batch_loader(train_split, num_answers, t.batch_size // t.accumulate, shuffle=True,
                          seed=t.seed * 1000, num_workers=t.num_workers,
                          group_by_image=t.group_by_image, rank=rank, world_size=world,
                          pin_memory=pin_memory)
    ckpt_dir = out_dir / "checkpoints"
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    metrics_path = out_dir / "metrics.jsonl"
    for epoch in range(t.epochs):
        lr = t.lr * lr_factor(epoch, t.warmup_epochs, t.decay_epochs, t.decay_rate)
        for group in optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        train_loss = train_one_epoch(step, loader, optimizer, t, epoch)
        train_time = time.perf_counter() - start
        val = {}
        if val_split is not None:
            evaluator = evaluate_split(model, val_split, data.answer_vocab, t, device, metric)
            if val_split.target_index is not None:
                val = evaluator.evaluate()
        entry = {"epoch": epoch, "lr": lr, "train_loss": train_loss,
                 "train_seconds": round(train_time, 2),
                 "eval_seconds": round(time.perf_counter() - start - train_time, 2), "val": val}
        history.append(entry)
        log.info("epoch %d/%d: loss %.4f, val accuracy %s%s (%.0f s)", epoch + 1, t.epochs,
                 train_loss, f"{val['overall']:.2f}%" if val else "n/a",
                 ", answerability AP {average_precision:.2f} F1 {f1:.2f}".format(
                     **val["answerability"]) if "answerability" in val else "", train_time)
        is_best = bool(val) and (best is None or _score(val, model.task) > _score(best["val"],
                                                                                  model.task))
        if is_best or not val:
            best = entry
        if main:
            _append_jsonl(metrics_path, entry)
            ckpt = Checkpoint(cfg, data.word_vocab, data.answer_vocab, model.state_dict(), epoch,
                              entry)
            if best is entry:
                save_checkpoint(ckpt_dir / "best.pt", ckpt)
            ckpt.optimizer_state = optimizer.state_dict()
            save_checkpoint(ckpt_dir / "last.pt", ckpt)
            plot_curves(history, out_dir / "curves.png")

    summary = {"run_dir": str(out_dir), "epochs": t.epochs, "best_epoch": best["epoch"] + 1,
               "train_loss": history[-1]["train_loss"], "parameters": model.num_parameters()}
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


def _append_jsonl(path: Path, entry: dict[str, Any]) -> None:
    """Append one line, rewriting the file atomically so it is never seen half-written."""
    old = path.read_bytes() if path.exists() else b""
    atomic_write(path, lambda f: f.write(old + (json.dumps(entry) + "\n").encode("utf-8")))
