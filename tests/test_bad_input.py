"""Bad input through the ``lrcn`` command: one clear error or a counted skip, never a crash.

Every refusal is one line ``lrcn COMMAND: error: ...`` on stderr naming the file (and the
record), exit status 2, no traceback, and nothing half-written (no run folder, no results
file). Odd but valid input (image modes, long or non-ASCII questions) works. The readers'
record-by-record checks are unit-tested in test_readers.py, test_vizwiz.py and
test_json_records.py; here each kind of fault is seen the way a user meets it.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (
    TRAIN_IMAGES,
    Result,
    annotations_json,
    legacy_payload,
    make_vqa2_layout,
    raises_naming,
    run_cli,
    tiny_set_args,
    write_json,
)
from lrcn.data.images import load_image
from lrcn.engine.checkpoint import load_checkpoint
from lrcn.features import import_features
from conftest import assert_refused, encode, png_with_header
from vizwiz_layout import make_vizwiz_layout

QUESTIONS = "Questions/v2_OpenEnded_mscoco_train2014_questions.json"
ANNOTATIONS = "Annotations/v2_mscoco_train2014_annotations.json"


def train_image(root: Path, image_id: int) -> Path:
    return root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg"


def train(capsys: pytest.CaptureFixture[str], root: Path, out: Path, *extra: Any,
          dataset: str = "vqa2") -> Result:
    """One tiny epoch on `dataset` under `root` (VQA-v2 or VizWiz default splits)."""
    return run_cli(capsys, "train", "--dataset", dataset, "--data-root", root, "--epochs", "1",
                   "--out", out, "--json", *tiny_set_args(), *extra)


# --------------------------------------------------------------------------- JSON records

Edit = Callable[[Path], None]


def edit_json(relative: str, change: Callable[[Any], Any]) -> Edit:
    """An edit of one JSON file of a dataset root: ``change(data)`` changes it in place."""
    def edit(root: Path) -> None:
        data = json.loads((root / relative).read_text(encoding="utf-8"))
        change(data)
        write_json(root / relative, data)
    return edit


def truncate(relative: str) -> Edit:
    def edit(root: Path) -> None:
        data = (root / relative).read_bytes()
        (root / relative).write_bytes(data[: len(data) // 2])
    return edit


def _questions(change: Callable[[list], Any]) -> Edit:
    return edit_json(QUESTIONS, lambda d: change(d["questions"]))


def _annotations(change: Callable[[list], Any]) -> Edit:
    return edit_json(ANNOTATIONS, lambda d: change(d["annotations"]))


# case -> (dataset, edit, file the message names, what else it says)
RECORD_CASES: dict[str, tuple[str, Edit, str, list[str]]] = {
    "truncated JSON": ("vqa2", truncate(ANNOTATIONS), ANNOTATIONS,
                       ["not valid JSON (truncated or corrupt?)", "(line 1, column"]),
    "missing key": ("vqa2", _questions(lambda q: q[1].pop("image_id")), QUESTIONS,
                    ["questions[1] (question_id 101): missing key 'image_id'"]),
    "annotation without question": ("vqa2", _questions(lambda q: q.pop(0)), ANNOTATIONS,
                                    ["annotation for question_id 100 has no question"]),
    "question without annotation": ("vqa2", _annotations(lambda a: a.pop(0)), QUESTIONS,
                                    ["question_id 100 has no annotation"]),
    "duplicate question_id": ("vqa2", _questions(lambda q: q.append(dict(q[0]))), QUESTIONS,
                              ["questions[24] (question_id 100): duplicate question_id 100 "
                               "(first at questions[0])"]),
    "nine answers": ("vqa2", _annotations(lambda a: a[2]["answers"].pop()), ANNOTATIONS,
                     ["annotations[2] (question_id 102): has 9 answers, expected 10"]),
    "eleven answers": ("vqa2", _annotations(lambda a: a[2]["answers"].append(a[2]["answers"][0])),
                       ANNOTATIONS, ["annotations[2] (question_id 102): has 11 answers"]),
    "empty question": ("vqa2", _questions(lambda q: q[3].update(question="")),
                       "train2014/COCO_train2014_000000000001.jpg",
                       ["question 103", "question '' has no words"]),
    "question without words": ("vqa2", _questions(lambda q: q[3].update(question=" ?! ")),
                               "train2014/COCO_train2014_000000000001.jpg",
                               ["question 103", "has no words"]),
    "vizwiz truncated JSON": ("vizwiz", truncate("Annotations/train.json"),
                              "Annotations/train.json", ["not valid JSON"]),
    "vizwiz nine answers": ("vizwiz", edit_json("Annotations/train.json",
                                                lambda r: r[1]["answers"].pop()),
                            "Annotations/train.json",
                            ["record 1 (image 'VizWiz_train_00000001.jpg'): has 9 answers"]),
}


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_bad_record_is_one_error_naming_file_and_record(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset, edit, named, fragments = RECORD_CASES[case]
    root = tmp_path / "data"
    if dataset == "vqa2":
        make_vqa2_layout(root)
    else:
        make_vizwiz_layout(root)
    edit(root)
    out = tmp_path / "run"
    assert_refused(train(capsys, root, out, dataset=dataset), "train", named, *fragments,
                   absent=(out,))
    # --skip-invalid drops unreadable images only; a malformed file is never skipped over.
    assert_refused(train(capsys, root, out, "--skip-invalid", dataset=dataset), "train",
                   named, absent=(out,))


# --------------------------------------------------------------------------- images

# Pillow warns above Image.MAX_IMAGE_PIXELS (89.5 M) and raises above twice that.
BAD_IMAGES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "zero bytes": (lambda jpeg: b"", "cannot identify image file"),
    "truncated": (lambda jpeg: jpeg[: len(jpeg) // 2], "cannot read image"),
    "corrupt": (lambda jpeg: jpeg[:20] + bytes(len(jpeg) - 20), "cannot read image"),
    "over twice the pixel limit": (lambda jpeg: png_with_header(20_000, 20_000),
                                   "over the pixel limit"),
    "over the pixel limit": (lambda jpeg: png_with_header(10_000, 10_000), "over the pixel limit"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_unreadable_image_names_the_file(case: str, tmp_path: Path,
                                         recwarn: pytest.WarningsRecorder) -> None:
    make, reason = BAD_IMAGES[case]
    path = tmp_path / "photo.jpg"
    path.write_bytes(make(encode(Image.new("RGB", (64, 48), (200, 30, 30)), "JPEG")))
    with raises_naming(path, reason):
        load_image(path)
    assert not recwarn.list, [str(w.message) for w in recwarn]  # an error, not a warning


def break_train_images(root: Path) -> dict[int, str]:
    """Train images 1-4 zero-byte, truncated, corrupt and a pixel bomb; 5 is deleted.
    Returns image id -> the case."""
    cases = dict(zip((1, 2, 3, 4), ("zero bytes", "truncated", "corrupt",
                                     "over twice the pixel limit")))
    for image_id, case in cases.items():
        path = train_image(root, image_id)
        path.write_bytes(BAD_IMAGES[case][0](path.read_bytes()))
    train_image(root, 5).unlink()
    return {**cases, 5: "missing"}


def test_bad_training_images_are_an_error_or_a_listed_skip(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "vqa2"
    layout = make_vqa2_layout(root)
    broken = break_train_images(root)
    out = tmp_path / "run"
    assert_refused(train(capsys, root, out), "train", "COCO_train2014_00000000000",
                   absent=(out,))

    result = train(capsys, root, out, "--skip-invalid")
    assert result.code == 0, result.err
    # four questions per image, each listed with its image and reason
    dropped = [s for s in layout.train_samples if s[1] in broken]
    assert result.json["skipped"] == len(dropped) == 4 * len(broken)
    skipped = json.loads((out / "skipped.json").read_text(encoding="utf-8"))
    assert sorted(s["question_id"] for s in skipped) == sorted(s[0] for s in dropped)
    for entry in skipped:
        assert entry["split"] == "train2014" and entry["image"] in entry["reason"]
    assert any("over the pixel limit" in s["reason"] for s in skipped)


# --------------------------------------------------------------------------- valid oddities

# mode -> (the image, a file format that keeps the mode, the RGB pixel expected at (0, 0))
MODES: dict[str, tuple[Image.Image, str, tuple[int, int, int]]] = {
    "L": (Image.new("L", (40, 30), 77), "JPEG", (77, 77, 77)),
    "1": (Image.new("1", (40, 30), 1), "PNG", (255, 255, 255)),
    "CMYK": (Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
    "RGBA": (Image.new("RGBA", (40, 30), (0, 0, 0, 0)), "PNG", (255, 255, 255)),
    "LA": (Image.new("LA", (40, 30), (0, 255)), "PNG", (0, 0, 0)),
    "P": (Image.new("RGB", (40, 30), (30, 40, 220)).quantize(4), "PNG", (30, 40, 220)),
    "I;16": (Image.fromarray(np.full((30, 40), 0x8080, np.uint16)), "PNG", (128, 128, 128)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_image_mode_reads_as_rgb(mode: str, tmp_path: Path) -> None:
    image, fmt, pixel = MODES[mode]
    path = tmp_path / "image"
    path.write_bytes(encode(image, fmt))
    with Image.open(path) as opened:
        assert opened.mode == mode
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    assert max(abs(a - b) for a, b in zip(rgb.getpixel((0, 0)), pixel)) <= 3  # JPEG rounding


LONG_QUESTION = " ".join(["what colour is the square"] * 200)  # 1,000 words
EMOJI_QUESTION = "¿Qué color tiene el 🟥 cuadrado? 色は何ですか 🐶"


def test_odd_images_and_questions_train_and_predict(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Training images in every mode (as .jpg files, whatever their content), a 1,000-word
    and a non-ASCII question train; predict answers about each image mode."""
    root = tmp_path / "vqa2"
    make_vqa2_layout(root)
    for image_id, mode in zip(sorted(TRAIN_IMAGES), ["L", "CMYK", "RGBA", "P", "I;16", "1"]):
        image, fmt, _ = MODES[mode]
        train_image(root, image_id).write_bytes(encode(image, fmt))
    _questions(lambda q: (q[0].update(question=LONG_QUESTION),
                          q[1].update(question=EMOJI_QUESTION)))(root)
    out = tmp_path / "run"
    result = train(capsys, root, out)
    assert result.code == 0, result.err

    for image_id in sorted(TRAIN_IMAGES):
        result = run_cli(capsys, "predict", "--checkpoint", out, "--image",
                         train_image(root, image_id), "--question", "what color?", "--json")
        assert result.code == 0, result.err
        assert result.json["answers"] and len(result.json["image_attention"]) > 0


@pytest.mark.parametrize(("question", "tokens"), [
    (LONG_QUESTION, (["what", "colour", "is", "the", "square"] * 3)[:14]),
    (EMOJI_QUESTION, ["¿qué", "color", "tiene", "el", "🟥", "cuadrado", "色は何ですか", "🐶"]),
    ("🐶🐶", ["🐶🐶"]),
])
def test_predict_long_and_non_ascii_questions(tiny_easyvqa_run: Path, question: str,
                                              tokens: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "predict", "--checkpoint", tiny_easyvqa_run, "--image",
                     _easyvqa_image(), "--question", question, "--json")
    assert result.code == 0, result.err
    assert result.json["question_tokens"] == tokens  # truncated to max_question_tokens (14)
    assert len(result.json["question_attention"]) == len(tokens)


@pytest.mark.parametrize("question", ["", "   ", "?!", "\t\n"])
def test_predict_question_without_words(tiny_easyvqa_run: Path, question: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "predict", "--checkpoint", tiny_easyvqa_run, "--image",
                     _easyvqa_image(), "--question", question, "--json")
    assert_refused(result, "predict", f"error: question {question!r} has no words after "
                   "tokenization")  # said once, not "question '': question '': ..."


def _easyvqa_image() -> Path:
    from lrcn.serve.examples import easy_vqa_test_images

    return easy_vqa_test_images() / "0.png"


# --------------------------------------------------------------------------- features, GloVe

def test_truncated_feature_store_is_named(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "vqa2"
    make_vqa2_layout(root)
    src = tmp_path / "trar"
    for image_id in TRAIN_IMAGES:
        path = src / "train2014" / f"COCO_train2014_{image_id:012d}.jpg.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.ones((2, 2, 4), np.float32))
    store = import_features("trar", src, tmp_path / "store", channels=4).path
    features = store / "features.npy"
    with open(features, "r+b") as f:
        f.truncate(features.stat().st_size - 5)
    out = tmp_path / "run"
    assert_refused(train(capsys, root, out, "--features", store), "train", str(features),
                   "truncated", absent=(out,))


def test_glove_line_with_wrong_field_count(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "vqa2"
    make_vqa2_layout(root)
    glove = tmp_path / "glove.txt"
    rows = [f"{word} " + " ".join(["0.5"] * 25) for word in ("what", "color")]
    glove.write_text("\n".join([*rows, "square " + " ".join(["0.5"] * 24)]) + "\n",
                     encoding="utf-8")
    out = tmp_path / "runs" / "run"
    assert_refused(train(capsys, root, out, "--glove", glove), "train", str(glove),
                   "line 3: expected a word and 25 numbers, found 25 fields "
                   "(the vector size, from line 1)",
                   absent=(out, out.parent / ".glove_cache"))


# --------------------------------------------------------------------------- checkpoints

def edited_checkpoint(run: Path, dest: Path, change: Callable[[dict], None]) -> Path:
    """The run's best checkpoint as a .pt file of an earlier version, edited by `change`."""
    payload = legacy_payload(load_checkpoint(run))
    change(payload)
    torch.save(payload, dest)
    return dest


CHECKPOINT_EDITS: dict[str, tuple[Callable[[dict], None], str]] = {
    "larger word vocabulary": (lambda p: p["word_vocab"]["words"].append("zzz"),
                               "does not match the model its config describes: size mismatch "
                               "for net.embed.weight: copying a param with shape torch.Size(["),
    "smaller answer vocabulary": (lambda p: p["answer_vocab"]["answers"].pop(),
                                  "does not match the model its config describes: size mismatch "
                                  "for net.head.weight"),
    "another config": (lambda p: p["config"]["model"].update(d_model=32),
                       "does not match the model its config describes: size mismatch for net."),
    "weights of another model": (lambda p: p["model"].popitem(),
                                 "does not match the model its config describes: Missing key(s) "
                                 "in state_dict: "),
    "unknown model": (lambda p: p["config"]["model"].update(arch="nope"),
                      "unknown model.arch 'nope'"),
    "epoch not a number": (lambda p: p.update(epoch="three"), "'epoch' must be an integer"),
    "weights not tensors": (lambda p: p.update(model=[1, 2]),
                            "'model' must map parameter names to tensors"),
    "duplicate words": (lambda p: p["word_vocab"]["words"].append(p["word_vocab"]["words"][2]),
                        "word vocabulary: duplicate words"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_EDITS))
def test_checkpoint_not_fitting_its_model_is_refused(
        case: str, tiny_easyvqa_run: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    change, message = CHECKPOINT_EDITS[case]
    ckpt = edited_checkpoint(tiny_easyvqa_run, tmp_path / "edited.pt", change)
    results = tmp_path / "results.json"
    result = run_cli(capsys, "evaluate", "--checkpoint", ckpt, "--split", "test",
                     "--results", results, "--json")
    assert_refused(result, "evaluate", str(ckpt), message, absent=(results,))
    result = run_cli(capsys, "predict", "--checkpoint", ckpt, "--image", _easyvqa_image(),
                     "--question", "what shape?", "--json")
    assert_refused(result, "predict", str(ckpt), message)


class Custom:
    """Any class of the user's: torch.save pickles it as an arbitrary object."""

    def __init__(self) -> None:
        self.weights = [1.0]


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: proof that code ran, if the file exists."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _lrcn_payload(run: Path, extra: Any) -> dict[str, Any]:
    payload = legacy_payload(load_checkpoint(run))
    return {**payload, "metrics": {"note": extra}}


# case -> (how to write the file from (payload holding the object, object), message)
PICKLES: dict[str, tuple[Callable[[Path, Any, Any], None], list[str]]] = {
    "torch.save of a custom object": (lambda path, payload, obj: torch.save(obj, path),
                                      ["refusing to load", "test_bad_input.Custom",
                                       "could run code"]),
    "torch.save with a payload inside": (lambda path, payload, obj: torch.save(payload, path),
                                         ["refusing to load", "could run code"]),
    "legacy torch.save format": (
        lambda path, payload, obj: torch.save(payload, path,
                                              _use_new_zipfile_serialization=False),
        ["not a PyTorch checkpoint file", "never unpickled"]),
    "plain pickle": (lambda path, payload, obj: path.write_bytes(pickle.dumps(payload)),
                     ["not a PyTorch checkpoint file", "never unpickled"]),
}


@pytest.mark.parametrize("command", ["evaluate", "predict", "serve"])
@pytest.mark.parametrize("case", list(PICKLES))
def test_checkpoint_needing_arbitrary_unpickling_is_refused_unrun(
        case: str, command: str, tiny_easyvqa_run: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    obj = Custom() if case == "torch.save of a custom object" else WritesMarker(marker)
    write, messages = PICKLES[case]
    ckpt = tmp_path / "evil.pt"
    write(ckpt, _lrcn_payload(tiny_easyvqa_run, obj), obj)
    assert not marker.exists()
    # Every load asks for weights only, and torch's opt-out variable cannot override that.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    calls: list[Any] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    results = tmp_path / "results.json"
    args = {"evaluate": ["--split", "test", "--results", results],
            "predict": ["--image", _easyvqa_image(), "--question", "what shape?"],
            "serve": ["--port", "0"]}[command]
    result = run_cli(capsys, command, "--checkpoint", ckpt, *args)
    assert_refused(result, command, str(ckpt), *messages, absent=(marker, results))
    assert all(w is True for w in calls), calls


# --------------------------------------------------------------- found by properties

def test_json_with_an_overlong_integer_names_the_file(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Python refuses integers of over 4,300 digits with a ValueError, not a JSONDecodeError."""
    results = tmp_path / "results.json"
    results.write_text('[{"question_id": ' + "7" * 5000 + ', "answer": "yes"}]', encoding="utf-8")
    annotations = write_json(tmp_path / "annotations.json",
                             annotations_json("val2014", [(1, 7, "What?", "other", ["red"] * 10)]))
    result = run_cli(capsys, "score", "--annotations", annotations, "--results", results)
    assert_refused(result, "score", str(results), "not valid JSON", "4300 digits")
