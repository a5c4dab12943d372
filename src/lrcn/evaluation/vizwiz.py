"""VizWiz-VQA scoring exactly as the official VizWiz API ``vqaEval.py`` scores it.

Accuracy follows the VQA-v2 rule (:mod:`lrcn.vqa_accuracy`) with three
differences, kept because published VizWiz numbers are computed this way:

* the prediction is *always* normalised (whitespace, punctuation, number words, articles,
  contractions), whatever the human answers are;
* the human answers are *never* normalised, not even stripped: a prediction matches an
  answer only if its normalised text equals the answer as written in the file;
* the contraction table maps to typographic apostrophes (``dont`` -> ``don’t``), see
  :data:`~lrcn.vqa_accuracy.VIZWIZ_CONTRACTIONS`.

Answerability treats *unanswerable* as the positive class: with ``p`` the predicted
probability that a question is answerable, average precision is sklearn's
``average_precision_score(1 - answerable, 1 - p)`` and F1 is
``f1_score(1 - answerable, (1 - p) > 0.5)``, both in percent.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lrcn.json_records import check_record, json_kind, read_record_list, short_repr
from lrcn.data.vizwiz import describe_vizwiz_record, read_vizwiz_file
from lrcn.errors import LrcnError
from lrcn.vqa_accuracy import (
    VIZWIZ_CONTRACTIONS,
    aggregate,
    clean_whitespace,
    leave_one_out_accuracy,
    normalize_answer,
)

__all__ = [
    "answerability_metrics",
    "normalize_vizwiz_prediction",
    "read_vizwiz_annotations",
    "read_vizwiz_results",
    "score_vizwiz",
    "score_vizwiz_files",
    "vizwiz_accuracy",
]

_EXAMPLES = 5  # how many example records a coverage message lists
_RESULT_KEYS = {"image": str, "answer": str}  # plus optional 'answerable'; others ignored


# --------------------------------------------------------------------------- metrics


def normalize_vizwiz_prediction(prediction: str) -> str:
    """The prediction as the VizWiz evaluator compares it (always fully normalised)."""
    return normalize_answer(clean_whitespace(prediction), VIZWIZ_CONTRACTIONS)


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VizWiz accuracy in [0, 1] of one prediction against the human answers.

    Only the prediction is normalised; each human answer is left out in turn and the
    prediction scores ``min(1, matches among the others / 3)``; the mean is returned.
    """
    if not answers:
        raise ValueError("a question needs at least one human answer to be scored")
    pred = normalize_vizwiz_prediction(prediction)
    matches = sum(1 for a in answers if a == pred)
    return leave_one_out_accuracy(matches, answers, pred)


def answerability_metrics(answerable: Sequence[int | bool],
                          p_answerable: Sequence[float]) -> dict[str, float]:
    """Unanswerability average precision and F1, in percent, as the VizWiz evaluator.

    Args:
        answerable: the ground truth per question, 1 (or True) when answerable.
        p_answerable: the predicted probability that each question is answerable.

    Returns:
        ``{"average_precision": ..., "f1": ...}`` with unanswerable as the positive class.
        Like sklearn, AP is 0 (with a warning) when no question is unanswerable.
    """
    import numpy as np
    from sklearn.metrics import average_precision_score, f1_score

    if len(answerable) != len(p_answerable):
        raise ValueError(f"{len(answerable)} labels but {len(p_answerable)} probabilities")
    if not answerable:
        raise ValueError("no questions to compute answerability metrics on")
    labels = np.asarray([int(a) for a in answerable])
    if not set(labels.tolist()) <= {0, 1}:
        raise ValueError("answerable labels must be 0 or 1")
    p = np.asarray(p_answerable, dtype=np.float64)
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError("predicted probabilities must lie in [0, 1]")
    unanswerable, p_unanswerable = 1 - labels, 1.0 - p
    return {
        "average_precision": 100.0 * float(average_precision_score(unanswerable, p_unanswerable)),
        "f1": 100.0 * float(f1_score(unanswerable, p_unanswerable > 0.5)),
    }


# --------------------------------------------------------------------------- reading


def read_vizwiz_annotations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a VizWiz annotation file with answers (``train``/``val``), checked.

    Every record needs ten answers, an answer type and ``answerable`` (see
    :func:`lrcn.data.vizwiz.read_vizwiz_file`); an empty file is an error.
    """
    records = read_vizwiz_file(path, answers_required=True)
    if not records:
        raise LrcnError(f"{Path(path)}: the annotation file has no records: "
                        "there is nothing to score against")
    return records


def read_vizwiz_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a VizWiz results file, checked: ``[{"image", "answer"[, "answerable"]}]``.

    Images must be distinct. ``answerable`` (the probability that the question is
    answerable, a number in [0, 1]) is optional, but either every record has it or none.
    Other keys are ignored.
    """
    p = Path(path)
    records = read_record_list(p, None, "results")
    first_index: dict[str, int] = {}
    with_answerable: int | None = None  # index of a record with 'answerable'
    without_answerable: int | None = None
    for i, entry in enumerate(records):
        where = describe_vizwiz_record(entry, i)
        check_record(p, entry, where, _RESULT_KEYS)
        image = entry["image"]
        if image in first_index:
            raise LrcnError(f"{p}: {where}: duplicate image {short_repr(image)} "
                            f"(first at record {first_index[image]})")
        first_index[image] = i
        if "answerable" not in entry:
            without_answerable = i if without_answerable is None else without_answerable
        else:
            with_answerable = i if with_answerable is None else with_answerable
            _check_probability(p, where, entry["answerable"])
        if with_answerable is not None and without_answerable is not None:
            raise LrcnError(
                f"{p}: {where}: some results have 'answerable' (record {with_answerable}) "
                f"and some do not (record {without_answerable}); give it for every result "
                "or for none"
            )
    return records


def read_answerability_results(path: str | os.PathLike[str]) -> dict[str, float]:
    """VizWiz's answerability submission ``[{"image", "answerable"}]``: image -> probability."""
    p = Path(path)
    out: dict[str, float] = {}
    for i, entry in enumerate(read_record_list(p, None, "answerability results")):
        where = describe_vizwiz_record(entry, i)
        check_record(p, entry, where, {"image": str})
        if "answerable" not in entry:
            raise LrcnError(f"{p}: {where}: missing key 'answerable'")
        _check_probability(p, where, entry["answerable"])
        if entry["image"] in out:
            raise LrcnError(f"{p}: {where}: duplicate image {short_repr(entry['image'])}")
        out[entry["image"]] = entry["answerable"]
    return out


def _check_probability(path: Path, where: str, value: Any) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0.0 <= value <= 1.0):
        raise LrcnError(
            f"{path}: {where}: 'answerable' must be a probability, a number in [0, 1], "
            f"got {json_kind(value)} {short_repr(value)}"
        )


# --------------------------------------------------------------------------- scoring


def _examples(names: Sequence[str]) -> str:
    return ", ".join(names[:_EXAMPLES]) + (", ..." if len(names) > _EXAMPLES else "")


def _coverage_problem(annotations: Sequence[Mapping[str, Any]],
                      results: Sequence[Mapping[str, Any]]) -> str | None:
    """A message when the results are not for exactly the annotated images, else None."""
    annotated = {rec["image"] for rec in annotations}
    answered = {rec["image"] for rec in results}
    missing = [short_repr(rec["image"]) for rec in annotations if rec["image"] not in answered]
    unknown = [describe_vizwiz_record(rec, i) for i, rec in enumerate(results)
               if rec["image"] not in annotated]
    parts = []
    if missing:
        parts.append(f"{len(missing)} annotated images have no result "
                     f"(e.g. {_examples(missing)})")
    if unknown:
        parts.append(f"{len(unknown)} results are for images not in the annotations "
                     f"(e.g. {_examples(unknown)})")
    return "; ".join(parts) or None


def score_vizwiz(annotations: Sequence[Mapping[str, Any]],
                 results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Score results against VizWiz annotation records as the official evaluator does.

    Args:
        annotations: records as :func:`read_vizwiz_annotations` returns them.
        results: records as :func:`read_vizwiz_results` returns them; they must be for
            exactly the annotated images (LrcnError otherwise).

    Returns:
        ``{"overall", "per_answer_type", "num_questions"}`` in percent, plus
        ``"answerability": {"average_precision", "f1"}`` when the results carry
        ``answerable``, and ``"per_question"``: image -> accuracy in percent (unrounded).
    """
    problem = _coverage_problem(annotations, results)
    if problem is not None:
        raise LrcnError(f"the results do not cover exactly the annotated images: {problem}")
    by_image = {rec["image"]: rec for rec in results}
    accuracy = {rec["image"]: vizwiz_accuracy(by_image[rec["image"]]["answer"],
                                              [a["answer"] for a in rec["answers"]])
                for rec in annotations}
    summary = aggregate(accuracy, {rec["image"]: rec["answer_type"] for rec in annotations})
    summary["num_questions"] = len(accuracy)
    if results and all("answerable" in rec for rec in results):
        summary["answerability"] = answerability_metrics(
            [rec["answerable"] for rec in annotations],
            [by_image[rec["image"]]["answerable"] for rec in annotations],
        )
    summary["per_question"] = {image: 100.0 * acc for image, acc in accuracy.items()}
    return summary


def score_vizwiz_files(annotations_path: str | os.PathLike[str],
                       results_path: str | os.PathLike[str],
                       answerable_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read a VizWiz annotation file and a results file and score them (see
    :func:`score_vizwiz`); every problem is an LrcnError naming the file and record.

    ``answerable_path`` is the separate answerability submission ``[{"image",
    "answerable"}]`` (as ``lrcn evaluate`` writes it); its images must be the results'.
    """
    annotations = read_vizwiz_annotations(annotations_path)
    results = read_vizwiz_results(results_path)
    if answerable_path is not None:
        probabilities = read_answerability_results(answerable_path)
        if any("answerable" in r for r in results):
            raise LrcnError(f"{Path(results_path)} already gives 'answerable'; drop "
                            f"{Path(answerable_path)} or the key")
        missing = [r["image"] for r in results if r["image"] not in probabilities]
        extra = set(probabilities) - {r["image"] for r in results}
        if missing or extra:
            raise LrcnError(f"{Path(answerable_path)}: not for the images of {Path(results_path)}"
                            f": {len(missing)} missing (e.g. {_examples(missing)}), "
                            f"{len(extra)} extra (e.g. {_examples(sorted(extra))})")
        results = [{**r, "answerable": probabilities[r["image"]]} for r in results]
    try:
        return score_vizwiz(annotations, results)
    except LrcnError as exc:
        raise LrcnError(
            f"{Path(results_path)} (scored against {Path(annotations_path)}): {exc}"
        ) from None
