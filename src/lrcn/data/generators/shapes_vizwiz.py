"""Scenes of coloured shapes in the official VizWiz layout, some questions unanswerable.

A VizWiz-style dataset where answerability needs both modalities: one question per photo,
and a share of the records unanswerable in one of two ways,

* ``absent``: a usable photo and a question naming a colour the photo does not show (only
  the question and the photo together tell it is unanswerable);
* ``black``: a black photo (a lens cap) under an ordinary question (the photo alone tells).

Used by the tests and by ``benchmarks/own_data.py``, which train on it as a user would on
their own VizWiz-layout data; scenes and questions come from ``shapes_scenes``.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from lrcn.data.generators.shapes_scenes import (
    QUESTION_FAMILIES, SceneStyle, ask, check_families, draw_scene, make_scene,
)
from lrcn.data.vizwiz import VIZWIZ_SPLITS, vizwiz_image_name

__all__ = ["UNANSWERABLE_KINDS", "write_vizwiz_layout"]

UNANSWERABLE_KINDS = ("absent", "black")  # equal halves of the unanswerable records
NUM_ANSWERS = 10


def _answers(answer: str) -> list[dict[str, str]]:
    return [{"answer": answer, "answer_confidence": "yes"} for _ in range(NUM_ANSWERS)]


def write_vizwiz_layout(out: Path, seed: int, sizes: dict[str, int],
                        style: SceneStyle = SceneStyle(),
                        families: tuple[str, ...] = QUESTION_FAMILIES,
                        unanswerable_share: float = 0.25,
                        unanswerable_kinds: tuple[str, ...] = UNANSWERABLE_KINDS) -> None:
    """Write ``Annotations/<split>.json`` and ``<split>/VizWiz_<split>_<8 digits>.jpg`` for
    the splits in ``sizes`` (records per split) into the existing folder ``out``.

    Answerable records ask a question of ``families`` about the scene; an unanswerable one
    (``unanswerable_share`` of each split, evenly of ``unanswerable_kinds``: ``absent`` and
    ``black``) is answered "unanswerable" by all ten answerers. ``test`` records carry no
    answers, as published.
    """
    unknown = set(unanswerable_kinds) - set(UNANSWERABLE_KINDS)
    if not unanswerable_kinds or unknown:
        raise ValueError(f"unanswerable_kinds must be some of {', '.join(UNANSWERABLE_KINDS)}, "
                         f"got {unanswerable_kinds!r}")
    check_families(families, style)
    (out / "Annotations").mkdir(exist_ok=True)
    for index, (split, n) in enumerate(sizes.items()):
        if split not in VIZWIZ_SPLITS:
            raise ValueError(f"VizWiz has no split {split!r}")
        rng = np.random.default_rng([seed, index])
        (out / split).mkdir()
        records = []
        for i in range(n):
            kind = "answerable"
            if rng.random() < unanswerable_share:
                kind = unanswerable_kinds[int(rng.integers(len(unanswerable_kinds)))]
            scene_style, missing = style, None
            if kind == "absent":  # a scene without one colour, which the question names
                missing = style.colors[int(rng.integers(len(style.colors)))]
                colors = tuple(c for c in style.colors if c != missing)
                scene_style = replace(style, colors=colors, objects=(
                    min(style.objects[0], len(colors)), min(style.objects[1], len(colors))))
            scene = make_scene(rng, scene_style)
            q = None
            while q is None:  # a family the scene cannot pose draws again
                q = ask(scene, families[int(rng.integers(len(families)))], rng)
            question, pixels = q.question, draw_scene(scene, style)
            if missing is not None:  # the first colour named becomes the missing one
                question = re.sub(rf"\b({'|'.join(colors)})\b", missing, question, count=1)
            elif kind == "black":
                pixels = np.zeros_like(pixels)
            image = vizwiz_image_name(split, i)
            Image.fromarray(pixels).save(out / split / image, "JPEG", quality=95)
            record = {"image": image, "question": question}
            if split != "test":
                answerable = kind == "answerable"
                record.update(
                    answers=_answers(q.answer if answerable else "unanswerable"),
                    answer_type=q.answer_type if answerable else "unanswerable",
                    answerable=int(answerable))
            records.append(record)
        (out / "Annotations" / f"{split}.json").write_text(json.dumps(records),
                                                           encoding="utf-8")
