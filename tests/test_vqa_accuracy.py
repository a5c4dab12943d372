"""Unit and property tests of the official VQA accuracy (vqaEval.py, commit a013f00)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrcn.vqa_accuracy import (
    PUNCTUATION,
    aggregate,
    normalize_answer,
    prepare_human_answers,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    soft_scores,
)

LEVELS = (0.0, 0.3, 0.6, 0.9, 1.0)  # accuracy for 0, 1, 2, 3, >=4 matches among ten
EPS = 1e-9
FAST = settings(max_examples=150, deadline=None)


def _is_level(value: float) -> bool:
    return any(abs(value - level) < EPS for level in LEVELS)


# --------------------------------------------------------------------------- hand cases


@pytest.mark.parametrize(("text", "expected"), [
    ("yes!", "yes "),                # touches no space: replaced by a space
    ("yes !", "yes "),               # touches a space: removed
    ("red/blue", "red blue"),
    ("red/blue /", "redblue "),      # one '/' touches a space: every '/' is removed
    ("(yes)", " yes "),
    ("well, ok", "well ok"),
    ("a,b", "a b"),
    ("1,000", "1000"),               # digit,comma,digit: removed
    ("1,000 (approx)", "1000 approx"),  # ...and then every punctuation mark is removed
    ("1, 2", "1 2"),
    ("3.5", "3.5"),                  # period before a digit kept
    (".5", ".5"),
    ("st. louis", "st louis"),
    ("u.s.a.", "usa"),
    ("2.", "2"),                     # the intended look-behind is a look-ahead: removed
    ("don't", "don't"),              # apostrophe, colon, $ are not punctuation here
    ("10:30", "10:30"),
    ("$5", "$5"),
])
def test_process_punctuation(text: str, expected: str) -> None:
    assert process_punctuation(text) == expected


def test_period_removal_limited_to_32() -> None:
    # The official code passes re.UNICODE (32) as the count of periods to remove.
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("." * 32 + "x") == "x"


@pytest.mark.parametrize(("text", "expected"), [
    ("Two", "2"),
    ("none", "0"),
    ("zero", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),
    ("twenty", "twenty"),
    ("one of them", "1 of them"),
    ("the red one", "red 1"),
    ("an apple", "apple"),
    ("A Dog", "dog"),
    ("a", ""),
    ("theater", "theater"),
    ("dont", "don't"),
    ("Dont know", "don't know"),
    ("isnt it", "isn't it"),
    ("Im", "im"),                    # capitalised table keys are unreachable after lower()
    ("somebody'd", "somebodyd"),     # the official table maps this one backwards
    ("  many   spaces ", "many spaces"),
])
def test_process_digit_article(text: str, expected: str) -> None:
    assert process_digit_article(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("YES!", "yes"),
    ("T-Shirt", "t shirt"),
    ("Don't know.", "don't know"),
    ("three.", "3"),
    ("the 2.", "2"),
    ("St. Louis", "st louis"),
    ("1,000 dollars", "1000 dollars"),
])
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_identical_answers_are_not_normalised() -> None:
    answers = ["Yes"] * 10
    assert question_accuracy("yes", answers) == 0.0
    assert question_accuracy("Yes.", answers) == 0.0
    assert question_accuracy("Yes", answers) == 1.0
    assert question_accuracy(" Yes\t\n", answers) == 1.0  # whitespace is always cleaned
    assert prepare_human_answers(answers) == (answers, False)


def test_differing_answers_are_normalised() -> None:
    answers = ["Yes"] * 9 + ["no"]
    assert question_accuracy("yes", answers) == pytest.approx(1.0)
    assert question_accuracy("YES!", answers) == pytest.approx(1.0)
    assert question_accuracy("No.", answers) == pytest.approx(0.3)
    human, normalised = prepare_human_answers(answers)
    assert normalised and human == ["yes"] * 9 + ["no"]


def test_whitespace_cleaned_before_identity_check() -> None:
    # "Yes" and "Yes\n" are identical once cleaned, so nothing is normalised.
    answers = ["Yes"] * 5 + ["Yes\n"] * 5
    assert prepare_human_answers(answers) == (["Yes"] * 10, False)
    assert question_accuracy("yes", answers) == 0.0


@pytest.mark.parametrize(("matches", "expected"), [
    (0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (5, 1.0), (9, 1.0), (10, 1.0),
])
def test_leave_one_out_levels(matches: int, expected: float) -> None:
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert question_accuracy("cat", answers) == pytest.approx(expected, abs=EPS)


def test_number_word_matches_digit() -> None:
    answers = ["2.", "none", "0", "YES!", "0.", "none", "YES!", "1", "zero", "0"]
    # none/0/0./none/zero/0 all normalise to "0": six matches.
    assert question_accuracy("zero", answers) == pytest.approx(1.0)
    assert question_accuracy("2", answers) == pytest.approx(0.3)
    assert question_accuracy("yes", answers) == pytest.approx(0.6)


def test_no_answers_is_an_error() -> None:
    with pytest.raises(ValueError):
        question_accuracy("yes", [])


def test_soft_scores_hand_cases() -> None:
    assert soft_scores(["cat"] * 3 + ["dog"] * 7) == pytest.approx({"cat": 0.9, "dog": 1.0})
    assert soft_scores(["Cat", "cat!", "a cat"] + ["dog"] * 7) == pytest.approx(
        {"cat": 0.9, "dog": 1.0})
    assert soft_scores(["Yes"] * 10) == {"Yes": 1.0}
    assert soft_scores([]) == {}


def test_aggregate_hand_case() -> None:
    result = aggregate({1: 1.0, 2: 0.3, 3: 0.0, 4: 0.6},
                       {1: "yes/no", 2: "other", 3: "yes/no", 4: "number"})
    assert result["overall"] == pytest.approx(47.5)
    assert result["per_answer_type"] == pytest.approx(
        {"number": 60.0, "other": 30.0, "yes/no": 50.0})
    assert list(result["per_answer_type"]) == ["number", "other", "yes/no"]
    assert "per_question_type" not in result and "question_type_counts" not in result
    with pytest.raises(ValueError):
        aggregate({}, {})


def test_aggregate_per_question_type() -> None:
    # Question types cut across answer types: "is the" holds a yes/no and an other question.
    accuracy = {1: 1.0, 2: 0.3, 3: 0.0, 4: 0.6, 5: 0.9}
    answer_types = {1: "yes/no", 2: "other", 3: "yes/no", 4: "number", 5: "number"}
    question_types = {1: "is the", 2: "is the", 3: "are there", 4: "how many", 5: "how many"}
    result = aggregate(accuracy, answer_types, question_types)
    assert result["per_question_type"] == pytest.approx(
        {"are there": 0.0, "how many": 75.0, "is the": 65.0})
    assert list(result["per_question_type"]) == ["are there", "how many", "is the"]
    assert result["question_type_counts"] == {"are there": 1, "how many": 2, "is the": 2}
    assert result["per_answer_type"] == pytest.approx(
        {"number": 75.0, "other": 30.0, "yes/no": 50.0})
    assert result["overall"] == pytest.approx(56.0)


def test_aggregate_some_questions_untyped() -> None:
    """Untyped questions (VG) count overall and per answer type, in no question type."""
    accuracy = {1: 1.0, 2: 0.3, 3: 0.0}
    answer_types = {1: "other", 2: "other", 3: "other"}
    result = aggregate(accuracy, answer_types, {1: "what is", 2: None})  # 3: absent
    assert result["overall"] == pytest.approx(130 / 3)
    assert result["per_answer_type"] == pytest.approx({"other": 130 / 3})
    assert result["per_question_type"] == pytest.approx({"what is": 100.0})
    assert result["question_type_counts"] == {"what is": 1}
    for none_typed in ({}, {1: None, 2: None, 3: None}, None):
        assert "per_question_type" not in aggregate(accuracy, answer_types, none_typed)


# --------------------------------------------------------------------------- properties

_TOKENS = st.sampled_from([
    "yes", "Yes", "no", "Two", "two", "2", "none", "0", "ten", "a ", "an ", "the ", "dont",
    "Im", "somebody'd", " ", "  ", "\n", "\t", ",", ".", "-", "/", "!", "?", "(", ")", "'",
    "st.", "3.5", "1,000", "İ", "ß",
])
# Short texts (at most 8 periods), so the 32-period limit never comes into play.
_TEXT = st.one_of(st.text(max_size=20), st.lists(_TOKENS, max_size=8).map("".join))


@st.composite
def _ten_answers(draw: st.DrawFn) -> list[str]:
    """Ten human answers drawn from a small pool, so that repeats are common."""
    pool = draw(st.lists(_TEXT, min_size=1, max_size=4))
    return draw(st.lists(st.sampled_from(pool), min_size=10, max_size=10))


@FAST
@given(st.text())
def test_normalisation_is_total(text: str) -> None:
    out = normalize_answer(text)
    assert isinstance(out, str)
    assert out == " ".join(out.split())          # single spaces, nothing at the ends
    assert not any(p in out for p in PUNCTUATION)


@FAST
@given(_TEXT)
def test_normalisation_is_idempotent_below_the_period_limit(text: str) -> None:
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@FAST
@given(st.text(), st.lists(st.text(), min_size=1, max_size=12))
def test_accuracy_total_and_bounded(prediction: str, answers: list[str]) -> None:
    assert 0.0 <= question_accuracy(prediction, answers) <= 1.0


@FAST
@given(_TEXT, _ten_answers())
def test_accuracy_takes_the_five_levels(prediction: str, answers: list[str]) -> None:
    assert _is_level(question_accuracy(prediction, answers))


@FAST
@given(_ten_answers(), st.data())
def test_predicting_a_human_answer_scores_at_least_03(answers: list[str],
                                                       data: st.DataObject) -> None:
    k = data.draw(st.integers(0, 9))
    assert question_accuracy(answers[k], answers) >= 0.3 - EPS


@FAST
@given(st.lists(st.text(max_size=10), min_size=10, max_size=10, unique=True))
def test_distinct_answers_one_of_them_scores_at_least_03(answers: list[str]) -> None:
    for answer in answers:
        assert question_accuracy(answer, answers) >= 0.3 - EPS


@FAST
@given(_TEXT)
def test_ten_identical_answers_all_or_nothing(answer: str) -> None:
    answers = [answer] * 10
    assert question_accuracy(answer, answers) == 1.0
    assert question_accuracy(answer + "x", answers) == 0.0


@FAST
@given(_TEXT, _ten_answers(), st.randoms(use_true_random=False))
def test_accuracy_ignores_answer_order(prediction: str, answers: list[str], rnd) -> None:
    shuffled = list(answers)
    rnd.shuffle(shuffled)
    assert question_accuracy(prediction, shuffled) == pytest.approx(
        question_accuracy(prediction, answers), abs=EPS)


@FAST
@given(_TEXT, _ten_answers(), st.text(alphabet=" \t\n", max_size=3),
       st.text(alphabet=" \t\n", max_size=3))
def test_prediction_padding_ignored(prediction: str, answers: list[str],
                                    left: str, right: str) -> None:
    assert question_accuracy(left + prediction + right, answers) == question_accuracy(
        prediction, answers)


@FAST
@given(_ten_answers())
def test_soft_scores_equal_question_accuracy(answers: list[str]) -> None:
    scores = soft_scores(answers)
    human, _ = prepare_human_answers(answers)
    assert set(scores) == set(human)
    for key, value in scores.items():
        assert 0.3 - EPS <= value <= 1.0 and _is_level(value)
        assert question_accuracy(key, answers) == value
    for raw, key in zip(answers, human):
        assert question_accuracy(raw, answers) == scores[key]
