"""``lrcn export --format onnx``: a trained model as one ONNX file that answers on its own.

The graph is the answering model of ``VQAModel.forward_all``: question token ids and the image
side the model reads (normalised images for a model with its own CNN, precomputed grids with
their mask and boxes for one that reads feature stores, nothing for a text-only model) ->
answer logits, P(answerable) where the model has that head, and the attention-pooling
weights over image regions and question tokens. The batch dimension is dynamic.

It is captured with ``torch.export`` (``torch.onnx.export(dynamo=True)``): the TorchScript
exporter is deprecated, and torch.export refuses Python branches on tensor values instead of
silently baking one branch in, so every such branch has an export form
(`lrcn.models.layers.tracing`). Before anything is written the file is run on ONNX Runtime
against PyTorch on generated inputs (several batch sizes, padded questions, masked regions);
a difference over `TOLERANCE` is an error and leaves nothing at ``--out``.

The metadata (``metadata_props`` key ``lrcn``, JSON; `metadata`) holds what answering needs
besides the graph, so the file alone suffices (`lrcn.engine.onnx_runtime`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lrcn.config import config_to_dict
from lrcn.data.images import IMAGENET_MEAN, IMAGENET_STD
from lrcn.engine.inference import LoadedModel, load_model, model_name
from lrcn.engine.onnx_runtime import (
    FORMAT,
    FORMAT_VERSION,
    METADATA_KEY,
    OUTPUTS,
    load_onnx,
)
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write
from lrcn.models import VQAModel

log = logging.getLogger(__name__)

OPSET = 18
TOLERANCE = 1e-4               # largest |ONNX Runtime - PyTorch| accepted, on any output
CHECK_BATCHES = (1, 2, 5, 16)  # batch sizes of the check (the graph is captured at 3)
EXAMPLE_BATCH = 3              # not 0 or 1, which torch.export would specialise on
BATCH = "batch"
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")

TOKENIZER = ("lower-case; delete the characters . , ' ! ? \" ( ) * # : ; ; turn - and / into "
             "spaces; split on whitespace; keep the first max_tokens words; a word outside the "
             "vocabulary is 1 (<unk>); right-pad with 0 (<pad>)")
RESIZE = ("RGB (EXIF rotation applied, transparency over white); resize to size x size, "
          "ignoring the aspect ratio, no crop: torchvision.transforms.v2.Resize((size, size), "
          "antialias=True) on the uint8 image (antialiased bilinear, as Pillow's "
          "Image.resize(BILINEAR), which it matches to within one grey level)")
NORMALISE = "float32 (B, 3, size, size) = (uint8 / 255 - mean) / std, channels RGB"


@dataclass(frozen=True)
class GraphSpec:
    """What the exported graph reads and gives, as the model and its data decide.

    Attributes:
        kind: ``pixels`` (normalised images), ``features`` (precomputed grids) or ``text``.
        max_tokens: T, the question length the tokens are padded to.
        image_size: S of the ``images`` input (``pixels`` only).
        grid_shape: the grid the net reads, (h, w, C) or (N, C); None for ``text``.
        mask: a ``grid_mask`` (B, N) bool input (feature stores with masks).
        boxes: a ``grid_boxes`` (B, N, 4) input (region lists with boxes, for a model that
            places its regions).
        answerable: the model has the answerability head (``answerable`` output).
    """

    kind: str
    max_tokens: int
    image_size: int | None
    grid_shape: tuple[int, ...] | None
    mask: bool = False
    boxes: bool = False
    answerable: bool = False

    @property
    def regions(self) -> int:
        """N, the image regions the net attends over before any grid reduction."""
        return 0 if self.grid_shape is None else math.prod(self.grid_shape[:-1])

    def input_shapes(self) -> dict[str, list[int | str]]:
        """Each input's shape, ``batch`` for the dynamic dimension, in the graph's order."""
        shapes: dict[str, list[int | str]] = {"tokens": [BATCH, self.max_tokens]}
        if self.kind == "pixels":
            shapes["images"] = [BATCH, 3, self.image_size, self.image_size]
        elif self.kind == "features":
            shapes["grid"] = [BATCH, *self.grid_shape]
            if self.mask:
                shapes["grid_mask"] = [BATCH, self.regions]
            if self.boxes:
                shapes["grid_boxes"] = [BATCH, self.regions, 4]
        return shapes

    @property
    def outputs(self) -> list[str]:
        return [name for name in OUTPUTS if name != "answerable" or self.answerable]


def graph_spec(loaded: LoadedModel, kind: str | None = None) -> GraphSpec:
    """The graph of `loaded`: what its model reads (or `kind`: ``features`` exports a model
    with its own CNN from the CNN's grids, e.g. to time the net alone).

    A model that reads feature stores takes the grid's shape, mask and boxes from the stores
    of its config (``data.features``), which must be there.
    """
    model, cfg = loaded.model, loaded.checkpoint.config
    S, T = cfg.data.image_size, cfg.data.max_question_tokens
    answerable = model.answerable_head is not None
    if not model.net.uses_image:
        return GraphSpec("text", T, None, None, answerable=answerable)
    if model.encoder is not None:
        with torch.no_grad():  # the encoder's grid for one image: (1, h, w, C)
            grid = model.encode_images(torch.zeros(1, 3, S, S, device=loaded.device))
        if kind == "features":
            return GraphSpec("features", T, None, tuple(grid.shape[1:]), answerable=answerable)
        return GraphSpec("pixels", T, S, tuple(grid.shape[1:]), answerable=answerable)
    from lrcn.features.grids import open_stores

    try:
        stores = open_stores(cfg.data.features)
    except LrcnError as exc:
        raise LrcnError(f"this model reads precomputed features; the export takes the grid's "
                        f"shape from its feature stores (data.features), which cannot be "
                        f"opened: {exc}") from None
    first = stores[0]
    return GraphSpec("features", T, None, tuple(first.item_shape),
                     mask=any(s.has_mask for s in stores),
                     boxes=first.has_boxes and model.net.places_regions, answerable=answerable)


class AnsweringGraph(nn.Module):
    """The module that is exported: the graph's inputs -> its outputs, in `GraphSpec` order."""

    def __init__(self, model: VQAModel, spec: GraphSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(
        self,
        tokens: torch.Tensor,                     # (B, T) int64
        images: torch.Tensor | None = None,       # (B, 3, S, S) normalised
        grid: torch.Tensor | None = None,         # (B, h, w, C) or (B, N, C)
        grid_mask: torch.Tensor | None = None,    # (B, N) bool, True = valid
        grid_boxes: torch.Tensor | None = None,   # (B, N, 4)
    ) -> tuple[torch.Tensor, ...]:
        if images is not None:
            grid = self.model.encode_images(images)  # (B, h, w, C)
        out = self.model.forward_all(tokens, grid=grid, grid_mask=grid_mask,
                                     grid_boxes=grid_boxes)
        outputs = [out.answer]  # (B, K)
        if self.spec.answerable:
            outputs.append(torch.sigmoid(out.answerable))  # (B,) P(answerable)
        return (*outputs, out.image_weights, out.question_weights)  # (B, N), (B, T)


def sample_inputs(spec: GraphSpec, batch: int, vocab_size: int,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Generated inputs of `batch` rows, as the graph takes them by name.

    Questions have random lengths (the first row full, the second one word, the rest padded
    with 0); masks leave about a third of the regions out, the first row none, and a last row
    (of three or more) all, the case of the no-key rule.
    """
    g = torch.Generator().manual_seed(seed)
    T = spec.max_tokens
    lengths = torch.randint(1, T + 1, (batch,), generator=g)
    lengths[0] = T
    if batch > 1:
        lengths[1] = 1
    tokens = torch.randint(1, max(2, vocab_size), (batch, T), generator=g)
    tokens[torch.arange(T)[None, :] >= lengths[:, None]] = 0  # right-padded
    inputs = {"tokens": tokens}
    if spec.kind == "pixels":
        inputs["images"] = torch.randn(batch, 3, spec.image_size, spec.image_size, generator=g)
    elif spec.kind == "features":
        inputs["grid"] = torch.randn(batch, *spec.grid_shape, generator=g)
        if spec.mask:
            mask = torch.rand(batch, spec.regions, generator=g) > 0.35
            mask[0] = True
            if batch > 2:
                mask[-1] = False
            inputs["grid_mask"] = mask
        if spec.boxes:
            corners = torch.rand(batch, spec.regions, 2, 2, generator=g)
            low, high = corners.min(dim=2).values, corners.max(dim=2).values  # (B, N, 2)
            inputs["grid_boxes"] = torch.cat((low, high), dim=-1)  # (x0, y0, x1, y1)
    return inputs


def to_onnx(graph: AnsweringGraph, vocab_size: int) -> Any:
    """Capture `graph` with torch.export and translate it to an ONNX ``ModelProto``."""
    spec = graph.spec
    inputs = sample_inputs(spec, EXAMPLE_BATCH, vocab_size)
    batch = torch.export.Dim(BATCH, min=1, max=1 << 20)
    shapes = {name: {0: batch} for name in inputs}
    said = io.StringIO()
    try:
        with _exporter_quiet(said):
            program = torch.onnx.export(graph.eval(), (), kwargs=inputs, dynamo=True,
                                        dynamic_shapes=shapes, output_names=spec.outputs,
                                        opset_version=OPSET, optimize=True, verbose=False,
                                        external_data=False)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds; say which
        raise LrcnError(f"the model cannot be exported to ONNX: {_cause(exc)}") from None
    finally:
        log.debug("torch.onnx.export: %s", said.getvalue())
    proto = program.model_proto
    names = [i.name for i in proto.graph.input]
    if names != list(spec.input_shapes()):
        raise LrcnError(f"the exported graph takes {names}, expected {list(spec.input_shapes())}")
    return proto


def _cause(exc: Exception) -> str:
    """The line of an exporter error that says what failed: the first of its "Exception
    summary" when it has one (its first line only says which export step failed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the exporter colours its messages
    _, summary, rest = text.partition("## Exception summary")
    lines = [line.strip() for line in (rest if summary else text).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:400]


@contextlib.contextmanager
def _exporter_quiet(stdout: io.StringIO) -> Iterator[None]:
    """The exporter's progress (printed on stdout), its passes' INFO logs and its warnings
    about torch internals stay out of the command's output: ``--json`` keeps stdout to one
    line, and stderr to lrcn's own messages. Its stdout goes to `stdout`."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(stdout):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def compare_with_torch(graph: AnsweringGraph, session: Any, vocab_size: int,
                       batches: tuple[int, ...] = CHECK_BATCHES) -> dict[str, float]:
    """Largest |ONNX Runtime - PyTorch| of each output over generated inputs of each batch
    size (a different draw each); `session` runs the exported graph (`OnnxPredictor.run`)."""
    spec = graph.spec
    diffs = dict.fromkeys(spec.outputs, 0.0)
    for seed, batch in enumerate(batches, start=1):
        inputs = sample_inputs(spec, batch, vocab_size, seed)
        with torch.no_grad():
            expected = graph(**inputs)
        got = session.run({name: t.numpy() for name, t in inputs.items()})
        for name, want in zip(spec.outputs, expected):
            have = got[name]
            if tuple(have.shape) != tuple(want.shape):
                raise LrcnError(f"ONNX output {name} has shape {tuple(have.shape)} for batch "
                                f"{batch}, PyTorch's {tuple(want.shape)}")
            if have.size:
                diff = float(np.max(np.abs(have.astype(np.float64) - want.double().numpy())))
                diffs[name] = max(diffs[name], diff if math.isfinite(diff) else math.inf)
    return diffs


def metadata(loaded: LoadedModel, spec: GraphSpec) -> dict[str, Any]:
    """The ``lrcn`` metadata: everything that answering needs besides the graph."""
    from lrcn import __version__

    cfg = loaded.checkpoint.config
    image = None
    if spec.kind == "pixels":
        image = {"size": spec.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                 "resize": RESIZE, "normalise": NORMALISE}
    features = None
    if spec.kind == "features":
        features = {"layout": "grid" if len(spec.grid_shape) == 3 else "regions",
                    "mask": spec.mask, "boxes": spec.boxes}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lrcn_version": __version__,
        "model_name": model_name(cfg),
        "input_kind": spec.kind,
        "inputs": spec.input_shapes(),
        "outputs": spec.outputs,
        "question": {"vocabulary": loaded.word_vocab.words, "max_tokens": spec.max_tokens,
                     "tokenizer": TOKENIZER},
        "answers": loaded.answer_vocab.answers,
        "scores": "sigmoid(answer_logits); answerable is already a probability",
        "image": image,
        "features": features,
        "grid_shape": None if spec.grid_shape is None else list(spec.grid_shape),
        "answerable_head": spec.answerable,
        "config": config_to_dict(cfg),
    }


def export_onnx(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Export the model of `checkpoint` (a run folder or checkpoint file) to the ONNX file
    `out`, checked on ONNX Runtime first; its JSON summary.

    Raises LrcnError when the model cannot be exported, or when ONNX Runtime's outputs
    differ from PyTorch's by more than `TOLERANCE`; `out` is then left as it was.
    """
    out = Path(out)
    if out.is_dir():
        raise LrcnError(f"--out {out} is a folder; name the .onnx file to write")
    loaded = load_model(checkpoint)
    spec = graph_spec(loaded)
    graph = AnsweringGraph(loaded.model, spec).eval()
    vocab_size = len(loaded.word_vocab)
    proto = to_onnx(graph, vocab_size)
    proto.producer_name, proto.doc_string = "lrcn", f"lrcn {model_name(loaded.checkpoint.config)}"
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata(loaded, spec))
    data = proto.SerializeToString()
    diffs = check_export(graph, data, vocab_size, out)
    atomic_write(out, lambda f: f.write(data))
    log.info("wrote %s (%d bytes); ONNX Runtime matches PyTorch to %.2g", out, len(data),
             max(diffs.values()))
    return {"format": "onnx", "out": str(out), "inputs": spec.input_shapes(),
            "outputs": spec.outputs, "max_abs_diff": max(diffs.values()),
            "max_abs_diff_by_output": diffs, "opset": OPSET, "bytes": len(data),
            "checked_batch_sizes": list(CHECK_BATCHES)}


def check_export(graph: AnsweringGraph, data: bytes, vocab_size: int,
                 out: Path) -> dict[str, float]:
    """Run the serialised model `data` on ONNX Runtime, loaded as ``lrcn predict`` loads a
    file (metadata included), against PyTorch (`compare_with_torch`); LrcnError naming `out`
    when an output differs by more than `TOLERANCE`."""
    diffs = compare_with_torch(graph, load_onnx(data, threads=1), vocab_size)
    worst = max(diffs, key=diffs.get)
    if not diffs[worst] <= TOLERANCE:
        raise LrcnError(f"the ONNX export does not match PyTorch: {worst} differs by up to "
                        f"{diffs[worst]:.3g} (tolerance {TOLERANCE:g}); nothing written to "
                        f"{out}")
    return diffs
