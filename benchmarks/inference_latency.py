"""Benchmark: prediction latency of a trained model, batch 1 and batch 64, p50 and p99.

Two paths: from a raw image (``predict_images``: resize, normalise, image encoder, LRCN, top-k
and attention) and from precomputed features (the grid and token ids already in memory:
``VQAModel.forward_all`` alone). Target (issue: performance): batch-1 p50 <= 15 ms from
precomputed features on a 2-core CPU. The last stdout line with --json is one JSON object.

    lrcn train --epochs 1 --out /tmp/serve-ckpt          # any trained run, e.g. the default
    python benchmarks/inference_latency.py --checkpoint /tmp/serve-ckpt [--reps 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lrcn.data.images import normalize, resize_transform
from lrcn.engine.inference import load_model, predict_images

TARGET_P50_MS = 15.0


def percentiles(fn: Callable[[], object], reps: int, warmup: int = 20) -> dict[str, float]:
    """p50/p99 wall-clock milliseconds of `fn` over `reps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 2),
            "p99": round(float(np.percentile(times, 99)), 2)}


def easy_vqa_images(n: int) -> list[Image.Image]:
    import easy_vqa

    folder = Path(easy_vqa.__file__).parent / "data" / "test" / "images"
    return [Image.open(folder / f"{i}.png").convert("RGB") for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    model, cfg = loaded.model, loaded.checkpoint.config
    question = "what color is the shape?"
    images = easy_vqa_images(64)
    tokens = torch.tensor([loaded.word_vocab.encode(question, cfg.data.max_question_tokens)])
    with torch.no_grad():
        pixels = torch.stack([resize_transform(cfg.data.image_size)(im) for im in images])
        grids = model.encode_images(normalize(pixels))  # (64, h, w, C) precomputed features

    result = {"checkpoint": args.checkpoint, "threads": torch.get_num_threads(), "reps": args.reps}
    for batch in (1, 64):
        with torch.no_grad():
            result[f"features_batch{batch}_ms"] = percentiles(
                lambda: model.forward_all(tokens.expand(batch, -1), grid=grids[:batch]),
                args.reps if batch == 1 else max(20, args.reps // 10))
        result[f"image_batch{batch}_ms"] = percentiles(
            lambda: predict_images(loaded, images[:batch], [question] * batch),
            args.reps if batch == 1 else max(20, args.reps // 10))
    result["meets_target"] = result["features_batch1_ms"]["p50"] <= TARGET_P50_MS
    if not args.json:
        for key in ("features_batch1_ms", "features_batch64_ms", "image_batch1_ms",
                    "image_batch64_ms"):
            print(f"{key[:-3]:>18}: p50 {result[key]['p50']:7.2f} ms, p99 {result[key]['p99']:7.2f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
