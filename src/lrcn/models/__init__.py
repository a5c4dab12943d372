"""Models: the LRCN family, the baselines, grid image encoders, and the registry that builds them.

Importing this package registers the built-in models and does nothing else.
"""

from lrcn.models.baselines import CNNLSTM, ImageOnly, LateFusion, TextOnly
from lrcn.models.image_encoders import (
    TRUNK_NAMES,
    GridEncoder,
    SmallCNN,
    TorchvisionTrunk,
    build_image_encoder,
)
from lrcn.models.layers import AttentionPool, FeedForward, MultiHeadAttention
from lrcn.models.lrcn import LRCN, LRCNOutput
from lrcn.models.registry import create_model, model_names, register_model
from lrcn.models.vqa_model import VQAModel

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
    "MultiHeadAttention",
    "SmallCNN",
    "TextOnly",
    "TorchvisionTrunk",
    "VQAModel",
    "build_image_encoder",
    "create_model",
    "model_names",
    "register_model",
]
