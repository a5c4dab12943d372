"""relational-shapes: the bundled dataset of scenes with several objects, in the VQA-v2 layout.

easy-VQA shows one shape per image, so a model never has to pick out the object a question
names, nor tell where it is. relational-shapes does: every 75x75 image holds six objects
of distinct colours (circles, squares, triangles, 10 pixels wide, as in Sort-of-CLEVR), and
its questions name one by its colour and ask its shape, which half of the image it is in,
the shape of the object nearest to or furthest from it, how many objects share its shape,
or whether two named objects have the same shape (``shapes_scenes``).

It is written in the official VQA-v2 layout, so ``read_vqa2`` reads it and the VQA
evaluator scores it: ``v2_OpenEnded_mscoco_<split>_questions.json``,
``v2_mscoco_<split>_annotations.json`` (``question_type`` is the question's family, so the
per-question-type accuracy is the accuracy per family) and JPEGs
``<split>/COCO_<split>_<12 digits>.jpg`` for the splits ``train2014`` and ``val2014``.
Deterministic: the same seed and sizes give the same bytes (numpy's random streams,
Pillow's drawing and JPEG encoder). ``lrcn data build relational-shapes`` builds it, or the
first ``load_split`` does, into ``data.data_root`` / ``--data-root`` if given, else
``$LRCN_DATA_HOME/relational-shapes-v<VERSION>`` (default ``~/.cache/lrcn``); see
``generated``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lrcn.data.generators.generated import GeneratedDataset, Progress
from lrcn.data.generators.shapes_scenes import (
    QUESTION_FAMILIES, Scene, SceneStyle, ask, check_families, draw_scene, make_scene,
)
from lrcn.data.records import VQASplit
from lrcn.data.registry import register_dataset
from lrcn.data.vqa2 import annotations_filename, image_key, questions_filename, read_vqa2
from lrcn.errors import LrcnError

__all__ = ["DEFAULT_SIZES", "RELATIONAL_SHAPES", "SPLITS", "write_vqa2_layout"]

VERSION = 1  # bump whenever the output changes: it names the cache folder
SPLITS = ("train2014", "val2014")
DEFAULT_SIZES = {"train2014": 5000, "val2014": 500}  # images per split
QUESTIONS_PER_IMAGE = 10
QUESTION_ID_STRIDE = 1000  # question id = image_id * QUESTION_ID_STRIDE + j
JPEG_QUALITY = 95
NUM_ANSWERS = 10


def write_vqa2_layout(out: Path, seed: int, sizes: dict[str, int],
                      style: SceneStyle = SceneStyle(),
                      families: tuple[str, ...] = QUESTION_FAMILIES,
                      questions_per_image: int = QUESTIONS_PER_IMAGE,
                      on_scene: Callable[[str, int, Scene], None] | None = None,
                      progress: Progress | None = None) -> dict[str, Any]:
    """Write scenes and questions into ``out`` (which must exist) in the VQA-v2 layout.

    ``sizes`` gives the images per split; each split draws from its own random stream
    (``[seed, position in sizes]``). Families take turns over each split's questions, so
    each is asked equally often. Image ids run on across the splits, as COCO's do, so splits
    can be joined (``train2014+val2014``); question ids are ``image_id * 1000 + j`` for the
    image's ``j``-th question. ``on_scene(split, image_id, scene)``, when given, sees every
    scene as it is drawn (benchmarks/binding_probe.py builds ideal features from them);
    ``progress(1)``, when given, is called as each image is written. Returns a description
    of what was written (for the meta file).
    """
    _check_questions(families, questions_per_image, style)
    first_id = 1
    for index, (split, n_images) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, index])
        (out / split).mkdir()
        questions, annotations = [], []
        turn = 0
        for image_id in range(first_id, first_id + n_images):
            scene = make_scene(rng, style)
            if on_scene is not None:
                on_scene(split, image_id, scene)
            Image.fromarray(draw_scene(scene, style)).save(
                out / image_key(split, image_id), "JPEG", quality=JPEG_QUALITY, subsampling=0)
            if progress is not None:
                progress(1)
            for j in range(questions_per_image):
                q = None
                while q is None:  # a family a scene cannot pose passes its turn on
                    q = ask(scene, families[turn % len(families)], rng)
                    turn += 1
                qid = image_id * QUESTION_ID_STRIDE + j
                questions.append({"image_id": image_id, "question": q.question,
                                  "question_id": qid})
                annotations.append({
                    "question_id": qid, "image_id": image_id, "question_type": q.family,
                    "answer_type": q.answer_type, "multiple_choice_answer": q.answer,
                    "answers": [{"answer": q.answer, "answer_confidence": "yes",
                                 "answer_id": k + 1} for k in range(NUM_ANSWERS)],
                })
        first_id += n_images
        info = {"description": "relational-shapes (generated by lrcn)", "split": split}
        (out / questions_filename(split)).write_text(json.dumps(
            {"info": info, "data_subtype": split, "questions": questions}), encoding="utf-8")
        (out / annotations_filename(split)).write_text(json.dumps(
            {"info": info, "data_subtype": split, "annotations": annotations}),
            encoding="utf-8")
    return {"questions_per_image": questions_per_image, "families": list(families),
            "style": {"image_size": style.image_size, "object_size": style.object_size,
                      "objects": list(style.objects), "colors": list(style.colors),
                      "shapes": list(style.shapes)}}


def _check_questions(families: tuple[str, ...], questions_per_image: int,
                     style: SceneStyle) -> None:
    """Refuse question settings that would clash question ids or never end."""
    if (isinstance(questions_per_image, bool) or not isinstance(questions_per_image, int)
            or not 1 <= questions_per_image < QUESTION_ID_STRIDE):
        raise LrcnError(f"relational-shapes: questions_per_image must be an integer from 1 to "
                        f"{QUESTION_ID_STRIDE - 1} (question ids are image_id * "
                        f"{QUESTION_ID_STRIDE} + j), got {questions_per_image!r}")
    check_families(families, style)


RELATIONAL_SHAPES = GeneratedDataset(
    name="relational-shapes", version=VERSION,
    generate=write_vqa2_layout,
    splits=SPLITS, default_sizes=DEFAULT_SIZES,
    own_names=(*SPLITS, *(questions_filename(s) for s in SPLITS),
               *(annotations_filename(s) for s in SPLITS)),
    default_seed=0, unit="images",
)


@register_dataset("relational-shapes", train_split="train2014", val_split="val2014",
                  generated=RELATIONAL_SHAPES)
def _load_relational_shapes(root: str | None, split: str) -> VQASplit:
    RELATIONAL_SHAPES.check_split(split)
    return read_vqa2(RELATIONAL_SHAPES.ensure(root), split)
