"""Datasets as plain records, and the vocabularies that turn them into tensors.

Importing a reader module registers its dataset (``lrcn.data.registry``): the readers of
published datasets (easyvqa, vqa2, vizwiz, clevr) and the generated datasets, whose readers sit
beside their generators (``lrcn.data.generators``: easy-vizwiz, relational-shapes).
"""

from lrcn.data.answers import AnswerVocab, dense_targets, encode_targets, training_answer
from lrcn.data.clevr import read_clevr
from lrcn.data.easyvqa import read_easyvqa
from lrcn.data.generators.easy_vizwiz import (
    EASY_VIZWIZ, build_easy_vizwiz, default_easy_vizwiz_root, ensure_easy_vizwiz,
)
from lrcn.data.generators.generated import GeneratedDataset, data_home
from lrcn.data.generators.relational_shapes import RELATIONAL_SHAPES
from lrcn.data.records import VQARecord, VQASplit
from lrcn.data.registry import (
    dataset_names, default_splits, generated_dataset, generated_names, load_split,
    register_dataset,
)
from lrcn.data.glove import cached_glove, load_glove
from lrcn.data.text import WordVocab, tokenize
from lrcn.data.vizwiz import read_vizwiz
from lrcn.data.vqa2 import check_images, read_vqa2

__all__ = [
    "AnswerVocab",
    "EASY_VIZWIZ",
    "GeneratedDataset",
    "RELATIONAL_SHAPES",
    "VQARecord",
    "VQASplit",
    "WordVocab",
    "build_easy_vizwiz",
    "cached_glove",
    "check_images",
    "data_home",
    "dataset_names",
    "default_easy_vizwiz_root",
    "default_splits",
    "dense_targets",
    "encode_targets",
    "ensure_easy_vizwiz",
    "generated_dataset",
    "generated_names",
    "load_glove",
    "load_split",
    "read_clevr",
    "read_easyvqa",
    "read_vizwiz",
    "read_vqa2",
    "register_dataset",
    "tokenize",
    "training_answer",
]
