"""VQA accuracy exactly as the official evaluator computes it.

Follows GT-Vision-Lab/VQA ``vqaEval.py`` (commit a013f00) rule for rule, including its
quirks, because published numbers are only comparable when scored identically:

* the period regex ``(?!<=\\d)(\\.)(?!\\d)`` is a look-*ahead* for the two characters
  ``<=`` (not the look-behind it was meant to be), and the official call passes
  ``re.UNICODE`` (= 32) as the *count* argument, so at most 32 periods are removed;
* human answers and the prediction are normalised only when the ten human answers are not
  all identical;
* each human answer is left out in turn and the prediction scores
  ``min(1, matches among the other nine / 3)``; the question's accuracy is the mean.

The VizWiz evaluator (:mod:`lrcn.evaluation.vizwiz`) reuses these pieces with its own
contraction table, :data:`VIZWIZ_CONTRACTIONS`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
# The VizWiz API's ``vqaEval.py`` has the same table with typographic apostrophes (U+2019),
# except for two keys and eight values it leaves ASCII; copied exactly, quirks included.
_VIZWIZ_ASCII_KEYS = frozenset({"couldn'tve", "hadn'tve"})
_VIZWIZ_ASCII_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve",
                                  "wheres", "whove"})
VIZWIZ_CONTRACTIONS = {
    (k if k in _VIZWIZ_ASCII_KEYS else k.replace("'", "\u2019")):
    (v if k in _VIZWIZ_ASCII_VALUES else v.replace("'", "\u2019"))
    for k, v in CONTRACTIONS.items()
}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_OFFICIAL_PERIOD_COUNT = re.UNICODE  # the official code passes this flag as `count`


def process_punctuation(text: str) -> str:
    """Remove or space out punctuation as the official ``processPunctuation``."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """Lower-case, map number words to digits, drop articles, fix contractions.

    Args:
        text: the answer after :func:`process_punctuation`.
        contractions: the contraction table (:data:`VIZWIZ_CONTRACTIONS` for VizWiz).
    """
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [contractions.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """The official full normalisation of one answer string (VQA-v2 table by default)."""
    return process_digit_article(process_punctuation(text), contractions)


def clean_whitespace(text: str) -> str:
    """Tabs and newlines to spaces, then strip: what both evaluators do to a prediction."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def prepare_human_answers(answers: Sequence[str]) -> tuple[list[str], bool]:
    """Return the human answers as the evaluator compares them, and whether it normalises.

    The official code normalises only when the answers are not all identical; the same
    flag decides whether the prediction is normalised.
    """
    answers = [clean_whitespace(a) for a in answers]
    normalise = len(set(answers)) > 1
    if normalise:
        answers = [normalize_answer(a) for a in answers]
    return answers, normalise


def question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one predicted answer against the human answers.

    The official code leaves out one answer *dict* at a time; with the distinct
    ``answer_id`` of every published annotation that is leaving out one index at a time.
    """
    if not answers:
        raise ValueError("a question needs at least one human answer to be scored")
    human, normalise = prepare_human_answers(answers)
    pred = clean_whitespace(prediction)
    if normalise:
        pred = normalize_answer(pred)
    matches = sum(1 for a in human if a == pred)
    return leave_one_out_accuracy(matches, human, pred)


def leave_one_out_accuracy(matches: int, human: Sequence[str], pred: str) -> float:
    """Mean over the human answers of ``min(1, matches among the other answers / 3)``.

    Args:
        matches: how many of ``human`` equal ``pred``.
        human: the human answers as compared (already normalised or not).
        pred: the prediction as compared.
    """
    # Answers that equal the prediction see (matches - 1) others; the rest see `matches`.
    total = 0.0
    for a in human:
        others = matches - 1 if a == pred else matches
        total += min(1.0, others / 3.0)
    return total / len(human)


def soft_scores(answers: Sequence[str]) -> dict[str, float]:
    """Training targets: for every answer a human gave, the accuracy of predicting it.

    Keys are the answers as the evaluator compares them (normalised when it normalises),
    so a target score is exactly the accuracy a prediction of that answer would earn:
    0.3, 0.6, 0.9 and 1.0 for 1, 2, 3 and >=4 matches among ten.
    """
    if not answers:
        return {}
    human, _ = prepare_human_answers(answers)
    counts = Counter(human)
    return {a: leave_one_out_accuracy(n, human, a) for a, n in counts.items()}


def _group_means(pairs: Iterable[tuple[str, float]]) -> tuple[dict[str, float], dict[str, int]]:
    """Mean in percent and count of the accuracies of each group, groups sorted by name.

    The mean is ``100 * sum / count`` as the official ``setAccuracy`` computes it (unrounded).
    """
    groups: dict[str, list[float]] = {}
    for group, acc in pairs:
        groups.setdefault(group, []).append(acc)
    ordered = sorted(groups.items())
    return ({g: 100.0 * sum(v) / len(v) for g, v in ordered},
            {g: len(v) for g, v in ordered})


def aggregate(
    per_question: Mapping[Hashable, float],
    answer_types: Mapping[Hashable, str],
    question_types: Mapping[Hashable, str | None] | None = None,
) -> dict[str, Any]:
    """Overall, per-answer-type and per-question-type accuracy in percent.

    The one aggregation rule of both ``lrcn score`` and the evaluator. Each figure is the
    mean of the per-question accuracies of its questions, as the official ``overall``,
    ``perAnswerType`` and ``perQuestionType``.

    Args:
        per_question: question id -> accuracy in [0, 1].
        answer_types: question id -> answer type (``yes/no``, ``number``, ``other``...), for
            every question.
        question_types: question id -> question type (the annotation's ``question_type``,
            e.g. ``what color is the``), None or absent where unknown.

    Returns:
        ``{"overall", "per_answer_type"}`` and, when at least one question has a question
        type, ``per_question_type`` (type -> percent) and ``question_type_counts`` (type ->
        number of questions). The official evaluator needs a type on every question; where
        only some have one (e.g. val2014+vg: VG has none), the questions without a type count
        in ``overall`` and ``per_answer_type`` but in no question type, so each type's
        figure is still exactly the official one for its questions.
    """
    if not per_question:
        raise ValueError("no questions to aggregate")
    per_answer_type, _ = _group_means((answer_types[q], acc) for q, acc in per_question.items())
    summary: dict[str, Any] = {
        "overall": 100.0 * sum(per_question.values()) / len(per_question),
        "per_answer_type": per_answer_type,
    }
    question_types = question_types or {}
    typed = [(question_types[q], acc) for q, acc in per_question.items()
             if question_types.get(q) is not None]
    if typed:
        summary["per_question_type"], summary["question_type_counts"] = _group_means(typed)
    return summary
