"""Answering with an exported ``.onnx`` file on ONNX Runtime: the `Predictor` of such files.

The file holds the graph (`lrcn.engine.export_onnx`) and, in its metadata (``metadata_props``
key ``lrcn``, one JSON object), everything needed to feed it: the question vocabulary and
length, the answers, the image size and normalisation, what the graph's inputs are. So a
predictor is built from the file alone, with no checkpoint and no config file.

The answering path runs the graph on ONNX Runtime and does its arithmetic in numpy; the
question encoding, image resizing and `Prediction` building are `lrcn.engine.inference`'s
helpers, the same code the PyTorch path runs, so both give the same answers. The resize
(`image_pixels`, torchvision's antialiased resize, as training resized the images) is the
one torch call left on the way: Pillow's bilinear resize differs from it by a grey level on
some pixels when an image is shrunk by a non-integer factor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lrcn.config import DEVICES
from lrcn.data.answers import AnswerVocab
from lrcn.data.text import WordVocab
from lrcn.engine.inference import (
    FEATURES_ONLY,
    Prediction,
    build_predictions,
    check_batch,
    encode_questions,
    image_pixels,
)
from lrcn.errors import LrcnError

METADATA_KEY = "lrcn"      # the metadata_props entry holding the JSON below
FORMAT = "lrcn-onnx"
FORMAT_VERSION = 1
INPUT_KINDS = ("pixels", "features", "text")  # what the graph reads besides the tokens
# Graph outputs, in this order; "answerable" only where the model has that head.
OUTPUTS = ("answer_logits", "answerable", "image_weights", "question_weights")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# Graph rewrites left out: with ONNX Runtime's fused SkipLayerNormalization kernel the default
# easy-VQA LRCN ran 15-25% slower on the CPU than with the Add and LayerNormalization it
# replaces (batch 1 and 64, 1 and 2 threads; ONNX Runtime 1.32).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


@dataclass(frozen=True)
class OnnxMetadata:
    """The ``lrcn`` metadata of an exported file, checked (see `export_onnx.metadata`).

    Attributes:
        raw: the whole JSON object, as written (config, lrcn version, input shapes, ...).
        input_kind: ``pixels`` (normalised images), ``features`` (precomputed grids) or
            ``text`` (a model that reads no image).
        word_vocab, max_question_tokens: how questions become the ``tokens`` input.
        answer_vocab: the answers, in logit order.
        image_size, mean, std: how an image becomes the ``images`` input (``pixels`` only).
        grid_shape: the grid the image weights are over: (h, w, C) or (N, C); None for text.
        answerable_head: whether the graph has the ``answerable`` output.
        model_name: ``lrcn-<variant>`` or the arch.
    """

    raw: dict[str, Any]
    input_kind: str
    word_vocab: WordVocab
    max_question_tokens: int
    answer_vocab: AnswerVocab
    image_size: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    grid_shape: tuple[int, ...] | None
    answerable_head: bool
    model_name: str

    @classmethod
    def from_json(cls, text: str, where: str) -> OnnxMetadata:
        """Parse and check the JSON of the ``lrcn`` entry; LrcnError naming `where` if wrong."""
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, not {FORMAT!r}")
            if raw.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {raw.get('format_version')!r} is not "
                                 f"{FORMAT_VERSION} (exported by another lrcn version)")
            if raw["input_kind"] not in INPUT_KINDS:
                raise ValueError(f"input_kind {raw['input_kind']!r}")
            image = raw["image"] if raw["input_kind"] == "pixels" else None
            grid = raw["grid_shape"]
            return cls(
                raw=raw,
                input_kind=raw["input_kind"],
                word_vocab=WordVocab.from_dict({"type": "WordVocab",
                                                "words": raw["question"]["vocabulary"]}),
                max_question_tokens=int(raw["question"]["max_tokens"]),
                answer_vocab=AnswerVocab(list(raw["answers"])),
                image_size=None if image is None else int(image["size"]),
                mean=None if image is None else tuple(float(v) for v in image["mean"]),
                std=None if image is None else tuple(float(v) for v in image["std"]),
                grid_shape=None if grid is None else tuple(int(v) for v in grid),
                answerable_head=bool(raw["answerable_head"]),
                model_name=str(raw["model_name"]),
            )
        except LrcnError as exc:
            raise LrcnError(f"{where}: bad lrcn metadata: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LrcnError(f"{where}: bad lrcn metadata: {type(exc).__name__}: {exc}") from None

    @property
    def spatial(self) -> tuple[int, int] | None:
        """(h, w) of a spatial grid, for the attention map; None for region lists and for a
        model that reads no image."""
        return None if self.grid_shape is None or len(self.grid_shape) != 3 \
            else (self.grid_shape[0], self.grid_shape[1])


def normalize_pixels(pixels: np.ndarray, mean: Sequence[float],
                     std: Sequence[float]) -> np.ndarray:
    """uint8 (B, 3, H, W) -> float32 (pixels / 255 - mean) / std, as `lrcn.data.images.normalize`
    computes it in float32."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (pixels.astype(np.float32) / np.float32(255.0) - m) / s


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in x's dtype; exp overflowing to inf gives 0, as it should."""
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-x))).astype(x.dtype)


class OnnxPredictor:
    """An exported model on an ONNX Runtime session (implements `Predictor`).

    Args:
        session: an ``onnxruntime.InferenceSession`` of the file.
        metadata: the file's checked ``lrcn`` metadata.
        device: ``cpu`` or ``cuda``, where the session runs.
    """

    def __init__(self, session: Any, metadata: OnnxMetadata, device: str) -> None:
        self.session = session
        self.metadata = metadata
        self.device = device
        self.output_names = [o.name for o in session.get_outputs()]

    @property
    def name(self) -> str:
        return self.metadata.model_name

    @property
    def runtime(self) -> str:
        return "onnxruntime"

    @property
    def answers_from_images(self) -> bool:
        return self.metadata.input_kind != "features"

    @property
    def word_vocab(self) -> WordVocab:
        return self.metadata.word_vocab

    @property
    def answer_vocab(self) -> AnswerVocab:
        return self.metadata.answer_vocab

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's outputs by name for inputs by name (``tokens`` (B, T) int64, and
        ``images``, or ``grid`` [+ ``grid_mask``, ``grid_boxes``], as the file states)."""
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def predict(self, images: Sequence[Image.Image], questions: Sequence[str],
                top_k: int = 5) -> list[Prediction]:
        """Answer one question about each PIL image in one run of the graph, as
        `lrcn.engine.inference.predict_images` does in PyTorch."""
        meta = self.metadata
        if not self.answers_from_images:
            raise LrcnError(FEATURES_ONLY)
        check_batch(images, questions)
        max_len = meta.max_question_tokens
        feeds = {"tokens": np.asarray(encode_questions(meta.word_vocab, questions, max_len),
                                      dtype=np.int64).reshape(len(questions), max_len)}
        if meta.input_kind == "pixels":
            pixels = image_pixels(images, meta.image_size).numpy()  # (B, 3, S, S) uint8
            feeds["images"] = normalize_pixels(pixels, meta.mean, meta.std)
        out = self.run(feeds)
        logits = out["answer_logits"]  # (B, K)
        k = max(1, min(top_k, logits.shape[1]))
        # ranked by logit: the sigmoid's order, without the ties of saturated scores
        index = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # (B, k) best first
        scores = sigmoid(np.take_along_axis(logits, index, axis=1))
        answerable = out.get("answerable")  # (B,) P(answerable), or None
        return build_predictions(
            questions, max_len, meta.answer_vocab, scores.tolist(), index.tolist(),
            None if answerable is None else answerable.tolist(),
            out["image_weights"].tolist(), out["question_weights"].tolist(), meta.spatial)


def load_onnx(source: str | Path | bytes, device: str = "cpu", threads: int | None = None,
              spin: bool = True) -> OnnxPredictor:
    """An `OnnxPredictor` of an exported file (or of its bytes, as the export checks them
    before writing); LrcnError for a missing file, a file that is not ONNX, or an ONNX file
    that lrcn did not export.

    Args:
        device: ``cpu`` or ``cuda`` (ONNX Runtime's CUDA provider: the onnxruntime-gpu package).
        threads: intra-op threads of the session; None leaves ONNX Runtime's default (one per
            physical core).
        spin: let the worker threads spin for more work after a run (ONNX Runtime's default:
            lower latency; False frees the CPU at once, for a benchmark timing other code
            in between).
    """
    where = "the exported model" if isinstance(source, bytes) else str(source)
    if device not in DEVICES:
        raise LrcnError(f"unknown device {device!r}; use {' or '.join(DEVICES)}")
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise LrcnError(f"ONNX file not found: {source}")
    session = _session(source if isinstance(source, bytes) else str(source), where, device,
                       threads, spin)
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise LrcnError(f"{where}: an ONNX model without lrcn metadata; export one with "
                        "lrcn export --format onnx")
    return OnnxPredictor(session, OnnxMetadata.from_json(text, where), device)


def _session(source: str | bytes, where: str, device: str, threads: int | None,
             spin: bool) -> Any:
    """An ONNX Runtime session of a file path or a serialised model, on `device`."""
    import onnxruntime as ort

    provider = PROVIDERS[device]
    if provider not in ort.get_available_providers():
        raise LrcnError(f"--device {device} was asked for, but ONNX Runtime has no "
                        f"{provider} (for CUDA, install onnxruntime-gpu)")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(source, options, providers=[provider],
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes for bad files
        raise LrcnError(f"{where}: cannot load as an ONNX model: "
                        f"{str(exc).strip().splitlines()[0][:300]}") from None
