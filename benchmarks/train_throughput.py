"""Benchmark: the paper-size LRCN-ED-SA-6 training step, its MFU, and the plain model beside it.

The step is forward, summed BCE over 3,129 answers, backward and Adam, batch 64, with D = 512,
8 heads, FFN 2048, L = 6, 14 question tokens and 8x8x2048 grid features (pre-pooled, so no
16->8 convolution), dropout 0.1, in training mode. In the same run it measures:

- ``samples_per_s`` of the model as the package builds it (``model.fast_cpu``, the default:
  fused projections, SDPA, one-pass counter-based dropout; fused Adam) and of the same weights
  written plainly (``plain_lrcn.py`` beside this file: ``nn.MultiheadAttention``,
  ``nn.Dropout``, ``torch.optim.Adam`` defaults), timed in alternating rounds so machine noise
  hits both alike: ``speedup_vs_plain``;
- the analytic FLOPs of a training step per sample (matrix multiplies only, as MFU counts
  them; cross-checked against ``torch.utils.flop_counter``), the achieved FLOP/s, the fp32
  matrix-multiply peak of this machine (best of square ``torch.mm`` sizes), and ``mfu`` =
  achieved / peak;
- ``mfu_without_dropout``: the same step with dropout 0, which shows what dropout costs.

The machine is shared: its speed drifts by about 15% over minutes with the load of its
neighbours, for the step and for ``torch.mm`` alike. So every model's timed steps are
bracketed by two peak readings, and each round's MFU divides that round's achieved FLOP/s by
the higher of the two readings around it; ``mfu`` is the median over rounds, as the speedup
is the median of the rounds' side-by-side ratios. ``mfu_vs_run_peak`` divides the median
throughput by the highest reading of the whole run instead, a lower bound that mixes moments.

It opts in to glibc reusing freed memory first, calling ``lrcn.engine.memory.keep_freed_memory``
itself (``lrcn train`` does so only with ``train.keep_freed_memory``); both models run under
that setting. Each model first runs ``--warmup`` steps: the process's heap
grows to its steady size over the first three or so steps (hundreds of thousands of first-touch
page faults, 1-2 s a step), which a training run of thousands of steps pays once.
``--profile`` prints where the package's step spends its time.

Targets (issue: performance): mfu >= 0.65 and speedup_vs_plain >= 1.3 on a 2-core CPU.

    python benchmarks/train_throughput.py [--rounds 3] [--steps 3] [--warmup 3] [--profile] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from feature_store import BATCH, GRID, NUM_ANSWERS, TOKENS, VOCAB, model_config
from lrcn.config import ModelConfig, TrainConfig
from lrcn.engine.memory import keep_freed_memory
from lrcn.engine.step import OptimizerStep, make_optimizer, training_step
from lrcn.models import create_model
from lrcn.models.vqa_model import VQAModel
from plain_lrcn import plain_copy

TRAIN = TrainConfig()  # the paper's Adam; dropout 0.1 is the model's
CPU = torch.device("cpu")
TARGET_MFU, TARGET_SPEEDUP = 0.65, 1.3


def paper_config(dropout: float = 0.1) -> ModelConfig:
    cfg = model_config("paper")  # the paper's ED-SA-6 on pre-pooled 8x8 grids
    cfg.dropout = dropout
    return cfg


def forward_flops(cfg: ModelConfig, tokens: int = TOKENS, regions: int = GRID[0] * GRID[1],
                  answers: int = NUM_ANSWERS) -> dict[str, int]:
    """Matrix-multiply FLOPs (2 per multiply-add) of one question's forward pass, by part."""
    D, F, L, T, N = cfg.d_model, cfg.ffn_dim, cfg.layers, tokens, regions

    def attention(queries: int, keys: int, self_attention: bool) -> int:
        projections = queries * D * D * (3 if self_attention else 1) + (
            0 if self_attention else keys * D * 2 * D) + queries * D * D  # Q(K,V) and out
        return 2 * (projections + 2 * queries * keys * D)  # + scores and weighted sum

    def ffn(rows: int) -> int:
        return 2 * 2 * rows * D * F

    parts = {
        "lstm": 2 * T * 4 * D * (cfg.word_dim + D),
        "image_proj": 2 * N * GRID[2] * D,
        "question_sa": L * (attention(T, T, True) + ffn(T)),
        "image_sga": L * (attention(N, N, True) + attention(N, T, False) + ffn(N)),
        "pooling": 2 * (N + T) * (D * cfg.pool_hidden + cfg.pool_hidden + D),
        "fusion_and_head": 2 * (2 * D * cfg.fused_dim + cfg.fused_dim * answers),
    }
    assert cfg.variant == "ed", "the count is written for the encoder-decoder stacking"
    return parts


def train_flops(cfg: ModelConfig) -> int:
    """A training step per question: forward, then backward at twice the forward, except that
    the image projection needs no gradient for its input (the features are data)."""
    parts = forward_flops(cfg)
    return 3 * sum(parts.values()) - parts["image_proj"]


def synthetic_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Questions of 4-14 tokens (right-padded), random grids, a few soft-score targets each."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (BATCH, TOKENS), generator=g)
    lengths = torch.randint(4, TOKENS + 1, (BATCH,), generator=g)
    tokens[torch.arange(TOKENS) >= lengths[:, None]] = 0
    target = torch.zeros(BATCH, NUM_ANSWERS)
    target[torch.arange(BATCH), torch.randint(0, NUM_ANSWERS, (BATCH,), generator=g)] = 1.0
    return {"tokens": tokens, "image_index": torch.arange(BATCH),
            "grid": torch.randn(BATCH, *GRID, generator=g), "target": target}


def optimizer_step(model: VQAModel, optimizer: torch.optim.Optimizer) -> OptimizerStep:
    """One optimizer step as ``lrcn train`` takes it, called as ``run([batch])``."""
    return OptimizerStep(training_step(model, TRAIN, CPU), optimizer, TRAIN)


def counted_flops(run: OptimizerStep, batch: dict[str, torch.Tensor]) -> int:
    """Matrix-multiply FLOPs of one step per question, as torch's FLOP counter sees them."""
    with FlopCounterMode(display=False) as counter:
        run([batch])
    return counter.get_total_flops() // BATCH


def matmul_peak(sizes: tuple[int, ...] = (2048, 4096), reps: int = 5) -> float:
    """The best fp32 ``torch.mm`` FLOP/s over square sizes (best of `reps` timed runs each)."""
    best = 0.0
    for n in sizes:
        a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        torch.mm(a, b, out=c)
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(a, b, out=c)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def profile_step(run: OptimizerStep, batch: dict[str, torch.Tensor], steps: int = 2) -> None:
    """Print the step's time by operator (self time, summed over `steps` steps) to stderr."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run([batch])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25),
          file=sys.stderr)


def make_models(dropout: float) -> tuple[VQAModel, VQAModel]:
    """The package's model and its plain copy, with the same initial weights."""
    torch.manual_seed(0)
    fast = create_model(paper_config(dropout), VOCAB, NUM_ANSWERS)
    plain = create_model(paper_config(dropout), VOCAB, NUM_ANSWERS)
    plain.net = plain_copy(fast.net)
    return fast.train(), plain.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--profile", action="store_true", help="print the step's operator profile")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    keep_freed_memory()  # opted in here, for both models alike (see the docstring)

    cfg = paper_config()
    flops_per_sample = train_flops(cfg)
    batch = synthetic_batch()
    fast, plain = make_models(cfg.dropout)
    fast_no_dropout, _ = make_models(0.0)
    plain_adam = torch.optim.Adam(plain.parameters(), lr=TRAIN.lr, betas=TRAIN.betas,
                                  eps=TRAIN.eps)  # torch's defaults: no fused kernel
    runs = {
        "fast": optimizer_step(fast, make_optimizer(fast, TRAIN)),
        "plain": optimizer_step(plain, plain_adam),
        "fast_no_dropout": optimizer_step(fast_no_dropout, make_optimizer(fast_no_dropout, TRAIN)),
    }
    counted = counted_flops(runs["fast"], batch)
    uncounted = 3 * forward_flops(cfg)["lstm"]  # torch's counter has no formula for the LSTM
    if abs(counted + uncounted - flops_per_sample) > 0.001 * flops_per_sample:
        sys.exit(f"analytic FLOPs {flops_per_sample:,} disagree with torch's counter {counted:,} "
                 f"+ LSTM {uncounted:,}")
    for _ in range(args.warmup):
        for run in runs.values():
            run([batch])
    if args.profile:
        profile_step(runs["fast"], batch)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    bracket_peaks: dict[str, list[float]] = {name: [] for name in runs}
    peaks = [matmul_peak()]
    for r in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                run([batch])
            seconds[name].append((time.perf_counter() - start) / args.steps)
            peaks.append(matmul_peak())
            bracket_peaks[name].append(max(peaks[-2:]))  # the readings just before and after
            print(f"round {r + 1}/{args.rounds} {name}: {seconds[name][-1]:.2f} s/step, peak "
                  f"{bracket_peaks[name][-1] / 1e9:.0f} GFLOP/s", file=sys.stderr)

    def round_mfus(name: str) -> list[float]:
        """Each round's achieved FLOP/s over the peak read around that round."""
        return [BATCH * flops_per_sample / s / peak
                for s, peak in zip(seconds[name], bracket_peaks[name])]

    per_s = {name: BATCH / statistics.median(s) for name, s in seconds.items()}
    speedup = statistics.median(p / f for p, f in zip(seconds["plain"], seconds["fast"]))
    achieved = per_s["fast"] * flops_per_sample
    peak = max(peaks)
    result = {
        "samples_per_s": round(per_s["fast"], 2),
        "plain_samples_per_s": round(per_s["plain"], 2),
        "speedup_vs_plain": round(speedup, 3),
        "forward_gflops_per_sample": round(sum(forward_flops(cfg).values()) / 1e9, 3),
        "train_gflops_per_sample": round(flops_per_sample / 1e9, 3),
        "flop_counter_gflops_per_sample": round(counted / 1e9, 3),  # without the LSTM
        "achieved_gflops_per_s": round(achieved / 1e9, 1),
        "peak_fp32_matmul_gflops_per_s": round(peak / 1e9, 1),
        "mfu": round(statistics.median(round_mfus("fast")), 3),
        "mfu_vs_run_peak": round(achieved / peak, 3),
        "mfu_without_dropout": round(statistics.median(round_mfus("fast_no_dropout")), 3),
        "mfu_rounds": [round(m, 3) for m in round_mfus("fast")],
        "threads": torch.get_num_threads(),
        "targets": {"mfu": TARGET_MFU, "speedup_vs_plain": TARGET_SPEEDUP},
    }
    print(f"{result['samples_per_s']} samples/s: mfu {result['mfu']} (target >= {TARGET_MFU}; "
          f"{result['mfu_vs_run_peak']} against the run's highest peak, "
          f"{result['peak_fp32_matmul_gflops_per_s']} GFLOP/s); plain "
          f"{result['plain_samples_per_s']} samples/s: speedup {result['speedup_vs_plain']} "
          f"(target >= {TARGET_SPEEDUP}); without dropout mfu {result['mfu_without_dropout']}",
          file=sys.stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
