"""The feature store: write/read round trip, key matching, integrity checks, pickling, memory."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lrcn.errors import LrcnError
from lrcn.features.store import FeatureStore, image_stem, partial_path
from lrcn.features.writer import StoreWriter

KEYS = ["train2014/COCO_train2014_000000000009.jpg", "train2014/COCO_train2014_000000000025.jpg",
        "val2014/COCO_val2014_000000000042.jpg", "a/x.jpg", "b/x.png"]


def write_store(out: Path, features: np.ndarray, mask: np.ndarray | None = None,
                keys: list[str] | None = None, layout: str = "grid",
                dtype: str = "float32") -> FeatureStore:
    keys = keys or [f"img{i}.jpg" for i in range(len(features))]
    writer = StoreWriter(out, len(features), features.shape[1:], dtype, layout, mask is not None,
                         keys, {"test": True})
    writer.write(0, features[:2], None if mask is None else mask[:2])
    writer.write(2, features[2:], None if mask is None else mask[2:])
    return writer.finish()


@pytest.fixture
def grids(tmp_path: Path) -> tuple[FeatureStore, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((5, 3, 2, 4)).astype(np.float32)
    mask = rng.random((5, 3, 2)) > 0.3
    return write_store(tmp_path / "store", features, mask, KEYS), features, mask


def test_read_returns_rows_in_requested_order_with_repeats(grids) -> None:
    store, features, mask = grids
    rows = [4, 0, 4, 2]
    got, got_mask = store.read(np.array(rows))
    assert got.dtype == torch.float32 and got.shape == (4, 3, 2, 4)
    np.testing.assert_array_equal(got.numpy(), features[rows])
    np.testing.assert_array_equal(got_mask.numpy(), mask[rows])
    got2, _ = store.read(torch.tensor([1]))
    np.testing.assert_array_equal(got2.numpy(), features[[1]])
    with pytest.raises(LrcnError, match="row 5 out of range"):
        store.read([5])


def test_properties_and_files(grids) -> None:
    store, features, _ = grids
    assert (len(store), store.count, store.item_shape, store.channels) == (5, 5, (3, 2, 4), 4)
    assert (store.layout, store.dtype, store.has_mask, store.keys) == ("grid", "float32", True, KEYS)
    assert sorted(p.name for p in store.path.iterdir()) == ["features.npy", "keys.json", "mask.npy",
                                                           "meta.json"]
    assert not partial_path(store.path).exists()
    meta = json.loads((store.path / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["source"] == {"test": True}
    assert np.load(store.path / "features.npy").shape == features.shape  # a plain .npy file


def test_unpadded_store_has_no_mask_and_float16(tmp_path: Path) -> None:
    features = np.linspace(-3, 3, 4 * 6 * 8).reshape(4, 6, 8).astype(np.float32)
    store = write_store(tmp_path / "s", features, layout="regions", dtype="float16")
    got, mask = store.read(range(4))
    assert mask is None and not (store.path / "mask.npy").exists()
    np.testing.assert_allclose(got.numpy(), features, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["train2014/COCO_train2014_000000000009.jpg",
                                  "COCO_train2014_000000000009.jpg.npy",
                                  "COCO_train2014_000000000009.JPG",
                                  "x/COCO_train2014_000000000009.npz",
                                  "COCO_train2014_000000000009"])
def test_image_stem(name: str) -> None:
    assert image_stem(name) == "COCO_train2014_000000000009"


def test_key_matching_exact_then_unique_stem(grids) -> None:
    store, _, _ = grids
    assert store.row_of("train2014/COCO_train2014_000000000009.jpg") == 0
    assert store.row_of("COCO_train2014_000000000009") == 0
    assert store.row_of("COCO_train2014_000000000025.jpg.npy") == 1
    assert store.row_of("a/x.jpg") == 3 and store.row_of("b/x.png") == 4  # exact keys still match
    assert store.row_of("x") is None  # a/x.jpg and b/x.png share the stem: ambiguous
    assert store.row_of("c/x.jpg") is None
    assert store.row_of("COCO_train2014_000000000010") is None
    rows = store.rows_for(["COCO_val2014_000000000042", "a/x.jpg"], "split val")
    assert rows.dtype == np.int64 and rows.tolist() == [2, 3]


def test_rows_for_names_missing_and_ambiguous_keys(grids) -> None:
    store, _, _ = grids
    with pytest.raises(LrcnError) as err:
        store.rows_for(["x.jpg", "nope1", "COCO_train2014_000000000009"], "split train")
    message = str(err.value)
    assert message.startswith("split train: 2 of 3 keys")
    assert "x.jpg, nope1" in message and "several store keys" in message and "'x'" in message


def test_writer_refuses_existing_store_partial_and_duplicate_keys(tmp_path: Path) -> None:
    features = np.zeros((3, 2, 2), np.float32)
    store = write_store(tmp_path / "s", features, layout="regions")
    with pytest.raises(LrcnError, match="already exists"):
        StoreWriter(store.path, 3, (2, 2), "float32", "regions", False, ["a", "b", "c"], {})
    with pytest.raises(LrcnError, match="'a' appears more than once"):
        StoreWriter(tmp_path / "t", 3, (2, 2), "float32", "regions", False, ["a", "b", "a"], {})
    partial_path(tmp_path / "u").mkdir()
    with pytest.raises(LrcnError, match="interrupted"):
        StoreWriter(tmp_path / "u", 3, (2, 2), "float32", "regions", False, ["a", "b", "c"], {})


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "s", 2, (2, 2), "float16", "regions", False, ["a", "b"], {})
    writer.write(0, np.ones((1, 2, 2)))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["features.npy", "mask.npy"])
def test_truncated_file_is_named_on_open(grids, name: str) -> None:
    store, _, _ = grids
    path = store.path / name
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 3)
    with pytest.raises(LrcnError) as err:
        FeatureStore.open(store.path)
    assert str(path) in str(err.value)
    assert f"{size - 3} bytes, expected {size}" in str(err.value) and "truncated" in str(err.value)


def test_open_checks_meta_and_keys(grids) -> None:
    store, _, _ = grids
    meta_path, keys_path = store.path / "meta.json", store.path / "keys.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(LrcnError, match=r"meta\.json: format_version 2 is not supported"):
        FeatureStore.open(store.path)
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "item_shape"}))
    with pytest.raises(LrcnError, match=r"meta\.json: missing field 'item_shape'"):
        FeatureStore.open(store.path)
    meta_path.write_text(json.dumps({**meta, "item_shape": [3, 2, 5]}))
    with pytest.raises(LrcnError, match=r"features\.npy: holds float32 \(5, 3, 2, 4\)"):
        FeatureStore.open(store.path)
    meta_path.write_text(json.dumps(meta))
    keys_path.write_text(json.dumps(KEYS[:4] + [KEYS[0]]))
    with pytest.raises(LrcnError, match=r"keys\.json: key .* appears more than once"):
        FeatureStore.open(store.path)
    keys_path.write_text(json.dumps(KEYS[:4]))
    with pytest.raises(LrcnError, match=r"keys\.json: 4 keys, meta\.json says count 5"):
        FeatureStore.open(store.path)
    with pytest.raises(LrcnError, match="feature store not found"):
        FeatureStore.open(store.path.parent / "nowhere")


@pytest.mark.parametrize("name", ["features.npy", "mask.npy", "keys.json"])
def test_verify_detects_a_flipped_byte(grids, name: str) -> None:
    store, _, _ = grids
    store.verify()  # intact
    path = store.path / name
    data = bytearray(path.read_bytes())
    at = len(data) - 10 if name != "keys.json" else data.index(b"COCO") + 1  # O -> N: still JSON
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    reopened = FeatureStore.open(store.path)  # sizes still fit: only hashing can tell
    with pytest.raises(LrcnError) as err:
        reopened.verify()
    assert str(path) in str(err.value) and "does not match" in str(err.value)


def test_pickle_round_trip_reopens_by_path(grids) -> None:
    store, features, mask = grids
    store.read([0])  # mapped now: the mapping itself must not travel
    clone = pickle.loads(pickle.dumps(store))
    got, got_mask = clone.read([3, 1])
    np.testing.assert_array_equal(got.numpy(), features[[3, 1]])
    np.testing.assert_array_equal(got_mask.numpy(), mask[[3, 1]])
    with clone:
        assert clone.keys == store.keys
    assert clone._features is None  # closed by the context manager


class _Rows(Dataset):
    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.store.read([i])[0][0]


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_reads_in_forked_dataloader_workers(grids) -> None:
    store, features, _ = grids
    store.read([0])  # the parent has a mapping open before forking
    loader = DataLoader(_Rows(store), batch_size=2, num_workers=2,
                        multiprocessing_context="fork")
    got = torch.cat(list(loader))
    np.testing.assert_array_equal(got.numpy(), features)


def _rss_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc needed")
def test_reading_the_whole_store_keeps_rss_flat(tmp_path: Path) -> None:
    # 96 rows of 1 MiB: without dropping the mapped pages, RSS would grow by ~96 MiB.
    rows, item = 96, (16, 16, 2048)
    writer = StoreWriter(tmp_path / "s", rows, item, "float16", "grid", False,
                         [f"k{i}" for i in range(rows)], {})
    for start in range(0, rows, 16):
        writer.write(start, np.full((16, *item), start, np.float16))
    store = writer.finish()
    store.read([0])
    before = _rss_file_kb()
    for start in range(0, rows, 8):
        got, _ = store.read(np.arange(start, start + 8))
        assert float(got[0, 0, 0, 0]) == start // 16 * 16
    grown_mib = (_rss_file_kb() - before) / 1024
    assert grown_mib < 24, f"file-backed RSS grew by {grown_mib:.0f} MiB reading a 96 MiB store"
