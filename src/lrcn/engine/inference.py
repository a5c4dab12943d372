"""Running a model over encoded splits or single images, and rebuilding it from a checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lrcn.config import DataConfig
from lrcn.data.answers import AnswerVocab
from lrcn.data.batches import (EncodedSplit, InMemoryGrids, batch_loader, encode_split,
                                iterate_images)
from lrcn.data.images import ImageTable, normalize
from lrcn.data.records import VQASplit
from lrcn.data.text import WordVocab
from lrcn.engine.checkpoint import Checkpoint, load_checkpoint
from lrcn.engine.evaluator import VQAEvaluator
from lrcn.errors import LrcnError
from lrcn.models import VQAModel, create_model


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise LrcnError("--device cuda was asked for, but PyTorch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise LrcnError(f"unknown device {name!r}; use cpu or cuda")
    return torch.device(name)


def model_inputs(model: VQAModel, batch: dict[str, torch.Tensor], device: torch.device) -> dict:
    """The keyword arguments of ``model(...)`` for a batch from `BatchDataset`."""
    image_index = batch["image_index"].to(device, non_blocking=True)
    inputs = {"tokens": batch["tokens"].to(device, non_blocking=True), "image_index": image_index}
    if "grid" in batch:
        inputs["grid"] = batch["grid"].to(device, non_blocking=True)
        if "grid_mask" in batch:  # (U, ...) -> one mask per question (B, ...)
            inputs["grid_mask"] = batch["grid_mask"].to(device, non_blocking=True)[image_index]
    elif "pixels" in batch:
        inputs["images"] = normalize(batch["pixels"].to(device, non_blocking=True))
    return inputs  # neither: a model that does not read images


@torch.no_grad()
def precompute_grids(model: VQAModel, images: ImageTable, device: torch.device,
                     batch_size: int = 64) -> torch.Tensor:
    """Run a frozen image encoder once per image: (U, h, w, C) on the CPU."""
    model.eval()
    chunks = []
    for _, pixels in tqdm(iterate_images(images, batch_size), desc="encoding images",
                          total=(len(images) + batch_size - 1) // batch_size, disable=None):
        chunks.append(model.encode_images(normalize(pixels.to(device))).cpu())
    return torch.cat(chunks)


def uses_frozen_encoder(model: VQAModel) -> bool:
    return model.encoder is not None and not model.encoder.trainable


def encode_for_model(split: VQASplit, word_vocab: WordVocab, answer_vocab: AnswerVocab,
                     data_cfg: DataConfig, model: VQAModel, device: torch.device) -> EncodedSplit:
    """Encode a split as `model` reads it.

    A model without an image encoder reads grids from the feature stores of
    ``data_cfg.features`` (no image is opened); a frozen encoder's grids are computed here,
    once, and the pixels dropped; a trained encoder gets pixels batch by batch.
    """
    from lrcn.features.grids import StoreGrids, open_stores

    d = data_cfg
    reads_images = model.net.uses_image  # a text-only model gets neither pixels nor grids
    from_stores = reads_images and model.encoder is None
    encoded = encode_split(split, word_vocab, answer_vocab, d.max_question_tokens,
                           d.image_size, d.cache_images, d.image_cache_gb,
                           with_images=reads_images and not from_stores)
    if from_stores:
        grids = StoreGrids(open_stores(d.features), encoded.image_keys, f"split {split.name}")
        if grids.channels != model.net.grid_channels:
            raise LrcnError(
                f"split {split.name}: the feature stores hold {grids.channels}-channel grids, "
                f"the model reads {model.net.grid_channels} channels"
            )
        encoded.grids = grids
    elif uses_frozen_encoder(model):
        encoded.grids = InMemoryGrids(precompute_grids(model, encoded.images, device))
        encoded.images = None
    return encoded


@torch.no_grad()
def predict_split(model: VQAModel, split: EncodedSplit, answer_vocab: AnswerVocab,
                  batch_size: int, device: torch.device, desc: str = "evaluating",
                  metric: str = "vqa") -> VQAEvaluator:
    """Top-1 answer (and P(answerable) with that head) for every record, in an evaluator."""
    model.eval()
    evaluator = VQAEvaluator(split.records, metric)
    loader = batch_loader(split, len(answer_vocab), batch_size, shuffle=False)
    for batch in tqdm(loader, desc=desc, disable=None, leave=False):
        out = model.forward_all(**model_inputs(model, batch, device))
        best = out.answer.argmax(dim=1).tolist()
        answerable = None if out.answerable is None else torch.sigmoid(out.answerable).tolist()
        evaluator.process(batch["rows"].tolist(), [answer_vocab.answer(i) for i in best],
                          answerable)
    return evaluator


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with everything needed to feed it."""

    checkpoint: Checkpoint
    model: VQAModel
    device: torch.device

    @property
    def word_vocab(self) -> WordVocab:
        return self.checkpoint.word_vocab

    @property
    def answer_vocab(self) -> AnswerVocab:
        return self.checkpoint.answer_vocab


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Rebuild the exact model of a checkpoint (a file or a run folder)."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(path)
    # Every weight, a pretrained trunk's included, comes from the checkpoint below.
    model_cfg = dataclasses.replace(ckpt.config.model, encoder_weights=None)
    model = create_model(model_cfg, len(ckpt.word_vocab), len(ckpt.answer_vocab),
                         random_weights=True)
    try:
        model.load_state_dict(ckpt.model_state)
    except RuntimeError as exc:
        raise LrcnError(
            f"checkpoint {path} does not match the model its config describes: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    model.to(dev).eval()
    return LoadedModel(ckpt, model, dev)


@torch.no_grad()
def answer_question(loaded: LoadedModel, image_path: Path, question: str,
                    top_k: int = 5) -> list[dict[str, float | str]]:
    """Top-k answers with their probabilities (sigmoid of the logits) for one image."""
    from lrcn.data.images import load_image, resize_transform

    cfg = loaded.checkpoint.config
    try:
        ids = loaded.word_vocab.encode(question, cfg.data.max_question_tokens)
    except LrcnError as exc:
        raise LrcnError(f"question {question!r}: {exc}") from None
    if cfg.model.image_encoder == "features":
        raise LrcnError("this checkpoint reads precomputed features; it cannot answer from an image file")
    pixels = resize_transform(cfg.data.image_size)(load_image(image_path)).unsqueeze(0)
    tokens = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    logits = loaded.model(tokens=tokens, images=normalize(pixels.to(loaded.device)))
    probs = torch.sigmoid(logits[0])
    k = max(1, min(top_k, probs.numel()))
    scores, index = probs.topk(k)
    return [{"answer": loaded.answer_vocab.answer(i), "score": float(s)}
            for s, i in zip(scores.tolist(), index.tolist())]
