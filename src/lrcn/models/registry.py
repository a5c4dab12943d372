"""The model registry (timm style): ``@register_model(name)`` above a builder, ``create_model``.

Each model family registers its builders in its own module, beside its code, and importing
``lrcn.models`` imports every family, which is what registers them. Adding a model is one new
module plus its import line in ``lrcn/models/__init__.py``: ``lrcn train --model`` and its help,
the check of ``model.arch`` (here, in `create_model`) and the tests parametrised over
`model_names` all read the registry. This module holds only the mechanism and imports no family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from lrcn.config import ModelConfig
from lrcn.errors import LrcnError
from lrcn.models.vqa_model import VQAModel


class ModelBuilder(Protocol):
    """What ``@register_model`` decorates: the model ``cfg`` describes, for a vocabulary of
    `vocab_size` tokens and `num_answers` answers (see `create_model`); most builders are
    one call of `lrcn.models.vqa_model.build_vqa_model`."""

    def __call__(self, cfg: ModelConfig, vocab_size: int, num_answers: int,
                 word_vectors: torch.Tensor | None = None,
                 random_weights: bool = False) -> VQAModel: ...


Builder = TypeVar("Builder", bound=ModelBuilder)

_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register the decorated builder under `name`, the value ``model.arch`` takes for it."""

    def register(builder: Builder) -> Builder:
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
    """Build the model ``cfg.arch`` names; an unknown name fails and lists the known ones.

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
