"""Training with a frozen torchvision trunk (encoded once per image) and with GloVe vectors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from conftest import TINY_SET, VQA2Layout, run_cli_uncaptured
from lrcn.config import RunConfig, apply_overrides
from lrcn.evaluation.score import score_files
from lrcn.engine.inference import load_model
from lrcn.engine.trainer import train
from lrcn.models.image_encoders import TorchvisionTrunk


def tiny_vqa2_config(layout: VQA2Layout) -> RunConfig:
    cfg = RunConfig()
    for item in TINY_SET:
        key, value = item.split("=")
        section, name = key.split(".")
        apply_overrides(getattr(cfg, section), {name: int(value)})
    apply_overrides(cfg.data, {"dataset": "vqa2", "data_root": str(layout.root),
                               "train_split": "train2014", "val_split": "val2014"})
    # The defaults' schedule (the paper's) is for 13 epochs: none of it fits a run this short.
    apply_overrides(cfg.train, {"epochs": 1, "batch_size": 8, "warmup_epochs": 0,
                                "decay_epochs": []})
    return cfg


def test_frozen_trunk_encodes_each_image_once(vqa2_layout: VQA2Layout, tmp_path: Path,
                                              monkeypatch) -> None:
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    encoded = []
    original = TorchvisionTrunk.forward

    def counting_forward(self, images):
        encoded.append(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(TorchvisionTrunk, "forward", counting_forward)
    cfg = tiny_vqa2_config(vqa2_layout)
    apply_overrides(cfg.model, {"image_encoder": "resnet50", "encoder_weights": str(weights)})
    apply_overrides(cfg.train, {"epochs": 2})
    summary = train(cfg, tmp_path / "run")

    # 6 training and 3 validation images, each encoded once across both epochs.
    assert sum(encoded) == 6 + 3
    # The trunk's weights travel in the checkpoint: the model rebuilds without the file, and
    # `lrcn evaluate` of it scores val exactly as training did (results scored officially).
    weights.unlink()
    results = tmp_path / "val_results.json"
    evaluated = run_cli_uncaptured("evaluate", "--checkpoint", tmp_path / "run", "--split",
                                   "val2014", "--results", results, "--json")
    assert evaluated.code == 0, evaluated.err
    report = score_files(vqa2_layout.val_annotations, results)
    assert len(report.per_question) == summary["num_questions"] == 12
    assert report.overall == pytest.approx(summary["overall"], abs=1e-9)
    assert report.per_answer_type == pytest.approx(summary["per_answer_type"], abs=1e-9)
    loaded = load_model(tmp_path / "run")
    trunk = loaded.model.encoder
    assert not any(p.requires_grad for p in trunk.parameters())
    assert any(k.startswith("encoder.") for k in loaded.checkpoint.model_state)


def test_glove_vectors_initialise_the_embedding(vqa2_layout: VQA2Layout, tmp_path: Path) -> None:
    glove = tmp_path / "glove.txt"
    vectors = {"what": [0.5] * 25, "color": [float(i) for i in range(25)], "new york": [9.0] * 25}
    glove.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()),
                     encoding="utf-8")
    cfg = tiny_vqa2_config(vqa2_layout)
    apply_overrides(cfg.data, {"glove": str(glove)})
    apply_overrides(cfg.train, {"lr": 0.0})  # keep the initial embedding to compare with
    train(cfg, tmp_path / "run")

    loaded = load_model(tmp_path / "run")
    assert loaded.checkpoint.config.model.word_dim == 25  # taken from the GloVe file
    embedding = loaded.checkpoint.model_state["net.embed.weight"]
    vocab = loaded.word_vocab
    assert torch.equal(embedding[vocab.index("color")], torch.tensor(vectors["color"]))
    assert torch.equal(embedding[vocab.index("what")], torch.tensor(vectors["what"]))


def test_images_over_the_cache_limit_are_decoded_per_batch(vqa2_layout: VQA2Layout) -> None:
    from lrcn.data import AnswerVocab, WordVocab, load_split
    from lrcn.data.batches import BatchDataset, encode_split

    split = load_split("vqa2", vqa2_layout.root, "train2014")
    words = WordVocab.build(r.question for r in split.records)
    answers = AnswerVocab.build(split.records)
    cached = encode_split(split, words, answers, 14, 32, cache_images=True)
    on_demand = encode_split(split, words, answers, 14, 32, cache_images=True, image_cache_gb=0.0)
    assert cached.images.cached and not on_demand.images.cached
    rows = list(range(len(split.records)))
    a, b = BatchDataset(cached, len(answers))[rows], BatchDataset(on_demand, len(answers))[rows]
    assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["tokens"], b["tokens"])


def test_worker_processes_decode_the_same_batches(vqa2_layout: VQA2Layout, tmp_path: Path) -> None:
    results = []
    for workers in (0, 2):
        cfg = tiny_vqa2_config(vqa2_layout)
        apply_overrides(cfg.data, {"cache_images": False})
        apply_overrides(cfg.train, {"num_workers": workers})
        train(cfg, tmp_path / f"run{workers}")
        results.append(load_model(tmp_path / f"run{workers}").checkpoint.model_state)
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
