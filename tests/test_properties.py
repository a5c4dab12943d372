"""Property-based tests (hypothesis): the tokenizer, answer normalisation, soft scores and
the readers hold their invariants on any input, not only on the examples of other tests.

Runs are derandomised and keep no example database, so CI sees the same examples every
time; each property tries at most ``EXAMPLES`` inputs.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import annotations_json, questions_json
from lrcn.data.answers import AnswerVocab
from lrcn.data.glove import load_glove
from lrcn.data.images import load_image
from lrcn.json_records import load_json
from lrcn.data.records import VQARecord
from lrcn.data.text import PAD_INDEX, UNK_INDEX, WordVocab, tokenize
from lrcn.data.vizwiz import read_vizwiz_file
from lrcn.data.vqa2 import read_annotations_file, read_questions_file, read_vqa2
from lrcn.engine.checkpoint import FORMAT, LEGACY_VERSION, load_checkpoint
from lrcn.errors import LrcnError
from lrcn.evaluation.score import read_results
from lrcn.evaluation.vizwiz import (
    normalize_vizwiz_prediction,
    read_answerability_results,
    read_vizwiz_results,
    vizwiz_accuracy,
)
from lrcn.vqa_accuracy import (
    clean_whitespace,
    normalize_answer,
    question_accuracy,
    soft_scores,
)
from lrcn.features.store import FeatureStore
from conftest import encode
from vizwiz_layout import annotations as vizwiz_annotations

EXAMPLES = 150
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# The tokenizer deletes these and splits on these (data/text.py, as MCAN does).
DELETED = set(".,'!?\"()*#:;")
SPLIT = set("-/")


# --------------------------------------------------------------------------- tokenizer

VOCAB = WordVocab.build(["what color is the square", "how many dogs are there",
                         "is it red or blue", "qué es 🐶"])


@PROPERTY
@given(st.text(), st.integers(min_value=1, max_value=20))
@example("What's  the dog-bowl/plate colour?! 🐶 ÄÖ", 3)
@example("<pad> <unk>", 14)
def test_tokenizer_on_any_text(text: str, max_len: int) -> None:
    tokens = tokenize(text)
    assert tokens == tokenize(text)  # deterministic
    for token in tokens:
        assert token and token == token.lower() and token == token.strip()
        assert not set(token) & (DELETED | SPLIT) and not any(c.isspace() for c in token)
    assert tokenize(" ".join(tokens)) == tokens  # nothing left to delete or split

    if not tokens:
        with pytest.raises(LrcnError, match="no words"):
            VOCAB.encode(text, max_len)
        return
    ids = VOCAB.encode(text, max_len)
    kept = min(len(tokens), max_len)
    assert len(ids) == max_len and all(0 <= i < len(VOCAB) for i in ids)
    assert PAD_INDEX not in ids[:kept] and ids[kept:] == [PAD_INDEX] * (max_len - kept)
    assert ids[:kept] == [VOCAB.index(t) for t in tokens[:kept]]


@PROPERTY
@given(st.lists(st.text(min_size=1), min_size=1, max_size=6))
def test_a_vocabulary_knows_every_word_it_was_built_from(questions: list[str]) -> None:
    vocab = WordVocab.build(questions)
    assert WordVocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    for question in questions:
        for token in tokenize(question):
            index = vocab.index(token)
            assert (index == UNK_INDEX) == (token in ("<pad>", "<unk>"))
            assert index == UNK_INDEX or vocab.word(index) == token


# --------------------------------------------------------------------------- answers

NORMALISERS: dict[str, Callable[[str], str]] = {
    "vqa": normalize_answer, "vizwiz": normalize_vizwiz_prediction}
# Text rich in what the normalisers act on: punctuation, digits, number words, articles,
# contractions, whitespace.
ANSWER_PIECES = st.sampled_from([*string.punctuation, *"0123456789 \t\n", "one", "two", "ten",
                                 "the", "a", "an", "dont", "yall'll", "Im", "x", "Yes", "no",
                                 "dog", "1,000", "3.5", "’", "é"])
ANSWER_TEXT = st.lists(ANSWER_PIECES, max_size=12).map("".join) | st.text(max_size=20)


@pytest.mark.parametrize("name", list(NORMALISERS))
@PROPERTY
@given(text=ANSWER_TEXT)
@example(text=" The  Two dogs-, dont!\n")
def test_normalisers_are_idempotent_and_stripped(name: str, text: str) -> None:
    normalise = NORMALISERS[name]
    once = normalise(text)
    assert once == once.strip() and "  " not in once
    # Idempotent as the official code is, as long as it can strip every period: it passes
    # re.UNICODE (32) as the count of periods removed.
    assume(text.count(".") <= 32)
    assert normalise(once) == once


# Few distinct answers, so that ten of them agree, differ in case or spacing, and repeat.
HUMAN_ANSWER = st.sampled_from(["yes", "Yes", "yes ", "no", "2", "two", "red", "a dog", "dog",
                                "dog.", "unanswerable"]) | ANSWER_TEXT
TEN_ANSWERS = st.lists(HUMAN_ANSWER, min_size=10, max_size=10)


@PROPERTY
@given(TEN_ANSWERS, st.permutations(range(10)))
@example(["yes"] * 10, list(range(10)))
def test_soft_scores_are_the_official_leave_one_out_accuracy(answers: list[str],
                                                             order: list[int]) -> None:
    scores = soft_scores(answers)
    assert scores and all(0.0 < s <= 1.0 for s in scores.values())
    if len(set(answers)) == 1:
        assert scores == {clean_whitespace(answers[0]): 1.0}
    assert soft_scores([answers[i] for i in order]) == pytest.approx(scores)
    # min(1, matches among the other nine / 3), averaged over the ten answers left out:
    # 0.3, 0.6, 0.9 and 1.0 for an answer given by 1, 2, 3 and 4 or more of the ten.
    human = [clean_whitespace(a) for a in answers]
    if len(set(human)) > 1:
        human = [normalize_answer(a) for a in human]
    counts = Counter(human)
    assert set(scores) == set(counts)
    for answer, score in scores.items():
        assert score == pytest.approx({1: 0.3, 2: 0.6, 3: 0.9}.get(counts[answer], 1.0))
        leave_one_out = [min(1.0, (counts[answer] - (h == answer)) / 3) for h in human]
        assert score == pytest.approx(sum(leave_one_out) / 10)
        assert question_accuracy(answer, answers) == pytest.approx(score)


@PROPERTY
@given(TEN_ANSWERS, ANSWER_TEXT)
def test_accuracies_lie_in_zero_one_whatever_the_prediction(answers: list[str],
                                                            prediction: str) -> None:
    for accuracy in (question_accuracy(prediction, answers),
                     vizwiz_accuracy(prediction, answers)):
        assert 0.0 <= accuracy <= 1.0
    assert question_accuracy(prediction, answers) == pytest.approx(
        question_accuracy(prediction, answers[::-1]))


@PROPERTY
@given(TEN_ANSWERS)
def test_training_targets_are_the_soft_scores_of_known_answers(answers: list[str]) -> None:
    record = VQARecord(1, "a.jpg", "what?", tuple(answers))
    vocab = AnswerVocab(["yes", "no", "2", "red", "dog"])
    expected = sorted((vocab.index(a), s) for a, s in soft_scores(answers).items() if a in vocab)
    assert vocab.targets(record) == expected


# --------------------------------------------------------------------------- readers

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10,
)


def mutated(valid: dict[str, Any], values: st.SearchStrategy[Any] = JSON
            ) -> st.SearchStrategy[dict[str, Any]]:
    """`valid` with some keys deleted, some values replaced and some keys added."""
    keys = sorted(valid)
    return st.builds(
        lambda dropped, replaced, added: {
            **{k: v for k, v in valid.items() if k not in dropped}, **replaced, **added},
        st.sets(st.sampled_from(keys), max_size=2),
        st.dictionaries(st.sampled_from(keys), values, max_size=2),
        st.dictionaries(st.text(max_size=6), JSON, max_size=1),
    )


def records(valid: list[dict[str, Any]], answers: bool = False) -> st.SearchStrategy[list]:
    """Lists of the valid records, each kept, mutated (or its answers) or replaced by junk."""
    def one(record: dict[str, Any]) -> st.SearchStrategy[Any]:
        options = [st.just(record), mutated(record), JSON]
        if answers:
            answer = record["answers"][0]
            answer_lists = st.lists(st.one_of(st.just(answer), mutated(answer), JSON),
                                    max_size=11)
            options.append(answer_lists.map(lambda a: {**record, "answers": a}))
        return st.one_of(options)
    return st.tuples(*(one(r) for r in valid)).map(list) | st.lists(JSON, max_size=3)


def file_shapes(key: str | None, valid: list[dict[str, Any]], answers: bool = False
                ) -> st.SearchStrategy[Any]:
    """A whole file: the records under `key` (or a top-level list), or junk."""
    lists = records(valid, answers)
    return st.one_of(lists if key is None else lists.map(lambda rs: {key: rs}), JSON)


def parses_or_names(path: Path, read: Callable[[Path], Any], data: Any) -> Any:
    """Write `data` as JSON, read it: a value, or an LrcnError naming the file."""
    path.write_text(json.dumps(data), encoding="utf-8")
    try:
        return read(path)
    except LrcnError as exc:
        assert str(path) in str(exc), str(exc)
        return None


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


VQA_QUESTIONS = questions_json("val2014", [(1, 7, "What?", "", []), (2, 7, "Is it?", "", [])])
VQA_ANNOTATIONS = annotations_json("val2014", [(1, 7, "What?", "other", ["red"] * 10),
                                               (2, 7, "Is it?", "yes/no", ["yes"] * 10)])
VIZWIZ = vizwiz_annotations("val")[:2]


@PROPERTY
@given(questions=file_shapes("questions", VQA_QUESTIONS["questions"]),
       annotations=file_shapes("annotations", VQA_ANNOTATIONS["annotations"], answers=True))
@example(questions={"questions": [{"question_id": 1, "image_id": 1, "question": "x"}] * 2},
         annotations={"annotations": [{**VQA_ANNOTATIONS["annotations"][0], "answers": []}]})
def test_vqa2_readers_parse_or_name_the_file(work: Path, questions: Any,
                                             annotations: Any) -> None:
    q = parses_or_names(work / "q.json", read_questions_file, questions)
    assert q is None or all(isinstance(k, int) and isinstance(v["question"], str)
                            for k, v in q.items())
    a = parses_or_names(work / "a.json", read_annotations_file, annotations)
    assert a is None or all(len(v["answers"]) == 10 for v in a.values())
    parses_or_names(work / "vg.json", lambda p: read_annotations_file(p, vg=True), annotations)
    parses_or_names(work / "r.json", read_results, questions)  # a wrong file entirely

    root = work / "vqa2"
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    for name, data in (("v2_OpenEnded_mscoco_val2014_questions.json", questions),
                       ("v2_mscoco_val2014_annotations.json", annotations)):
        (root / name).write_text(json.dumps(data), encoding="utf-8")
    try:
        split = read_vqa2(root, "val2014")
    except LrcnError as exc:
        assert "v2_OpenEnded_mscoco_val2014_questions.json" in str(exc) or \
            "v2_mscoco_val2014_annotations.json" in str(exc), str(exc)
    else:
        assert all(len(r.answers) == 10 for r in split.records)


@PROPERTY
@given(file_shapes(None, VIZWIZ, answers=True))
def test_vizwiz_readers_parse_or_name_the_file(work: Path, data: Any) -> None:
    for read in (read_vizwiz_file, lambda p: read_vizwiz_file(p, answers_required=False),
                 read_vizwiz_results, read_answerability_results):
        parses_or_names(work / "vizwiz.json", read, data)


@PROPERTY
@given(st.binary(max_size=64))
@example(b"1" * 5000)  # Python refuses to convert integers of over 4,300 digits
@example(b"\xef\xbb\xbf[1]")
@example(b'{"a": NaN, "b": -Infinity}')
def test_any_bytes_load_as_json_or_name_the_file(work: Path, raw: bytes) -> None:
    path = work / "raw.json"
    path.write_bytes(raw)
    try:
        load_json(path)
    except LrcnError as exc:
        assert str(path) in str(exc)


# --------------------------------------------------------------------------- other files

@PROPERTY
@given(st.lists(st.text(alphabet=st.sampled_from("ab .-1e9\t\x00é"), max_size=24),
                min_size=1, max_size=4))
def test_glove_lines_parse_or_name_file_and_line(work: Path, lines: list[str]) -> None:
    path = work / "glove.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        matrix, coverage = load_glove(path, WordVocab(["a", "b", "ab"]), dim=2)
    except LrcnError as exc:
        assert str(path) in str(exc)
    else:
        assert matrix.shape == (5, 2) and torch.isfinite(matrix).all() and 0 <= coverage <= 1


def _image_bytes(fmt: str) -> bytes:
    image = Image.new("RGB", (19, 11), (10, 200, 30))
    image.putpixel((3, 4), (255, 0, 0))
    return encode(image, fmt)


IMAGES = {fmt: _image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP")}


@PROPERTY
@given(st.sampled_from(sorted(IMAGES)), st.data())
def test_damaged_images_decode_or_name_the_file(work: Path, fmt: str, data: st.DataObject
                                                ) -> None:
    raw = bytearray(IMAGES[fmt])
    cut = data.draw(st.integers(0, len(raw)), label="length")
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    path = work / f"image.{fmt.lower()}"
    path.write_bytes(bytes(raw[:cut]))
    try:
        image = load_image(path)
    except LrcnError as exc:
        assert str(path) in str(exc)
    else:
        assert image.mode == "RGB" and image.size[0] >= 1 and image.size[1] >= 1


META_FIELDS = {"format_version": 1, "count": 1, "layout": "grid", "item_shape": [1, 1, 2],
               "dtype": "float32", "has_mask": False, "source": {},
               "checksum": {"algorithm": "sha256", "features": "0" * 64, "keys": "0" * 64,
                            "mask": None}}


@PROPERTY
@given(st.one_of(mutated(META_FIELDS), JSON), st.one_of(st.just(["a"]), JSON))
def test_feature_store_meta_and_keys_open_or_name_the_file(work: Path, meta: Any,
                                                           keys: Any) -> None:
    import numpy as np

    store = work / "store"
    store.mkdir(exist_ok=True)
    np.save(store / "features.npy", np.zeros((1, 1, 1, 2), np.float32))
    (store / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    (store / "keys.json").write_text(json.dumps(keys), encoding="utf-8")
    try:
        FeatureStore.open(store)
    except LrcnError as exc:
        assert str(store) in str(exc)


def _payload() -> dict[str, Any]:
    return {"format": FORMAT, "version": LEGACY_VERSION, "config": {"model": {"d_model": 16}},
            "word_vocab": WordVocab(["a"]).to_dict(), "answer_vocab": AnswerVocab(["b"]).to_dict(),
            "model": {"w": torch.zeros(2)}, "epoch": 0, "metrics": {}}


@PROPERTY
@given(st.sampled_from(sorted(_payload())), JSON)
def test_checkpoint_fields_load_or_name_the_file(work: Path, key: str, value: Any) -> None:
    path = work / "checkpoint.pt"
    torch.save({**_payload(), key: value}, path)
    try:
        ckpt = load_checkpoint(path)
    except LrcnError as exc:
        assert str(path) in str(exc)
    else:
        assert isinstance(ckpt.epoch, int) and isinstance(ckpt.model_state, dict)
