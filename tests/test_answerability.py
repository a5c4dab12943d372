"""Answerability that checks the question against the image.

A VizWiz-layout dataset where a question is unanswerable exactly when it names a colour the
photo does not show: neither the question alone (every colour is asked about, answerable
or not, equally often) nor the photo alone (the same photos carry both kinds) can tell.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli
from lrcn.data.generators.shapes_scenes import SceneStyle
from lrcn.data.generators.shapes_vizwiz import write_vizwiz_layout

# One object per photo, three colours: the model must compare the colour asked with it.
STYLE = SceneStyle(image_size=32, object_size=10, objects=(1, 1),
                   colors=("red", "green", "blue"), shapes=("circle", "square"))
SMALL = ["--set", "model.d_model=32", "--set", "model.heads=2", "--set", "model.ffn_dim=64",
         "--set", "model.layers=1", "--set", "model.word_dim=16", "--set",
         "model.pool_hidden=32", "--set", "model.fused_dim=32", "--set",
         "model.encoder_channels=16", "--set", "data.image_size=32", "--set",
         "train.batch_size=16", "--set", "train.lr=0.002", "--set", "train.warmup_epochs=0",
         "--set", "train.decay_epochs=[]", "--set", "model.position=coords",
         "--set", "model.answerable_hidden=32"]


@pytest.fixture(scope="module")
def mismatch_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mismatch")
    write_vizwiz_layout(root, seed=3, sizes={"train": 600, "val": 200}, style=STYLE,
                        families=("shape",), unanswerable_share=0.5,
                        unanswerable_kinds=("absent",))
    return root


def _answerability_ap(root: Path, tmp_path: Path, capsys, model: str) -> float:
    result = run_cli(capsys, "train", "--dataset", "vizwiz", "--data-root", root,
                     "--task", "answerable", "--model", model, "--epochs", "10",
                     "--out", tmp_path / model, "--json", *SMALL)
    assert result.code == 0, result.err
    return result.json["answerability"]["average_precision"]


def test_answerability_needs_question_and_image(mismatch_root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    lrcn = _answerability_ap(mismatch_root, tmp_path, capsys, "lrcn")
    text = _answerability_ap(mismatch_root, tmp_path, capsys, "text_only")
    image = _answerability_ap(mismatch_root, tmp_path, capsys, "image_only")
    # half the questions are unanswerable: AP 50 is chance
    assert text < 70 and image < 70, (text, image)
    assert lrcn >= 90, lrcn
    print("AP", lrcn, text, image)
