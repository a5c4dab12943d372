"""A small timm-style model registry: ``@register_model(name)`` builders and ``create_model``.

Builders are registered when ``lrcn.models`` is imported; ``create_model`` is the one way the
rest of the package builds a model, looking the builder up by ``cfg.arch``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lrcn.config import ModelConfig
from lrcn.errors import LrcnError
from lrcn.models.baselines import CNNLSTM, ImageOnly, LateFusion, TextOnly
from lrcn.models.image_encoders import build_image_encoder
from lrcn.models.lrcn import LRCN
from lrcn.models.vqa_model import VQAModel

ModelBuilder = Callable[..., VQAModel]

_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder ``(cfg, vocab_size, num_answers, word_vectors, random_weights)``."""

    def register(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise LrcnError(f"model {name!r} is already registered")
        _MODELS[name] = builder
        return builder

    return register


def model_names() -> list[str]:
    """Names ``create_model`` accepts as ``cfg.arch``."""
    return sorted(_MODELS)


def create_model(
    cfg: ModelConfig,
    vocab_size: int,
    num_answers: int,
    word_vectors: torch.Tensor | None = None,
    random_weights: bool = False,
) -> VQAModel:
    """Build the model ``cfg.arch`` names.

    Args:
        cfg: the model configuration.
        vocab_size: number of question tokens (id 0 is the pad).
        num_answers: number of candidate answers K.
        word_vectors: optional (vocab_size, word_dim) initial word embedding (GloVe).
        random_weights: let a torchvision trunk start from random weights instead of a file
            (tests only).
    """
    builder = _MODELS.get(cfg.arch)
    if builder is None:
        known = ", ".join(model_names())
        raise LrcnError(f"unknown model.arch {cfg.arch!r}; known models: {known}")
    return builder(
        cfg, vocab_size, num_answers, word_vectors=word_vectors, random_weights=random_weights
    )


@register_model("lrcn")
def lrcn(
    cfg: ModelConfig,
    vocab_size: int,
    num_answers: int,
    word_vectors: torch.Tensor | None = None,
    random_weights: bool = False,
) -> VQAModel:
    """LRCN (stacking ``cfg.variant``) behind the image encoder ``cfg.image_encoder``."""
    encoder = build_image_encoder(cfg, random_weights=random_weights)
    grid_channels = encoder.out_channels if encoder is not None else cfg.feature_channels
    net = LRCN(cfg, vocab_size, num_answers, grid_channels, word_vectors=word_vectors)
    return VQAModel(encoder, net, cfg.task, cfg.answerable_hidden)


def _baseline(
    net_class: type[LateFusion],
    cfg: ModelConfig,
    vocab_size: int,
    num_answers: int,
    word_vectors: torch.Tensor | None,
    random_weights: bool,
) -> VQAModel:
    """A baseline behind the image encoder ``cfg.image_encoder``, built as ``lrcn`` is
    (a text-only baseline has no image encoder: it never reads the image)."""
    encoder = None
    if net_class.uses_image:
        encoder = build_image_encoder(cfg, random_weights=random_weights)
    grid_channels = encoder.out_channels if encoder is not None else cfg.feature_channels
    net = net_class(cfg, vocab_size, num_answers, grid_channels, word_vectors=word_vectors)
    return VQAModel(encoder, net, cfg.task, cfg.answerable_hidden)


@register_model("cnn_lstm")
def cnn_lstm(
    cfg: ModelConfig,
    vocab_size: int,
    num_answers: int,
    word_vectors: torch.Tensor | None = None,
    random_weights: bool = False,
) -> VQAModel:
    """Late-fusion CNN + BiLSTM baseline (the VizWiz report's model, defects fixed)."""
    return _baseline(CNNLSTM, cfg, vocab_size, num_answers, word_vectors, random_weights)


@register_model("text_only")
def text_only(
    cfg: ModelConfig,
    vocab_size: int,
    num_answers: int,
    word_vectors: torch.Tensor | None = None,
    random_weights: bool = False,
) -> VQAModel:
    """Question-only baseline (BiLSTM + attention pooling + MLP)."""
    return _baseline(TextOnly, cfg, vocab_size, num_answers, word_vectors, random_weights)


@register_model("image_only")
def image_only(
    cfg: ModelConfig,
    vocab_size: int,
    num_answers: int,
    word_vectors: torch.Tensor | None = None,
    random_weights: bool = False,
) -> VQAModel:
    """Image-only baseline (mean-pooled grid + MLP); the question is not read."""
    return _baseline(ImageOnly, cfg, vocab_size, num_answers, word_vectors, random_weights)
