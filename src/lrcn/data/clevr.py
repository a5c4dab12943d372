"""Reader for CLEVR v1.0 exactly as published, validated as it is read.

Layout under the dataset root (``CLEVR_v1.0`` as downloaded; the scenes files are not read):

* ``questions/CLEVR_<split>_questions.json``: ``{"info", "questions": [{"question_index",
  "image_index", "image_filename", "split", "question", "answer", "question_family_index",
  "program"}]}``; ``test`` questions carry no ``answer``, ``program`` or family;
* images ``images/<split>/<image_filename>`` (``CLEVR_<split>_NNNNNN.png``).

Any split name with a questions file is read (CLEVR's train / val / test, CLEVR-CoGenT's
trainA / valA / valB / testA / testB, a user's own). A split's questions either all have an
``answer`` or none do (a test split). Each answered question's type is the category of its
program's last function, the five CLEVR papers report (``QUESTION_CATEGORIES``); its answer
type is ``yes/no``, ``number`` or ``other`` by the answer. Scoring is exact match
(``lrcn.evaluation.ClevrEvaluator``). Images are not opened while reading;
``lrcn.data.check_images`` checks them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrcn.data.records import VQARecord, VQASplit
from lrcn.data.registry import need_root, register_dataset
from lrcn.errors import LrcnError
from lrcn.json_records import check_record, iter_unique_records, short_repr

__all__ = ["QUESTION_CATEGORIES", "clevr_answer_type", "question_category", "read_clevr"]

QUESTION_KEYS = {"question_index": int, "image_filename": str, "question": str}
# The function of a program's last step -> the question category CLEVR papers report.
QUESTION_CATEGORIES = {
    "exist": "exist",
    "count": "count",
    **{f: "compare_numbers" for f in ("equal_integer", "less_than", "greater_than")},
    **{f"query_{a}": "query_attribute" for a in ("size", "color", "material", "shape")},
    **{f"equal_{a}": "compare_attribute" for a in ("size", "color", "material", "shape")},
}


def questions_path(root: Path, split: str) -> Path:
    return root / "questions" / f"CLEVR_{split}_questions.json"


def clevr_answer_type(answer: str) -> str:
    """``yes/no``, ``number`` (a count) or ``other`` (a size, colour, material or shape)."""
    if answer in ("yes", "no"):
        return "yes/no"
    return "number" if answer.isdigit() else "other"


def question_category(program: Any, path: Path, where: str) -> str:
    """The category of a program's last function (``QUESTION_CATEGORIES``). CLEVR v1.0 names
    the function ``function``; the generator's own output (and CLEVR-CoGenT's) ``type``."""
    if not isinstance(program, list) or not program:
        raise LrcnError(f"{path}: {where}: 'program' must be a non-empty list of steps, got "
                        f"{short_repr(program)}")
    last = program[-1]
    function = last.get("function", last.get("type")) if isinstance(last, dict) else None
    if function not in QUESTION_CATEGORIES:
        raise LrcnError(f"{path}: {where}: the program's last step {short_repr(last)} is not "
                        f"one of CLEVR's answering functions "
                        f"({', '.join(sorted(QUESTION_CATEGORIES))})")
    return QUESTION_CATEGORIES[function]


def read_clevr(root: str | Path, split: str) -> VQASplit:
    """Read one CLEVR split into records, checking its questions file as published.

    Raises LrcnError naming the file and record for unreadable JSON, a record missing
    ``question_index``, ``image_filename`` or ``question`` (or with the wrong type), a
    ``question_index`` seen before, an image file name with a folder in it, a ``split`` field
    naming another split, an ``answer`` on some questions of a split but not others, and a
    ``program`` whose last step is not an answering function. A record's ``question_id`` is
    its ``question_index``; its answer is repeated ten times, so that training targets and
    the answer vocabulary treat it as every annotator's answer.
    """
    root = Path(root)
    if not split or "/" in split or "\\" in split:
        raise LrcnError(f"CLEVR split {split!r}: expected a split name such as train, val, test")
    if not root.is_dir():
        raise LrcnError(f"CLEVR root folder not found: {root}")
    path = questions_path(root, split)
    if not path.is_file():
        found = sorted(p.name for p in (root / "questions").glob("CLEVR_*_questions.json"))
        raise LrcnError(f"CLEVR questions file not found: {path} (found: "
                        f"{', '.join(found) or 'none'})")
    records = []
    answered: tuple[bool, str] | None = None  # (has an answer, the first record) of the split
    for where, q in iter_unique_records(path, "questions", "questions", QUESTION_KEYS,
                                        id_key="question_index"):
        name = q["image_filename"]
        if not name or "/" in name or "\\" in name:
            raise LrcnError(f"{path}: {where}: 'image_filename' must be a bare file name, got "
                            f"{name!r}")
        if q.get("split", split) != split:
            raise LrcnError(f"{path}: {where}: 'split' is {q['split']!r}, but this is the "
                            f"questions file of split {split!r}")
        has_answer = "answer" in q
        if answered is None:
            answered = (has_answer, where)
        elif has_answer != answered[0]:
            raise LrcnError(f"{path}: {where}: {'has' if has_answer else 'has no'} 'answer', "
                            f"but {answered[1]} {'has' if answered[0] else 'has none'}: a "
                            "split's questions all have answers or none do")
        answer = category = None
        if has_answer:
            answer = check_record(path, q, where, {"answer": str})["answer"]
            if "program" in q:
                category = question_category(q["program"], path, where)
        records.append(VQARecord(
            question_id=q["question_index"],
            image_key=f"images/{split}/{name}",
            question=q["question"],
            answers=(answer,) * 10 if answer is not None else None,
            answer_type=clevr_answer_type(answer) if answer is not None else None,
            multiple_choice_answer=answer,
            question_type=category,
        ))
    return VQASplit(name=split, records=records, image_root=root)


@register_dataset("clevr", train_split="train", val_split="val", metric="clevr")
def _load_clevr(root: str | None, split: str) -> VQASplit:
    root = need_root("clevr", root, "questions/CLEVR_<split>_questions.json and "
                     "images/<split>/ (CLEVR_v1.0)")
    return read_clevr(root, split)
