"""The model registry: a model registers itself beside its code, and one new file plus one import
line is all it takes for ``lrcn train --model``, its help and the config check to know it."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import ANSWERS, CHANNELS, VOCAB, run_cli, tiny_lrcn_cfg, tiny_set_args
from lrcn.cli import build_parser
from lrcn.engine.checkpoint import load_checkpoint
from lrcn.errors import LrcnError
from lrcn.models import create_model, model_names, register_model, registry

NAME = "tiny_test_model"

# The new model's whole file: a bag of words beside the mean of the grid, wrapped as every
# registered model is (`build_vqa_model`).
MODEL_FILE = f'''
"""A bag-of-words model: the mean word vector beside the mean grid cell, then an MLP."""

from __future__ import annotations

import torch
from torch import nn

from lrcn.config import ModelConfig
from lrcn.models.registry import register_model
from lrcn.models.vqa_model import LRCNOutput, VQAModel, build_vqa_model


class BagOfWords(nn.Module):
    uses_image = True
    places_regions = False

    def __init__(self, cfg: ModelConfig, vocab_size: int, num_answers: int,
                 grid_channels: int, word_vectors: torch.Tensor | None = None) -> None:
        super().__init__()
        self.grid_channels = grid_channels
        self.fused_dim = cfg.fused_dim
        self.embed = nn.Embedding(vocab_size, cfg.word_dim, padding_idx=0)
        self.fuse = nn.Linear(cfg.word_dim + grid_channels, cfg.fused_dim)
        self.head = nn.Linear(cfg.fused_dim, num_answers)

    def forward_features(self, tokens, grid, grid_mask=None, grid_boxes=None,
                         image_index=None) -> LRCNOutput:
        if image_index is not None:  # grids one per distinct image: each question's own
            grid = grid[image_index]
        words = (tokens != 0).float()
        question_weights = words / words.sum(1, keepdim=True).clamp(min=1)  # (B, T)
        q = torch.bmm(question_weights.unsqueeze(1), self.embed(tokens)).squeeze(1)
        cells = grid.reshape(grid.shape[0], -1, self.grid_channels)  # (B, N, C)
        image_weights = cells.new_full(cells.shape[:2], 1 / cells.shape[1])  # (B, N)
        v = torch.bmm(image_weights.unsqueeze(1), cells).squeeze(1)
        fused = torch.relu(self.fuse(torch.cat([q, v], dim=-1)))  # (B, fused_dim)
        return LRCNOutput(fused, image_weights, question_weights)

    def forward_head(self, fused: torch.Tensor) -> torch.Tensor:
        return self.head(fused)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n


@register_model("{NAME}")
def tiny_test_model(cfg: ModelConfig, vocab_size: int, num_answers: int,
                    word_vectors: torch.Tensor | None = None,
                    random_weights: bool = False) -> VQAModel:
    """The bag-of-words model behind the image encoder."""
    return build_vqa_model(BagOfWords, cfg, vocab_size, num_answers, word_vectors,
                           random_weights)
'''


@pytest.fixture
def new_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new model file, imported (its one import line); unregistered afterwards, so no other
    test sees it."""
    (tmp_path / f"{NAME}.py").write_text(textwrap.dedent(MODEL_FILE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert NAME not in model_names()
    try:
        importlib.import_module(NAME)
        yield NAME
    finally:
        registry._MODELS.pop(NAME, None)
        sys.modules.pop(NAME, None)


def train_help(capsys: pytest.CaptureFixture[str]) -> str:
    """The train subparser's help (``lrcn train --help``), on one line (argparse wraps lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_a_new_model_file_is_all_the_cli_needs(new_model: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert new_model in model_names()
    options = train_help(capsys).split("options:", 1)[1]
    assert new_model in options.split(" --model ", 1)[1].split(" --", 1)[0]  # --model's help
    out = tmp_path / "run"
    result = run_cli(capsys, "train", "--model", new_model, "--epochs", "1", "--out", out,
                     "--set", "data.train_limit=64", "--set", "data.val_limit=32", "--json",
                     *tiny_set_args())
    assert result.code == 0, result.err
    summary = result.json
    assert summary["epochs"] == 1 and 0.0 <= summary["overall"] <= 100.0  # trained, evaluated
    checkpoint = load_checkpoint(out / "checkpoints" / "best")
    assert checkpoint.config.model.arch == new_model
    assert any(key.startswith("net.embed") for key in checkpoint.model_state)


def test_the_fixture_leaves_no_trace(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the test above: the new model is gone from the registry and the help."""
    assert NAME not in model_names() and NAME not in train_help(capsys)


def test_unknown_and_duplicate_names_fail_loudly() -> None:
    with pytest.raises(LrcnError, match="unknown model.arch 'nope'; known models: .*lrcn"):
        create_model(tiny_lrcn_cfg(arch="nope"), VOCAB, ANSWERS)
    with pytest.raises(LrcnError, match="'lrcn' is already registered"):
        register_model("lrcn")(lambda *args, **kwargs: None)


@pytest.mark.parametrize("arch", model_names())
def test_every_registered_model_builds_from_its_name(arch: str) -> None:
    """Each family registered itself when ``lrcn.models`` was imported, under its own name."""
    model = create_model(tiny_lrcn_cfg(arch=arch), VOCAB, ANSWERS)
    logits = model(torch.tensor([[3, 4, 0]]), grid=torch.randn(1, 2, 2, CHANNELS))
    assert logits.shape == (1, ANSWERS)
    assert registry._MODELS[arch].__module__ == type(model.net).__module__
