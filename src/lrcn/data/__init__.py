"""Datasets as plain records, and the vocabularies that turn them into tensors."""

from lrcn.data.answers import AnswerVocab, dense_targets, encode_targets, training_answer
from lrcn.data.easy_vizwiz import (
    EASY_VIZWIZ, build_easy_vizwiz, default_easy_vizwiz_root, ensure_easy_vizwiz,
)
from lrcn.data.easyvqa import read_easyvqa
from lrcn.data.generated import GeneratedDataset, data_home
from lrcn.data.records import VQARecord, VQASplit
from lrcn.data.relational_shapes import RELATIONAL_SHAPES
from lrcn.data.registry import dataset_names, default_splits, load_split, register_dataset
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
    "load_glove",
    "load_split",
    "read_easyvqa",
    "read_vizwiz",
    "read_vqa2",
    "register_dataset",
    "tokenize",
    "training_answer",
]
