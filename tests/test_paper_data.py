"""Paper-scale VQA-v2 data: VG QA, combined splits, the 3,129-answer rule, test-dev results,
GloVe caching, and the paper presets."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

import conftest
from conftest import VQA2Layout, run_cli, tiny_set_args, write_json
from lrcn.config import load_config
from lrcn.data import AnswerVocab, cached_glove, load_split, read_vqa2
from lrcn.data.glove import load_glove
from lrcn.data.text import WordVocab
from lrcn.engine.checkpoint import load_checkpoint
from lrcn.engine.setup import prepare_data
from lrcn.errors import LrcnError
from lrcn.models import create_model


def copy_layout(layout: VQA2Layout, tmp_path: Path) -> Path:
    root = tmp_path / "vqa2"
    shutil.copytree(layout.root, root)
    return root


# --------------------------------------------------------------------------- Visual Genome QA

def test_vg_questions_are_about_coco_train_and_val_images(vqa2_layout: VQA2Layout) -> None:
    split = read_vqa2(vqa2_layout.root, "vg")
    assert len(split.records) == len(vqa2_layout.vg_samples) == 12
    by_image = {r.image_key for r in split.records}
    assert by_image == {"train2014/COCO_train2014_000000000002.jpg",
                        "train2014/COCO_train2014_000000000006.jpg",
                        "val2014/COCO_val2014_000000000012.jpg"}
    record = split.records[0]
    assert record.answer_type is None  # openvqa's VG files carry no answer type
    assert record.answers == ("green",) * 10 and record.multiple_choice_answer == "green"
    for r in split.records:
        assert split.image_path(r.image_key).is_file()


def test_vg_image_outside_coco_train_val_is_an_error(vqa2_layout: VQA2Layout,
                                                     tmp_path: Path) -> None:
    root = copy_layout(vqa2_layout, tmp_path)
    samples = [(9001, 424242, "What is it?", "other", ["cat"] * 10)]
    write_json(root / "VG_questions.json", conftest.questions_json("vg", samples))
    write_json(root / "VG_annotations.json", conftest.vg_annotations_json(samples))
    with pytest.raises(LrcnError, match=r"VG_questions.json: question_id 9001: image_id 424242 "
                                        r"is not a COCO train2014 or val2014 image"):
        read_vqa2(root, "vg")


@pytest.mark.parametrize("answers, message", [
    ([], "has 0 answers, expected 1 to 10"),
    ([{"answer": "cat"}] * 11, "has 11 answers, expected 1 to 10"),
    ([{"answer": 3}], r"answers\[0\]: 'answer' must be a string"),
])
def test_vg_annotation_errors(vqa2_layout: VQA2Layout, tmp_path: Path, answers: list,
                              message: str) -> None:
    root = copy_layout(vqa2_layout, tmp_path)
    data = json.loads((root / "VG_annotations.json").read_text())
    data["annotations"][3]["answers"] = answers
    write_json(root / "VG_annotations.json", data)
    with pytest.raises(LrcnError, match=rf"VG_annotations.json: annotations\[3\] "
                                        rf"\(question_id 7003\): {message}"):
        read_vqa2(root, "vg")


# --------------------------------------------------------------------------- combined splits

def test_combined_split_is_the_parts_in_order(vqa2_layout: VQA2Layout) -> None:
    cache: dict = {}
    joined = load_split("vqa2", vqa2_layout.root, "train2014+val2014+vg", cache)
    ids = [r.question_id for r in joined.records]
    assert ids == ([s[0] for s in vqa2_layout.train_samples] + vqa2_layout.val_question_ids
                   + [s[0] for s in vqa2_layout.vg_samples])
    assert joined.name == "train2014+val2014+vg"
    assert set(cache) == {"train2014", "val2014", "vg"}
    # a cached part is reused, not read again
    assert load_split("vqa2", vqa2_layout.root, "val2014", cache) is cache["val2014"]


def test_combined_split_errors(vqa2_layout: VQA2Layout, tmp_path: Path) -> None:
    with pytest.raises(LrcnError, match="distinct split names joined by"):
        load_split("vqa2", vqa2_layout.root, "train2014++vg")
    with pytest.raises(LrcnError, match="distinct split names joined by"):
        load_split("vqa2", vqa2_layout.root, "vg+vg")
    with pytest.raises(LrcnError, match="VQA-v2 has no split 'val2017'"):
        load_split("vqa2", vqa2_layout.root, "train2014+val2017")
    root = copy_layout(vqa2_layout, tmp_path)
    # a VG question reusing a train2014 question id
    train_qid = vqa2_layout.train_samples[0][0]
    samples = [(train_qid, 2, "What color is it?", "other", ["green"] * 10)]
    write_json(root / "VG_questions.json", conftest.questions_json("vg", samples))
    write_json(root / "VG_annotations.json", conftest.vg_annotations_json(samples))
    with pytest.raises(LrcnError, match=rf"question_id {train_qid} is in both train2014 and vg"):
        load_split("vqa2", root, "train2014+vg")


# --------------------------------------------------------------------------- answer vocabulary

def _vocab_layout(tmp_path: Path) -> Path:
    """train2014/val2014 whose multiple-choice answers occur 10, 9 and 8 times in all."""
    root = tmp_path / "vqa2"
    counts = {"train2014": {"Two": 6, "a dog": 5, "cat": 8},     # "Two" -> "2" when processed
              "val2014": {"2": 4, "dog": 4, "bird": 2}}         # "a dog" -> "dog"
    qid = 1
    for split, answers in counts.items():
        samples = []
        for answer, n in answers.items():
            for _ in range(n):
                samples.append((qid, 1 if split == "train2014" else 11, "What is it?", "other",
                                [answer] * 10))
                qid += 1
        write_json(root / f"v2_OpenEnded_mscoco_{split}_questions.json",
                   conftest.questions_json(split, samples))
        write_json(root / f"v2_mscoco_{split}_annotations.json",
                   conftest.annotations_json(split, samples))
    return root


def test_answer_vocabulary_is_train_val_answers_occurring_more_than_8_times(
        tmp_path: Path) -> None:
    root = _vocab_layout(tmp_path)
    cfg = load_config("lrcn-ed-sa-6")  # answer_vocab_splits train2014+val2014, min count 9
    cfg.data.data_root = str(root)
    cfg.data.train_split, cfg.data.val_split = "train2014", None
    cfg.model.image_encoder = "small_cnn"
    data = prepare_data(cfg)
    # processed answers: "2" 10 times, "dog" 9 times, "cat" 8 times, "bird" 2 times
    assert data.answer_vocab.answers == ["2", "dog"]
    cfg.data.answer_vocab_splits = None  # the training split alone: nothing reaches 9
    with pytest.raises(LrcnError, match="no answer occurs at least 9 times"):
        prepare_data(cfg)
    cfg.data.answer_min_count = 8
    assert prepare_data(cfg).answer_vocab.answers == ["cat"]


# --------------------------------------------------------------------------- CLI

def test_train_on_combined_splits_without_validation_then_test_dev_results(
        vqa2_layout: VQA2Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", vqa2_layout.root,
                     "--train-split", "train2014+val2014+vg", "--val-split", "none",
                     "--epochs", "1", "--out", run, "--json", *tiny_set_args())
    assert result.code == 0, result.err
    summary = result.json
    assert "overall" not in summary and summary["best_epoch"] == 1
    ckpt = load_checkpoint(run)
    assert ckpt.config.data.train_split == "train2014+val2014+vg"
    assert ckpt.config.data.val_split is None
    # the vocabulary counts the answers of all three parts
    joined = load_split("vqa2", vqa2_layout.root, "train2014+val2014+vg").records
    train_only = load_split("vqa2", vqa2_layout.root, "train2014").records
    assert ckpt.answer_vocab == AnswerVocab.build(joined)
    assert ckpt.answer_vocab != AnswerVocab.build(train_only)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["val"] == {}

    result = run_cli(capsys, "evaluate", "--checkpoint", run, "--split", "test-dev2015", "--json")
    assert result.code == 0, result.err
    path = Path(result.json["results"])
    assert path == run / "results" / "vqa_OpenEnded_mscoco_test-dev2015_lrcn_results.json"
    results = json.loads(path.read_text())
    test_dev = json.loads((vqa2_layout.root / "Questions" /
                           "v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text())
    assert [r["question_id"] for r in results] == [q["question_id"] for q in test_dev["questions"]]
    assert all(isinstance(r["answer"], str) and r["answer"] for r in results)
    assert "overall" not in result.json


# --------------------------------------------------------------------------- GloVe

GLOVE_DIM = 25  # the smallest published GloVe size (twitter.27B.25d)
GLOVE_WORDS = ["the", ". . .", "at&t", "color", "square", "what"]  # ". . ." as in 840B


def glove_vector(i: int) -> list[float]:
    return [round(0.25 * i - 0.01 * j, 2) for j in range(GLOVE_DIM)]


def write_glove(path: Path) -> Path:
    lines = [" ".join([w, *map(str, glove_vector(i))]) for i, w in enumerate(GLOVE_WORDS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cached_glove_streams_once_then_reads_the_cache(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    glove = write_glove(tmp_path / "glove.txt")
    vocab = WordVocab(["what", "color", "square", "is"])
    calls = []

    def counting_load(path, vocab, *args, **kwargs):
        calls.append(path)
        return load_glove(path, vocab, *args, **kwargs)

    monkeypatch.setattr("lrcn.data.glove.load_glove", counting_load)
    first, coverage = cached_glove(glove, vocab, tmp_path / "cache")
    again, coverage_again = cached_glove(glove, vocab, tmp_path / "cache")
    assert len(calls) == 1 and len(list((tmp_path / "cache").glob("glove-*.pt"))) == 1
    assert coverage == coverage_again == 0.75
    assert first.equal(again)
    assert again[vocab.index("color")].tolist() == pytest.approx(glove_vector(3))
    # another vocabulary is another cache entry
    cached_glove(glove, WordVocab(["what"]), tmp_path / "cache")
    assert len(calls) == 2
    # a broken cache file is rebuilt
    for f in (tmp_path / "cache").glob("glove-*.pt"):
        f.write_bytes(b"not a torch file")
    rebuilt, _ = cached_glove(glove, vocab, tmp_path / "cache")
    assert len(calls) == 3 and rebuilt.equal(first)


def test_train_with_glove_reports_coverage_and_caches_beside_the_run(
        vqa2_layout: VQA2Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lrcn")
    glove = write_glove(tmp_path / "glove.twitter.27B.25d.txt")
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", vqa2_layout.root,
                     "--epochs", "1", "--out", tmp_path / "runs" / "a", "--glove", glove,
                     "--json", *tiny_set_args(), "--set", "model.word_dim=300")
    assert result.code == 0, result.err
    # training words: what color is the square how many squares are there (+ colours)
    vocab = load_checkpoint(tmp_path / "runs" / "a").word_vocab
    found = sum(w in {"the", "color", "square", "what"} for w in vocab.words)
    assert result.json["glove_coverage"] == round(100 * found / (len(vocab) - 2), 2)
    assert load_checkpoint(tmp_path / "runs" / "a").config.model.word_dim == GLOVE_DIM
    assert len(list((tmp_path / "runs" / ".glove_cache").glob("glove-*.pt"))) == 1
    assert "cached in" in caplog.text and "read from the cache" not in caplog.text
    caplog.clear()
    result = run_cli(capsys, "train", "--dataset", "vqa2", "--data-root", vqa2_layout.root,
                     "--epochs", "1", "--out", tmp_path / "runs" / "b", "--glove", glove,
                     "--json", *tiny_set_args())
    assert result.code == 0, result.err
    assert "read from the cache" in caplog.text


# --------------------------------------------------------------------------- presets

@pytest.mark.parametrize("variant", ["ed", "st", "cst"])
@pytest.mark.parametrize("layers", [6, 8])
def test_paper_presets_hold_the_papers_hyperparameters(variant: str, layers: int) -> None:
    cfg = load_config(f"lrcn-{variant}-sa-{layers}")
    m, t, d = cfg.model, cfg.train, cfg.data
    assert (m.variant, m.layers, m.lrm) == (variant, layers, "sa")
    assert (m.d_model, m.heads, m.ffn_dim, m.dropout, m.word_dim) == (512, 8, 2048, 0.1, 300)
    assert (m.pool_hidden, m.fused_dim, m.grid_reduction) == (512, 1024, "conv")
    assert (m.image_encoder, m.feature_channels) == ("features", 2048)
    assert (t.epochs, t.batch_size, t.lr, t.warmup_epochs) == (13, 64, 1e-4, 3)
    assert (t.decay_epochs, t.decay_rate, t.betas, t.eps) == ([10, 12], 0.2, (0.9, 0.98), 1e-9)
    assert (d.dataset, d.train_split, d.val_split) == ("vqa2", "train2014+val2014+vg", None)
    assert (d.answer_vocab_splits, d.answer_min_count, d.max_question_tokens) == \
        ("train2014+val2014", 9, 14)


def test_paper_preset_builds_the_paper_size_model() -> None:
    cfg = load_config("lrcn-ed-sa-6")
    model = create_model(cfg.model, vocab_size=20_573, num_answers=3129)
    # Table 7 of the paper: 51.61 M parameters without word embeddings (ED and St, L = 6),
    # which matches the model on pre-pooled 8x8 grids; the 2x2 stride-2 convolution that
    # reduces 16x16 grids adds 2048 * 2048 * 4 weights and 2048 biases.
    conv = 2048 * 2048 * 4 + 2048
    assert model.num_parameters() == 51_640_891 + conv
