"""Benchmark: ONNX Runtime against PyTorch, batch 1 and batch 64, p50 and p99, side by side.

Two paths, as `inference_latency.py` times them: from precomputed features (the grid and the
token ids in memory: the net alone; PyTorch ``VQAModel.forward_all``, ONNX Runtime the graph
of ``lrcn export`` taking grids) and from images (``Predictor.predict``: resize, normalise,
image encoder, net, top-k and attention: `predict_images` against `OnnxPredictor.predict`).
The graphs are exported in memory as ``lrcn export --format onnx`` exports them (and checked
the same way). Both runtimes get the same inputs and the same number of threads, and are
timed interleaved (one call of each in turn, the order alternating) so that a noisy machine
slows both alike. ONNX Runtime's worker threads are told not to spin after a call, which
would otherwise take the CPU from the PyTorch call timed next. The last stdout line is one
JSON object.

    lrcn train --epochs 1 --out /tmp/serve-ckpt          # any trained run, e.g. the default
    python benchmarks/onnx_latency.py --checkpoint /tmp/serve-ckpt [--reps 200]
        [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from inference_latency import easy_vqa_images

from lrcn.data.images import normalize
from lrcn.engine import export_onnx
from lrcn.engine.inference import LoadedModel, image_pixels, load_model
from lrcn.engine.onnx_runtime import OnnxPredictor, load_onnx

RUNTIMES = ("pytorch", "onnxruntime")


def onnx_predictor(loaded: LoadedModel, kind: str | None, threads: int) -> OnnxPredictor:
    """The model of `loaded` exported (as ``lrcn export`` does; `kind` ``features`` takes the
    CNN's grids), checked, and loaded on `threads` threads that do not spin after a run."""
    spec = export_onnx.graph_spec(loaded, kind)
    graph = export_onnx.AnsweringGraph(loaded.model, spec).eval()
    proto = export_onnx.to_onnx(graph, len(loaded.word_vocab))
    entry = proto.metadata_props.add()
    entry.key, entry.value = export_onnx.METADATA_KEY, json.dumps(
        export_onnx.metadata(loaded, spec))
    data = proto.SerializeToString()
    export_onnx.check_export(graph, data, len(loaded.word_vocab), Path("(in memory)"))
    return load_onnx(data, threads=threads, spin=False)


def interleaved(cases: dict[str, Callable[[], object]], reps: int,
                warmup: int = 10) -> dict[str, dict[str, float]]:
    """p50/p99 wall-clock milliseconds of each case over `reps` calls, the cases called in
    turn (the order reversed every other round), after `warmup` rounds."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        for name in names if rep % 2 == 0 else reversed(names):
            start = time.perf_counter()
            cases[name]()
            if rep >= warmup:
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: {"p50": round(float(np.percentile(t, 50)), 3),
                   "p99": round(float(np.percentile(t, 99)), 3)} for name, t in times.items()}


def easy_vqa_questions(n: int) -> list[str]:
    """The first question about each of the easy-VQA test images 0 .. n-1."""
    import easy_vqa

    path = Path(easy_vqa.__file__).parent / "data" / "test" / "questions.json"
    first: dict[int, str] = {}
    for question, _, image_id in json.loads(path.read_text()):
        first.setdefault(image_id, question)
    return [first[i] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    parser.add_argument("--reps", type=int, default=200, help="batch-1 calls (batch 64: a tenth)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="threads of both runtimes (default: PyTorch's)")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.checkpoint)
    model, cfg = loaded.model, loaded.checkpoint.config
    if model.encoder is None:
        raise SystemExit("this benchmark times a model with its own image encoder "
                         "(the default easy-VQA model); this one reads feature stores")
    images = easy_vqa_images(64)
    questions = easy_vqa_questions(64)
    tokens = torch.tensor([loaded.word_vocab.encode(q, cfg.data.max_question_tokens)
                           for q in questions])  # (64, T)
    with torch.no_grad():
        grids = model.encode_images(normalize(image_pixels(images, cfg.data.image_size)))
    from_grids = onnx_predictor(loaded, "features", args.threads)
    from_images = onnx_predictor(loaded, None, args.threads)

    result: dict = {"checkpoint": args.checkpoint, "model": loaded.name,
                    "threads": args.threads, "cpu_count": os.cpu_count(), "reps": args.reps,
                    "onnxruntime": ort.__version__, "torch": torch.__version__}
    for batch in (1, 64):
        reps = args.reps if batch == 1 else max(20, args.reps // 10)
        tok, grid = tokens[:batch], grids[:batch]
        feeds = {"tokens": tok.numpy(), "grid": grid.numpy()}

        def torch_features() -> object:
            with torch.no_grad():
                return model.forward_all(tok, grid=grid)

        with torch.no_grad():  # same inputs, same answers
            diff = np.abs(from_grids.run(feeds)["answer_logits"]
                          - torch_features().answer.numpy()).max()
        result[f"features_batch{batch}_max_abs_diff"] = float(diff)
        result[f"features_batch{batch}_ms"] = interleaved(
            {"pytorch": torch_features, "onnxruntime": lambda: from_grids.run(feeds)}, reps)
        ims, qs = images[:batch], questions[:batch]
        result[f"image_batch{batch}_ms"] = interleaved(
            {"pytorch": lambda: loaded.predict(ims, qs),
             "onnxruntime": lambda: from_images.predict(ims, qs)}, reps)
    result["speedup_p50"] = {key[:-3]: round(result[key]["pytorch"]["p50"]
                                             / result[key]["onnxruntime"]["p50"], 2)
                             for key in result if key.endswith("_ms")}
    if not args.json:
        print(f"{'path':<16}{'batch':>6}  {'PyTorch p50 / p99 ms':>22}  "
              f"{'ONNX Runtime p50 / p99 ms':>26}  {'PyTorch / ORT (p50)':>20}")
        for key, ratio in result["speedup_p50"].items():
            path, batch = key.rsplit("_batch", 1)
            pt, ox = result[f"{key}_ms"]["pytorch"], result[f"{key}_ms"]["onnxruntime"]
            print(f"{path:<16}{batch:>6}  {pt['p50']:>11.2f} / {pt['p99']:>7.2f}  "
                  f"{ox['p50']:>15.2f} / {ox['p99']:>7.2f}  {ratio:>19.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
