"""Feature-store benchmark: loader throughput against the paper-size model, and bounded memory.

1. Builds synthetic stores of ``--images`` x 8x8x2048 fp16 grids (TRAR's released shape) at
   1x and 4x that size, and a question index at VQA-v2 train scale (443,757 questions, ten
   soft-scored answers each, 3,129 answers).
2. Reads random batches of 64 through the training loader (``lrcn.data.batches.batch_loader``
   over the store: grid gather + fp16 -> fp32 + dense targets), cold (the store's pages
   evicted from the page cache first) and warm, in samples/s.
3. Times the paper-size LRCN-ED-SA-6 training step (D=512, 8x8x2048, batch 64, Adam) on the
   same machine, in samples/s; the target is loader >= 5x model.
4. Runs a training process (``--child``) for ``--steps`` steps on each store and reports its
   peak RSS; the target is <= 10% growth from 1x to 4x. The child trains a smaller LRCN
   (``--rss-model small``, D=128) by default so that 200 steps take seconds: the model's memory
   is the same at both scales, and a smaller baseline makes the 10% bound stricter.

    python benchmarks/feature_store.py [--json] [--work DIR] [--keep]

The last stdout line with --json is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lrcn.config import ModelConfig, TrainConfig, load_config
from lrcn.data.batches import EncodedSplit, batch_loader
from lrcn.data.records import VQARecord
from lrcn.engine.step import OptimizerStep, make_optimizer, training_step
from lrcn.features.grids import StoreGrids, open_stores
from lrcn.features.store import FeatureStore
from lrcn.features.writer import StoreWriter
from lrcn.models import create_model

GRID = (8, 8, 2048)
NUM_ANSWERS = 3129
VOCAB = 20_573
TOKENS = 14
BATCH = 64


def build_store(path: Path, count: int, seed: int = 0, chunk: int = 500) -> FeatureStore:
    """A store of `count` random fp16 grids keyed like TRAR's train2014 files."""
    if path.exists():
        store = FeatureStore.open(path)
        if len(store) == count and tuple(store.item_shape) == GRID:
            return store
        shutil.rmtree(path)
    keys = [f"train2014/COCO_train2014_{i:012d}.jpg" for i in range(count)]
    writer = StoreWriter(path, count, GRID, "float16", "grid", False, keys,
                         {"format": "synthetic", "seed": seed})
    rng = np.random.default_rng(seed)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        block = rng.standard_normal((n, *GRID), dtype=np.float32).astype(np.float16)
        writer.write(start, block)
    return writer.finish()


def question_index(num_images: int, num_questions: int, seed: int = 0) -> tuple[EncodedSplit, list[str]]:
    """A VQA-v2-train-sized split over the store's images: tokens, image rows, soft targets."""
    g = torch.Generator().manual_seed(seed)
    keys = [f"train2014/COCO_train2014_{i:012d}.jpg" for i in range(num_images)]
    image_rows = torch.randint(num_images, (num_questions,), generator=g)
    records = [VQARecord(question_id=i, image_key=keys[r], question="")
               for i, r in enumerate(image_rows.tolist())]
    tokens = torch.randint(1, VOCAB, (num_questions, TOKENS), generator=g)
    target_index = torch.randint(NUM_ANSWERS, (num_questions, 10), generator=g)
    target_index[:, 4:] = -1  # typically a few distinct answers per question
    target_score = torch.rand(num_questions, 10, generator=g) * (target_index >= 0)
    split = EncodedSplit("synthetic-train", records, tokens, keys, image_rows, None,
                         target_index, target_score)
    return split, keys


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (no root needed), for a cold read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def loader_throughput(store_path: Path, num_questions: int, batches: int, cold: bool,
                      num_workers: int = 0) -> float:
    """Samples/s of the training loader reading random batches from the store (the workers'
    start-up included: they start with the first batch, as in training)."""
    split, keys = question_index(len(FeatureStore.open(store_path)), num_questions)
    split.grids = StoreGrids(open_stores([store_path]), keys, "benchmark")
    if cold:
        evict(store_path / "features.npy")
    loader = batch_loader(split, NUM_ANSWERS, BATCH, shuffle=True, seed=1,
                          num_workers=num_workers)
    start, seen = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        seen += batch["tokens"].shape[0]
        if i + 1 == batches:
            break
    return seen / (time.perf_counter() - start)


def model_config(size: str) -> ModelConfig:
    cfg = load_config("lrcn-ed-sa-6").model  # the paper's ED-SA-6
    cfg.grid_reduction = "none"               # pre-pooled 8x8 grids, as in the store
    if size == "small":
        cfg.d_model, cfg.heads, cfg.ffn_dim, cfg.layers = 128, 4, 256, 2
        cfg.pool_hidden, cfg.fused_dim, cfg.word_dim = 128, 256, 64
    return cfg


def cpu_optimizer_step(model: torch.nn.Module) -> OptimizerStep:
    """The paper's Adam step on the CPU as ``lrcn train`` takes it, called as ``run([batch])``."""
    t = TrainConfig()
    return OptimizerStep(training_step(model, t, torch.device("cpu")), make_optimizer(model, t), t)


def model_throughput(store_path: Path, steps: int) -> float:
    """Samples/s of the paper-size training step (forward, backward, Adam) on store batches."""
    split, keys = question_index(len(FeatureStore.open(store_path)), 10_000)
    split.grids = StoreGrids(open_stores([store_path]), keys, "benchmark")
    torch.manual_seed(0)
    model = create_model(model_config("paper"), VOCAB, NUM_ANSWERS)
    run_step = cpu_optimizer_step(model)
    batches = iter(batch_loader(split, NUM_ANSWERS, BATCH, shuffle=True, seed=2))
    model.train()
    run_step([next(batches)])  # warm-up
    data = [next(batches) for _ in range(steps)]  # loading is not what is timed here
    start = time.perf_counter()
    for batch in data:
        run_step([batch])
    return steps * BATCH / (time.perf_counter() - start)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Unlike ru_maxrss it starts afresh at exec, so
    it does not include the RSS of the parent this process was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc/self/status (Linux only)")


def child(args: argparse.Namespace) -> None:
    """A training process: question index + store + model, `--steps` optimiser steps."""
    store_path = Path(args.store)
    split, keys = question_index(len(FeatureStore.open(store_path)), args.questions)
    split.grids = StoreGrids(open_stores([store_path]), keys, "benchmark")
    torch.manual_seed(0)
    model = create_model(model_config(args.rss_model), VOCAB, NUM_ANSWERS)
    run_step = cpu_optimizer_step(model)
    rss_setup = peak_rss_mb()
    model.train()
    start, steps = time.perf_counter(), 0
    for batch in batch_loader(split, NUM_ANSWERS, BATCH, shuffle=True, seed=3):
        run_step([batch])
        steps += 1
        if steps == args.steps:
            break
    print(json.dumps({"steps": steps, "seconds": round(time.perf_counter() - start, 1),
                      "peak_rss_after_setup_mb": round(rss_setup, 1),
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


def run_child(store: Path, args: argparse.Namespace) -> dict:
    """Run `child` in a fresh process and return what it measured."""
    cmd = [sys.executable, __file__, "--child", "--store", str(store), "--steps", str(args.steps),
           "--questions", str(args.questions), "--rss-model", args.rss_model]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child training process failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--questions", type=int, default=443_757)
    parser.add_argument("--scale", type=int, default=4, help="the larger store is this many times bigger")
    parser.add_argument("--steps", type=int, default=200, help="training steps of each RSS run")
    parser.add_argument("--loader-batches", type=int, default=300)
    parser.add_argument("--model-steps", type=int, default=4)
    parser.add_argument("--rss-model", choices=["small", "paper"], default="small")
    parser.add_argument("--work", default="bench-work", help="folder for the synthetic stores")
    parser.add_argument("--keep", action="store_true", help="keep the stores for another run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stores = {}
    for scale in (1, args.scale):
        start = time.perf_counter()
        stores[scale] = build_store(work / f"store-{scale}x", args.images * scale)
        gb = (stores[scale].path / "features.npy").stat().st_size / 1e9
        print(f"store {scale}x: {len(stores[scale])} x {GRID} fp16, {gb:.2f} GB "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    one = stores[1].path

    cold = loader_throughput(one, args.questions, args.loader_batches, cold=True)
    warm = loader_throughput(one, args.questions, args.loader_batches, cold=False)
    print(f"loader: {cold:.0f} samples/s cold, {warm:.0f} samples/s warm", file=sys.stderr)
    model = model_throughput(one, args.model_steps)
    print(f"paper-size LRCN-ED-SA-6 training: {model:.1f} samples/s", file=sys.stderr)
    rss = {scale: run_child(store.path, args) for scale, store in stores.items()}
    for scale, r in rss.items():
        print(f"training process on the {scale}x store: peak RSS {r['peak_rss_mb']:.0f} MB "
              f"({r['steps']} steps in {r['seconds']} s)", file=sys.stderr)
    growth = rss[args.scale]["peak_rss_mb"] / rss[1]["peak_rss_mb"] - 1
    summary = {
        "store_images": args.images, "questions": args.questions, "grid": list(GRID),
        "loader_samples_per_s_cold": round(cold, 1), "loader_samples_per_s_warm": round(warm, 1),
        "model_samples_per_s": round(model, 2), "loader_over_model_cold": round(cold / model, 1),
        "rss_model": args.rss_model, "steps": args.steps,
        "peak_rss_mb": {f"{k}x": v["peak_rss_mb"] for k, v in rss.items()},
        "rss_growth": round(growth, 4), "threads": torch.get_num_threads(),
    }
    print(f"loader / model = {cold / model:.0f}x cold (target >= 5); RSS growth 1x -> "
          f"{args.scale}x = {100 * growth:+.1f}% (target <= 10%)", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work)
    print(json.dumps(summary) if args.json else summary)


if __name__ == "__main__":
    main()
