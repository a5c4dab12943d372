"""Shared fixtures: a tiny VQA-v2 dataset in the official layout, and tiny-model settings.

The layout follows the published files exactly (the same schema ``test_readers.py`` writes):
``v2_OpenEnded_mscoco_<split>_questions.json`` / ``v2_mscoco_<split>_annotations.json`` in
``Questions/`` and ``Annotations/``, and COCO images ``<split>/COCO_<split>_<id:012d>.jpg``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from PIL import Image

from lrcn.cli import main
from lrcn.config import ModelConfig, config_to_dict
from lrcn.errors import LrcnError

if TYPE_CHECKING:
    from lrcn.engine.checkpoint import Checkpoint

# The models of the tests are tiny: a second thread buys nothing and, on a busy machine,
# oversubscribed cores make every step many times slower.
torch.set_num_threads(1)

INFO = {
    "description": "This is v2.0 of the VQA dataset.", "url": "http://visualqa.org",
    "version": "2.0", "year": 2017, "contributor": "VQA Team",
    "date_created": "2017-04-26 17:07:13",
}
LICENSE = {
    "url": "http://creativecommons.org/licenses/by/4.0/",
    "name": "Creative Commons Attribution 4.0 International License",
}

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
          "yellow": (230, 220, 30)}
# image id -> (colour name, number of squares drawn)
TRAIN_IMAGES = {1: ("red", 1), 2: ("green", 2), 3: ("blue", 3), 4: ("yellow", 1),
                5: ("red", 2), 6: ("blue", 1)}
VAL_IMAGES = {11: ("green", 1), 12: ("red", 3), 13: ("yellow", 2)}
TEST_IMAGES = {21: ("blue", 2), 22: ("green", 3)}
# Visual Genome QA about COCO train and val images (same colours and counts as there).
VG_IMAGES = {2: TRAIN_IMAGES[2], 6: TRAIN_IMAGES[6], 12: VAL_IMAGES[12]}

# Tiny-model overrides: every CLI training run of the tests takes a second or two.
TINY_SET = [
    "model.d_model=16", "model.heads=2", "model.ffn_dim=32", "model.layers=1",
    "model.word_dim=16", "model.pool_hidden=16", "model.fused_dim=32",
    "model.encoder_channels=16", "data.image_size=32",
]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict[str, Any]:
        """The last stdout line, which ``--json`` makes one JSON object."""
        return json.loads(self.out.strip().splitlines()[-1])


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    capsys.readouterr()  # drop anything printed before
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def run_cli_uncaptured(*argv: str) -> Result:
    """For module-scoped fixtures, where capsys is not available."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Result(code, out.getvalue(), err.getvalue())


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl: one dict per epoch."""
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def tiny_set_args() -> list[str]:
    """``--set`` flags for the tiny model."""
    return [arg for item in TINY_SET for arg in ("--set", item)]


def _samples(images: dict[int, tuple[str, int]], first_qid: int) -> list[tuple]:
    """(question_id, image_id, question, answer_type, ten answers) for every image."""
    out = []
    qid = first_qid
    for image_id, (color, count) in sorted(images.items()):
        other = next(c for c in COLORS if c != color)
        out.append((qid, image_id, "What color is the square?", "other",
                    [color] * 8 + [color.capitalize(), other]))
        out.append((qid + 1, image_id, "How many squares are there?", "number",
                    [str(count)] * 7 + ["two" if count == 2 else str(count + 1)] * 3))
        out.append((qid + 2, image_id, f"Is the square {color}?", "yes/no", ["yes"] * 10))
        out.append((qid + 3, image_id, f"Is the square {other}?", "yes/no",
                    ["no"] * 9 + ["yes"]))
        qid += 10
    return out


def questions_json(split: str, samples: list) -> dict[str, Any]:
    return {
        "info": INFO, "task_type": "Open-Ended", "data_type": "mscoco",
        "license": LICENSE, "data_subtype": split,
        "questions": [{"image_id": i, "question": q, "question_id": qid}
                      for qid, i, q, _, _ in samples],
    }


def annotations_json(split: str, samples: list) -> dict[str, Any]:
    anns = []
    for qid, image_id, question, answer_type, answers in samples:
        anns.append({
            "question_type": " ".join(question.lower().split()[:2]),
            "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                        for j, a in enumerate(answers)],
            "image_id": image_id, "answer_type": answer_type, "question_id": qid,
        })
    return {"info": INFO, "license": LICENSE, "data_subtype": split,
            "annotations": anns, "data_type": "mscoco"}


def vg_annotations_json(samples: list) -> dict[str, Any]:
    """VG QA in openvqa's conversion: one answer repeated, no answer or question type."""
    anns = [{"question_id": qid, "image_id": image_id, "multiple_choice_answer": answers[0],
             "answers": [{"answer": answers[0], "answer_confidence": "yes", "answer_id": j + 1}
                         for j in range(10)]}
            for qid, image_id, _, _, answers in samples]
    return {"annotations": anns}


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_images(root: Path, folder: str, images: dict[int, tuple[str, int]]) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, (color, count) in images.items():
        image = Image.new("RGB", (40, 30), (128, 128, 128))
        for k in range(count):
            image.paste(COLORS[color], (2 + 12 * k, 10, 10 + 12 * k, 18))
        image.save(root / folder / f"COCO_{folder}_{image_id:012d}.jpg", "JPEG")


@dataclass(frozen=True)
class VQA2Layout:
    root: Path
    train_samples: list
    val_samples: list
    test_samples: list
    vg_samples: list

    @property
    def val_annotations(self) -> Path:
        return self.root / "Annotations" / "v2_mscoco_val2014_annotations.json"

    @property
    def val_question_ids(self) -> list[int]:
        return [s[0] for s in self.val_samples]

    @property
    def test_question_ids(self) -> list[int]:
        return [s[0] for s in self.test_samples]


def make_vqa2_layout(root: Path) -> VQA2Layout:
    """train2014 (24 questions, 6 images), val2014 (12, 3), test2015 (8, 2, no annotations),
    test-dev2015 (its first 4), and VG QA (12 questions about 2 train and 1 val image)."""
    train, val, test = _samples(TRAIN_IMAGES, 100), _samples(VAL_IMAGES, 500), \
        _samples(TEST_IMAGES, 900)
    for split, samples, images in (("train2014", train, TRAIN_IMAGES),
                                   ("val2014", val, VAL_IMAGES)):
        write_json(root / "Questions" / f"v2_OpenEnded_mscoco_{split}_questions.json",
                   questions_json(split, samples))
        write_json(root / "Annotations" / f"v2_mscoco_{split}_annotations.json",
                   annotations_json(split, samples))
        write_images(root, split, images)
    write_json(root / "Questions" / "v2_OpenEnded_mscoco_test2015_questions.json",
               questions_json("test2015", test))
    # test-dev2015 is a subset of test2015's questions, about images in test2015/.
    write_json(root / "Questions" / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
               questions_json("test-dev2015", test[:4]))
    write_images(root, "test2015", TEST_IMAGES)
    vg = _samples(VG_IMAGES, 7000)
    write_json(root / "VG_questions.json", questions_json("vg", vg))
    write_json(root / "VG_annotations.json", vg_annotations_json(vg))
    return VQA2Layout(root, train, val, test, vg)


@pytest.fixture(scope="session")
def vqa2_layout(tmp_path_factory: pytest.TempPathFactory) -> VQA2Layout:
    """One tiny VQA-v2 layout shared (read-only) by the whole session."""
    return make_vqa2_layout(tmp_path_factory.mktemp("vqa2"))


def trained_run(out: Path, *argv: object) -> Path:
    """``lrcn train --out OUT ARGV...`` in this process (for module- and session-scoped
    fixtures), which must succeed; the run folder."""
    result = run_cli_uncaptured("train", "--out", out, *argv)
    assert result.code == 0, result.err
    return out


def legacy_payload(ckpt: Checkpoint) -> dict[str, Any]:
    """A checkpoint as the one ``torch.save`` payload earlier versions of lrcn wrote as
    ``checkpoints/best.pt`` and ``last.pt`` (their ``save_checkpoint``)."""
    from lrcn.engine.checkpoint import FORMAT, LEGACY_VERSION

    payload = {"format": FORMAT, "version": LEGACY_VERSION, "config": config_to_dict(ckpt.config),
               "word_vocab": ckpt.word_vocab.to_dict(),
               "answer_vocab": ckpt.answer_vocab.to_dict(), "model": ckpt.model_state,
               "epoch": ckpt.epoch, "metrics": ckpt.metrics}
    if ckpt.optimizer_state is not None:
        payload["optimizer"] = ckpt.optimizer_state
    if ckpt.progress is not None:
        payload["progress"] = ckpt.progress
    return payload


def tiny_checkpoint(epoch: int = 3, **model: Any) -> Checkpoint:
    """A checkpoint of a tiny LRCN (small CNN on 32x32 pixels, `model` fields on top) with
    seeded random weights, five words and four answers; no optimiser state."""
    from lrcn.config import RunConfig
    from lrcn.data import AnswerVocab, WordVocab
    from lrcn.engine.checkpoint import Checkpoint
    from lrcn.models import create_model

    sizes = dict(d_model=16, heads=2, ffn_dim=32, layers=1, word_dim=16, pool_hidden=16,
                 fused_dim=32, encoder_channels=16)
    cfg = RunConfig(model=ModelConfig(**{**sizes, **model}))
    cfg.data.image_size = 32
    words = WordVocab(["what", "color", "is", "the", "shape"])
    answers = AnswerVocab(["red", "blue", "yes", "no"])
    torch.manual_seed(0)
    net = create_model(dataclasses.replace(cfg.model, encoder_weights=None), len(words),
                       len(answers), random_weights=True)  # a trunk's weights: random
    return Checkpoint(cfg, words, answers, net.state_dict(), epoch,
                      {"epoch": epoch, "val": {"overall": 12.5}})


def write_legacy_checkpoint(path: Path, ckpt: Checkpoint) -> Path:
    """`ckpt` as a ``.pt`` file of an earlier version at `path`."""
    torch.save(legacy_payload(ckpt), path)
    return path


def make_legacy_run(run: Path) -> Path:
    """Turn the checkpoint folders of `run` into the best.pt and last.pt an earlier version
    would have written; the run."""
    from lrcn.engine.checkpoint import load_checkpoint

    for name in ("best", "last"):
        folder = run / "checkpoints" / name
        if folder.is_dir():
            write_legacy_checkpoint(folder.with_name(f"{name}.pt"), load_checkpoint(folder))
            shutil.rmtree(folder)
    return run


@pytest.fixture(scope="session")
def tiny_easyvqa_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny epoch of the default (small-CNN LRCN) model on 200 easy-VQA questions,
    trained once per session for the tests that need any trained checkpoint."""
    return trained_run(tmp_path_factory.mktemp("runs") / "easyvqa-tiny", "--epochs", "1",
                       "--json", *tiny_set_args(), "--set", "data.train_limit=200",
                       "--set", "data.val_limit=50")


@pytest.fixture(scope="session")
def easyvqa_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature store of random grids for every easy-VQA image (see easyvqa_store.py)."""
    from easyvqa_store import write_easyvqa_store

    return write_easyvqa_store(tmp_path_factory.mktemp("store") / "easyvqa")


@contextmanager
def raises_naming(path: Path, *fragments: str) -> Iterator[None]:
    """Expect an LrcnError whose message names the file and contains every fragment."""
    with pytest.raises(LrcnError) as info:
        yield
    message = str(info.value)
    assert path.name in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --------------------------------------------------------------------------- shared helpers

def assert_one_line_error(result: Result, command: str, *fragments: str) -> None:
    """A failed command that printed one error line, naming every fragment, and no output."""
    assert result.code != 0
    assert "Traceback" not in result.err and "Traceback" not in result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"lrcn {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.out == ""


def assert_refused(result: Result, command: str, *fragments: str,
                   absent: tuple[Path, ...] = ()) -> None:
    """One error line naming every fragment, exit 2, and none of `absent` written."""
    assert result.code == 2, result.err
    assert_one_line_error(result, command, *fragments)
    for path in absent:
        assert not path.exists(), path


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def png_with_header(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims width x height: a bomb, as far as the header says."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    # signature (8) | length (4) | b"IHDR" (4) | width, height | ... | crc over type + data
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# Tiny LRCN models reading precomputed grids (test_models, test_fast_layers).
VOCAB, ANSWERS, CHANNELS = 20, 7, 24


def tiny_lrcn_cfg(**overrides) -> ModelConfig:
    """D=32, 2 heads, L=2, reading precomputed grids of CHANNELS channels."""
    base = dict(
        layers=2, d_model=32, heads=2, ffn_dim=64, word_dim=16, pool_hidden=32, fused_dim=48,
        image_encoder="features", feature_channels=CHANNELS, encoder_channels=16,
    )
    base.update(overrides)
    return ModelConfig(**base)


def tokens_with_pads() -> torch.Tensor:
    """Three right-padded questions of lengths 5, 3 and 1 (pad id 0)."""
    return torch.tensor([[3, 4, 5, 6, 7], [8, 9, 2, 0, 0], [11, 0, 0, 0, 0]])
