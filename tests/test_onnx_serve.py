"""``lrcn serve`` on an exported .onnx file: the API answers as it does from the checkpoint,
with the same batching; a features model is refused alike."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import encode
from fastapi.testclient import TestClient
from PIL import Image
from test_onnx_export import Export, easyvqa_samples, export_once, features_export  # noqa: F401

from lrcn.engine.inference import LoadedModel, load_model, load_predictor
from lrcn.engine.onnx_runtime import OnnxPredictor, load_onnx
from lrcn.errors import LrcnError
from lrcn.serve.app import ServeSettings, create_app
from lrcn.serve.batcher import Batcher

QUESTIONS = ["what color is the shape?", "what shape is it?", "is there a circle?",
             "is there a red shape?"]


@pytest.fixture(scope="module")
def pixel_export(tiny_easyvqa_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Export:
    return export_once("pixels", tiny_easyvqa_run, tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def onnx_predictor(pixel_export: Export) -> OnnxPredictor:
    return load_onnx(pixel_export.onnx)


def ask(client: TestClient, image: bytes, question: str, top_k: int = 3) -> dict:
    response = client.post("/api/predict", files={"image": ("q.png", image, "image/png")},
                           data={"question": question, "top_k": str(top_k)})
    assert response.status_code == 200, response.text
    return response.json()


def test_load_predictor_picks_the_runtime_by_suffix(pixel_export: Export) -> None:
    assert isinstance(load_predictor(pixel_export.onnx), OnnxPredictor)
    assert isinstance(load_predictor(pixel_export.run), LoadedModel)


def test_serve_answers_as_the_checkpoint_does(pixel_export: Export,
                                              onnx_predictor: OnnxPredictor) -> None:
    samples = [(path.read_bytes(), q) for path, q in easyvqa_samples(6)]
    with TestClient(create_app(onnx_predictor)) as onnx_client, \
            TestClient(create_app(load_model(pixel_export.run))) as torch_client:
        health = onnx_client.get("/healthz").json()
        torch_health = torch_client.get("/healthz").json()
        assert (health["runtime"], torch_health["runtime"]) == ("onnxruntime", "pytorch")
        assert health["model"] == torch_health["model"] == "lrcn-cst"
        assert health["device"] == torch_health["device"] == "cpu"
        for image, question in samples:
            got, want = ask(onnx_client, image, question), ask(torch_client, image, question)
            assert set(got) == set(want)
            assert [a["answer"] for a in got["answers"]] == [a["answer"] for a in want["answers"]]
            assert [a["score"] for a in got["answers"]] == pytest.approx(
                [a["score"] for a in want["answers"]], abs=1e-4)
            assert got["question_tokens"] == want["question_tokens"]
            assert got["answerable"] is None and want["answerable"] is None
            assert len(got["image_attention"]) == 4 and len(got["image_attention"][0]) == 4
            assert np.allclose(got["image_attention"], want["image_attention"], atol=1e-5)
            assert got["question_attention"] == pytest.approx(want["question_attention"],
                                                              abs=1e-5)
        # Limits are the app's, whichever runtime answers.
        response = onnx_client.post("/api/predict", data={"question": "?!"},
                                    files={"image": ("q.png", samples[0][0], "image/png")})
        assert response.status_code == 422 and "no words" in response.json()["detail"]


def test_onnx_requests_are_batched(onnx_predictor: OnnxPredictor) -> None:
    png = easyvqa_samples(1)[0][0].read_bytes()
    jpeg = encode(Image.open(easyvqa_samples(1)[0][0]).convert("RGB"), "JPEG", quality=90)
    settings = ServeSettings(max_batch=16, batch_wait_ms=300)
    with TestClient(create_app(onnx_predictor, settings)) as client:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: ask(client, png if i % 2 else jpeg,
                                                  QUESTIONS[i % 4], 1 + i % 3), range(8)))
        alone = ask(client, png, QUESTIONS[1], 2)
        stats = client.app.state.batcher.stats
    assert stats.requests == 9 and stats.largest > 1, stats
    assert [len(r["answers"]) for r in results] == [1 + i % 3 for i in range(8)]
    batched = results[5]["answers"][:2]  # png, QUESTIONS[1], top 3: answered in a batch
    assert [a["answer"] for a in batched] == [a["answer"] for a in alone["answers"]]
    assert [a["score"] for a in batched] == pytest.approx(
        [a["score"] for a in alone["answers"]], abs=1e-4)


def test_a_failing_request_does_not_fail_its_onnx_batch(onnx_predictor: OnnxPredictor) -> None:
    image = Image.new("RGB", (32, 32), (255, 0, 0))

    async def run() -> list:
        batcher = Batcher(onnx_predictor, max_batch=8, wait_ms=300)
        batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(
                batcher.predict(image, "what color is it?", 3),
                batcher.predict(image, "???", 3), return_exceptions=True), 60)
        finally:
            batcher.close()

    good, bad = asyncio.run(run())
    assert isinstance(bad, LrcnError) and "no words" in str(bad)
    assert len(good.answers) == 3


def test_serve_refuses_a_features_model_as_pytorch_does(
        features_export: Export) -> None:  # noqa: F811 - the fixture imported above
    messages = []
    for predictor in (load_model(features_export.run), load_onnx(features_export.onnx)):
        with pytest.raises(LrcnError) as info:
            create_app(predictor)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "precomputed image features" in messages[0]
