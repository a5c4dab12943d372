"""The HTTP API of ``lrcn serve``: every success and error path, batching, robustness."""

from __future__ import annotations

import asyncio
import io
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import encode, png_with_header, run_cli
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from lrcn.data.text import tokenize
from lrcn.engine.inference import LoadedModel, load_model
from lrcn.errors import LrcnError
from lrcn.serve.app import ServeSettings, create_app, to_rgb
from lrcn.serve.batcher import Batcher, BatcherBusy
from lrcn.serve.examples import EXAMPLES, available_examples

MAX_UPLOAD = 200_000  # bytes: small, so oversize bodies are cheap to send
MAX_PIXELS = 1_000_000
QUESTION = "What is the red shape?"


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def checkpoint(tiny_easyvqa_run: Path) -> Path:
    return tiny_easyvqa_run


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> LoadedModel:
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def client(loaded: LoadedModel):
    settings = ServeSettings(max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    with TestClient(create_app(loaded, settings)) as c:
        yield c


@pytest.fixture(scope="module")
def png() -> bytes:
    example, path = available_examples()[EXAMPLES[0].name]
    return path.read_bytes()


@pytest.fixture(scope="module")
def jpeg(png: bytes) -> bytes:
    return encode(Image.open(io.BytesIO(png)).convert("RGB"), "JPEG", quality=90)


def post(client: TestClient, image: bytes | None = None, question: str | None = QUESTION,
         filename: str = "image.png", **fields: str):
    files = {} if image is None else {"image": (filename, image, "application/octet-stream")}
    data = dict(fields)
    if question is not None:
        data["question"] = question
    return client.post("/api/predict", files=files or None, data=data)


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for word in words:
        assert word in detail, detail


# --------------------------------------------------------------------------- success

def check_prediction(body: dict, question: str, top_k: int) -> None:
    assert set(body) == {"answers", "answerable", "image_attention", "question_tokens",
                         "question_attention", "latency_ms"}
    scores = [a["score"] for a in body["answers"]]
    assert 1 <= len(scores) <= top_k
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 and isinstance(a["answer"], str)
               for s, a in zip(scores, body["answers"]))
    grid = body["image_attention"]
    assert len(grid) == 4 and all(len(row) == 4 for row in grid)  # 8 x 8, reduced
    assert sum(map(sum, grid)) == pytest.approx(1.0, abs=1e-4)
    assert body["question_tokens"] == tokenize(question)
    assert len(body["question_attention"]) == len(body["question_tokens"])
    assert body["answerable"] is None or 0.0 <= body["answerable"] <= 1.0
    assert body["latency_ms"] > 0


def test_predict_png(client: TestClient, png: bytes) -> None:
    response = post(client, png)
    assert response.status_code == 200, response.text
    check_prediction(response.json(), QUESTION, top_k=5)


def test_predict_jpeg_gives_the_png_answer(client: TestClient, png: bytes, jpeg: bytes) -> None:
    from_png, from_jpeg = post(client, png).json(), post(client, jpeg).json()
    check_prediction(from_jpeg, QUESTION, top_k=5)
    assert from_jpeg["answers"][0]["answer"] == from_png["answers"][0]["answer"]


def _image_modes() -> dict[str, bytes]:
    rgb = Image.new("RGB", (40, 30), (200, 30, 30))
    rgb.paste((30, 30, 200), (5, 5, 20, 20))
    gray16 = Image.new("I;16", (40, 30))
    gray16.paste(60000, (5, 5, 20, 20))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    return {
        "grayscale": encode(rgb.convert("L")),
        "bilevel": encode(rgb.convert("1")),
        "gray-alpha": encode(rgb.convert("LA")),
        "rgba": encode(rgba),
        "palette": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)),
        "palette-transparent": encode(rgb.convert("P"), transparency=0),
        "cmyk-jpeg": encode(rgb.convert("CMYK"), "JPEG"),
        "cmyk-tiff": encode(rgb.convert("CMYK"), "TIFF"),
        "16-bit": encode(gray16),
        "gif": encode(rgb, "GIF"),
        "bmp": encode(rgb, "BMP"),
        "webp": encode(rgb, "WEBP"),
    }


@pytest.mark.parametrize("name", list(_image_modes()))
def test_every_image_mode_is_read(client: TestClient, name: str) -> None:
    response = post(client, _image_modes()[name])
    assert response.status_code == 200, response.text
    check_prediction(response.json(), QUESTION, top_k=5)


def test_to_rgb_scales_16_bit_and_puts_transparency_over_white() -> None:
    gray16 = Image.new("I;16", (2, 1))
    gray16.putpixel((1, 0), 65535)
    rgb = to_rgb(gray16)
    assert (rgb.getpixel((0, 0)), rgb.getpixel((1, 0))) == ((0, 0, 0), (255, 255, 255))
    clear = Image.new("RGBA", (1, 1), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("top_k", [1, 3, 20])
def test_top_k(client: TestClient, png: bytes, loaded: LoadedModel, top_k: int) -> None:
    response = post(client, png, top_k=str(top_k))
    assert response.status_code == 200, response.text
    answers = response.json()["answers"]
    assert len(answers) == min(top_k, len(loaded.answer_vocab))


def test_unknown_words_are_answered(client: TestClient, png: bytes) -> None:
    response = post(client, png, question="  xyzzy plugh?  ")
    assert response.status_code == 200, response.text
    assert response.json()["question_tokens"] == ["xyzzy", "plugh"]


# --------------------------------------------------------------------------- client errors

@pytest.mark.parametrize("top_k", ["0", "21", "-1", "abc", "2.5"])
def test_top_k_out_of_range(client: TestClient, png: bytes, top_k: str) -> None:
    assert_error(post(client, png, top_k=top_k), 422, "top_k")


@pytest.mark.parametrize("question, words", [
    ("", ["question"]), ("   \t\n", ["empty"]), ("?!? ... ,;", ["no words"]),
    ("a" * 501, ["501 characters", "500"]), (" ".join(["red"] * 101), ["101 words", "100"]),
])
def test_bad_questions(client: TestClient, png: bytes, question: str, words: list[str]) -> None:
    assert_error(post(client, png, question=question), 422, *words)


def test_missing_fields(client: TestClient, png: bytes) -> None:
    assert_error(post(client, None), 422, "missing", "image")
    assert_error(post(client, png, question=None), 422, "missing", "question")
    assert_error(client.post("/api/predict"), 422, "image", "question")
    assert_error(client.post("/api/predict", data={"image": "not a file", "question": QUESTION}),
                 422, "image", "file")
    assert_error(client.post("/api/predict", json={"question": QUESTION}), 422, "image")


@pytest.mark.parametrize("payload", [b"hello, this is text\n", b"<html><body>hi</body></html>",
                                     b"%PDF-1.4\n%...", bytes(range(256)) * 4])
def test_not_an_image_is_415(client: TestClient, payload: bytes) -> None:
    assert_error(post(client, payload, filename="photo.png"), 415, "not an image")


def test_corrupt_images_are_422(client: TestClient, png: bytes, jpeg: bytes) -> None:
    assert_error(post(client, jpeg[: len(jpeg) // 2]), 422, "truncated")
    assert_error(post(client, jpeg[:-200]), 422, "JPEG", "truncated")
    assert_error(post(client, png[: len(png) // 2]), 422, "PNG", "truncated")
    assert_error(post(client, png[:8] + b"\x00" * 100), 422, "corrupt")
    assert_error(post(client, b""), 422, "empty")


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    body = b"\x89PNG" + b"x" * (MAX_UPLOAD + 100_000)  # over the body limit (file + 64 KiB)
    assert_error(post(client, body), 413, "request body")


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks():  # no Content-Length: the server counts while reading
        yield (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(40):
            yield b"x" * 10_000
        yield b"\r\n--b--\r\n"

    response = client.post("/api/predict", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 413, "request body")


def test_file_over_the_limit_is_413(client: TestClient) -> None:
    # Under the body limit (file + 64 KiB), over the file limit: refused while reading it.
    assert_error(post(client, b"x" * (MAX_UPLOAD + 1)), 413, "image file")


def _refused_without_decoding(client: TestClient, monkeypatch: pytest.MonkeyPatch,
                              data: bytes) -> None:
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    assert_error(post(client, data), 413, "pixels")
    assert decoded == []


def test_pixel_bomb_header_is_refused_before_decoding(client: TestClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png_with_header(30_000, 30_000)  # 900 MP in a 70-byte file
    assert len(bomb) < 100
    _refused_without_decoding(client, monkeypatch, bomb)


def test_image_over_the_pixel_limit_is_refused_before_decoding(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    big = encode(Image.new("P", (2_000, 1_000)), optimize=True)  # 2 MP, a few KB compressed
    assert len(big) < MAX_UPLOAD
    _refused_without_decoding(client, monkeypatch, big)
    assert_error(post(client, png_with_header(1_001, 1_000)), 413, "1,001,000 pixels")


def test_undecodable_question_bytes_are_no_server_error(client: TestClient, png: bytes) -> None:
    body = (b'--b\r\nContent-Disposition: form-data; name="question"\r\n\r\n\xff\xfe\xfa\r\n'
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--b--\r\n")
    response = client.post("/api/predict", content=body,
                           headers={"content-type": "multipart/form-data; boundary=b"})
    # Starlette falls back to Latin-1 for bytes that are not UTF-8: a question of odd words.
    assert response.status_code in (200, 400, 422), response.text


# --------------------------------------------------------------------------- other endpoints

def test_healthz(client: TestClient) -> None:
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["model"] == "lrcn-cst" and body["device"] == "cpu"
    assert body["batching"]["batches"] >= 0


def test_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    responses = spec["paths"]["/api/predict"]["post"]["responses"]
    assert {"200", "413", "415", "422"} <= set(responses)


def test_demo_page(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


def test_examples(client: TestClient) -> None:
    examples = client.get("/api/examples").json()
    assert len(examples) == len(EXAMPLES)
    for example in examples:
        assert set(example) == {"name", "url", "question"} and tokenize(example["question"])
    response = client.get(examples[0]["url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)
    # An example image answers through the API like any upload.
    assert post(client, response.content, question=examples[0]["question"]).status_code == 200


@pytest.mark.parametrize("name", ["nope", "..%2F..%2Fpyproject.toml", "../../etc/passwd",
                                  "%2Fetc%2Fpasswd", "0.png"])
def test_unknown_example_is_404(client: TestClient, name: str) -> None:
    response = client.get(f"/api/examples/{name}")
    assert response.status_code == 404
    assert isinstance(response.json()["detail"], str)


# --------------------------------------------------------------------------- batching, robustness

def test_concurrent_requests_are_batched(loaded: LoadedModel, png: bytes, jpeg: bytes) -> None:
    settings = ServeSettings(max_batch=16, batch_wait_ms=300)
    questions = ["what is the red shape?", "is there a blue shape?", "what color is the shape?",
                 "is there a circle?"]
    with TestClient(create_app(loaded, settings)) as c:
        def ask(i: int):
            question, top_k = questions[i % 4], 1 + i % 5
            response = post(c, png if i % 2 else jpeg, question=question, top_k=str(top_k))
            return response, question, top_k

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(ask, range(16)))
        single = post(c, png, question=questions[1], top_k="5").json()
        stats = c.app.state.batcher.stats
    for response, question, top_k in results:
        assert response.status_code == 200, response.text
        check_prediction(response.json(), question, top_k)
        assert len(response.json()["answers"]) == top_k
    assert stats.requests == 17 and stats.largest > 1, stats
    # A request answered in a batch gets the answer it gets alone.
    batched = next(r.json() for r, q, k in results if q == questions[1] and k == 5)
    assert [a["answer"] for a in batched["answers"]] == [a["answer"] for a in single["answers"]]
    assert batched["answers"][0]["score"] == pytest.approx(single["answers"][0]["score"], abs=1e-4)


def test_a_failing_request_does_not_fail_its_batch(loaded: LoadedModel) -> None:
    image = Image.new("RGB", (32, 32), (255, 0, 0))

    async def run() -> list:
        batcher = Batcher(loaded, max_batch=8, wait_ms=300)
        batcher.start()
        try:
            # "???" has no words: the model raises LrcnError for it (the app checks first).
            return await asyncio.wait_for(asyncio.gather(
                batcher.predict(image, "what color is it?", 3),
                batcher.predict(image, "???", 3),
                batcher.predict(image, "is there a circle?", 2), return_exceptions=True), 60)
        finally:
            batcher.close()
            assert batcher.stats.largest == 3

    good, bad, other = asyncio.run(run())
    assert isinstance(bad, LrcnError) and "no words" in str(bad)
    assert len(good.answers) == 3 and len(other.answers) == 2


def test_closed_batcher_refuses(loaded: LoadedModel) -> None:
    batcher = Batcher(loaded)
    batcher.start()
    batcher.close()
    with pytest.raises(BatcherBusy):
        asyncio.run(batcher.predict(Image.new("RGB", (8, 8)), "what?", 1))


def test_without_lifespan_requests_get_503(loaded: LoadedModel, png: bytes) -> None:
    c = TestClient(create_app(loaded))  # not entered: the model worker never started
    assert_error(post(c, png), 503, "not running")


def test_unhandled_error_is_a_generic_500(loaded: LoadedModel) -> None:
    app = create_app(loaded)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app) as c:
        response = c.get("/boom")
        assert response.status_code == 500
        assert response.json() == {"detail": "internal server error"}
        assert c.get("/healthz").status_code == 200


def test_survives_a_burst_of_bad_requests(client: TestClient, png: bytes, jpeg: bytes) -> None:
    bad = [
        lambda: post(client, b"not an image"),
        lambda: post(client, jpeg[:200]),
        lambda: post(client, png, question="   "),
        lambda: post(client, png, question="!!!"),
        lambda: post(client, None),
        lambda: post(client, png_with_header(50_000, 50_000)),
        lambda: post(client, b"x" * (MAX_UPLOAD + 70_000)),
        lambda: post(client, png, top_k="1000"),
        lambda: client.post("/api/predict", content=b"garbage",
                            headers={"content-type": "multipart/form-data; boundary=zz"}),
        lambda: client.put("/api/predict"),
        lambda: client.get("/api/nothing-here"),
    ]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: bad[i % len(bad)]().status_code, range(5 * len(bad))))
    assert all(400 <= code < 500 for code in codes), codes
    response = post(client, png)
    assert response.status_code == 200
    check_prediction(response.json(), QUESTION, top_k=5)


# --------------------------------------------------------------------------- settings and CLI

@pytest.mark.parametrize("bad", [{"max_upload_bytes": 0}, {"max_batch": 0},
                                 {"batch_wait_ms": -1}, {"default_top_k": 30}])
def test_bad_settings(bad: dict) -> None:
    with pytest.raises(LrcnError):
        ServeSettings(**bad)


def test_cli_serve_errors(capsys: pytest.CaptureFixture[str], checkpoint: Path,
                          tmp_path: Path) -> None:
    result = run_cli(capsys, "serve", "--checkpoint", tmp_path / "missing")
    assert result.code == 2 and "lrcn serve: error:" in result.err and "missing" in result.err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(capsys, "serve", "--checkpoint", checkpoint, "--port", port)
    assert result.code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.err
    result = run_cli(capsys, "serve", "--checkpoint", checkpoint, "--max-upload-mb", "0")
    assert result.code == 2 and "--max-upload-mb" in result.err
