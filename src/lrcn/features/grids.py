"""The grids of a split's images, read batch by batch from one or more feature stores.

Users often keep one store per split (train2014, val2014, test2015: tens of GB each), so a
run names a list of stores and each image is read from the first store that holds it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from lrcn.errors import LrcnError
from lrcn.features.store import FeatureStore


def open_stores(paths: Sequence[str | Path]) -> list[FeatureStore]:
    """Open feature stores that can serve one model: same layout and item shape, and all with
    region boxes or none."""
    if not paths:
        raise LrcnError("no feature store given (data.features / --features STORE)")
    stores = [FeatureStore.open(p) for p in paths]
    first = stores[0]
    for store in stores[1:]:
        if (store.layout, tuple(store.item_shape)) != (first.layout, tuple(first.item_shape)):
            raise LrcnError(
                f"feature stores {first.path} and {store.path} do not match: "
                f"{first.layout} {tuple(first.item_shape)} vs {store.layout} "
                f"{tuple(store.item_shape)}; one model reads one kind of grid"
            )
        if store.has_boxes != first.has_boxes:
            with_, without = (first, store) if first.has_boxes else (store, first)
            raise LrcnError(
                f"feature store {with_.path} has region boxes and {without.path} has none; "
                "one model places all its regions alike (import both from files with boxes)"
            )
    return stores


class StoreGrids:
    """Implements ``GridSource`` (lrcn.data.batches) over feature stores.

    Args:
        stores: open stores, searched in order for each image.
        image_keys: the split's image keys; image row i is ``image_keys[i]``.
        where: names the split in messages.
    """

    def __init__(self, stores: Sequence[FeatureStore], image_keys: Sequence[str], where: str) -> None:
        self.stores = list(stores)
        self.item_shape = tuple(self.stores[0].item_shape)
        self.masked = any(s.has_mask for s in self.stores)
        store_of = np.full(len(image_keys), -1, dtype=np.int64)
        row_in_store = np.full(len(image_keys), -1, dtype=np.int64)
        for i, key in enumerate(image_keys):
            for j, store in enumerate(self.stores):
                row = store.row_of(key)
                if row is not None:
                    store_of[i], row_in_store[i] = j, row
                    break
        missing = [image_keys[i] for i in np.flatnonzero(store_of < 0)]
        if missing:
            names = ", ".join(str(s.path) for s in self.stores)
            raise LrcnError(
                f"{where}: {len(missing)} of {len(image_keys)} images have no features in "
                f"{names}; first: {', '.join(missing[:5])}"
            )
        self.store_of = store_of
        self.row_in_store = row_in_store

    @property
    def channels(self) -> int:
        return self.item_shape[-1]

    def _by_store(self, rows: torch.Tensor
                  ) -> Iterator[tuple[FeatureStore, np.ndarray, np.ndarray]]:
        """(store, positions in `rows`, rows in that store) for each store `rows` reads from."""
        rows_np = rows.numpy()
        store_of, row_in_store = self.store_of[rows_np], self.row_in_store[rows_np]
        for j, store in enumerate(self.stores):
            (at,) = np.nonzero(store_of == j)
            if len(at):
                yield store, at, row_in_store[at]

    def read(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Grids (U, *item_shape) float32 and masks (U, *item_shape[:-1]) or None."""
        if len(self.stores) == 1:
            return self.stores[0].read(self.row_in_store[rows.numpy()])
        grid = torch.empty(len(rows), *self.item_shape)
        mask = torch.ones(len(rows), *self.item_shape[:-1], dtype=torch.bool)
        for store, at, store_rows in self._by_store(rows):
            part, part_mask = store.read(store_rows)
            grid[at] = part
            if part_mask is not None:
                mask[at] = part_mask
        return grid, mask if self.masked else None

    def read_boxes(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Region boxes (U, R, 4) of the image rows, or None when the stores have none."""
        if not self.stores[0].has_boxes:  # open_stores: all have boxes, or none
            return None
        boxes = torch.zeros(len(rows), self.item_shape[0], 4)
        for store, at, store_rows in self._by_store(rows):
            boxes[at] = store.read_boxes(store_rows)
        return boxes
