"""A tiny VizWiz-VQA dataset in the official layout, shared by the tests that need one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from conftest import write_json
from lrcn.data.vizwiz import vizwiz_image_name

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}

# (colour of the image or None for a blurry one, question, answer_type, ten answers)
TRAIN = [
    ("red", "What color is this shirt?", "other", ["red"] * 8 + ["Red", "dark red"]),
    ("green", "What color is this?", "other", ["green"] * 9 + ["unanswerable"]),
    ("blue", "Is this blue?", "yes/no", ["yes"] * 10),
    (None, "What is this?", "unanswerable", ["unanswerable"] * 7 + ["unsuitable"] * 3),
    ("red", "How many cans are there?", "number", ["1"] * 6 + ["one"] * 4),
    (None, "What does this say?", "unanswerable", ["unanswerable"] * 10),
]
VAL = [
    ("blue", "What color is this?", "other", ["blue"] * 9 + ["navy"]),
    (None, "What is this can?", "unanswerable", ["unanswerable"] * 8 + ["soup"] * 2),
    ("green", "Is this green?", "yes/no", ["yes"] * 9 + ["no"]),
]
TEST = [("red", "What color is this?"), (None, "What is in this box?")]


def annotation(split: str, index: int, sample: tuple) -> dict[str, Any]:
    """One record of ``Annotations/<split>.json`` as published."""
    _, question, answer_type, answers = sample
    confidences = ["yes", "maybe", "no"]
    return {
        "image": vizwiz_image_name(split, index), "question": question,
        "answers": [{"answer": a, "answer_confidence": confidences[j % 3]}
                    for j, a in enumerate(answers)],
        "answer_type": answer_type, "answerable": int(answer_type != "unanswerable"),
    }


def annotations(split: str) -> list[dict[str, Any]]:
    if split == "test":
        return [{"image": vizwiz_image_name("test", i), "question": q}
                for i, (_, q) in enumerate(TEST)]
    return [annotation(split, i, s) for i, s in enumerate(TRAIN if split == "train" else VAL)]


def write_images(root: Path, split: str, colors: list[str | None]) -> None:
    """Small real JPEGs: a coloured square on grey, plain grey for the unanswerable ones."""
    (root / split).mkdir(parents=True, exist_ok=True)
    for i, color in enumerate(colors):
        image = Image.new("RGB", (40, 30), (128, 128, 128))
        if color is not None:
            image.paste(COLORS[color], (10, 5, 30, 25))
        image.save(root / split / vizwiz_image_name(split, i), "JPEG")


def make_vizwiz_layout(root: Path, folder: str = "Annotations") -> Path:
    """train (6 questions), val (3), test (2, no answers) in the official layout."""
    for split, samples in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        write_json(root / folder / f"{split}.json", annotations(split))
        write_images(root, split, [s[0] for s in samples])
    return root
