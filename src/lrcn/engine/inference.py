"""Running a model over encoded splits or single images, and rebuilding it from a checkpoint.

Answering questions about image files goes through a `Predictor`, which PyTorch
(`LoadedModel`) and ONNX Runtime (`lrcn.engine.onnx_runtime.OnnxPredictor`) both implement
with the same question encoding, image resizing and `Prediction` building (the helpers
below); `load_predictor` picks the one a path names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from tqdm import tqdm

from lrcn.config import DEVICES, RunConfig
from lrcn.data.answers import AnswerVocab
from lrcn.data.batches import EncodedSplit, batch_loader, shard_length
from lrcn.data.images import normalize, resize_transform
from lrcn.data.pipeline import model_inputs
from lrcn.data.text import WordVocab, tokenize
from lrcn.engine.checkpoint import (
    ONNX_SUFFIX,
    Checkpoint,
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
)
from lrcn.errors import LrcnError
from lrcn.evaluation import DatasetEvaluator
from lrcn.models import VQAModel, create_model


def resolve_device(name: str) -> torch.device:
    """The torch device `name` (one of `DEVICES`) names, refused when it is not there."""
    if name == "cuda" and not torch.cuda.is_available():
        raise LrcnError("--device cuda was asked for, but PyTorch sees no CUDA device")
    if name not in DEVICES:
        raise LrcnError(f"unknown device {name!r}; use {' or '.join(DEVICES)}")
    return torch.device(name)


@torch.no_grad()
def predict_split(model: VQAModel, split: EncodedSplit, answer_vocab: AnswerVocab,
                  batch_size: int, device: torch.device, evaluator: DatasetEvaluator,
                  rank: int = 0, world_size: int = 1,
                  desc: str = "evaluating") -> DatasetEvaluator:
    """Fill `evaluator` (reset first) with the top-1 answer, and P(answerable) with that head,
    of every record; return it.

    With `world_size` processes, this one (`rank`) answers only its share of the records:
    rank, rank + world_size, ... (`batch_loader`), in batches of `batch_size`; the
    evaluator, given a gather function, merges the shares when it evaluates.
    """
    model.eval()
    evaluator.reset()
    loader = batch_loader(split, len(answer_vocab), batch_size * world_size, shuffle=False,
                          rank=rank, world_size=world_size)
    left = shard_length(len(split), rank, world_size)  # the rest is padding
    for batch in tqdm(loader, desc=desc, disable=None if rank == 0 else True, leave=False):
        out = model.forward_all(**model_inputs(batch, device))
        keep = min(left, len(batch["rows"]))
        left -= keep
        best = out.answer[:keep].argmax(dim=1).tolist()
        answerable = (None if out.answerable is None
                      else torch.sigmoid(out.answerable[:keep]).tolist())
        evaluator.process(batch["rows"][:keep].tolist(), [answer_vocab.answer(i) for i in best],
                          answerable)
    return evaluator


FEATURES_ONLY = ("this checkpoint reads precomputed features; it cannot answer from an "
                 "image file")


def model_name(cfg: RunConfig) -> str:
    """What the model is called in the server's health report: ``lrcn-<variant>`` or the arch."""
    m = cfg.model
    return f"lrcn-{m.variant}" if m.arch == "lrcn" else m.arch


@dataclass
class Prediction:
    """What the model says about one image and question, with where it looked."""

    answers: list[dict[str, float | str]]  # top-k [{"answer", "score"}], score = sigmoid(logit)
    answerable: float | None               # P(answerable); None without that head
    image_attention: list[list[float]]     # (h, w) attention-pooling weights over the grid
    question_tokens: list[str]             # the words the model read (at most max_question_tokens)
    question_attention: list[float]        # one pooling weight per word

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Predictor(Protocol):
    """A model ready to answer questions about images, whatever runs it: what ``lrcn predict``
    and ``lrcn serve`` need. `LoadedModel` (PyTorch) and `OnnxPredictor` (ONNX Runtime)."""

    @property
    def name(self) -> str:
        """``lrcn-<variant>`` or the arch (`model_name`)."""

    @property
    def device(self) -> Any:
        """Where it runs; ``str()`` of it is the device's name (``cpu``, ``cuda``)."""

    @property
    def runtime(self) -> str:
        """What runs it: ``pytorch`` or ``onnxruntime``."""

    @property
    def answers_from_images(self) -> bool:
        """False for a model that reads precomputed features: it cannot answer from an
        image file (`FEATURES_ONLY`)."""

    def predict(self, images: Sequence[Image.Image], questions: Sequence[str],
                top_k: int = 5) -> list[Prediction]:
        """One `Prediction` per (image, question), in one batched pass; LrcnError for a
        question without words or a model that cannot answer from images."""


def load_predictor(path: str | Path, device: str = "cpu") -> Predictor:
    """The model a path names: an ``.onnx`` file runs on ONNX Runtime, anything else is a
    checkpoint (file or run folder) rebuilt in PyTorch. The one place the backend is chosen."""
    if Path(path).suffix.lower() == ONNX_SUFFIX:
        from lrcn.engine.onnx_runtime import load_onnx

        return load_onnx(path, device)
    return load_model(path, device)


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with everything needed to feed it (a `Predictor`)."""

    checkpoint: Checkpoint
    model: VQAModel
    device: torch.device

    @property
    def word_vocab(self) -> WordVocab:
        return self.checkpoint.word_vocab

    @property
    def answer_vocab(self) -> AnswerVocab:
        return self.checkpoint.answer_vocab

    @property
    def name(self) -> str:
        return model_name(self.checkpoint.config)

    @property
    def runtime(self) -> str:
        return "pytorch"

    @property
    def answers_from_images(self) -> bool:
        return self.model.encoder is not None or not self.model.net.uses_image

    def predict(self, images: Sequence[Image.Image], questions: Sequence[str],
                top_k: int = 5) -> list[Prediction]:
        return predict_images(self, images, questions, top_k)


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Rebuild the exact model of a checkpoint (a file or a run folder)."""
    dev = resolve_device(device)
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    # Every weight, a pretrained trunk's included, comes from the checkpoint below.
    model_cfg = dataclasses.replace(ckpt.config.model, encoder_weights=None)
    try:
        model = create_model(model_cfg, len(ckpt.word_vocab), len(ckpt.answer_vocab),
                             random_weights=True)
    except LrcnError as exc:
        raise LrcnError(f"checkpoint {path}: {exc}") from None
    load_weights(model, ckpt.model_state, path)
    model.to(dev).eval()
    return LoadedModel(ckpt, model, dev)


# --------------------------------------------------------------------------- shared by backends

def encode_questions(word_vocab: WordVocab, questions: Sequence[str],
                     max_len: int) -> list[list[int]]:
    """Token ids (B, max_len), right-padded with 0; LrcnError for a question without words."""
    return [word_vocab.encode(question, max_len) for question in questions]


def image_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> uint8 (B, 3, size, size): RGB, resized as training resized them."""
    transform = resize_transform(size)
    return torch.stack([transform(image.convert("RGB")) for image in images])


def check_batch(images: Sequence[Image.Image], questions: Sequence[str]) -> None:
    """One image per question, and at least one of each."""
    if len(images) != len(questions) or not images:
        raise LrcnError(f"{len(images)} images for {len(questions)} questions")


def build_predictions(
    questions: Sequence[str],
    max_len: int,
    answer_vocab: AnswerVocab,
    top_scores: Sequence[Sequence[float]],
    top_index: Sequence[Sequence[int]],
    answerable: Sequence[float] | None,
    image_weights: Sequence[Sequence[float]],
    question_weights: Sequence[Sequence[float]],
    spatial: tuple[int, int] | None,
) -> list[Prediction]:
    """The `Prediction` of each question from one pass's outputs, as plain lists.

    Args:
        top_scores, top_index: (B, k) best sigmoid scores and their answer ids, best first.
        answerable: (B,) P(answerable), or None without that head.
        image_weights: (B, N) pooling weights over the grid; question_weights: (B, T).
        spatial: (h, w) of the image encoder's grid; None for a model that reads no image.
    """
    predictions = []
    for b, question in enumerate(questions):
        words = tokenize(question)[:max_len]
        predictions.append(Prediction(
            answers=[{"answer": answer_vocab.answer(i), "score": float(sc)}
                     for sc, i in zip(top_scores[b], top_index[b])],
            answerable=None if answerable is None else float(answerable[b]),
            image_attention=_as_grid(image_weights[b], spatial),
            question_tokens=words,
            question_attention=list(question_weights[b][: len(words)]),
        ))
    return predictions


@torch.no_grad()
def predict_images(loaded: LoadedModel, images: Sequence[Image.Image], questions: Sequence[str],
                   top_k: int = 5) -> list[Prediction]:
    """Answer one question about each PIL image, in one batched forward pass.

    The attention maps are the model's own pooling weights from that pass (no second pass).
    Raises LrcnError for a question without words, or a checkpoint that reads features.
    """
    cfg = loaded.checkpoint.config
    if not loaded.answers_from_images:
        raise LrcnError(FEATURES_ONLY)
    check_batch(images, questions)
    max_len = cfg.data.max_question_tokens
    ids = encode_questions(loaded.word_vocab, questions, max_len)
    pixels = image_pixels(images, cfg.data.image_size)  # (B, 3, S, S) uint8
    tokens = torch.tensor(ids, dtype=torch.long, device=loaded.device)  # (B, T)
    images_t = normalize(pixels.to(loaded.device))
    grid = loaded.model.encode_images(images_t) if loaded.model.net.uses_image else None
    out = loaded.model.forward_all(tokens, grid=grid)
    probs = torch.sigmoid(out.answer).cpu()  # (B, K)
    k = max(1, min(top_k, probs.shape[1]))
    scores, index = probs.topk(k, dim=1)
    answerable = None if out.answerable is None else torch.sigmoid(out.answerable).cpu().tolist()
    return build_predictions(questions, max_len, loaded.answer_vocab, scores.tolist(),
                             index.tolist(), answerable, out.image_weights.cpu().tolist(),
                             out.question_weights.cpu().tolist(),
                             None if grid is None else tuple(grid.shape[1:3]))


def _as_grid(weights: Sequence[float], spatial: tuple[int, int] | None) -> list[list[float]]:
    """Pooling weights (N,) as rows of the grid the model attended over.

    N is h * w of the encoder's grid, or of the grid after the 2x2 reduction (each side
    halved, rounded up); a model that reads no image has no weights.
    """
    if spatial is None or len(weights) == 0:
        return []
    h, w = spatial
    for rows, cols in ((h, w), (-(-h // 2), -(-w // 2))):
        if rows * cols == len(weights):
            return [list(weights[r * cols:(r + 1) * cols]) for r in range(rows)]
    raise LrcnError(f"{len(weights)} attention weights do not fit a {h}x{w} grid")


def answer_question(predictor: Predictor, image_path: Path, question: str,
                    top_k: int = 5) -> Prediction:
    """Top-k answers (and attention) for a question about an image file."""
    from lrcn.data.images import load_image

    return predictor.predict([load_image(image_path)], [question], top_k)[0]
