"""How batches are made: images shared by their questions (`grouped_order`,
`train.image_group_size`), each image read once, tokens trimmed to the longest question."""

from __future__ import annotations

import itertools

import pytest
import torch

from lrcn.config.schedule import image_passes_per_epoch
from lrcn.data.batches import EncodedSplit, batch_loader, grouped_order, set_epoch


def _image_rows(counts: list[int]) -> torch.Tensor:
    """Image rows of questions, shuffled: image i has counts[i] questions."""
    rows = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)])
    return rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))]


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """(image, length) of each run of adjacent questions of one image."""
    return [(image, len(list(run))) for image, run in itertools.groupby(rows)]


@pytest.mark.parametrize("group_size", [None, 1, 2, 3, 7, 50])
def test_grouped_order_is_a_permutation_in_groups(group_size):
    counts = [1, 2, 3, 7, 10, 4, 9, 1, 12]
    image_rows = _image_rows(counts)
    order = grouped_order(image_rows, torch.Generator().manual_seed(0), group_size)
    assert sorted(order) == list(range(len(image_rows)))
    runs = _runs(image_rows[order].tolist())
    # Each image's questions come in ceil(n / k) groups of at most k (all of them: one group);
    # two groups of one image may meet, so count adjacent questions of one image as runs.
    k = group_size or max(counts)
    for image, n in enumerate(counts):
        lengths = [length for i, length in runs if i == image]
        assert sum(lengths) == n
        assert len(lengths) <= -(-n // k)
        if group_size is None:
            assert lengths == [n]


def test_grouped_order_depends_only_on_its_generator():
    image_rows = _image_rows([5, 6, 7, 8])
    first = grouped_order(image_rows, torch.Generator().manual_seed(3), 2)
    assert first == grouped_order(image_rows, torch.Generator().manual_seed(3), 2)
    assert first != grouped_order(image_rows, torch.Generator().manual_seed(4), 2)


def _pixel_split(counts: list[int]) -> EncodedSplit:
    image_rows = _image_rows(counts)
    n = len(image_rows)
    return EncodedSplit(
        name="tiny", records=[None] * n, tokens=torch.zeros(n, 3, dtype=torch.long), image_rows=image_rows,
        image_keys=[str(i) for i in range(len(counts))], images=_Pixels(len(counts)),
        target_index=torch.zeros(n, 1, dtype=torch.long), target_score=torch.ones(n, 1),
        answerable=None)


class _Pixels:
    """An image table whose image i is filled with the value i."""

    def __init__(self, num_images: int) -> None:
        self.num_images = num_images

    def pixels(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).clone()


@pytest.mark.parametrize(("group_size", "most_images"), [(None, 2), (2, 2), (1, 4)])
def test_batches_read_each_image_once(group_size, most_images):
    """A batch reads each of its images once. With every image's questions a multiple of the
    group size, a batch of 4 holds whole groups: at most 4 / k images (None: an image ends
    and the next begins), and an epoch at most image_passes_per_epoch passes."""
    counts = [10, 8, 12, 10, 6, 12, 10, 4]
    split = _pixel_split(counts)
    loader = batch_loader(split, 1, batch_size=4, shuffle=True, seed=5, group_by_image=True,
                          image_group_size=group_size)
    per_epoch = image_passes_per_epoch(counts, pixels=True, grouped=True, group_size=group_size)
    orders = []
    for epoch in range(2):
        set_epoch(loader, epoch)
        passes, rows = 0, []
        for batch in loader:
            images = batch["pixels"][:, 0, 0, 0].long()
            assert torch.equal(images[batch["image_index"]], split.image_rows[batch["rows"]])
            assert len(images.unique()) == len(images) <= most_images
            passes += len(images)
            rows += batch["rows"].tolist()
        assert sorted(rows) == list(range(sum(counts)))
        if group_size is not None:
            assert passes <= per_epoch
        orders.append(rows)
    assert orders[0] != orders[1]  # each epoch its own order


def test_batches_keep_the_columns_of_their_longest_question():
    """Tokens come trimmed to the longest question of each batch, each row unchanged."""
    split = _pixel_split([4, 4, 4, 4])
    lengths = torch.tensor([1, 2, 3, 4, 1, 1, 1, 1, 2, 2, 2, 2, 5, 1, 1, 1])
    split.tokens = torch.zeros(16, 7, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        split.tokens[row, :n] = torch.arange(2, 2 + n)
    loader = batch_loader(split, 1, batch_size=4, shuffle=False)
    widths = []
    for batch in loader:
        rows = batch["rows"]
        widths.append(batch["tokens"].shape[1])
        assert widths[-1] == int(lengths[rows].max())
        assert torch.equal(batch["tokens"], split.tokens[rows, :widths[-1]])
        assert not split.tokens[rows, widths[-1]:].any()  # only pads were left out
    assert widths == [4, 1, 2, 5]
