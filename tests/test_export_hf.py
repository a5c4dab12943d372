"""``lrcn export --format hf``: a self-contained model folder (the best checkpoint's files and
a model card with the Hub's metadata) that every --checkpoint and ``lrcn.from_pretrained``
take, answering exactly as the run's model; ``--push-to-hub`` through huggingface_hub."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import lrcn
from conftest import (
    assert_one_line_error,
    make_legacy_run,
    run_cli,
    run_cli_uncaptured,
    tiny_checkpoint,
)
from lrcn.config import config_to_dict
from lrcn.engine.checkpoint import load_checkpoint, save_checkpoint
from lrcn.engine.inference import load_model

FILES = ["README.md", "answer_vocab.json", "config.json", "model.safetensors", "word_vocab.json"]


@pytest.fixture(scope="module")
def exported(tiny_easyvqa_run: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, dict[str, Any]]:
    """The session's tiny run exported, and the summary ``--json`` printed."""
    out = tmp_path_factory.mktemp("export") / "easyvqa-tiny"
    result = run_cli_uncaptured("export", "--checkpoint", tiny_easyvqa_run, "--format", "hf",
                                "--out", out, "--json")
    assert result.code == 0, result.err
    return out, result.json


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_folder_is_the_best_checkpoint_and_a_card(exported: tuple[Path, dict[str, Any]],
                                                       tiny_easyvqa_run: Path) -> None:
    out, summary = exported
    best = tiny_easyvqa_run / "checkpoints" / "best"
    assert sorted(os.listdir(out)) == FILES
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no staging left
    for name in FILES[1:]:  # one format: byte for byte the checkpoint's files
        assert (out / name).read_bytes() == (best / name).read_bytes(), name
    assert not [p for p in out.iterdir()
                if zipfile.is_zipfile(p) or p.read_bytes()[:1] == b"\x80"]  # no pickle
    ckpt = load_checkpoint(best)
    assert summary == {
        "format": "hf", "out": str(out), "files": FILES,
        "parameters": load_model(best).model.num_parameters(),
        "metrics": {"split": "test", "epoch": 1, **ckpt.metrics["val"]}}


def test_evaluate_on_the_folder_gives_the_runs_accuracy(
        exported: tuple[Path, dict[str, Any]], tiny_easyvqa_run: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = exported
    scores = []
    for checkpoint in (tiny_easyvqa_run, out):
        result = run_cli(capsys, "evaluate", "--checkpoint", checkpoint, "--split", "test",
                         "--results", tmp_path / f"{checkpoint.name}.json", "--json")
        assert result.code == 0, result.err
        scores.append({k: result.json[k] for k in ("overall", "per_answer_type",
                                                    "num_questions")})
    assert scores[0] == scores[1]
    assert (tmp_path / f"{out.name}.json").read_bytes() == \
        (tmp_path / f"{tiny_easyvqa_run.name}.json").read_bytes()


def test_from_pretrained_gives_the_runs_logits(exported: tuple[Path, dict[str, Any]],
                                               tiny_easyvqa_run: Path) -> None:
    out, _ = exported
    loaded, run = lrcn.from_pretrained(out), load_model(tiny_easyvqa_run)
    assert not loaded.model.training and loaded.word_vocab == run.word_vocab
    assert loaded.answer_vocab == run.answer_vocab
    questions = ["what color is the shape?", "is there a circle?", "what shape is it?"]
    tokens = torch.tensor([run.word_vocab.encode(q, 14) for q in questions])
    torch.manual_seed(1)
    pixels = torch.rand(len(questions), 3, 32, 32)
    with torch.no_grad():
        a, b = (m.model.forward_all(tokens, grid=m.model.encode_images(pixels)).answer
                for m in (loaded, run))
    assert torch.equal(a, b)


def test_import_lrcn_loads_nothing() -> None:
    """from_pretrained imports the engine when called: ``import lrcn`` stays cheap."""
    code = "import sys, lrcn; print(sorted(m for m in sys.modules if m.startswith(('torch', " \
           "'lrcn.'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_card(exported: tuple[Path, dict[str, Any]]) -> None:
    out, summary = exported
    card = (out / "README.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    metrics = summary["metrics"]
    assert meta["library_name"] == "lrcn" and meta["pipeline_tag"] == "visual-question-answering"
    assert meta["tags"][:2] == ["visual-question-answering", "lrcn"] and "easyvqa" in meta["tags"]
    assert meta["datasets"] == ["easyvqa"] and meta["metrics"] == ["accuracy"]
    (index,) = meta["model-index"]
    assert index["name"] == out.name
    (result,) = index["results"]
    assert result["task"]["type"] == "visual-question-answering"
    assert result["dataset"] == {"type": "easyvqa", "name": "easyvqa", "split": "test"}
    values = {m["name"]: m["value"] for m in result["metrics"]}
    assert values == {"VQA accuracy (overall)": metrics["overall"],
                      **{f"VQA accuracy ({kind})": value
                         for kind, value in metrics["per_answer_type"].items()}}
    # The Hub's own reader takes the metadata.
    from huggingface_hub import repocard_data
    name, results = repocard_data.model_index_to_eval_results(meta["model-index"])
    assert name == out.name and len(results) == len(values)

    ckpt = load_checkpoint(out)
    config = yaml.safe_dump(config_to_dict(ckpt.config), sort_keys=False)
    assert f"```yaml\n{config}```" in card  # the exact config
    assert yaml.safe_load(config) == {k: v for k, v in json.loads(
        (out / "config.json").read_text(encoding="utf-8")).items() if k in ("data", "model", "train")}
    assert f"**{metrics['overall']:.2f}**" in card
    assert "co-stacking (LRCN-CSt) of L = 1" in card and "layer-residual" in card
    for usage in (f"lrcn predict --checkpoint {out.name} ",
                  f"lrcn evaluate --checkpoint {out.name} --split test",
                  f'lrcn.from_pretrained("{out.name}")'):
        assert usage in card, usage


def test_an_existing_out_is_refused(exported: tuple[Path, dict[str, Any]],
                                    tiny_easyvqa_run: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = exported
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run_cli(capsys, "export", "--checkpoint", tiny_easyvqa_run, "--format", "hf",
                     "--out", out)
    assert_one_line_error(result, "export", f"{out} already exists")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_checkpoint_without_metrics_and_an_old_file_export(
        tmp_path: Path, tiny_easyvqa_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Imported weights record no validation metrics: the card says so, without a
    model-index. A .pt file of an earlier version exports to the same folder files."""
    ckpt = tiny_checkpoint()
    ckpt.metrics = {"imported_from": "/x/epoch13.pkl", "source": "openvqa"}
    save_checkpoint(tmp_path / "imported", ckpt)
    result = run_cli(capsys, "export", "--checkpoint", tmp_path / "imported", "--format", "hf",
                     "--out", tmp_path / "card", "--json")
    assert result.code == 0, result.err
    assert result.json["metrics"] == {}
    card = (tmp_path / "card" / "README.md").read_text(encoding="utf-8")
    assert "model-index" not in front_matter(card) and "records no validation metrics" in card

    old = make_legacy_run(shutil.copytree(tiny_easyvqa_run, tmp_path / "old"))
    result = run_cli(capsys, "export", "--checkpoint", old / "checkpoints" / "best.pt",
                     "--format", "hf", "--out", tmp_path / "from-old", "--json")
    assert result.code == 0, result.err
    best = tiny_easyvqa_run / "checkpoints" / "best"
    for name in FILES[1:]:
        assert (tmp_path / "from-old" / name).read_bytes() == (best / name).read_bytes(), name


def test_a_torchvision_trunk_needs_no_weights_file(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The trunk's weights are in model.safetensors: the folder loads though the weights file
    the run started from (model.encoder_weights) is gone."""
    ckpt = tiny_checkpoint(image_encoder="resnet50", encoder_weights=str(tmp_path / "gone.pth"))
    save_checkpoint(tmp_path / "trunk", ckpt)
    result = run_cli(capsys, "export", "--checkpoint", tmp_path / "trunk", "--format", "hf",
                     "--out", tmp_path / "model", "--json")
    assert result.code == 0, result.err
    loaded = lrcn.from_pretrained(tmp_path / "model")
    for name, tensor in ckpt.model_state.items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert "torchvision `resnet50` trunk" in (tmp_path / "model" / "README.md").read_text()


# --------------------------------------------------------------------------- the Hub


class FakeApi:
    """huggingface_hub.HfApi as export_hf calls it, recording the calls."""

    calls: list[tuple[str, tuple, dict]] = []
    fail: Exception | None = None

    def create_repo(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("create_repo", args, kwargs))
        return f"https://huggingface.co/{args[0]}"

    def upload_folder(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("upload_folder", args, kwargs))
        if self.fail is not None:
            raise self.fail


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    module = types.ModuleType("huggingface_hub")
    module.HfApi = FakeApi
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    FakeApi.calls, FakeApi.fail = [], None
    return FakeApi


def test_push_to_hub_uploads_the_folder(fake_hub: type[FakeApi], tiny_easyvqa_run: Path,
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    result = run_cli(capsys, "export", "--checkpoint", tiny_easyvqa_run, "--format", "hf",
                     "--out", out, "--push-to-hub", "me/lrcn-tiny", "--json")
    assert result.code == 0, result.err
    assert result.json["hub"] == "https://huggingface.co/me/lrcn-tiny"
    assert fake_hub.calls == [
        ("create_repo", ("me/lrcn-tiny",), {"repo_type": "model", "exist_ok": True}),
        ("upload_folder", (), {"folder_path": str(out), "repo_id": "me/lrcn-tiny",
                               "repo_type": "model",
                               "commit_message": "lrcn export --format hf"})]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert front_matter(card)["model-index"][0]["name"] == "me/lrcn-tiny"
    assert 'snapshot_download("me/lrcn-tiny", local_dir="model")' in card

    fake_hub.fail = OSError("401 Client Error: Unauthorized\nmore")
    result = run_cli(capsys, "export", "--checkpoint", tiny_easyvqa_run, "--format", "hf",
                     "--out", tmp_path / "again", "--push-to-hub", "me/lrcn-tiny")
    assert_one_line_error(result, "export", "--push-to-hub me/lrcn-tiny: uploading",
                          "OSError: 401 Client Error: Unauthorized")


def test_push_to_hub_without_the_extra(monkeypatch: pytest.MonkeyPatch, tiny_easyvqa_run: Path,
                                       tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    result = run_cli(capsys, "export", "--checkpoint", tiny_easyvqa_run, "--format", "hf",
                     "--out", tmp_path / "model", "--push-to-hub", "me/lrcn-tiny")
    assert_one_line_error(result, "export", "needs the huggingface_hub package",
                          "pip install 'lrcn[hub]'", f"{tmp_path / 'model'} is written")
    assert sorted(os.listdir(tmp_path / "model")) == FILES
