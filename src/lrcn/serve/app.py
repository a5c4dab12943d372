"""The HTTP API of ``lrcn serve``: answer a question about an uploaded image.

Endpoints:
    POST /api/predict         multipart form: image (file), question (text), top_k (optional)
    GET  /api/examples        [{"name", "url", "question"}] for the demo page
    GET  /api/examples/{name} an example image (PNG)
    GET  /healthz             {"status": "ok", "model", "runtime", "device", "batching"}
    GET  /                    the demo page (static/index.html); /static/... its files
    GET  /docs, /openapi.json FastAPI's interactive documentation

Every error is JSON ``{"detail": "<message>"}`` with one of these status codes:
    400 the multipart body cannot be parsed (or a text field is over 1 MB)
    404 unknown route or example
    413 the body or the image file is over ``max_upload_bytes``, or the image has more than
        ``max_pixels`` pixels (refused from its header, before decoding)
    415 the file is not an image format read here (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)
    422 a missing field; an empty, wordless or too long question; top_k out of range; or a
        file in a known image format that cannot be decoded (corrupt or truncated)
    503 too many requests are waiting for the model, or the server is shutting down
    500 a bug: the traceback is logged, the client gets a generic message

Uploads are decoded in worker threads (at most ``decode_threads`` at a time) and
answered by a `Batcher`, which runs one forward pass for the requests that arrive together,
on whichever `Predictor` serves: a PyTorch checkpoint or an exported ``.onnx`` file on ONNX
Runtime (`lrcn.engine.inference.load_predictor`).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrcn.data.images import to_rgb
from lrcn.data.text import tokenize
from lrcn.engine.inference import Predictor
from lrcn.errors import LrcnError
from lrcn.serve.batcher import Batcher, BatcherBusy
from lrcn.serve.examples import available_examples

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MB = 1024 * 1024
FORM_OVERHEAD = 64 * 1024  # multipart headers and the text fields, on top of the image
CHUNK = 64 * 1024          # bytes read from an upload at a time

# Formats read from uploads. Pillow knows more, but some of those (EPS) run external
# programs and others are rarely photos; a short list keeps the attack surface small.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
# File signatures of those formats: a file that has one but cannot be read is corrupt (422),
# a file without one is not an image we read (415).
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
              b"II*\x00", b"MM\x00*", b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")


@dataclass
class ServeSettings:
    """Limits and batching of the server; every limit is checked before the model runs."""

    max_upload_bytes: int = 10 * MB   # image file (and request body, plus FORM_OVERHEAD)
    max_pixels: int = 40_000_000      # width * height, checked from the header before decoding
    max_question_chars: int = 500     # after stripping surrounding whitespace
    max_question_words: int = 100     # after tokenization
    default_top_k: int = 5            # answers returned when the request names no top_k
    max_top_k: int = 20               # largest top_k a request may ask for
    max_batch: int = 16               # requests answered by one forward pass
    batch_wait_ms: float = 5.0        # how long a batch waits for more requests
    max_pending: int = 256            # requests waiting for the model before 503s
    decode_threads: int = 4           # uploads decoded at the same time

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_question_chars",
                     "max_question_words", "default_top_k", "max_top_k", "max_batch",
                     "max_pending", "decode_threads"):
            if getattr(self, name) < 1:
                raise LrcnError(f"serve settings: {name} must be at least 1, "
                                f"got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise LrcnError(f"serve settings: batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.default_top_k > self.max_top_k:
            raise LrcnError(f"serve settings: default_top_k ({self.default_top_k}) is over "
                            f"max_top_k ({self.max_top_k})")


# --------------------------------------------------------------------------- responses

class Answer(BaseModel):
    answer: str
    score: float  # sigmoid of the answer's logit


class PredictResponse(BaseModel):
    answers: list[Answer]               # best first, at most top_k
    answerable: float | None            # P(answerable); null without that head
    image_attention: list[list[float]]  # attention over the image grid, rows; sums to 1
    question_tokens: list[str]          # the words the model read
    question_attention: list[float]     # one weight per word
    latency_ms: float                   # server time from the parsed request to the answer


class ErrorResponse(BaseModel):
    detail: str


class ExampleInfo(BaseModel):
    name: str
    url: str
    question: str


ERRORS = {
    413: {"model": ErrorResponse, "description": "Upload or image over the size limits"},
    415: {"model": ErrorResponse, "description": "Not an image format read here"},
    422: {"model": ErrorResponse, "description": "Missing or invalid field, corrupt image"},
    503: {"model": ErrorResponse, "description": "Too busy, or shutting down"},
}


# --------------------------------------------------------------------------- input checks

def check_question(question: str, settings: ServeSettings) -> str:
    """The question without surrounding whitespace; HTTP 422 when it cannot be asked."""
    text = question.strip()
    if not text:
        raise HTTPException(422, "the question is empty")
    if len(text) > settings.max_question_chars:
        raise HTTPException(422, f"the question has {len(text)} characters; the limit is "
                                 f"{settings.max_question_chars}")
    words = tokenize(text)
    if not words:
        raise HTTPException(422, f"the question {text!r} has no words (punctuation is ignored)")
    if len(words) > settings.max_question_words:
        raise HTTPException(422, f"the question has {len(words)} words; the limit is "
                                 f"{settings.max_question_words}")
    return text


def check_top_k(top_k: int | None, settings: ServeSettings) -> int:
    if top_k is None:
        return settings.default_top_k
    if not 1 <= top_k <= settings.max_top_k:
        raise HTTPException(422, f"top_k must be between 1 and {settings.max_top_k}, got {top_k}")
    return top_k


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The uploaded file, read in chunks; HTTP 413 as soon as it passes `limit` bytes."""
    chunks, size = [], 0
    while chunk := await upload.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the image file is over the {_size(limit)} upload limit")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an uploaded file as an RGB image.

    The size is read from the header and checked before any pixel is decoded. Raises
    HTTPException: 415 for a file that is not in `IMAGE_FORMATS`, 413 for an image over
    `max_pixels`, 422 for an empty, corrupt or truncated file.
    """
    if not data:
        raise HTTPException(422, "the image file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"the image is too large to decode: {exc}") from None
    except UnidentifiedImageError:
        if data.startswith(SIGNATURES) or (data.startswith(b"RIFF") and data[8:12] == b"WEBP"):
            raise HTTPException(422, "the file looks like an image but its header is corrupt") \
                from None
        raise HTTPException(415, "the file is not an image in a format read here "
                                 f"({', '.join(IMAGE_FORMATS)})") from None
    except MemoryError:
        raise
    except Exception as exc:  # a known format whose header ends early or is malformed
        raise HTTPException(422, f"the image header is corrupt or truncated: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise HTTPException(413, f"the image is {width}x{height} = {width * height:,} pixels; "
                                 f"the limit is {max_pixels:,}")
    if width < 1 or height < 1:
        raise HTTPException(422, f"the image is {width}x{height} pixels")
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"the image is too large to decode: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, EOFError, ...
        raise HTTPException(422, f"the {image.format} image is corrupt or truncated: "
                                 f"{exc}") from None
    try:
        return to_rgb(image)
    except MemoryError:
        raise
    except Exception as exc:
        raise HTTPException(422, f"cannot convert the {image.format} image (mode "
                                 f"{image.mode}) to RGB: {exc}") from None


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n:,} bytes"


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one sentence."""
    parts = []
    for error in exc.errors():
        loc = [str(x) for x in error.get("loc", ()) if x not in ("body", "query", "path")]
        name = ".".join(loc) or "request"
        if error.get("type") == "missing":
            parts.append(f"missing form field {name!r}")
        elif name == "image":
            parts.append("'image' must be a file upload (multipart/form-data)")
        else:
            parts.append(f"{name}: {error.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


# --------------------------------------------------------------------------- middleware

class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, without reading them whole.

    A Content-Length over the limit is refused before the body is read; a body without one
    (chunked) is counted as it arrives and refused when it passes the limit.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is over the {_size(self.limit)} limit"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, message)  # FastAPI answers it while parsing
            return msg

        await self.app(scope, counting_receive, send)


class CatchAll:
    """Answer any unhandled exception with a generic 500 and log its traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = JSONResponse({"detail": "internal server error"}, status_code=500)
                await response(scope, receive, send)


# --------------------------------------------------------------------------- the app

def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving `predictor` (a `LoadedModel`, or an `OnnxPredictor`); the
    model worker runs while the app's lifespan does.

    Raises LrcnError for a model that cannot answer from image files.
    """
    settings = settings or ServeSettings()
    if not predictor.answers_from_images:
        raise LrcnError("this checkpoint reads precomputed image features; serving needs a "
                        "model with its own image encoder")
    batcher = Batcher(predictor, settings.max_batch, settings.batch_wait_ms,
                      settings.max_pending)
    examples = available_examples()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.decode_limiter = anyio.CapacityLimiter(settings.decode_threads)
        batcher.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(batcher.close)

    app = FastAPI(title="lrcn", summary="Visual question answering: ask about an image.",
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.predictor = predictor
    app.state.batcher = batcher  # batcher.stats: batches run and their sizes
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(CatchAll)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.post("/api/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(
        request: Request,
        image: UploadFile = File(..., description="the image (PNG, JPEG, GIF, BMP, TIFF, WebP)"),
        question: str = Form(..., description="a question about the image"),
        top_k: int | None = Form(None, description=f"answers to return (1..{settings.max_top_k}, "
                                                   f"default {settings.default_top_k})"),
    ) -> dict:
        """Answer a question about an image, with the model's attention over both."""
        start = time.perf_counter()
        text = check_question(question, settings)
        k = check_top_k(top_k, settings)
        data = await read_upload(image, settings.max_upload_bytes)
        limiter = getattr(request.app.state, "decode_limiter", None)
        if limiter is None:
            raise HTTPException(503, "the server is not running (start it with its lifespan)")
        pixels = await anyio.to_thread.run_sync(decode_image, data, settings.max_pixels,
                                                limiter=limiter)
        try:
            prediction = await batcher.predict(pixels, text, k)
        except BatcherBusy as exc:
            raise HTTPException(503, str(exc)) from None
        except LrcnError as exc:  # the model refused this question
            raise HTTPException(422, str(exc)) from None
        return {**prediction.to_dict(), "latency_ms": (time.perf_counter() - start) * 1000}

    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness, the model served and what runs it, and how the batcher has batched so
        far."""
        return {"status": "ok", "model": predictor.name, "runtime": predictor.runtime,
                "device": str(predictor.device), "batching": batcher.stats.to_dict()}

    @app.get("/api/examples", response_model=list[ExampleInfo])
    async def list_examples() -> list[dict]:
        """Example images with a question each."""
        return [{"name": name, "url": f"/api/examples/{name}", "question": ex.question}
                for name, (ex, _) in examples.items()]

    @app.get("/api/examples/{name}", response_class=FileResponse,
             responses={404: {"model": ErrorResponse}})
    async def example_image(name: str) -> FileResponse:
        """One example image (PNG)."""
        if name not in examples:  # names are looked up, never joined into a path
            raise HTTPException(404, f"no example named {name!r}")
        return FileResponse(examples[name][1], media_type="image/png")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise HTTPException(404, f"the demo page is not installed ({page})")
        return FileResponse(page, media_type="text/html")

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
