"""Benchmark: the training loader over a feature store, with and without worker processes.

Reads random batches of 64 (grid gather from the memory-mapped store, fp16 -> fp32, dense
soft-score targets) through ``lrcn.data.batches.batch_loader`` with 0 and ``--workers``
worker processes, cold (the store evicted from the page cache) and warm, and sets that
against the paper-size training step measured on the same machine
(``benchmarks/feature_store.py`` has the larger store and the memory measurements).

    python benchmarks/loader_throughput.py [--images 4000] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from feature_store import BATCH, build_store, loader_throughput, model_throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="store size (8x8x2048 fp16 each)")
    parser.add_argument("--questions", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--work", default="bench-work-loader", help="folder for the store")
    parser.add_argument("--keep", action="store_true", help="keep the store for another run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    store = build_store(Path(args.work) / "store", args.images).path
    result: dict[str, object] = {"store_images": args.images, "batch": BATCH}
    for workers in (0, args.workers):
        for cold in (True, False):
            rate = loader_throughput(store, args.questions, args.batches, cold, workers)
            key = f"loader_samples_per_s_workers{workers}_{'cold' if cold else 'warm'}"
            result[key] = round(rate, 1)
            print(f"{key}: {rate:.0f}", file=sys.stderr)
    model = model_throughput(store, args.model_steps)
    result["model_samples_per_s"] = round(model, 2)
    slowest = min(v for k, v in result.items() if k.startswith("loader_"))
    result["slowest_loader_over_model"] = round(slowest / model, 1)
    result["threads"] = torch.get_num_threads()
    print(f"paper-size training step: {model:.1f} samples/s; the slowest loader setting is "
          f"{slowest / model:.0f}x faster", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(args.work)
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
