"""Reader for easy-VQA, the small synthetic dataset bundled as the ``easy-vqa`` package.

easy-VQA is the default dataset for quick runs and tests: 64x64 PNG shapes, one answer per
question. Its records are given the VQA-v2 shape (ten answers) so every later step treats
it like any other dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lrcn.data.records import VQARecord, VQASplit
from lrcn.data.registry import register_dataset
from lrcn.errors import LrcnError

log = logging.getLogger(__name__)

EASYVQA_SPLITS = ("train", "test")


def package_split(split: str) -> tuple[list[str], list[str], list[int], dict[int, str]]:
    """(questions, answers, image ids, image id -> path) of the installed package's split."""
    try:
        import easy_vqa
    except ImportError:
        raise LrcnError("easy-VQA is not installed: pip install easy-vqa") from None
    if split == "train":
        return (*easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths())
    return (*easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths())


def read_easyvqa(split: str) -> VQASplit:
    """Read the ``train`` or ``test`` split of the installed easy-VQA package.

    Each record's single answer becomes ten identical answers; ``answer_type`` is
    ``yes/no`` for yes/no answers, else ``other``; question ids are the question's index
    in the split; image keys are ``images/<id>.png`` under ``<package>/data/<split>``.
    """
    if split not in EASYVQA_SPLITS:
        raise LrcnError(
            f"easy-VQA has no split {split!r}; known splits: {', '.join(EASYVQA_SPLITS)}"
        )
    texts, answers, image_ids, image_paths = package_split(split)
    import easy_vqa

    image_root = Path(easy_vqa.__file__).resolve().parent / "data" / split
    questions_file = image_root / "questions.json"

    records = []
    for qid, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
        if image_id not in image_paths:
            raise LrcnError(
                f"{questions_file}: question {qid} refers to image {image_id}, but "
                f"{image_root / 'images' / f'{image_id}.png'} does not exist"
            )
        records.append(
            VQARecord(
                question_id=qid,
                image_key=f"images/{image_id}.png",
                question=text,
                answers=(answer,) * 10,
                answer_type="yes/no" if answer in ("yes", "no") else "other",
                multiple_choice_answer=answer,
            )
        )
    return VQASplit(name=split, records=records, image_root=image_root)


@register_dataset("easyvqa", train_split="train", val_split="test")
def _load_easyvqa(root: str | None, split: str) -> VQASplit:
    if root is not None:
        log.warning("easyvqa reads the installed easy-vqa package; data_root %s is ignored", root)
    return read_easyvqa(split)
