"""Everything a training run needs before its first step, resolved and checked.

`check_train_config` refuses a config that cannot run here, before any process group or file
exists; `prepare_data` reads the data and builds the vocabularies; `setup_run` builds the
model and the encoded splits and returns them with a resolved copy of the config (the caller's
config is never changed). A run started from another run's weights (``train.init``,
``lrcn train --init SRC``) takes that run's vocabularies and weights (`load_init_source`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrcn.config import DataConfig, ModelConfig, RunConfig
from lrcn.config.schedule import (
    describe_schedule, epochs_for_samples, image_passes_per_epoch, lr_per_epoch,
)
from lrcn.data import (
    AnswerVocab, WordVocab, check_images, load_split, tokenize, training_answer,
)
from lrcn.data.batches import EncodedSplit
from lrcn.data.glove import cached_glove
from lrcn.data.images import find_unreadable
from lrcn.data.openvqa import openvqa_word_vocab
from lrcn.data.pipeline import encode_for_model
from lrcn.data.records import VQASplit
from lrcn.engine import distributed
from lrcn.engine.checkpoint import (
    LAST, Checkpoint, load_checkpoint, load_weights, resolve_checkpoint, run_checkpoint,
)
from lrcn.engine.checkpointer import Progress, resume_checkpoint
from lrcn.engine.inference import resolve_device
from lrcn.engine.memory import keep_freed_memory
from lrcn.errors import LrcnError
from lrcn.features.grids import open_stores
from lrcn.models import VQAModel, create_model

log = logging.getLogger(__name__)

GLOVE_CACHE_DIR = ".glove_cache"  # beside the run folders: runs/.glove_cache/


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: an Ampere or newer GPU; on the CPU,
    AVX-512 (oneDNN's bfloat16 kernels need it), as torch reports the CPU's capability."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return (torch.backends.mkldnn.is_available()
            and torch.backends.cpu.get_cpu_capability() == "AVX512")


def check_train_config(cfg: RunConfig, resume: bool = False) -> None:
    """Refuse training settings that cannot run, before any process group or file exists.

    Each config section checks its own rules (`RunConfig.validate`); here are those of this
    launch: the processes torchrun started and the device. Every process checks the same
    config, so under torchrun all of them stop with the same message instead of waiting for
    each other.
    """
    cfg.validate(resume)
    t = cfg.train
    world = distributed.launched_world_size()
    if t.batch_size % (t.accumulate * world):
        raise LrcnError(
            f"train.batch_size {t.batch_size} must be divisible by train.accumulate "
            f"({t.accumulate}) x the number of processes ({world}): each optimizer step's batch "
            f"is split into {t.accumulate * world} equal micro-batches")
    device = resolve_device(t.device)
    if t.precision == "bf16" and not bf16_supported(device):
        what = (f"the GPU ({torch.cuda.get_device_name()})" if device.type == "cuda"
                else "this CPU (no oneDNN bfloat16 kernels: it needs AVX-512 or AMX)")
        raise LrcnError(f"--precision bf16: {what} does not support bfloat16; "
                        "use --precision fp32")


def load_init_source(init: str) -> tuple[Path, Checkpoint]:
    """The checkpoint ``train.init`` names (a run folder: its best, else its last) and
    its path; an error names ``--init``."""
    try:
        path = resolve_checkpoint(init)
        return path, load_checkpoint(path)
    except LrcnError as exc:
        raise LrcnError(f"--init {init}: {exc}") from None


def init_config(init: str) -> RunConfig:
    """The config of a run started from `init`'s weights without a ``--config``: the source
    run's own (its model, data and schedule, as its checkpoint records them), with
    ``train.init`` set to `init`; the caller applies its flags on top."""
    cfg = load_init_source(init)[1].config
    cfg.train.init = init
    return cfg


@dataclass
class RunData:
    """The splits of a run and what is built from them before the model exists."""

    train: VQASplit
    val: VQASplit | None
    word_vocab: WordVocab
    answer_vocab: AnswerVocab
    word_vectors: torch.Tensor | None
    model: ModelConfig  # the model section, its input sizes set by the data (GloVe, stores)
    glove_coverage: float | None = None
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # --skip-invalid


def prepare_data(cfg: RunConfig, glove_cache: Path | None = None,
                 vocabs_from: Checkpoint | None = None) -> RunData:
    """Read the splits, build the vocabularies (and GloVe vectors), check feature stores.

    The answer vocabulary comes from ``data.answer_vocab_splits`` when set (MCAN/TRAR/LRCN:
    train2014+val2014 with answer_min_count 9), else from the training split. The model's
    word_dim follows the GloVe vectors and, reading feature stores, its feature_channels the
    stores (in `RunData.model`; `cfg` is left as it is).

    A run started from another run's weights (``train.init``) takes both vocabularies from
    `vocabs_from` (the source checkpoint, read from ``train.init`` when not given; a resumed
    run's own last checkpoint), so that the embedding rows and answer logits keep their meaning, and
    reads no GloVe: the word embeddings come with the weights. A training answer outside that
    answer vocabulary gives no target, as any answer outside a vocabulary.
    """
    if vocabs_from is None and cfg.train.init:
        vocabs_from = load_init_source(cfg.train.init)[1]
    d, model_cfg = cfg.data, dataclasses.replace(cfg.model)
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
    if d.skip_invalid and model_cfg.image_encoder != "features":
        train_split = drop_unreadable_images(train_split, skipped)
        if val_split is not None:
            val_split = drop_unreadable_images(val_split, skipped)
    if vocabs_from is not None:
        word_vocab, answer_vocab = vocabs_from.word_vocab, vocabs_from.answer_vocab
        vocabs = f"--init {cfg.train.init}"
        log_answer_coverage(train_split, answer_vocab, vocabs)
    else:
        if d.answer_vocab_splits and d.answer_vocab_splits != d.train_split:
            vocab_records = load_split(d.dataset, d.data_root, d.answer_vocab_splits,
                                       parts).records
        else:
            vocab_records = train_split.records
        word_vocab = build_word_vocab(d, train_split)
        answer_vocab = AnswerVocab.build(vocab_records, d.answer_min_count, d.answer_max_size)
        vocabs = d.answer_vocab_splits or d.train_split
    word_vectors = coverage = None
    if d.glove and vocabs_from is not None:
        log.info("data.glove %s not read: the word embeddings come with the weights of "
                 "--init %s", d.glove, cfg.train.init)
    elif d.glove:
        word_vectors, coverage = cached_glove(d.glove, word_vocab, glove_cache)
        if word_vectors.shape[1] != model_cfg.word_dim:
            log.info("word_dim set to %d, the size of the GloVe vectors", word_vectors.shape[1])
            model_cfg.word_dim = word_vectors.shape[1]
        log.info("GloVe %s covers %.1f%% of %d words", d.glove, 100 * coverage, len(word_vocab) - 2)
    if model_cfg.image_encoder == "features":
        channels = open_stores(d.features)[0].channels
        if channels != model_cfg.feature_channels:
            log.info("model.feature_channels set to %d, the channels of the feature stores", channels)
            model_cfg.feature_channels = channels
    elif d.features:
        raise LrcnError("data.features is set but model.image_encoder is "
                        f"{model_cfg.image_encoder!r}; set model.image_encoder: features")
    log.info("%s: %d questions, %s: %s questions; %d words, %d answers (from %s)",
             train_split.name, len(train_split.records), d.val_split,
             len(val_split.records) if val_split else "no", len(word_vocab), len(answer_vocab),
             vocabs)
    return RunData(train_split, val_split, word_vocab, answer_vocab, word_vectors, model_cfg,
                   coverage, skipped)


def build_word_vocab(d: DataConfig, train_split: VQASplit | None) -> WordVocab:
    """The word vocabulary ``data.word_vocab`` names: the training questions' by default
    (`train_split` is then needed), or openvqa's / mcan-vqa's (`lrcn.data.openvqa`)."""
    if d.word_vocab == "train":
        if train_split is None:
            raise LrcnError("data.word_vocab train is built from the training split")
        return WordVocab.build([r.question for r in train_split.records], d.min_word_count)
    if not d.data_root:
        raise LrcnError(f"data.word_vocab {d.word_vocab} is rebuilt from the VQA-v2 question "
                        "files: set data.data_root (--data-root) to the folder holding them")
    return openvqa_word_vocab(d.data_root, with_cls=d.word_vocab == "openvqa")


def log_answer_coverage(split: VQASplit, answer_vocab: AnswerVocab, source: str) -> None:
    """Log how many of the split's questions have their answer (`training_answer`) in a
    vocabulary `source` gave (not built from the split)."""
    inside = sum(training_answer(r) in answer_vocab for r in split.records)
    log.info("%d of %d %s questions (%.1f%%) have their answer among the %d answers of %s; "
             "answers outside it train no target", inside, len(split.records), split.name,
             100 * inside / max(1, len(split.records)), len(answer_vocab), source)


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


def build_model(cfg: RunConfig, data: RunData,
                source: tuple[Path, Checkpoint] | None = None) -> VQAModel:
    """The model `cfg` describes, sized by `data`; with a `source` (``train.init``: its path
    and checkpoint), holding the source's weights, loaded strictly: any tensor missing,
    unexpected or of another shape is an error naming them."""
    if source is None:
        return create_model(cfg.model, len(data.word_vocab), len(data.answer_vocab),
                            data.word_vectors)
    path, ckpt = source
    # Every weight, a pretrained trunk's included, comes from the source below.
    model = create_model(dataclasses.replace(cfg.model, encoder_weights=None),
                         len(data.word_vocab), len(data.answer_vocab), random_weights=True)
    load_weights(model, ckpt.model_state, path, source=f"--init {cfg.train.init}")
    log.info("initialised from %s (%d tensors)", cfg.train.init, len(ckpt.model_state))
    return model


@dataclass
class Run:
    """A run ready to train: what `setup_run` resolved and built."""

    cfg: RunConfig               # resolved: epochs from train.samples, sizes from the data
    data: RunData
    model: VQAModel
    device: torch.device
    train_split: EncodedSplit
    val_split: EncodedSplit | None
    lrs: list[float]             # the learning rate of every epoch
    progress: Progress
    saved: Checkpoint | None     # the last checkpoint of a resumed run


def setup_run(cfg: RunConfig, out_dir: Path, resume: bool = False) -> Run:
    """Check `cfg`, read the data, build and seed the model (restoring a resumed run's
    weights, or loading those of ``train.init``), and encode the splits as the model reads
    them."""
    check_train_config(cfg, resume)
    saved, progress = None, Progress()
    if resume:
        saved, progress = resume_checkpoint(cfg, out_dir)
    elif (out_dir / "checkpoints").exists() or (out_dir / "metrics.jsonl").exists():
        raise LrcnError(f"{out_dir} already holds a training run; choose another --out, or "
                        f"continue it with --resume {out_dir}")
    cfg = copy.deepcopy(cfg)
    t = cfg.train
    seed_everything(t.seed)  # the same initial weights in every process
    device = distributed.local_device(resolve_device(t.device))
    if device.type == "cpu" and t.keep_freed_memory:
        keep_freed_memory()  # large CPU activations reuse freed memory instead of page faults
    source = vocabs_from = None
    if cfg.train.init:  # started from another run's weights: its vocabularies and weights;
        # resumed, from its own last checkpoint, which has both (the source is not read again)
        source = load_init_source(cfg.train.init) if saved is None else None
        vocabs_from = source[1] if source is not None else saved
    data = prepare_data(cfg, glove_cache=out_dir.parent / GLOVE_CACHE_DIR,
                        vocabs_from=vocabs_from)
    cfg.model = data.model
    if cfg.data.max_question_tokens is None:
        cfg.data.max_question_tokens = max(len(tokenize(r.question)) for r in data.train.records)
        log.info("data.max_question_tokens %d: the longest training question",
                 cfg.data.max_question_tokens)
    model = build_model(cfg, data, source).to(device)
    del source, vocabs_from  # the source's weights are in the model now
    if not resume:  # a resumed run has its epochs already
        records = data.train.records
        epochs_for_samples(t, len(records), image_passes_per_epoch(
            list(Counter(r.image_key for r in records).values()), grouped=t.group_by_image,
            group_size=t.image_group_size,
            pixels=model.net.uses_image and cfg.model.image_encoder != "features"))
    lrs = lr_per_epoch(t)  # also in config.yaml (save_config)
    log.info("lr schedule: %s", describe_schedule(lrs, t.warmup_steps))
    log.info("model %s-%s, %.2f M parameters (image encoder included, word embeddings "
             "excluded)", cfg.model.arch, cfg.model.variant, model.num_parameters() / 1e6)
    if saved is not None:
        if (data.word_vocab.to_dict(), data.answer_vocab.to_dict()) != (
                saved.word_vocab.to_dict(), saved.answer_vocab.to_dict()):
            raise LrcnError(f"cannot resume {out_dir}: its data now gives other word or answer "
                            "vocabularies than the run was trained with (the data changed)")
        load_weights(model, saved.model_state, run_checkpoint(out_dir, LAST))
    run = Run(cfg, data, model, device, None, None, lrs, progress, saved)
    if progress.epoch >= t.epochs:
        return run  # a resumed run with nothing left to train: no data to encode
    if model.net.uses_image and model.encoder is not None and not cfg.data.skip_invalid:
        for split in (data.train, data.val):  # decoded per batch, one missing is found late
            if split is not None:
                check_images(split)
    reads = model.image_input()
    run.train_split = encode_for_model(data.train, data.word_vocab, data.answer_vocab, cfg.data,
                                       reads, device)
    if model.task != "answer" and run.train_split.answerable is None:
        raise LrcnError(f"model.task {model.task} needs answerability labels, and training split "
                        f"{data.train.name!r} of dataset {cfg.data.dataset} has none (VizWiz has)")
    if data.val is not None:
        run.val_split = encode_for_model(data.val, data.word_vocab, data.answer_vocab, cfg.data,
                                         reads, device)
    return run
