"""Records -> tensors -> batches.

A split is encoded once into flat tensors (token ids, image rows, sparse soft-score
targets); a batch is then a handful of tensor gathers with no per-sample Python work.
"""

from __future__ import annotations

import itertools
import logging
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from lrcn.data.answers import AnswerVocab, dense_targets, encode_targets
from lrcn.data.images import ImageTable
from lrcn.data.records import VQARecord, VQASplit
from lrcn.data.text import PAD_INDEX, WordVocab
from lrcn.errors import LrcnError

log = logging.getLogger(__name__)


class GridSource(Protocol):
    """Precomputed grids of a split's images, addressed by image row."""

    def read(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float grids (U, ...) of the image rows and their validity mask (U, ...) or None."""
        ...

    def read_boxes(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Boxes (U, R, 4) of a region list's regions (x0, y0, x1, y1 as fractions of the
        image size), or None: grids, and region lists without boxes."""
        ...


class InMemoryGrids:
    """Grids held in one tensor (U, h, w, C), e.g. a frozen encoder's output computed once."""

    def __init__(self, grids: torch.Tensor) -> None:
        self.grids = grids

    def read(self, rows: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.grids[rows], None

    def read_boxes(self, rows: torch.Tensor) -> None:
        return None


@dataclass
class EncodedSplit:
    """A split as tensors. Row i of every tensor is record i."""

    name: str
    records: list[VQARecord]
    tokens: torch.Tensor                 # (N, T) int64, pad 0
    image_keys: list[str]                # the U distinct images, sorted; image row -> key
    image_rows: torch.Tensor             # (N,) int64 image row of each record
    images: ImageTable | None            # pixels by image row; None with grids or a text-only model
    target_index: torch.Tensor | None    # (N, 10) int64 answer ids, -1 = none; None without answers
    target_score: torch.Tensor | None    # (N, 10) float soft scores
    answerable: torch.Tensor | None = None  # (N,) float 1/0 where every record has the label
    grids: GridSource | None = None      # precomputed grids by image row (stores, frozen encoder)

    def __len__(self) -> int:
        return len(self.records)


def encode_questions(split: VQASplit, vocab: WordVocab, max_len: int) -> torch.Tensor:
    """(N, max_len) token ids; a question without words is an error naming its record."""
    rows = []
    for record in split.records:
        try:
            rows.append(vocab.encode(record.question, max_len))
        except LrcnError as exc:
            raise LrcnError(
                f"split {split.name!r}, question {record.question_id!r} "
                f"(image {record.image_key}): {exc}"
            ) from None
    return torch.tensor(rows, dtype=torch.long).view(len(rows), max_len)


def encode_split(
    split: VQASplit,
    word_vocab: WordVocab,
    answer_vocab: AnswerVocab,
    max_len: int,
    image_size: int,
    cache_images: bool,
    image_cache_gb: float = 4.0,
    with_images: bool = True,
) -> EncodedSplit:
    """Encode questions, targets and (unless `with_images` is False) the image table.

    Images are decoded once into memory when `cache_images` is set and they fit in
    `image_cache_gb`; otherwise they are decoded batch by batch. Without images the
    caller attaches precomputed ``grids``.
    """
    keys = sorted({r.image_key for r in split.records})
    row_of = {key: i for i, key in enumerate(keys)}
    images = None
    if with_images:
        cache_gb = len(keys) * 3 * image_size * image_size / 2**30
        if cache_images and cache_gb > image_cache_gb:
            log.info("split %s: %d images would take %.1f GB decoded (limit "
                     "data.image_cache_gb=%g); decoding them batch by batch instead",
                     split.name, len(keys), cache_gb, image_cache_gb)
            cache_images = False
        images = ImageTable([split.image_path(k) for k in keys], image_size, cache_images)
    target_index = target_score = answerable = None
    if split.has_answers:
        target_index, target_score = encode_targets(split.records, answer_vocab)
    if split.records and all(r.answerable is not None for r in split.records):
        answerable = torch.tensor([float(r.answerable) for r in split.records])
    return EncodedSplit(
        name=split.name,
        records=split.records,
        tokens=encode_questions(split, word_vocab, max_len),
        image_keys=keys,
        image_rows=torch.tensor([row_of[r.image_key] for r in split.records], dtype=torch.long),
        images=images,
        target_index=target_index,
        target_score=target_score,
        answerable=answerable,
    )


class BatchDataset(Dataset):
    """Indexed by a list of record rows; returns the whole batch as a dict of tensors.

    Keys: ``rows`` (B,), ``tokens`` (B, T), ``image_index`` (B,) into the U distinct images
    of the batch, and either ``grid`` (U, ...) float (plus ``grid_mask`` (U, ...) when the
    source pads, ``grid_boxes`` (U, R, 4) when its regions have boxes) when the split has
    precomputed grids, or ``pixels`` (U, 3, S, S) uint8;
    ``target`` (B, K) when answers exist; ``answerable`` (B,) when the split has the label.
    """

    def __init__(self, split: EncodedSplit, num_answers: int) -> None:
        self.split = split
        self.num_answers = num_answers

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        s = self.split
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        image_rows = s.image_rows[rows_t]
        unique, inverse = torch.unique(image_rows, return_inverse=True)
        tokens = s.tokens[rows_t]  # (B, T), right-padded
        # The batch's longest question bounds the columns: the pads past it change no output
        # (they are masked keys, and the question LSTMs read left to right or packed) but
        # cost every layer time. Most questions are far shorter than T (easy-VQA 4-9 of 14).
        width = int((tokens != PAD_INDEX).sum(1).max().clamp(min=1))
        batch = {"rows": rows_t, "tokens": tokens[:, :width], "image_index": inverse}
        if s.grids is not None:
            batch["grid"], mask = s.grids.read(unique)
            if mask is not None:
                batch["grid_mask"] = mask
            boxes = s.grids.read_boxes(unique)
            if boxes is not None:
                batch["grid_boxes"] = boxes
        elif s.images is not None:
            batch["pixels"] = s.images.pixels(unique)
        if s.target_index is not None:
            batch["target"] = dense_targets(
                s.target_index[rows_t], s.target_score[rows_t], self.num_answers
            )
        if s.answerable is not None:
            batch["answerable"] = s.answerable[rows_t]
        return batch


def grouped_order(image_rows: torch.Tensor, generator: torch.Generator,
                  group_size: int | None = None) -> list[int]:
    """A random order of records in which the questions of an image come in adjacent groups.

    With `group_size` None an image's questions form one group; else each image's questions,
    in random order, are cut into groups of `group_size` (its last group maybe smaller).
    Groups come in random order and their questions in random order within each group, so a
    batch of B questions holds the questions of about B / `group_size` images and a trained
    encoder runs once per image and batch instead of once per question. Two or more
    questions of one image in a batch also show the model the same image with different
    answers, which is how it learns to compare a question with the image (easy-VQA's
    yes/no questions); a whole image's questions in a batch of a few images learn worse.
    """
    n = len(image_rows)
    num_images = int(image_rows.max()) + 1 if n else 0
    if group_size is None:  # each image one group, drawn as before image_group_size existed
        group = image_rows
        group_rank = torch.randperm(num_images, generator=generator)
        within = torch.rand(n, generator=generator, dtype=torch.double)
    else:
        within = torch.rand(n, generator=generator, dtype=torch.double)
        by_image = torch.argsort(image_rows.double() + within * 0.5)  # image, then random
        counts = torch.bincount(image_rows, minlength=num_images)
        first = torch.cumsum(counts, 0) - counts  # position of each image's first question
        place = torch.empty(n, dtype=torch.long)  # a question's place among its image's
        place[by_image] = torch.arange(n) - first[image_rows[by_image]]
        groups_of_image = (counts + group_size - 1) // group_size
        first_group = torch.cumsum(groups_of_image, 0) - groups_of_image  # of each image
        group = first_group[image_rows] + place // group_size
        num_groups = int(groups_of_image.sum())
        group_rank = torch.randperm(num_groups, generator=generator)
    key = group_rank[group].double() + within * 0.5
    return torch.argsort(key).tolist()


class GroupedSampler:
    """`grouped_order` as a sampler, seeded with seed + epoch (``set_epoch``), sharded over
    `world_size` processes as DistributedSampler shards its order: padded with its own first
    positions to a multiple of `world_size`, process `rank` takes positions rank,
    rank + world_size, ... So the b-th batches of all processes together are the b-th batch
    of one process (the same questions, the same summed gradient); each process then reads
    the images of its own share."""

    def __init__(self, image_rows: torch.Tensor, seed: int, group_size: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        self.image_rows = image_rows
        self.seed = seed
        self.group_size = group_size
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = grouped_order(self.image_rows, generator, self.group_size)
        order += order[:len(self) * self.world_size - len(order)]
        return iter(order[self.rank::self.world_size])

    def __len__(self) -> int:
        return -(-len(self.image_rows) // self.world_size)


class EpochBatches(BatchSampler):
    """A BatchSampler of one epoch's order (``set_epoch``) that can start after its first
    batches: a resumed run skips those it has trained on without reading them."""

    def __init__(self, sampler: DistributedSampler | GroupedSampler, batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=False)
        self.first = 0

    def set_epoch(self, epoch: int, first: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.first = first

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(super().__iter__(), self.first, None)


class BatchLoader(DataLoader):
    """A DataLoader whose workers' LrcnErrors reach the caller as raised: one line, not
    torch's "Caught LrcnError in DataLoader worker process 0. Original Traceback ..."."""

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return _plain_errors(super().__iter__())


def _plain_errors(batches: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    try:
        yield from batches
    except LrcnError as exc:
        message = str(exc)
        if not message.startswith("Caught LrcnError in DataLoader worker"):
            raise
        # torch's message ends with the worker's traceback, whose last line is
        # "lrcn.errors.LrcnError: <the original message>".
        raise LrcnError(message.rpartition("LrcnError: ")[2].strip()) from None


def _ignore_sigint(worker_id: int) -> None:
    """Workers leave Ctrl-C to the training process, which saves a checkpoint and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def batch_loader(
    split: EncodedSplit,
    num_answers: int,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    group_by_image: bool = False,
    image_group_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding whole batches of one process; the order depends only on `seed`
    and the epoch (`set_epoch`, 0 until then).

    The order is DistributedSampler's: ``torch.randperm(N)`` seeded with seed + epoch when
    shuffled (with `group_by_image`: `grouped_order`, in groups of at most `image_group_size`),
    else 0..N-1. Of
    `world_size` processes, process `rank` takes positions rank, rank + world_size, ... of it
    in batches of ``batch_size // world_size``, so the b-th batches of all processes together
    are positions b * batch_size to (b + 1) * batch_size of the order: the b-th batch of a
    single process. The order is padded with its own first positions to a multiple of
    `world_size` so that every process gets as many batches; a process's padding comes last,
    after its first `shard_length` questions. Workers are kept across epochs. Loading draws
    nothing from torch's global random state (workers are seeded from the loader's own
    generator), so that state is the model's alone (dropout) and a resumed run can restore it.
    """
    if batch_size % world_size:
        raise LrcnError(f"a batch of {batch_size} questions cannot be split evenly over "
                        f"{world_size} processes")
    if group_by_image and shuffle:
        sampler = GroupedSampler(split.image_rows, seed, image_group_size, rank, world_size)
    else:
        sampler = DistributedSampler(range(len(split)), num_replicas=world_size, rank=rank,
                                     shuffle=shuffle, seed=seed)
    return BatchLoader(
        BatchDataset(split, num_answers),
        sampler=EpochBatches(sampler, batch_size // world_size),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_ignore_sigint if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


def set_epoch(loader: DataLoader, epoch: int, first: int = 0) -> None:
    """Reshuffle a `batch_loader` for `epoch`, starting at its batch `first` (its workers, if
    any, are kept)."""
    loader.sampler.set_epoch(epoch, first)


def shard_length(num_questions: int, rank: int, world_size: int) -> int:
    """How many of process `rank`'s questions in `batch_loader` are real, not padding."""
    return len(range(rank, num_questions, world_size))


def iterate_images(images: ImageTable, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, uint8 pixels) chunks over every image of a table, in order."""
    for start in range(0, len(images), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(images)))
        yield rows, images.pixels(rows)
