"""easy-VizWiz: the bundled VizWiz-style dataset generated from easy-VQA."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import easy_vqa
import numpy as np
import pytest
from PIL import Image

from lrcn.data import build_easy_vizwiz, ensure_easy_vizwiz, load_split, read_vizwiz
from lrcn.data.generators import easy_vizwiz as ev
from lrcn.data.registry import dataset_metric, dataset_names, default_splits
from lrcn.data.vizwiz import CONFIDENCES, VIZWIZ_SPLITS, vizwiz_image_name
from lrcn.errors import LrcnError

SIZES = {"train": 90, "val": 30, "test": 30}
TINY = {"train": 12, "val": 6, "test": 6}
UNANSWERABLE_KINDS = {"blurred", "dark", "cropped", "absent"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small build shared (read-only) by the module."""
    return build_easy_vizwiz(tmp_path_factory.mktemp("ev") / "easy-vizwiz", sizes=SIZES)


@pytest.fixture
def small_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds that use the default sizes (ensure_easy_vizwiz, the registry) stay tiny."""
    monkeypatch.setattr(ev.EASY_VIZWIZ, "default_sizes", TINY)


def meta(root: Path) -> dict[str, Any]:
    return json.loads((root / ev.META_FILE).read_text(encoding="utf-8"))


def annotations(root: Path, split: str) -> list[dict[str, Any]]:
    return json.loads((root / "Annotations" / f"{split}.json").read_text(encoding="utf-8"))


def records_with_provenance(root: Path, split: str) -> list[tuple[dict, dict]]:
    provenance = meta(root)["records"][split]
    records = annotations(root, split)
    assert [p["image"] for p in provenance] == [r["image"] for r in records]
    return list(zip(records, provenance))


def source_path(key: str) -> Path:
    split, image_id = key.split("/")
    paths = (easy_vqa.get_train_image_paths() if split == "train"
             else easy_vqa.get_test_image_paths())
    return Path(paths[int(image_id)])


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def background(pixels: np.ndarray) -> np.ndarray:
    """The commonest colour: easy-VQA shapes cover at most a quarter of the frame."""
    values, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    return values[counts.argmax()]


def high_frequency(pixels: np.ndarray) -> float:
    grey = pixels.astype(np.float64).mean(axis=-1)
    return float((np.diff(grey, axis=0) ** 2).mean() + (np.diff(grey, axis=1) ** 2).mean())


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@cache
def easyvqa_questions_by_image(split: str) -> dict[int, set[tuple[str, str]]]:
    texts, answers, ids = (easy_vqa.get_train_questions() if split == "train"
                           else easy_vqa.get_test_questions())
    pairs: dict[int, set[tuple[str, str]]] = {}
    for text, answer, image_id in zip(texts, answers, ids):
        pairs.setdefault(image_id, set()).add((text, answer))
    return pairs


def easyvqa_questions(key: str) -> set[tuple[str, str]]:
    """(question, answer) pairs easy-VQA asks about a source image."""
    split, image_id = key.split("/")
    return easyvqa_questions_by_image(split)[int(image_id)]


# --- the layout -------------------------------------------------------------------------


def test_read_every_split(built: Path) -> None:
    for split in VIZWIZ_SPLITS:
        data = read_vizwiz(built, split)
        assert len(data.records) == SIZES[split]
        assert [r.question_id for r in data.records] == [
            vizwiz_image_name(split, i) for i in range(SIZES[split])]
        assert data.has_answers == (split != "test")
    assert all(set(r) == {"image", "question"} for r in annotations(built, "test"))
    assert meta(built)["sizes"] == SIZES and meta(built)["version"] == ev.VERSION


def test_meta_file_keeps_its_name_and_fields(built: Path) -> None:
    """Builds in users' caches stay valid: same folder, meta file name and fields."""
    assert ev.META_FILE == "easy_vizwiz.json" and ev.EASY_VIZWIZ.meta_file == ev.META_FILE
    assert list(meta(built)) == ["name", "version", "seed", "sizes", "mix", "source", "records"]
    assert meta(built)["name"] == "easy-vizwiz" and meta(built)["seed"] == ev.DEFAULT_SEED
    assert meta(built)["mix"] == ev.MIX and meta(built)["source"].startswith("easy-vqa ")
    assert sorted(p.name for p in built.iterdir()) == sorted(
        ["Annotations", *VIZWIZ_SPLITS, ev.META_FILE])


def test_images_are_jpegs_of_the_stated_size(built: Path) -> None:
    for split in VIZWIZ_SPLITS:
        names = sorted(p.name for p in (built / split).iterdir())
        assert names == sorted(r["image"] for r in annotations(built, split))
        for name in names:
            with Image.open(built / split / name) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert image.size == (ev.IMAGE_SIZE, ev.IMAGE_SIZE)
                image.load()


@pytest.mark.parametrize("split", VIZWIZ_SPLITS)
def test_mix_of_kinds(built: Path, split: str) -> None:
    kinds = Counter(p["kind"] for p in meta(built)["records"][split])
    n = SIZES[split]
    unusable = kinds["blurred"] + kinds["dark"] + kinds["cropped"]
    assert abs(kinds["answerable"] - ev.MIX["answerable"] * n) <= 1
    assert abs(unusable - ev.MIX["unusable"] * n) <= 1
    assert abs(kinds["absent"] - ev.MIX["absent"] * n) <= 1
    assert max(kinds[k] for k in ev.UNUSABLE_KINDS) - min(kinds[k] for k in ev.UNUSABLE_KINDS) <= 1
    assert min(kinds[k] for k in ev.UNUSABLE_KINDS) >= 1


def test_sources_keep_splits_apart(built: Path) -> None:
    sources = {s: {p["source"] for p in meta(built)["records"][s]} for s in VIZWIZ_SPLITS}
    assert all(k.startswith("train/") for k in sources["train"])
    assert all(k.startswith("test/") for k in sources["val"] | sources["test"])
    assert not sources["val"] & sources["test"]


def test_answers(built: Path) -> None:
    for split in ("train", "val"):
        for record, prov in records_with_provenance(built, split):
            answers = Counter(a["answer"] for a in record["answers"])
            top, count = answers.most_common(1)[0]
            assert all(a["answer_confidence"] in CONFIDENCES for a in record["answers"])
            if prov["kind"] == "answerable":
                assert record["answerable"] == 1 and count >= 8  # a perfect model scores 100
                assert record["answer_type"] == ("yes/no" if top in ("yes", "no") else "other")
                # easy-VQA's own question and answer, or a presupposing one that is true
                assert ((record["question"], top) in easyvqa_questions(prov["source"])
                        or top in (prov["shape"], prov["color"]))
            else:
                assert record["answerable"] == 0 and record["answer_type"] == "unanswerable"
                assert top == "unanswerable" and count >= 8


def test_unusable_photos(built: Path) -> None:
    seen = Counter()
    for split in VIZWIZ_SPLITS:
        for record, prov in records_with_provenance(built, split):
            photo, source = rgb(built / split / record["image"]), rgb(source_path(prov["source"]))
            kind = prov["kind"]
            seen[kind] += 1
            if kind == "cropped":  # background only: the shape's colour is nowhere
                assert np.abs(photo - background(source)).max() < 30
                shape_color = np.array(ev.COLORS[prov["color"]])
                assert np.abs(photo - shape_color).max(axis=-1).min() > 80
            elif kind == "dark":
                assert photo.mean() < 30
            elif kind == "blurred":
                assert high_frequency(photo) < 0.1 * high_frequency(source)
            else:  # usable photos: bright, and the shape's colour is there
                assert photo.mean() > 120
                shape_color = np.array(ev.COLORS[prov["color"]])
                assert np.abs(photo - shape_color).max(axis=-1).min() < 70
    assert set(seen) == set(ev.KINDS)


def test_absent_questions_ask_about_what_is_not_there(built: Path) -> None:
    count = 0
    for split in VIZWIZ_SPLITS:
        for record, prov in records_with_provenance(built, split):
            if prov["kind"] != "absent":
                continue
            count += 1
            words = record["question"].rstrip("?").split()
            named = [w for w in words if w in ev.COLORS or w in ev.SHAPES]
            assert len(named) == 1 and named[0] not in (prov["shape"], prov["color"])
            if named[0] in ev.COLORS:  # checked on the pixels too: none of that colour
                target = np.array(ev.COLORS[named[0]])
                assert not (rgb(source_path(prov["source"])) == target).all(axis=-1).any()
            else:  # and against easy-VQA's own answers about the image
                pairs = easyvqa_questions(prov["source"])
                assert all(a != named[0] for _, a in pairs)
                assert (f"does the image contain a {named[0]}?", "yes") not in pairs
    assert count == sum(round(ev.MIX["absent"] * n) for n in SIZES.values())


# --- determinism and atomic builds --------------------------------------------------------


def test_same_seed_same_bytes(built: Path, tmp_path: Path) -> None:
    again = build_easy_vizwiz(tmp_path / "again", sizes=SIZES)
    assert digests(again) == digests(built)
    seed0 = build_easy_vizwiz(tmp_path / "seed0", seed=0, sizes=TINY)
    seed1 = build_easy_vizwiz(tmp_path / "seed1", seed=1, sizes=TINY)
    assert annotations(seed0, "train") != annotations(seed1, "train")


def test_build_refuses_an_existing_folder_and_bad_sizes(tmp_path: Path) -> None:
    (tmp_path / "there").mkdir()
    with pytest.raises(LrcnError, match="already exists"):
        build_easy_vizwiz(tmp_path / "there", sizes=TINY)
    with pytest.raises(LrcnError, match="for each of train, val, test"):
        build_easy_vizwiz(tmp_path / "a", sizes={"train": 5})
    with pytest.raises(LrcnError, match=r"sizes\['val'\] must be an integer >= 0, got -1"):
        build_easy_vizwiz(tmp_path / "a", sizes={**TINY, "val": -1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there"]


def failing_save(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Make the image writer fail once ``after`` images are written."""
    real, written = ev._save_jpeg, []

    def save(pixels: np.ndarray, path: Path) -> None:
        if len(written) == after:
            raise OSError("disk full")
        written.append(path)
        real(pixels, path)

    monkeypatch.setattr(ev, "_save_jpeg", save)


def test_a_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       small_defaults: None) -> None:
    failing_save(monkeypatch, after=15)
    with pytest.raises(OSError, match="disk full"):
        build_easy_vizwiz(tmp_path / "ev", sizes=TINY)
    with pytest.raises(OSError, match="disk full"):
        ensure_easy_vizwiz(tmp_path / "ev")
    assert list(tmp_path.iterdir()) == []


# --- ensure_easy_vizwiz and the registry ----------------------------------------------------


def test_ensure_reuses_a_complete_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = build_easy_vizwiz(tmp_path / "ev", sizes=TINY)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def no_rebuild(*args: Any) -> None:
        raise AssertionError("rebuilt a complete build")

    monkeypatch.setattr(ev.EASY_VIZWIZ, "generate", no_rebuild)
    assert ensure_easy_vizwiz(root) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_ensure_rebuilds_without_the_marker(tmp_path: Path, small_defaults: None) -> None:
    root = build_easy_vizwiz(tmp_path / "ev", sizes={"train": 3, "val": 3, "test": 3})
    (root / ev.META_FILE).unlink()
    assert ensure_easy_vizwiz(root) == root
    assert meta(root)["sizes"] == TINY
    assert len(annotations(root, "train")) == TINY["train"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]  # no temporary folders left


def test_ensure_will_not_replace_foreign_files(tmp_path: Path, small_defaults: None) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(LrcnError, match=r"no complete easy-VizWiz build .*notes\.txt"):
        ensure_easy_vizwiz(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_ensure_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               small_defaults: None) -> None:
    monkeypatch.setenv("LRCN_DATA_HOME", str(tmp_path / "data"))
    root = ensure_easy_vizwiz()
    assert root == tmp_path / "data" / f"easy-vizwiz-v{ev.VERSION}"
    assert (root / ev.META_FILE).is_file()
    monkeypatch.delenv("LRCN_DATA_HOME")
    assert ev.default_easy_vizwiz_root() == (
        Path(os.path.expanduser("~")) / ".cache" / "lrcn" / f"easy-vizwiz-v{ev.VERSION}")


def test_registry(tmp_path: Path, small_defaults: None) -> None:
    assert "easy-vizwiz" in dataset_names()
    assert default_splits("easy-vizwiz") == ("train", "val")
    assert dataset_metric("easy-vizwiz") == "vizwiz"
    with pytest.raises(LrcnError, match="easy-vizwiz has no split 'train2014'"):
        load_split("easy-vizwiz", str(tmp_path / "ev"), "train2014")
    assert not (tmp_path / "ev").exists()  # nothing built for a bad split
    train = load_split("easy-vizwiz", str(tmp_path / "ev"), "train")
    assert len(train.records) == TINY["train"] and train.image_root == tmp_path / "ev"
    assert train.image_path(train.records[0].image_key).is_file()
    assert load_split("easy-vizwiz", str(tmp_path / "ev"), "test").has_answers is False
