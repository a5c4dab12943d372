"""Models: the LRCN family, the baselines, grid image encoders, and the registry that builds them.

Importing this package registers the built-in models and does nothing else: each family module
registers its builders with ``@register_model`` beside its code, and is imported below, one
line per family. A new model is one new module plus its import line here.
"""

from lrcn.models.image_encoders import (
    TRUNK_NAMES,
    GridEncoder,
    SmallCNN,
    TorchvisionTrunk,
    build_image_encoder,
)
from lrcn.models.layers import AttentionPool, FeedForward, MultiHeadAttention
from lrcn.models.registry import ModelBuilder, create_model, model_names, register_model
from lrcn.models.vqa_model import LRCNOutput, VQAModel, VQAOutput, build_vqa_model

# The model families: importing one registers its models.
from lrcn.models.lrcn import LRCN
from lrcn.models.baselines import CNNLSTM, ImageOnly, LateFusion, TextOnly

__all__ = [
    "CNNLSTM",
    "LRCN",
    "TRUNK_NAMES",
    "AttentionPool",
    "FeedForward",
    "GridEncoder",
    "ImageOnly",
    "LateFusion",
    "LRCNOutput",
    "ModelBuilder",
    "MultiHeadAttention",
    "SmallCNN",
    "TextOnly",
    "TorchvisionTrunk",
    "VQAModel",
    "VQAOutput",
    "build_image_encoder",
    "build_vqa_model",
    "create_model",
    "model_names",
    "register_model",
]
