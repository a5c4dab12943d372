"""``lrcn export --format onnx`` and ``lrcn predict`` on the .onnx file (ONNX Runtime).

Two exports: the session's tiny small-CNN run (images in) and a tiny run on a region store
with masks and boxes (grids in). Each is checked on ONNX Runtime against PyTorch by the
export itself; here: the file's inputs, outputs and metadata, batch sizes the check did not
try, the features model on real store rows, `lrcn predict` on 20 easy-VQA test images as
the PyTorch path answers, and the errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from conftest import (
    TINY_SET,
    assert_one_line_error,
    assert_refused,
    run_cli,
    run_cli_uncaptured,
    trained_run,
)

from lrcn.config import config_to_dict
from lrcn.data import load_split
from lrcn.engine import export_onnx
from lrcn.engine.inference import FEATURES_ONLY, load_model
from lrcn.engine.onnx_runtime import METADATA_KEY, load_onnx
from lrcn.features.store import FeatureStore
from lrcn.features.writer import StoreWriter

REGIONS, CHANNELS = 6, 8  # the region store: 6 regions of 8 channels, masks and boxes


@dataclass
class Export:
    run: Path
    onnx: Path
    summary: dict[str, Any]


_EXPORTS: dict[str, Export] = {}  # one export per session, shared with test_onnx_serve.py


def export_once(name: str, run: Path, folder: Path) -> Export:
    """``lrcn export --format onnx`` of `run`, done once per session under `name`."""
    if name not in _EXPORTS:
        out = folder / f"{name}.onnx"
        result = run_cli_uncaptured("export", "--checkpoint", run, "--format", "onnx",
                                    "--out", out, "--json")
        assert result.code == 0, result.err
        _EXPORTS[name] = Export(run, out, result.json)
    return _EXPORTS[name]


@pytest.fixture(scope="session")
def pixel_export(tiny_easyvqa_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Export:
    """The session's tiny small-CNN LRCN run, exported."""
    return export_once("pixels", tiny_easyvqa_run, tmp_path_factory.mktemp("onnx"))


def write_region_store(out: Path) -> Path:
    """Random region lists for every easy-VQA image: about a third of the regions masked
    (never the first), boxes of 0.4 x 0.4 image."""
    keys = sorted({r.image_key for r in load_split("easyvqa", None, "train").records})
    rng = np.random.default_rng(0)
    grids = rng.standard_normal((len(keys), REGIONS, CHANNELS), np.float32)
    mask = rng.random((len(keys), REGIONS)) > 0.3
    mask[:, 0] = True
    low = rng.random((len(keys), REGIONS, 2)) * 0.5
    boxes = np.concatenate([low, low + 0.4], axis=-1).astype(np.float32)
    writer = StoreWriter(out, len(keys), (REGIONS, CHANNELS), "float32", "regions", True, keys,
                         {"format": "test"}, with_boxes=True)
    writer.write(0, grids, mask, boxes)
    writer.finish()
    return out


@pytest.fixture(scope="module")
def features_export(tmp_path_factory: pytest.TempPathFactory) -> Export:
    """A tiny LRCN on the region store, placing its regions by their boxes (coords)."""
    if "features" in _EXPORTS:
        return _EXPORTS["features"]
    folder = tmp_path_factory.mktemp("onnx-features")
    store = write_region_store(folder / "store")
    tiny = [item for item in TINY_SET if not item.startswith(("data.image_size",
                                                               "model.encoder_channels"))]
    run = trained_run(folder / "run", "--epochs", "1", "--features", store,
                      *[a for item in tiny for a in ("--set", item)],
                      "--set", "model.grid_reduction=none", "--set", "model.dropout=0",
                      "--set", "model.position=coords", "--set", "data.train_limit=100",
                      "--set", "data.val_limit=20")
    return export_once("features", run, folder)


def easyvqa_samples(n: int) -> list[tuple[Path, str]]:
    """(image file, question) for the first `n` easy-VQA test images, one question each."""
    import easy_vqa

    root = Path(easy_vqa.__file__).resolve().parent / "data" / "test"
    seen: dict[int, str] = {}
    for question, _, image_id in json.loads((root / "questions.json").read_text()):
        seen.setdefault(image_id, question)
        if len(seen) == n:
            break
    return [(root / "images" / f"{image_id}.png", q) for image_id, q in seen.items()]


# --------------------------------------------------------------------------- the export

def test_pixel_export_summary_and_file(pixel_export: Export) -> None:
    summary, out = pixel_export.summary, pixel_export.onnx
    assert set(summary) >= {"format", "out", "inputs", "outputs", "max_abs_diff", "opset",
                            "bytes"}
    assert summary["format"] == "onnx" and summary["out"] == str(out)
    assert summary["inputs"] == {"tokens": ["batch", 14], "images": ["batch", 3, 32, 32]}
    assert summary["outputs"] == ["answer_logits", "image_weights", "question_weights"]
    assert 0 <= summary["max_abs_diff"] <= 1e-4 and summary["opset"] == export_onnx.OPSET
    assert summary["bytes"] == out.stat().st_size
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left
    model = onnx.load(out)
    onnx.checker.check_model(model)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input}
    assert inputs == summary["inputs"]  # the batch dimension is symbolic


def test_metadata_round_trip(pixel_export: Export) -> None:
    loaded = load_model(pixel_export.run)
    cfg = loaded.checkpoint.config
    meta = load_onnx(pixel_export.onnx).metadata
    assert meta.input_kind == "pixels" and meta.model_name == "lrcn-cst"
    assert meta.word_vocab == loaded.word_vocab and meta.answer_vocab == loaded.answer_vocab
    assert meta.max_question_tokens == cfg.data.max_question_tokens == 14
    assert meta.image_size == 32 and meta.grid_shape == (8, 8, 16) and meta.spatial == (8, 8)
    assert meta.mean == pytest.approx((0.485, 0.456, 0.406))
    assert meta.std == pytest.approx((0.229, 0.224, 0.225))
    assert not meta.answerable_head
    raw = meta.raw
    assert raw["config"] == config_to_dict(cfg)
    assert raw["question"]["vocabulary"] == loaded.word_vocab.words
    assert raw["answers"] == loaded.answer_vocab.answers
    assert "antialias" in raw["image"]["resize"] and raw["lrcn_version"]
    # Stored where any ONNX tool looks: the model's metadata_props.
    props = {p.key: p.value for p in onnx.load(pixel_export.onnx).metadata_props}
    assert json.loads(props[METADATA_KEY]) == raw


@pytest.mark.parametrize("batch", [3, 33])
def test_dynamic_batch(pixel_export: Export, batch: int) -> None:
    """Batch sizes neither the capture (3 is) nor the check used, against PyTorch."""
    loaded = load_model(pixel_export.run)
    predictor = load_onnx(pixel_export.onnx, threads=1)
    spec = export_onnx.graph_spec(loaded)
    graph = export_onnx.AnsweringGraph(loaded.model, spec)
    inputs = export_onnx.sample_inputs(spec, batch, len(loaded.word_vocab), seed=batch)
    got = predictor.run({name: t.numpy() for name, t in inputs.items()})
    with torch.no_grad():
        want = dict(zip(spec.outputs, graph(**inputs)))
    for name in spec.outputs:
        assert got[name].shape == tuple(want[name].shape)
        assert np.abs(got[name] - want[name].numpy()).max() <= 1e-4, name


def test_features_export_with_mask_and_boxes(features_export: Export) -> None:
    summary = features_export.summary
    assert summary["inputs"] == {"tokens": ["batch", 14], "grid": ["batch", REGIONS, CHANNELS],
                                 "grid_mask": ["batch", REGIONS],
                                 "grid_boxes": ["batch", REGIONS, 4]}
    assert summary["max_abs_diff"] <= 1e-4
    meta = load_onnx(features_export.onnx).metadata
    assert meta.input_kind == "features" and meta.grid_shape == (REGIONS, CHANNELS)
    assert meta.raw["features"] == {"layout": "regions", "mask": True, "boxes": True}
    assert meta.raw["image"] is None

    # Real store rows, with their masks and boxes: the same outputs as the model's.
    loaded = load_model(features_export.run)
    store = FeatureStore.open(loaded.checkpoint.config.data.features[0])
    rows = np.arange(8)
    grid, mask = store.read(rows)
    boxes = store.read_boxes(rows)
    assert mask is not None and not mask.all()
    questions = ["what color is the shape?", "is there a circle?"] * 4
    tokens = torch.tensor([loaded.word_vocab.encode(q, 14) for q in questions])
    with torch.no_grad():
        want = loaded.model.forward_all(tokens, grid=grid, grid_mask=mask, grid_boxes=boxes)
    got = load_onnx(features_export.onnx).run({
        "tokens": tokens.numpy(), "grid": grid.numpy(), "grid_mask": mask.numpy(),
        "grid_boxes": boxes.numpy()})
    assert np.abs(got["answer_logits"] - want.answer.numpy()).max() <= 1e-4
    assert np.abs(got["image_weights"] - want.image_weights.numpy()).max() <= 1e-5
    assert (got["image_weights"][~mask.numpy()] == 0).all()  # masked regions get no weight


def test_a_failed_check_writes_nothing(pixel_export: Export, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    proto = onnx.load(pixel_export.onnx)
    del proto.metadata_props[:]  # as torch.onnx.export gives it
    monkeypatch.setattr(export_onnx, "to_onnx", lambda graph, vocab_size: proto)
    monkeypatch.setattr(export_onnx, "compare_with_torch", lambda *a, **k: {
        "answer_logits": 2e-3, "image_weights": 0.0, "question_weights": 0.0})
    out = tmp_path / "model.onnx"
    result = run_cli(capsys, "export", "--checkpoint", pixel_export.run, "--format", "onnx",
                     "--out", out)
    assert_refused(result, "export", "does not match PyTorch", "answer_logits", "0.002",
                   "tolerance 0.0001", absent=(out,))
    out.write_bytes(b"the old file")  # an existing file is left as it was
    assert run_cli(capsys, "export", "--checkpoint", pixel_export.run, "--format", "onnx",
                   "--out", out).code == 2
    assert out.read_bytes() == b"the old file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


# --------------------------------------------------------------------------- predict

def test_predict_onnx_matches_pytorch_on_20_images(pixel_export: Export, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    samples = easyvqa_samples(20)
    assert len(samples) == 20
    for i, (image, question) in enumerate(samples):
        answers = {}
        for name, checkpoint in (("torch", pixel_export.run), ("onnx", pixel_export.onnx)):
            argv = ["predict", "--checkpoint", checkpoint, "--image", image, "--question",
                    question, "--top-k", "3", "--json"]
            if i == 0:
                argv += ["--attention-map", tmp_path / f"{name}.png"]
            result = run_cli(capsys, *argv)
            assert result.code == 0, result.err
            answers[name] = result.json
        torch_out, onnx_out = answers["torch"], answers["onnx"]
        assert set(onnx_out) == set(torch_out)
        assert onnx_out["answers"][0]["answer"] == torch_out["answers"][0]["answer"], question
        assert [a["score"] for a in onnx_out["answers"]] == pytest.approx(
            [a["score"] for a in torch_out["answers"]], abs=1e-4)
        assert onnx_out["answerable"] is None and torch_out["answerable"] is None
        assert onnx_out["question_tokens"] == torch_out["question_tokens"]
        assert np.allclose(onnx_out["image_attention"], torch_out["image_attention"], atol=1e-5)
        assert np.allclose(onnx_out["question_attention"], torch_out["question_attention"],
                           atol=1e-5)
        if i == 0:
            assert onnx_out["attention_map"] == str(tmp_path / "onnx.png")
            assert (tmp_path / "onnx.png").stat().st_size > 0


def test_predict_refuses_a_features_model_as_pytorch_does(
        features_export: Export, capsys: pytest.CaptureFixture[str]) -> None:
    image = easyvqa_samples(1)[0][0]
    for checkpoint in (features_export.run, features_export.onnx):
        result = run_cli(capsys, "predict", "--checkpoint", checkpoint, "--image", image,
                         "--question", "what shape is it?")
        assert_refused(result, "predict", FEATURES_ONLY)


# --------------------------------------------------------------------------- errors

def test_export_errors(pixel_export: Export, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.onnx"
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    for checkpoint, words in ((not_a_checkpoint, "notes.pt"), (tmp_path / "nowhere", "not found")):
        result = run_cli(capsys, "export", "--checkpoint", checkpoint, "--format", "onnx",
                         "--out", out)
        assert_refused(result, "export", words, absent=(out,))
    result = run_cli(capsys, "export", "--checkpoint", pixel_export.run, "--format", "onnx",
                     "--out", out, "--push-to-hub", "me/model")
    assert_refused(result, "export", "--push-to-hub", "--format hf", absent=(out,))
    result = run_cli(capsys, "export", "--checkpoint", pixel_export.run, "--format", "onnx",
                     "--out", tmp_path)
    assert_refused(result, "export", "is a folder")


def test_an_export_failure_says_what_failed(pixel_export: Export, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("Failed to export the model with torch.export. \x1b[96mThis is step "
                           "1/3\x1b[0m\n\n## Exception summary\n\n<class 'ValueError'>: "
                           "an op with no ONNX form\n\nmore")

    monkeypatch.setattr(torch.onnx, "export", fail)
    out = tmp_path / "model.onnx"
    result = run_cli(capsys, "export", "--checkpoint", pixel_export.run, "--format", "onnx",
                     "--out", out)
    assert_refused(result, "export", "cannot be exported to ONNX: <class 'ValueError'>: an op "
                   "with no ONNX form", absent=(out,))


def test_export_of_a_features_model_needs_its_stores(features_export: Export, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    store = Path(load_model(features_export.run).checkpoint.config.data.features[0])
    moved = store.with_name("moved")
    store.rename(moved)
    try:
        result = run_cli(capsys, "export", "--checkpoint", features_export.run, "--format",
                         "onnx", "--out", tmp_path / "f.onnx")
    finally:
        moved.rename(store)
    assert_refused(result, "export", "data.features", str(store), absent=(tmp_path / "f.onnx",))


def test_predict_errors_for_onnx_files(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    image = easyvqa_samples(1)[0][0]
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("not a model")
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX model that lrcn did not export
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("x", onnx.TensorProto.FLOAT, [1])],
                                   [value("y", onnx.TensorProto.FLOAT, [1])])
    model = onnx.helper.make_model(graph)
    onnx.save(model, foreign)
    newer = tmp_path / "newer.onnx"  # lrcn metadata of a format this version does not read
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(
        {"format": "lrcn-onnx", "format_version": 99})})
    onnx.save(model, newer)
    for path, words in ((tmp_path / "missing.onnx", "ONNX file not found"),
                        (bogus, "cannot load as an ONNX model"),
                        (foreign, "without lrcn metadata"),
                        (newer, "bad lrcn metadata: ValueError: format_version 99")):
        result = run_cli(capsys, "predict", "--checkpoint", path, "--image", image,
                         "--question", "what shape is it?")
        assert_one_line_error(result, "predict", str(path), words)


def test_export_prints_what_it_wrote(pixel_export: Export,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json the export is one line: the file, and how close ONNX Runtime came."""
    from lrcn.cli.output import print_human

    capsys.readouterr()
    print_human("export", pixel_export.summary)
    line = capsys.readouterr().out.strip()
    assert line.startswith("exported ONNX model (opset 18, ") and "batch sizes 1, 2, 5, 16" in line
    assert line.endswith(f": {pixel_export.onnx}")
    assert f"max |diff| {pixel_export.summary['max_abs_diff']:.1e}" in line


@pytest.mark.parametrize("command", ["evaluate", "export", "train"])
def test_commands_that_need_the_checkpoint_refuse_an_onnx_file(
        pixel_export: Export, command: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Only predict and serve run an .onnx file; the others say so and name what they take."""
    argv = {"evaluate": ["evaluate", "--checkpoint", pixel_export.onnx, "--split", "test"],
            "export": ["export", "--checkpoint", pixel_export.onnx, "--format", "hf",
                       "--out", tmp_path / "hf"],
            "train": ["train", "--init", pixel_export.onnx, "--out", tmp_path / "run"]}[command]
    result = run_cli(capsys, *argv)
    assert_refused(result, command, f"{pixel_export.onnx} is an ONNX model",
                   "lrcn predict and lrcn serve", absent=(tmp_path / "hf", tmp_path / "run"))
