"""relational-shapes: scenes, their questions, and the bundled dataset in the VQA-v2 layout."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lrcn.data import RELATIONAL_SHAPES, load_split
from lrcn.data.generators import relational_shapes as rs
from lrcn.data.registry import dataset_metric, dataset_names, default_splits
from lrcn.data.generators.shapes_scenes import (
    BACKGROUND, COLORS, QUESTION_FAMILIES, RELATIONAL, TEMPLATES, Scene, SceneObject,
    SceneStyle, ask, draw_scene, make_scene,
)
from lrcn.data.vqa2 import annotations_filename, check_images, image_key, questions_filename
from lrcn.errors import LrcnError

TINY = {"train2014": 3, "val2014": 2}  # images per split
STYLE = SceneStyle()
ANSWER_TYPES = {"count same shape": "number", "same shape": "yes/no"}  # the rest: other

# --- helpers --------------------------------------------------------------------------


def template_pattern(template: str) -> re.Pattern[str]:
    """A template as a regex whose groups are its colour names."""
    return re.compile("^" + re.escape(template).replace(r"\{a\}", "(\\w+)")
                      .replace(r"\{b\}", "(\\w+)") + "$")


PATTERNS = {family: [template_pattern(t) for t in templates]
            for family, templates in TEMPLATES.items()}


def named_colors(family: str, question: str) -> tuple[str, ...]:
    """The colours a question names; fails unless it is one of the family's templates."""
    for pattern in PATTERNS[family]:
        match = pattern.match(question)
        if match:
            assert all(c in COLORS for c in match.groups()), question
            return match.groups()
    raise AssertionError(f"{question!r} is no {family!r} question")


def detect_objects(pixels: np.ndarray) -> dict[str, tuple[str, float, float]]:
    """colour -> (shape, x, y) read off a drawn scene: each object is the pixels of its
    colour; its bounding box gives the centre, the share it fills gives the shape
    (square 1, circle about 0.8, triangle 0.5)."""
    pixels = pixels.astype(np.int16)
    found = {}
    for name, rgb in COLORS.items():
        ys, xs = np.nonzero(np.abs(pixels - np.array(rgb)).max(axis=-1) < 60)
        if len(xs) == 0:
            continue
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        fill = len(xs) / box
        shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
        found[name] = (shape, (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2)
    return found


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- scenes -----------------------------------------------------------------------------


def test_objects_never_overlap() -> None:
    rng = np.random.default_rng(0)
    r = STYLE.object_size / 2
    for _ in range(30):
        scene = make_scene(rng, STYLE)
        for o in scene.objects:  # inside the frame
            assert r <= o.x <= STYLE.image_size - r and r <= o.y <= STYLE.image_size - r
        for a, b in itertools.combinations(scene.objects, 2):  # centres apart
            assert np.hypot(a.x - b.x, a.y - b.y) >= 1.5 * STYLE.object_size
        image = draw_scene(scene, STYLE)
        for o in scene.objects:  # nothing drawn over any object: all its pixels are there
            alone = draw_scene(Scene((o,), scene.size), STYLE)
            mask = (alone != BACKGROUND).any(axis=-1)
            assert mask.sum() >= 40
            assert (image[mask] == COLORS[o.color]).all()
            assert ((image == COLORS[o.color]).all(axis=-1) == mask).all()


def test_colours_are_distinct_and_counts_within_the_style() -> None:
    style = SceneStyle(objects=(2, 4), colors=("red", "green", "blue", "gray"),
                       shapes=("circle", "triangle"))
    rng = np.random.default_rng(1)
    counts = Counter()
    for _ in range(200):
        scene = make_scene(rng, style)
        colors = [o.color for o in scene.objects]
        assert len(set(colors)) == len(colors) and set(colors) <= set(style.colors)
        assert {o.shape for o in scene.objects} <= set(style.shapes)
        assert scene.size == style.image_size
        counts[len(scene.objects)] += 1
    assert set(counts) == {2, 3, 4}
    default = [make_scene(rng, STYLE) for _ in range(20)]
    assert {len(s.objects) for s in default} == {6}


def test_same_seed_same_scene() -> None:
    a = make_scene(np.random.default_rng(7), STYLE)
    assert make_scene(np.random.default_rng(7), STYLE) == a
    assert make_scene(np.random.default_rng(8), STYLE) != a


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"colors": ("red", "red", "blue")}, "distinct names"),
    ({"colors": ("red", "purple")}, "distinct names"),
    ({"shapes": ()}, "distinct names"),
    ({"objects": (0, 3)}, r"1 <= fewest <= most <= 6"),
    ({"objects": (4, 3)}, r"1 <= fewest <= most <= 6"),
    ({"objects": (2, 7)}, r"1 <= fewest <= most <= 6"),
    ({"image_size": 25}, "too small"),
])
def test_style_refuses_what_it_cannot_draw(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SceneStyle(**kwargs)


def test_crowded_style_fails_instead_of_hanging() -> None:
    style = SceneStyle(image_size=30, object_size=10)  # room for 4 objects, not 6
    with pytest.raises(ValueError, match="could not place 6 objects"):
        make_scene(np.random.default_rng(0), style)


def test_drawn_shapes_and_places() -> None:
    scene = make_scene(np.random.default_rng(3), STYLE)
    found = detect_objects(draw_scene(scene, STYLE))
    assert set(found) == {o.color for o in scene.objects}
    for o in scene.objects:
        shape, x, y = found[o.color]
        assert shape == o.shape and abs(x - o.x) <= 1 and abs(y - o.y) <= 1


# --- questions on a hand-made scene ---------------------------------------------------------

# 75x75, so the halves split at 37.5. Distances from each object, nearest first:
# red    (10,10): green 18, yellow 46.7, orange 52, blue 55.0, gray 76.4
# green  (28,10): red 18, yellow 36.8, blue 37.1, orange 55.0, gray 64.9
# blue   (65,12): green 37.1, yellow 39.4, gray 52.0, red 55.0, orange 74.3
# orange (10,62): yellow 36.7, red 52, gray 54.0, green 55.0, blue 74.3
# gray   (64,64): yellow 29.7, blue 52.0, orange 54.0, green 64.9, red 76.4
# yellow (42,44): gray 29.7, orange 36.7, green 36.8, blue 39.4, red 46.7
HAND = Scene((
    SceneObject("red", "square", 10, 10), SceneObject("green", "circle", 28, 10),
    SceneObject("blue", "triangle", 65, 12), SceneObject("orange", "square", 10, 62),
    SceneObject("gray", "circle", 64, 64), SceneObject("yellow", "square", 42, 44),
), 75)
SHAPE = {o.color: o.shape for o in HAND.objects}
EXPECTED = {
    "shape": SHAPE,
    "left or right": {"red": "left", "green": "left", "blue": "right", "orange": "left",
                      "gray": "right", "yellow": "right"},
    "top or bottom": {"red": "top", "green": "top", "blue": "top", "orange": "bottom",
                      "gray": "bottom", "yellow": "bottom"},
    "nearest shape": {"red": "circle", "green": "square", "blue": "circle",
                      "orange": "square", "gray": "square", "yellow": "circle"},
    "furthest shape": {"red": "circle", "green": "circle", "blue": "square",
                       "orange": "triangle", "gray": "square", "yellow": "square"},
    # the named object counts itself: 3 squares, 2 circles, 1 triangle
    "count same shape": {"red": "3", "green": "2", "blue": "1", "orange": "3", "gray": "2",
                         "yellow": "3"},
}


@pytest.mark.parametrize("family", QUESTION_FAMILIES)
def test_answers_on_a_hand_made_scene(family: str) -> None:
    asked = set()
    for seed in range(80):
        q = ask(HAND, family, np.random.default_rng(seed))
        assert q is not None and q.family == family
        assert q.answer_type == ANSWER_TYPES.get(family, "other")
        colors = named_colors(family, q.question)
        if family == "same shape":
            a, b = colors
            assert a != b
            assert q.answer == ("yes" if SHAPE[a] == SHAPE[b] else "no"), q.question
        else:
            assert q.answer == EXPECTED[family][colors[0]], q.question
        asked.add(colors)
    if family == "same shape":
        assert {"yes", "no"} == {("yes" if SHAPE[a] == SHAPE[b] else "no") for a, b in asked}
    else:
        assert {c for (c,) in asked} == set(SHAPE)  # every object was asked about


def test_relations_need_two_objects() -> None:
    single = Scene((SceneObject("red", "circle", 20, 50),), 75)
    rng = np.random.default_rng(0)
    for family in QUESTION_FAMILIES:
        q = ask(single, family, rng)
        assert (q is None) == (family in RELATIONAL)
    assert ask(single, "left or right", rng).answer == "left"
    assert ask(single, "top or bottom", rng).answer == "bottom"


# --- write_vqa2_layout ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1000, -1, True, 2.5])
def test_questions_per_image_is_checked(tmp_path: Path, n: Any) -> None:
    with pytest.raises(LrcnError, match=rf"questions_per_image must be an integer from 1 to "
                                        rf"999 .*got {re.escape(repr(n))}"):
        rs.write_vqa2_layout(tmp_path, 0, {"train2014": 1}, questions_per_image=n)
    assert names(tmp_path) == []


def test_families_are_checked(tmp_path: Path) -> None:
    with pytest.raises(LrcnError, match="question families must be some of"):
        rs.write_vqa2_layout(tmp_path, 0, {"train2014": 1}, families=("colour",))
    with pytest.raises(LrcnError, match="question families must be some of"):
        rs.write_vqa2_layout(tmp_path, 0, {"train2014": 1}, families=())
    with pytest.raises(LrcnError, match="cannot pose any of the families"):
        rs.write_vqa2_layout(tmp_path, 0, {"train2014": 1}, families=RELATIONAL,
                             style=SceneStyle(objects=(1, 2)))
    assert names(tmp_path) == []


def test_question_ids_at_both_ends_of_questions_per_image(tmp_path: Path) -> None:
    for n in (1, 999):
        out = tmp_path / str(n)
        out.mkdir()
        rs.write_vqa2_layout(out, 0, {"train2014": 2}, questions_per_image=n)
        ids = [q["question_id"] for q in
               read_json(out / questions_filename("train2014"))["questions"]]
        assert ids == [i * 1000 + j for i in (1, 2) for j in range(n)]


def test_single_object_scenes_pass_relational_turns_on(tmp_path: Path) -> None:
    about = rs.write_vqa2_layout(tmp_path, 0, {"train2014": 4}, style=SceneStyle(objects=(1, 1)),
                                 questions_per_image=6)
    annotations = read_json(tmp_path / annotations_filename("train2014"))["annotations"]
    assert len(annotations) == 24
    assert {a["question_type"] for a in annotations} == {"shape", "left or right",
                                                         "top or bottom"}
    assert about["style"]["objects"] == [1, 1] and about["questions_per_image"] == 6


def test_on_scene_sees_each_drawn_scene(tmp_path: Path) -> None:
    seen: list[tuple[str, int, Any]] = []
    rs.write_vqa2_layout(tmp_path, 3, {"train2014": 3, "val2014": 2},
                         on_scene=lambda split, i, scene: seen.append((split, i, scene)))
    assert [(s, i) for s, i, _ in seen] == [("train2014", 1), ("train2014", 2),
                                           ("train2014", 3), ("val2014", 4), ("val2014", 5)]
    for split, image_id, scene in seen:  # the scene handed over is the one in the image
        image = Image.open(tmp_path / image_key(split, image_id)).convert("RGB")
        for o in scene.objects:
            assert np.abs(np.array(image.getpixel((round(o.x), round(o.y))), dtype=int)
                          - COLORS[o.color]).max() < 40
    # the hook changes nothing that is written
    other = tmp_path / "again"
    other.mkdir()
    rs.write_vqa2_layout(other, 3, {"train2014": 3, "val2014": 2})
    for name in (questions_filename("train2014"), annotations_filename("val2014")):
        assert (other / name).read_bytes() == (tmp_path / name).read_bytes()


# --- the bundled dataset ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny build shared (read-only) by the module."""
    return RELATIONAL_SHAPES.build(tmp_path_factory.mktemp("rs") / "relational-shapes", 0, TINY)


def test_files_and_meta(built: Path) -> None:
    assert names(built) == sorted([
        "relational_shapes.json", *rs.SPLITS, *(questions_filename(s) for s in rs.SPLITS),
        *(annotations_filename(s) for s in rs.SPLITS)])
    first = 1
    for split, n in TINY.items():  # image ids run on across the splits, as COCO's do
        assert names(built / split) == [f"COCO_{split}_{i:012d}.jpg"
                                        for i in range(first, first + n)]
        first += n
        for path in (built / split).iterdir():
            with Image.open(path) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert image.size == (STYLE.image_size, STYLE.image_size)
    meta = read_json(built / "relational_shapes.json")
    assert meta == {
        "name": "relational-shapes", "version": rs.VERSION, "seed": 0, "sizes": TINY,
        "questions_per_image": rs.QUESTIONS_PER_IMAGE, "families": list(QUESTION_FAMILIES),
        "style": {"image_size": 75, "object_size": 10, "objects": [6, 6],
                  "colors": list(COLORS), "shapes": ["circle", "square", "triangle"]},
    }


def test_splits_can_be_joined(built: Path) -> None:
    joined = load_split("relational-shapes", str(built), "train2014+val2014")
    assert len(joined.records) == sum(TINY.values()) * rs.QUESTIONS_PER_IMAGE


@pytest.mark.parametrize("split", rs.SPLITS)
def test_read_back_through_the_registry(built: Path, split: str) -> None:
    data = load_split("relational-shapes", str(built), split)
    n_images = TINY[split]
    first = 1 + sum(TINY[s] for s in rs.SPLITS[:rs.SPLITS.index(split)])
    assert data.name == split and data.image_root == built
    assert [r.question_id for r in data.records] == [
        i * 1000 + j for i in range(first, first + n_images)
        for j in range(rs.QUESTIONS_PER_IMAGE)]
    check_images(data)
    for r in data.records:
        assert r.image_key == f"{split}/COCO_{split}_{r.question_id // 1000:012d}.jpg"
        assert r.question_type in QUESTION_FAMILIES
        named_colors(r.question_type, r.question)  # the text is of its family
        assert r.answers == (r.multiple_choice_answer,) * 10
        assert r.answer_type == ANSWER_TYPES.get(r.question_type, "other")
    families = Counter(r.question_type for r in data.records)  # they take turns
    assert set(families) == set(QUESTION_FAMILIES)
    assert max(families.values()) - min(families.values()) <= 1


def test_answers_match_the_images(built: Path) -> None:
    """Every answer agrees with the objects read off its JPEG (skipping near-ties)."""
    checked = Counter()
    half = STYLE.image_size / 2
    for split in rs.SPLITS:
        for r in load_split("relational-shapes", str(built), split).records:
            with Image.open(built / r.image_key) as image:
                found = detect_objects(np.asarray(image.convert("RGB")))
            assert len(found) == 6
            colors = named_colors(r.question_type, r.question)
            shape, x, y = found[colors[0]]
            others = sorted((np.hypot(x - ox, y - oy), s) for c, (s, ox, oy) in found.items()
                            if c != colors[0])
            family, answer = r.question_type, r.multiple_choice_answer
            if family == "shape":
                expected = shape
            elif family == "left or right" and abs(x - half) > 1.5:
                expected = "left" if x < half else "right"
            elif family == "top or bottom" and abs(y - half) > 1.5:
                expected = "top" if y < half else "bottom"
            elif family == "nearest shape" and others[1][0] - others[0][0] > 2:
                expected = others[0][1]
            elif family == "furthest shape" and others[-1][0] - others[-2][0] > 2:
                expected = others[-1][1]
            elif family == "count same shape":
                expected = str(sum(s == shape for s, _, _ in found.values()))
            elif family == "same shape":
                expected = "yes" if shape == found[colors[1]][0] else "no"
            else:
                continue
            assert answer == expected, (r.image_key, r.question)
            checked[family] += 1
    assert len(checked) >= 5 and sum(checked.values()) >= 40


def test_same_seed_same_bytes(built: Path, tmp_path: Path) -> None:
    again = RELATIONAL_SHAPES.build(tmp_path / "again", 0, TINY)
    assert digests(again) == digests(built)
    other = digests(RELATIONAL_SHAPES.build(tmp_path / "seed1", 1, TINY))
    for path in (questions_filename("train2014"), annotations_filename("val2014"),
                 "train2014/COCO_train2014_000000000001.jpg"):
        assert other[path] != digests(built)[path]


def test_registry_entry() -> None:
    assert "relational-shapes" in dataset_names()
    assert default_splits("relational-shapes") == ("train2014", "val2014")
    assert dataset_metric("relational-shapes") == "vqa"


def test_unknown_split_is_refused_before_building(tmp_path: Path) -> None:
    with pytest.raises(LrcnError, match="relational-shapes has no split 'test2015'; known "
                                        "splits: train2014, val2014"):
        load_split("relational-shapes", str(tmp_path / "rs"), "test2015")
    assert names(tmp_path) == []


# --- build and ensure ----------------------------------------------------------------------


@pytest.fixture
def small_defaults(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Builds that use the default sizes (ensure, the registry) stay tiny."""
    sizes = {"train2014": 2, "val2014": 1}
    monkeypatch.setattr(RELATIONAL_SHAPES, "default_sizes", sizes)
    return sizes


def no_rebuild(*args: Any) -> None:
    raise AssertionError("rebuilt a complete build")


@pytest.mark.parametrize(("sizes", "match"), [
    ({"train2014": 3}, r"relational-shapes sizes must give a number of images for each of "
                       r"train2014, val2014, got \{'train2014': 3\}"),
    ({**TINY, "test2015": 1}, "for each of train2014, val2014"),
    ([3, 2], "for each of train2014, val2014"),
    ({**TINY, "train2014": -1}, r"sizes\['train2014'\] must be an integer >= 0, got -1"),
    ({**TINY, "val2014": 1.5}, r"sizes\['val2014'\] must be an integer >= 0, got 1\.5"),
    ({**TINY, "val2014": True}, r"sizes\['val2014'\] must be an integer >= 0, got True"),
])
def test_bad_sizes_are_refused(tmp_path: Path, sizes: Any, match: str) -> None:
    with pytest.raises(LrcnError, match=match):
        RELATIONAL_SHAPES.build(tmp_path / "rs", 0, sizes)
    assert names(tmp_path) == []


def test_bad_default_sizes_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RELATIONAL_SHAPES, "default_sizes", {"train2014": 2})
    with pytest.raises(LrcnError, match="for each of train2014, val2014"):
        RELATIONAL_SHAPES.ensure(tmp_path / "rs")
    assert names(tmp_path) == []


def test_build_refuses_an_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "there").mkdir()
    with pytest.raises(LrcnError, match="there already exists; build relational-shapes"):
        RELATIONAL_SHAPES.build(tmp_path / "there", 0, TINY)
    assert names(tmp_path) == ["there"] and names(tmp_path / "there") == []


def test_ensure_reuses_a_complete_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = RELATIONAL_SHAPES.build(tmp_path / "rs", 5, {"train2014": 1, "val2014": 1})
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    monkeypatch.setattr(RELATIONAL_SHAPES, "generate", no_rebuild)
    assert RELATIONAL_SHAPES.ensure(root) == root
    assert RELATIONAL_SHAPES.ensure(str(root)) == root
    train = load_split("relational-shapes", str(root), "train2014")  # whatever seed and sizes
    assert len(train.records) == rs.QUESTIONS_PER_IMAGE
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


@pytest.mark.parametrize("damage", ["no meta file", "older version"])
def test_ensure_rebuilds_an_incomplete_or_older_build(tmp_path: Path, damage: str,
                                                      small_defaults: dict[str, int]) -> None:
    root = RELATIONAL_SHAPES.build(tmp_path / "rs", 0, {"train2014": 1, "val2014": 1})
    meta_path = root / "relational_shapes.json"
    if damage == "no meta file":
        meta_path.unlink()
    else:
        meta_path.write_text(json.dumps({**read_json(meta_path), "version": rs.VERSION - 1}),
                             encoding="utf-8")
    assert RELATIONAL_SHAPES.ensure(root) == root
    meta = read_json(meta_path)
    assert meta["sizes"] == small_defaults and meta["version"] == rs.VERSION
    assert names(root / "train2014") == ["COCO_train2014_000000000001.jpg",
                                         "COCO_train2014_000000000002.jpg"]
    assert names(tmp_path) == ["rs"]  # no temporary or old folders left


def test_ensure_will_not_replace_foreign_files(tmp_path: Path,
                                               small_defaults: dict[str, int]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    (mine / "train2014").mkdir()  # a folder of ours beside it does not make it ours
    with pytest.raises(LrcnError, match=r"holds no complete relational-shapes build and also "
                                        r"other files \(notes\.txt\)"):
        RELATIONAL_SHAPES.ensure(mine)
    with pytest.raises(LrcnError, match=r"no complete relational-shapes build .*notes\.txt"):
        load_split("relational-shapes", str(mine), "train2014")
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "keep me"
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(LrcnError, match="relational-shapes root .*file exists and is not a "
                                        "folder"):
        RELATIONAL_SHAPES.ensure(tmp_path / "file")
    assert names(tmp_path) == ["file", "mine"]


def test_ensure_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               small_defaults: dict[str, int]) -> None:
    monkeypatch.setenv("LRCN_DATA_HOME", str(tmp_path / "data"))
    root = RELATIONAL_SHAPES.ensure()
    assert root == tmp_path / "data" / f"relational-shapes-v{rs.VERSION}"
    assert read_json(root / "relational_shapes.json")["sizes"] == small_defaults
    assert len(load_split("relational-shapes", None, "val2014").records) == 10


def failing_draw(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Make drawing fail once ``after`` scenes are drawn."""
    real, drawn = rs.draw_scene, []

    def draw(scene: Scene, style: SceneStyle) -> np.ndarray:
        if len(drawn) == after:
            raise OSError("disk full")
        drawn.append(scene)
        return real(scene, style)

    monkeypatch.setattr(rs, "draw_scene", draw)


def test_a_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       small_defaults: dict[str, int]) -> None:
    failing_draw(monkeypatch, after=2)
    with pytest.raises(OSError, match="disk full"):
        RELATIONAL_SHAPES.build(tmp_path / "rs", 0, TINY)
    with pytest.raises(OSError, match="disk full"):
        RELATIONAL_SHAPES.ensure(tmp_path / "rs")
    assert names(tmp_path) == []


def test_a_failed_rebuild_keeps_what_was_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               small_defaults: dict[str, int]) -> None:
    root = RELATIONAL_SHAPES.build(tmp_path / "rs", 0, {"train2014": 1, "val2014": 1})
    (root / "relational_shapes.json").unlink()
    before = digests(root)
    failing_draw(monkeypatch, after=1)
    with pytest.raises(OSError, match="disk full"):
        RELATIONAL_SHAPES.ensure(root)
    assert digests(root) == before and names(tmp_path) == ["rs"]
