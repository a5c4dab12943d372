"""Records to model inputs: a split encoded as a model reads it, and a batch as its arguments.

What a model reads of the images decides the encoding (`ImageInput`, which a model states
about itself): nothing (a text-only model), grids from feature stores (no image is opened),
grids computed once per image by a frozen encoder (the pixels are then dropped), or pixels
batch by batch (an encoder that trains).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lrcn.config import DataConfig
from lrcn.data.answers import AnswerVocab
from lrcn.data.batches import EncodedSplit, InMemoryGrids, encode_split, iterate_images
from lrcn.data.images import ImageTable, normalize
from lrcn.data.records import VQASplit
from lrcn.data.text import WordVocab
from lrcn.errors import LrcnError
from lrcn.features.grids import StoreGrids, open_stores


@dataclass(frozen=True)
class ImageInput:
    """What a model reads of the images (`VQAModel.image_input`).

    Attributes:
        reads_image: False for a model that never looks at the image (text-only).
        from_stores: grids come from the feature stores of ``data.features``.
        grid_channels: C of the grids the model reads.
        places_regions: the model needs each region's box (position, distance bias).
        frozen_encoder: normalised pixels (U, 3, H, W) -> grids (U, h, w, C) of an encoder
            that does not train, run once per image; None otherwise.
    """

    reads_image: bool
    from_stores: bool
    grid_channels: int
    places_regions: bool
    frozen_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None


@torch.no_grad()
def precompute_grids(encoder: Callable[[torch.Tensor], torch.Tensor], images: ImageTable,
                     device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """Run a frozen image encoder once per image: (U, h, w, C) on the CPU."""
    chunks = []
    for _, pixels in tqdm(iterate_images(images, batch_size), desc="encoding images",
                          total=(len(images) + batch_size - 1) // batch_size, disable=None):
        chunks.append(encoder(normalize(pixels.to(device))).cpu())
    return torch.cat(chunks)


def encode_for_model(split: VQASplit, word_vocab: WordVocab, answer_vocab: AnswerVocab,
                     data_cfg: DataConfig, reads: ImageInput, device: torch.device) -> EncodedSplit:
    """Encode a split as a model that `reads` so reads it (see the module docstring)."""
    d = data_cfg
    encoded = encode_split(split, word_vocab, answer_vocab, d.max_question_tokens,
                           d.image_size, d.cache_images, d.image_cache_gb,
                           with_images=reads.reads_image and not reads.from_stores)
    if reads.reads_image and reads.from_stores:
        grids = StoreGrids(open_stores(d.features), encoded.image_keys, f"split {split.name}")
        if grids.channels != reads.grid_channels:
            raise LrcnError(
                f"split {split.name}: the feature stores hold {grids.channels}-channel grids, "
                f"the model reads {reads.grid_channels} channels"
            )
        store = grids.stores[0]
        if store.layout == "regions" and not store.has_boxes and reads.places_regions:
            raise LrcnError(
                f"split {split.name}: feature store {store.path} is a region list without "
                "boxes, and model.position / model.distance_bias need to know where each "
                "region is; import the features from files with boxes, or turn those off")
        encoded.grids = grids
    elif reads.reads_image and reads.frozen_encoder is not None:
        encoded.grids = InMemoryGrids(precompute_grids(reads.frozen_encoder, encoded.images,
                                                       device))
        encoded.images = None
    return encoded


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict:
    """The keyword arguments of ``model(...)`` for a batch from `batch_loader`, on `device`."""
    image_index = batch["image_index"].to(device, non_blocking=True)
    inputs = {"tokens": batch["tokens"].to(device, non_blocking=True), "image_index": image_index}
    if "grid" in batch:
        inputs["grid"] = batch["grid"].to(device, non_blocking=True)
        for name in ("grid_mask", "grid_boxes"):  # (U, ...) -> one per question (B, ...)
            if name in batch:
                inputs[name] = batch[name].to(device, non_blocking=True)[image_index]
    elif "pixels" in batch:
        inputs["images"] = normalize(batch["pixels"].to(device, non_blocking=True))
    return inputs  # neither: a model that does not read images
