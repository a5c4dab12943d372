"""GPU check: the paper-size training step, inference, feature extraction and DDP, in one run.

On a CUDA machine, in at most ``--budget-s`` seconds (default 480), on synthetic data, through
the package's own code paths (the presets, ``create_model``, ``lrcn.engine.step`` as ``lrcn
train`` builds it, ``lrcn.engine.feature_extraction``, ``lrcn.engine.distributed``):

1. ``peak``: the device's matrix-multiply peak, best square ``torch.mm`` in fp32 and bf16.
   lrcn sets no TF32 flag, so fp32 training runs its matrix multiplies in full fp32 (torch's
   default, as this peak does) and the grid convolution (28% of ED's FLOPs) in cuDNN's TF32
   (also torch's default): fp32 MFU is against the full-fp32 peak. The settings are in the
   JSON (``environment.float32``).
2. ``train``: the paper-size LRCN-ED-SA-6 and LRCN-CSt-SA-6 training step (the presets as
   they are: 16x16x2048 grids reduced to 8x8 by the 2x2 stride-2 convolution, 14 tokens,
   3,129 answers, batch 64, dropout 0.1, summed BCE, fused Adam) in fp32, bf16 and bf16 +
   ``--compile``: samples/s, ms per step, peak memory, FLOP/s and MFU against the peak of
   the same dtype, and the epoch time this implies for VQA-v2 train+val+VG next to the
   paper's 2,905 s (LRCN-ED, one RTX 3090). FLOPs per question are torch's FLOP counter on
   one eager step plus the LSTM (which it has no formula for); for ED also the analytic
   count of ``train_throughput.py`` with the convolution added, which agrees exactly.
   The batch sits in pinned host memory and the step copies it, as ``lrcn train`` does.
3. ``inference``: batch-1 and batch-64 latency (p50/p99) from precomputed features, eval
   mode, no_grad, fp32 and bf16 autocast, both models.
4. ``extraction``: images/s of ``lrcn features extract``: the resnet152 trunk alone (batch
   32 at 512x512 -> 16x16 grids), and the whole command (decode, resize, trunk, store) for
   resnet152 and for x152 (grid-feats-vqa's X-152, one image at a time at 600x800), random
   weights (nothing is downloaded; their features overflow float16, so the store is float32).
5. ``ddp``: with two or more GPUs, two NCCL processes (as torchrun starts ``lrcn train``)
   each take half of every batch; their weights after a few steps, and the first step's
   gradient, are compared with one process taking the whole batch. Skipped with one GPU.

Every item that fails is recorded as ``{"error": ...}`` and the run goes on; items the budget
cannot fit are ``{"skipped": "budget ..."}``, and an item still running when the budget ends
is stopped and recorded as an error. The JSON is rewritten to ``--out`` after every item (so
a killed run leaves what it measured), then printed as the last stdout line. Exit status: 0,
1 if any item failed, 2 for bad arguments (one error line on stderr).

``--device cpu --tiny`` runs the same code on tiny models (D = 64, L = 2, 4x4x64 grids; one
CPU thread; the DDP check with gloo in two CPU processes) in about 20 s, so CI keeps it from
rotting (tests/test_gpu_check.py); ``torch.compile`` is skipped there (inductor's cold C++
build takes ~80 s).

    python benchmarks/gpu_check.py [--device cuda] [--out gpu_check.json] [--budget-s 480]
    python benchmarks/gpu_check.py --device cpu --tiny [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from feature_store import BATCH, GRID, NUM_ANSWERS, VOCAB, peak_rss_mb
from inference_latency import percentiles
from train_throughput import counted_flops, forward_flops, synthetic_batch, train_flops
from lrcn.config import RunConfig, apply_overrides, load_config
from lrcn.data.images import normalize
from lrcn.data.pipeline import model_inputs
from lrcn.engine import distributed
from lrcn.engine.feature_extraction import extract_features
from lrcn.engine.inference import resolve_device
from lrcn.engine.setup import bf16_supported
from lrcn.engine.step import OptimizerStep, autocast, make_optimizer, training_step
from lrcn.errors import LrcnError
from lrcn.models import TorchvisionTrunk, VQAModel, create_model
from lrcn.models.detectron2_trunk import Detectron2Trunk
from lrcn.models.image_encoders import TRUNK_STRIDES

PRESETS = {"ed": "lrcn-ed-sa-6", "cst": "lrcn-cst-sa-6"}
TRAIN_SETTINGS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16+compile": ("bf16", True)}
# The paper: an epoch of LRCN-ED over VQA-v2 train+val+VG took 2,905 s on one RTX 3090.
PAPER_EPOCH_S, PAPER_GPU = 2905, "RTX 3090"
# Questions of VQA-v2 train2014 and val2014 (docs/data.md). The project does not count the VG
# augmentation (openvqa's VG_questions.json); 485,000 is Teney et al.'s count of VG questions
# filtered the same way (COCO images, answers in the VQA-v2 vocabulary): --vg-questions N.
TRAIN2014_QUESTIONS, VAL2014_QUESTIONS, VG_QUESTIONS = 443_757, 214_354, 485_000
# --tiny: every size small enough that a CPU thread runs a step in milliseconds.
TINY_MODEL = {"d_model": 64, "heads": 4, "ffn_dim": 128, "layers": 2, "word_dim": 32,
              "pool_hidden": 64, "fused_dim": 128, "feature_channels": 64}
# DDP check (dropout 0: each process would draw its own masks). Some parameters have a
# gradient of exactly zero (attention key biases, the pooling MLPs' last bias: softmax ignores a
# constant) whose float noise depends on the order of the sums, and Adam turns noise into steps
# of up to lr, so those few weights differ between any two runs by up to lr a step, as much as a
# real difference moves them. What is compared is therefore (1) the first step's gradient,
# relative L2 (fp32, and cuDNN's TF32 convolution, summed in another order: ~1e-6), and (2) how
# far apart the two runs' weights end relative to how far training moved them: ~1e-3 when the
# processes train as one; a process on the wrong data, gradients not averaged or a step skipped
# by one process give 0.3 or more (measured on the tiny model). Adam's eps is raised from the
# paper's 1e-9, as the project's own DDP tests do, to damp the noise steps.
DDP_ADAM_EPS = 1e-6
DDP_GRAD_TOL = 1e-3
DDP_UPDATE_TOL = 0.05


@dataclass(frozen=True)
class Plan:
    """How much of each measurement a mode runs."""

    grid_side: int              # the reduced grid the model attends over (input: twice that)
    warmup: int                 # untimed training steps (a compiled step compiles in the first)
    min_steps: int              # timed training steps: at least this many ...
    min_seconds: float          # ... and at least this long
    reps_batch1: int            # inference calls timed at batch 1
    reps_batch64: int           # ... at batch 64
    mm_sizes: tuple[int, ...]   # square torch.mm sizes for the peak (on a GPU)
    backbone: str               # torchvision trunk for extraction
    image_size: int             # its input size (grid = size / 32)
    trunk_batch: int
    extract_images: int         # images the extraction command reads (resnet)
    x152_images: int            # ... (x152, one at a time)
    x152_resize: tuple[int, int] | None  # (shortest, longest); None: grid-feats-vqa's 600/1000
    photo_size: tuple[int, int]  # (width, height) of the synthetic photos
    ddp_steps: int


PAPER = Plan(grid_side=8, warmup=3, min_steps=20, min_seconds=3.0, reps_batch1=200,
             reps_batch64=50, mm_sizes=(4096, 8192), backbone="resnet152", image_size=512,
             trunk_batch=32, extract_images=256, x152_images=48, x152_resize=None,
             photo_size=(640, 480), ddp_steps=3)
TINY = Plan(grid_side=2, warmup=2, min_steps=5, min_seconds=0.0, reps_batch1=30,
            reps_batch64=5, mm_sizes=(256, 512), backbone="resnet50", image_size=64,
            trunk_batch=4, extract_images=8, x152_images=2, x152_resize=(48, 64),
            photo_size=(80, 60), ddp_steps=2)
CPU_MM_SIZES = (512, 1024)


# --------------------------------------------------------------------------- helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rounded(x: float | None, digits: int = 3) -> float | None:
    """`x` rounded, None when it is missing or not finite (JSON has no NaN)."""
    return round(x, digits) if x is not None and math.isfinite(x) else None


def run_config(arch: str, tiny: bool) -> RunConfig:
    """The preset of `arch` (ed, cst), with the tiny model's sizes under --tiny."""
    cfg = load_config(PRESETS[arch])
    if tiny:
        apply_overrides(cfg.model, TINY_MODEL, "--tiny")
    assert cfg.train.batch_size == BATCH, "the presets train in batches of 64, as the paper"
    return cfg


def grid_shape(cfg: RunConfig, plan: Plan) -> tuple[int, int, int]:
    """The grid the preset's model reads: 16x16 (tiny 4x4) that its convolution halves."""
    side = plan.grid_side * (1 if cfg.model.grid_reduction == "none" else 2)
    return side, side, cfg.model.feature_channels


def make_batch(grid: tuple[int, int, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """train_throughput's synthetic batch (64 questions of 4-14 tokens, one answer each) with
    random grids of the shape the model reads, one per question."""
    batch = synthetic_batch(seed)
    batch["grid"] = torch.randn(BATCH, *grid, generator=torch.Generator().manual_seed(seed))
    return batch


def share(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """Process `rank`'s share of a batch, every `world`-th question as the loader deals them."""
    part = {k: v[rank::world] for k, v in batch.items()}
    part["image_index"] = torch.arange(len(part["tokens"]))  # its grids, one per question
    return part


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...],
                reps: int = 5, inner: int = 5) -> float:
    """The best FLOP/s of square ``torch.mm`` at `dtype` on `device` (train_throughput's
    ``matmul_peak`` on any device and dtype; `inner` products between synchronisations)."""
    best = 0.0
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        c = torch.empty(n, n, device=device, dtype=dtype)
        torch.mm(a, b, out=c)
        synchronize(device)
        for _ in range(reps):
            start = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b, out=c)
            synchronize(device)
            best = max(best, inner * 2 * n**3 / (time.perf_counter() - start))
    return best


def step_flops(model: VQAModel, cfg: RunConfig, batch: dict[str, torch.Tensor],
               device: torch.device) -> dict[str, int]:
    """Matrix-multiply FLOPs per question of the training step and of the forward pass: torch's
    FLOP counter on an eager fp32 step of `model`, plus the LSTM it has no formula for
    (forward once, backward twice)."""
    eager = dataclasses.replace(cfg.train, precision="fp32", compile=False)
    run = OptimizerStep(training_step(model, eager, device), make_optimizer(model, eager), eager)
    lstm = forward_flops(dataclasses.replace(cfg.model, variant="ed"))["lstm"]  # any stacking
    train = counted_flops(run, batch) + 3 * lstm
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.forward_all(**model_inputs(batch, device))
    return {"train": train, "forward": counter.get_total_flops() // BATCH + lstm}


def analytic_ed_train_flops(cfg: RunConfig) -> int:
    """train_throughput's analytic count for ED on pre-pooled 8x8 grids, plus the preset's
    2x2 stride-2 convolution from 16x16: its forward and its weight gradient (the features need
    none), and the input gradient of the image projection, which the convolution now needs."""
    conv = 2 * GRID[0] * GRID[1] * GRID[2] * GRID[2] * 4  # 64 outputs x 2048 x (2048 x 2 x 2)
    return train_flops(cfg.model) + forward_flops(cfg.model)["image_proj"] + 2 * conv


def write_photos(folder: Path, count: int, size: tuple[int, int]) -> Path:
    """`count` smooth random JPEG photos of `size` (width, height), as a camera's decode."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        small.resize(size, Image.Resampling.BICUBIC).save(folder / f"{i:06d}.jpg", quality=90)
    return folder


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None = None) -> float:
    """The L2 distance between two sets of named tensors (the norm of `a` without `b`)."""
    return math.sqrt(sum(((v.double() - (0 if b is None else b[k].double())) ** 2).sum().item()
                         for k, v in a.items()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OutOfTime(BaseException):
    """The budget ran out during an item (a BaseException, so no ``except Exception`` inside
    torch swallows it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise OutOfTime in the main thread after `seconds` (SIGALRM; Linux)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise OutOfTime(f"stopped at the time budget, after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def optional(read: Callable[[], Any]) -> Any:
    """`read()`, or why it failed: describing the machine must never stop the check."""
    try:
        return read()
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"


def gpu_description(device: torch.device) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    return {"device_name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count}


def nvidia_driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    return query.stdout.strip().splitlines()[0] if query.stdout.strip() else None


def environment(device: torch.device) -> dict[str, Any]:
    """What ran the check: versions, the device, the float32 matmul settings, the environment."""
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": optional(torch.backends.cudnn.version),
        "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "device_type": device.type,
        "device_count": torch.cuda.device_count() if device.type == "cuda" else 1,
        "float32": {  # what fp32 training runs with: lrcn sets none of these
            "matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32},
        "variables": {k: v for k, v in sorted(os.environ.items())
                      if k.startswith(("CUDA_", "NCCL_", "TORCH", "PYTORCH_", "OMP_", "MKL_"))},
    }
    if device.type == "cuda":
        described = optional(lambda: gpu_description(device))
        env.update(described if isinstance(described, dict) else {"device_name": described})
        env["nccl"] = optional(lambda: ".".join(map(str, torch.cuda.nccl.version())))
        env["driver"] = optional(nvidia_driver)
    else:
        env["device_name"] = platform.processor() or platform.machine()
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return env


# --------------------------------------------------------------------------- the check


@dataclass
class Describe:
    """The human line of each kind of item."""

    epoch: dict[str, Any]

    @staticmethod
    def peak(r: dict[str, Any]) -> str:
        return f"{r['tflops']} TFLOP/s (torch.mm {r['sizes']}{', TF32' if r['tf32'] else ''})"

    def train(self, r: dict[str, Any]) -> str:
        memory = f"{r['peak_memory_gb']} GB" if r["peak_memory_gb"] is not None else "n/a"
        if r["batch_copy_ms"] is not None:
            memory += f", batch copy {r['batch_copy_ms']} ms"
        mfu = f"MFU {r['mfu']} of {r['peak_tflops']}" if r["mfu"] is not None else "MFU n/a"
        return (f"{r['samples_per_s']} samples/s, {r['step_ms']} ms/step (first step "
                f"{r['first_step_s']} s), peak memory {memory}, {r['achieved_tflops']} TFLOP/s, "
                f"{mfu}; epoch {r['epoch_s']:.0f} s for {self.epoch['questions']:,} questions "
                f"(train+val+VG; paper {PAPER_EPOCH_S:,} s on an {PAPER_GPU})")

    @staticmethod
    def flops(r: dict[str, Any]) -> str:
        line = (f"{r['train_gflops']} GFLOPs per question per training step, "
                f"{r['forward_gflops']} forward (FLOP counter + LSTM)")
        if "analytic_train_gflops" in r:
            line += (f"; analytic {r['analytic_train_gflops']} (ratio "
                     f"{r['counter_vs_analytic']})")
        if "paper_forward_gflops" in r:
            line += f"; the paper counts {r['paper_forward_gflops']} forward"
        return line

    @staticmethod
    def inference(r: dict[str, Any]) -> str:
        b1, b64 = r["batch1_ms"], r[f"batch{BATCH}_ms"]
        return (f"batch 1 p50 {b1['p50']} / p99 {b1['p99']} ms; batch {BATCH} p50 "
                f"{b64['p50']} / p99 {b64['p99']} ms")

    @staticmethod
    def extraction(r: dict[str, Any]) -> str:
        if "backbone" in r:
            return (f"{r['images_per_s']} images/s ({r['backbone']} alone, "
                    f"{r['image_size']}x{r['image_size']} -> {r['grid']}x{r['grid']}, batch "
                    f"{r['batch']})")
        return (f"{r['images_per_s']} images/s ({r['images']} photos through lrcn features "
                f"extract, grid {r['grid']}; trunk build {r['build_s']} s taken out)")

    @staticmethod
    def ddp(r: dict[str, Any]) -> str:
        verdict = "equal" if r["equal"] else "NOT EQUAL"
        return (f"2 {r['backend']} processes vs 1 after {r['steps']} steps: first gradient "
                f"rel. diff {r['first_grad_rel_diff']:.2g} (tol {r['grad_tolerance']:.0e}), "
                f"weights {r['weight_rel_diff']:.2g} of the update (tol "
                f"{r['weight_tolerance']}), max |weight diff| {r['max_abs_weight_diff']:.2g} "
                f"(lr {r['lr']:.0e}): {verdict}")


class Check:
    """The items, the budget, and the results as they come (rewritten to --out each time)."""

    def __init__(self, device: torch.device, tiny: bool, out: Path, budget_s: float,
                 vg_questions: int, argv: list[str]) -> None:
        self.device, self.tiny, self.out, self.budget_s = device, tiny, out, budget_s
        self.plan = TINY if tiny else PAPER
        self.start = time.perf_counter()
        self.peaks: dict[str, float] = {}      # dtype -> FLOP/s
        self.flops: dict[str, dict[str, int]] = {}  # arch -> FLOPs per question
        questions = TRAIN2014_QUESTIONS + VAL2014_QUESTIONS
        self.epoch = {"train2014": TRAIN2014_QUESTIONS, "val2014": VAL2014_QUESTIONS,
                      "vg": vg_questions, "questions": questions + vg_questions,
                      "questions_without_vg": questions,
                      "vg_source": "--vg-questions" if vg_questions != VG_QUESTIONS else
                      "estimate: Teney et al. 2018's VG count for the same filtering; the "
                      "project does not count openvqa's VG_questions.json",
                      "paper_epoch_s": PAPER_EPOCH_S, "paper_gpu": PAPER_GPU,
                      "paper_model": "LRCN-ED"}
        self.report: dict[str, Any] = {
            "command": " ".join(["python", "benchmarks/gpu_check.py", *argv]),
            "mode": "tiny" if tiny else "paper", "budget_s": budget_s,
            "environment": environment(device), "epoch": self.epoch,
            "peak_tflops": {}, "train": {}, "flops": {}, "inference": {}, "extraction": {},
            "ddp": None,
            "failed": [], "skipped": [], "complete": False}

    # ---- running items

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def item(self, path: tuple[str, ...], measure: Callable[[], dict[str, Any]],
             needs_s: float, describe: Callable[[dict[str, Any]], str],
             unsupported: str | None = None) -> dict[str, Any]:
        """Run one measurement within what is left of the budget, record and print it; skip it
        if it is `unsupported` here. An item that needs no time (`needs_s` <= 0: a summary of
        what others measured) always runs."""
        name = "/".join(path)
        left = self.left_s()
        if unsupported:
            result: dict[str, Any] = {"skipped": unsupported}
        elif 0 < needs_s and left < needs_s:
            result = {"skipped": f"budget: {max(left, 0):.0f} s left of {self.budget_s:.0f}, "
                                 f"needs ~{needs_s:.0f}"}
        else:
            start = time.perf_counter()
            try:
                with time_limit(left) if needs_s > 0 else nullcontext():
                    result = measure()
            except (Exception, OutOfTime) as exc:
                traceback.print_exc(file=sys.stderr)
                lines = str(exc).strip().splitlines() or [""]
                text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
                result = {"error": f"{type(exc).__name__}: {text}"[:600]}
            finally:
                torch._dynamo.reset()  # drop what a compiled step cached
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            result["seconds"] = round(time.perf_counter() - start, 2)
        if "error" in result:
            self.report["failed"].append(name)
            line = f"ERROR {result['error']}"
        elif "skipped" in result:
            self.report["skipped"].append(name)
            line = f"skipped: {result['skipped']}"
        else:
            try:
                line = describe(result)
            except Exception:  # a value the line did not expect: the JSON has it all
                line = json.dumps(result)
        print(f"{name:<26} {line}", flush=True)
        self.store(path, result)
        self.write()
        return result

    def store(self, path: tuple[str, ...], result: dict[str, Any]) -> None:
        if len(path) == 1:
            self.report[path[0]] = result
            return
        node = self.report
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = result

    def write(self) -> None:
        self.report["seconds"] = round(time.perf_counter() - self.start, 1)
        self.out.write_text(json.dumps(self.report, indent=1) + "\n")

    # ---- the measurements

    def unsupported(self, precision: str, compiled: bool = False) -> str | None:
        """Why a precision or torch.compile is not measured here; None if it is."""
        if precision == "bf16" and not bf16_supported(self.device):
            return (f"{self.device.type} without native bfloat16 (lrcn train refuses "
                    "--precision bf16 here)")
        if compiled and self.tiny and self.device.type == "cpu":
            return ("torch.compile on a CPU: inductor's cold C++ build takes ~80 s, past a "
                    "--tiny run; the GPU run compiles")
        return None

    def peak(self, dtype_name: str) -> dict[str, Any]:
        """The best square torch.mm at this dtype, in TFLOP/s."""
        sizes = self.plan.mm_sizes if self.device.type == "cuda" else CPU_MM_SIZES
        dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
        flops = matmul_peak(self.device, dtype, sizes)
        self.peaks[dtype_name] = flops
        return {"tflops": rounded(flops / 1e12, 2), "sizes": list(sizes),
                "tf32": dtype_name == "fp32" and self.device.type == "cuda"
                and torch.backends.cuda.matmul.allow_tf32}

    def train(self, arch: str, setting: str) -> dict[str, Any]:
        """The training step as ``lrcn train`` takes it, timed after its warm-up."""
        precision, compiled = TRAIN_SETTINGS[setting]
        device, plan = self.device, self.plan
        cfg = run_config(arch, self.tiny)
        t = cfg.train
        t.precision, t.compile, t.device = precision, compiled, device.type
        torch.manual_seed(0)
        model = create_model(cfg.model, VOCAB, NUM_ANSWERS).to(device).train()
        batch = make_batch(grid_shape(cfg, plan))
        if device.type == "cuda":  # lrcn train's loader pins batches for the GPU
            batch = {k: v.pin_memory() for k, v in batch.items()}
        if arch not in self.flops:
            self.flops[arch] = step_flops(model, cfg, batch, device)
        run = OptimizerStep(training_step(model, t, device), make_optimizer(model, t), t)
        gc.collect()  # the FLOP count's optimizer
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        run([batch])  # the first step: where torch.compile compiles
        synchronize(device)
        first_step_s = time.perf_counter() - start
        for _ in range(plan.warmup - 1):
            run([batch])
        times: list[float] = []
        while len(times) < plan.min_steps or sum(times) < plan.min_seconds:
            synchronize(device)
            start = time.perf_counter()
            loss, stepped = run([batch])
            synchronize(device)
            times.append(time.perf_counter() - start)
            if not (stepped and math.isfinite(loss)):
                raise RuntimeError(f"non-finite loss {loss} in a timed step")
        step_s = statistics.mean(times)
        samples_per_s = BATCH / step_s
        flops = self.flops[arch]["train"]
        peak = self.peaks.get(precision)
        result = {
            "samples_per_s": rounded(samples_per_s, 2), "step_ms": rounded(1e3 * step_s, 2),
            "step_ms_p50": rounded(1e3 * statistics.median(times), 2), "steps": len(times),
            "first_step_s": rounded(first_step_s, 2),
            "peak_memory_gb": rounded(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if device.type == "cuda" else None,
            "batch_copy_ms": self.copy_ms(batch),
            "train_gflops_per_sample": rounded(flops / 1e9),
            "achieved_tflops": rounded(samples_per_s * flops / 1e12, 2),
            "peak_tflops": rounded(peak / 1e12, 2) if peak else None,
            "mfu": rounded(samples_per_s * flops / peak) if peak else None,
            "epoch_s": rounded(self.epoch["questions"] / samples_per_s, 1),
            "epoch_s_without_vg": rounded(self.epoch["questions_without_vg"] / samples_per_s, 1),
            "paper_epoch_s": PAPER_EPOCH_S,
            "loss": rounded(loss, 4), "parameters": model.num_parameters(),
        }
        return result

    def copy_ms(self, batch: dict[str, torch.Tensor]) -> float | None:
        """What the step's copy of a pinned batch to the GPU takes (median of 5), ms."""
        if self.device.type != "cuda":
            return None
        times = []
        for _ in range(5):
            synchronize(self.device)
            start = time.perf_counter()
            model_inputs(batch, self.device)
            synchronize(self.device)
            times.append(time.perf_counter() - start)
        return rounded(1e3 * statistics.median(times), 2)

    def flop_counts(self, arch: str) -> dict[str, Any]:
        """FLOPs per question (counted in the training items), with ED's analytic count."""
        if arch not in self.flops:
            return {"skipped": "no training item of this model ran"}
        counted = self.flops[arch]
        result: dict[str, Any] = {"train_gflops": rounded(counted["train"] / 1e9, 4),
                                  "forward_gflops": rounded(counted["forward"] / 1e9, 4)}
        if not self.tiny:
            result["paper_forward_gflops"] = {"ed": 3.67, "cst": 5.67}[arch]
        if arch == "ed" and not self.tiny:
            analytic = analytic_ed_train_flops(run_config(arch, self.tiny))
            result["analytic_train_gflops"] = rounded(analytic / 1e9)
            result["counter_vs_analytic"] = rounded(counted["train"] / analytic, 5)
        return result

    def inference(self, arch: str, precision: str) -> dict[str, Any]:
        """Batch-1 and batch-64 latency from precomputed features (``forward_all``), ms."""
        device, plan = self.device, self.plan
        cfg = run_config(arch, self.tiny)
        torch.manual_seed(0)
        model = create_model(cfg.model, VOCAB, NUM_ANSWERS).to(device).eval()
        batch = make_batch(grid_shape(cfg, plan))
        tokens, grid = batch["tokens"].to(device), batch["grid"].to(device)
        result = {}
        with torch.no_grad(), autocast(device, precision):
            for size, reps in ((1, plan.reps_batch1), (BATCH, plan.reps_batch64)):
                def call() -> None:
                    model.forward_all(tokens[:size], grid=grid[:size])
                    synchronize(device)
                result[f"batch{size}_ms"] = percentiles(call, reps, warmup=min(20, reps))
        return result

    def trunk(self) -> dict[str, Any]:
        """The extractor's per-batch work for a torchvision trunk: normalise and run the trunk
        on uint8 pixels copied to the device (``extract_features``' encode), images/s."""
        device, plan = self.device, self.plan
        torch.manual_seed(0)
        trunk = TorchvisionTrunk(plan.backbone, None, freeze=True, random_weights=True).to(device)
        pixels = torch.randint(0, 256, (plan.trunk_batch, 3, plan.image_size, plan.image_size),
                               dtype=torch.uint8)
        if device.type == "cuda":
            pixels = pixels.pin_memory()

        def encode() -> None:
            trunk(normalize(pixels.to(device)))
            synchronize(device)

        with torch.no_grad():
            for _ in range(2):
                encode()
            times: list[float] = []
            while len(times) < plan.min_steps or sum(times) < plan.min_seconds:
                start = time.perf_counter()
                encode()
                times.append(time.perf_counter() - start)
        return {"images_per_s": rounded(plan.trunk_batch / statistics.median(times), 1),
                "backbone": plan.backbone, "image_size": plan.image_size,
                "grid": plan.image_size // TRUNK_STRIDES["layer4"], "batch": plan.trunk_batch,
                "batches": len(times)}

    def extract(self, backbone: str) -> dict[str, Any]:
        """``lrcn features extract`` on synthetic JPEG photos (random weights, so a float32
        store), images/s; the time to build the trunk, measured beside it, is taken out."""
        device, plan = self.device, self.plan
        x152 = backbone == "x152"
        count = plan.x152_images if x152 else plan.extract_images
        start = time.perf_counter()
        built = (Detectron2Trunk(None, random_weights=True) if x152 else
                 TorchvisionTrunk(backbone, None, freeze=True, random_weights=True)).to(device)
        synchronize(device)
        build_s = time.perf_counter() - start
        del built
        with tempfile.TemporaryDirectory() as tmp:
            photos = write_photos(Path(tmp) / "photos", count, plan.photo_size)
            start = time.perf_counter()
            store = extract_features(
                photos, backbone, None, Path(tmp) / "store", random_weights=True,
                device=device.type, image_size=None if x152 else plan.image_size,
                batch_size=plan.trunk_batch, resize=plan.x152_resize if x152 else None,
                dtype="float32")  # random trunks' features overflow the default float16
            seconds = time.perf_counter() - start
            shape = list(store.item_shape)
        return {"images_per_s": rounded(count / max(seconds - build_s, 1e-9), 1),
                "images": count, "seconds_with_build": rounded(seconds, 2),
                "build_s": rounded(build_s, 2), "photo_size": list(plan.photo_size),
                "grid": shape}

    def ddp(self) -> dict[str, Any]:
        """Two processes (NCCL on GPUs, gloo on the CPU) against one: weights after a few
        steps and the first step's gradient."""
        device = self.device
        if device.type == "cuda" and torch.cuda.device_count() < 2:
            return {"skipped": f"{torch.cuda.device_count()} GPU"}
        cfg = run_config("ed", self.tiny)
        cfg.model.dropout = 0.0
        cfg.train.eps = DDP_ADAM_EPS
        cfg.train.device = device.type
        grid, steps = grid_shape(cfg, self.plan), self.plan.ddp_steps
        threads = 1 if device.type == "cpu" else 0  # two CPU processes: a core each
        initial, one_weights, one_grads = train_steps(cfg, device, grid, steps)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rank0.pt"
            args = (2, free_port(), device.type, cfg, grid, steps, str(out), threads)
            context = mp.start_processes(ddp_worker, args=args, nprocs=2, join=False,
                                         start_method="spawn")
            try:
                while not context.join(timeout=1):
                    pass
            finally:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
            two_weights, two_grads = torch.load(out, weights_only=True)
        grad_rel = distance(two_grads, one_grads) / distance(one_grads)
        update_rel = distance(two_weights, one_weights) / distance(one_weights, initial)
        weight_diff = max((two_weights[k] - v).abs().max().item() for k, v in one_weights.items())
        return {"backend": "nccl" if device.type == "cuda" else "gloo", "processes": 2,
                "steps": steps, "lr": cfg.train.lr, "adam_eps": DDP_ADAM_EPS, "dropout": 0.0,
                "first_grad_rel_diff": float(f"{grad_rel:.3g}"), "grad_tolerance": DDP_GRAD_TOL,
                "weight_rel_diff": float(f"{update_rel:.3g}"), "weight_tolerance": DDP_UPDATE_TOL,
                "max_abs_weight_diff": float(f"{weight_diff:.3g}"),
                "equal": grad_rel <= DDP_GRAD_TOL and update_rel <= DDP_UPDATE_TOL}

    # ---- all of it, most important first

    def run(self) -> int:
        say = Describe(self.epoch)
        for dtype in ("fp32", "bf16"):
            self.item(("peak_tflops", dtype), lambda: self.peak(dtype), 2, say.peak,
                      self.unsupported(dtype))
        for arch in PRESETS:
            for setting, (precision, compiled) in TRAIN_SETTINGS.items():
                self.item(("train", arch, setting), lambda: self.train(arch, setting),
                          60 if compiled else 5, say.train, self.unsupported(precision, compiled))
            self.item(("flops", arch), lambda: self.flop_counts(arch), 0, say.flops)
        for arch in PRESETS:
            for precision in ("fp32", "bf16"):
                self.item(("inference", arch, precision),
                          lambda: self.inference(arch, precision), 5, say.inference,
                          self.unsupported(precision))
        self.item(("extraction", f"{self.plan.backbone}_trunk"), self.trunk, 5, say.extraction)
        for backbone in (self.plan.backbone, "x152"):
            self.item(("extraction", backbone), lambda: self.extract(backbone), 10,
                      say.extraction)
        self.item(("ddp",), self.ddp, 20, say.ddp)
        if self.report["ddp"].get("equal") is False:
            self.report["failed"].append("ddp")
        self.report["environment"]["process_peak_rss_mb"] = round(peak_rss_mb())
        self.report["complete"] = True
        self.write()
        failed = self.report["failed"]
        print(f"{'done':<26} {self.report['seconds']:.0f} s; "
              f"{'failed: ' + ', '.join(failed) if failed else 'nothing failed'}; "
              f"JSON in {self.out}", flush=True)
        print(json.dumps(self.report), flush=True)
        return 1 if failed else 0

# --------------------------------------------------------------------------- DDP processes


def train_steps(cfg: RunConfig, device: torch.device, grid: tuple[int, int, int], steps: int,
                rank: int = 0, world: int = 1) -> tuple[dict[str, torch.Tensor], ...]:
    """`steps` optimiser steps on fixed batches (this process's share of each), as ``lrcn
    train`` takes them: the initial and final weights and the first step's gradient, on the
    CPU."""
    torch.manual_seed(0)
    model = create_model(cfg.model, VOCAB, NUM_ANSWERS).to(device).train()
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    t = cfg.train
    run = OptimizerStep(training_step(model, t, device), make_optimizer(model, t), t)
    grads: dict[str, torch.Tensor] = {}
    for seed in range(steps):
        run([share(make_batch(grid, seed), rank, world)])
        if not grads:  # the gradient stays until the next step zeroes it
            grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()
                     if p.grad is not None}
    return initial, {k: v.detach().cpu() for k, v in model.state_dict().items()}, grads


def ddp_worker(rank: int, world: int, port: int, device_type: str, cfg: RunConfig,
               grid: tuple[int, int, int], steps: int, out: str, threads: int) -> None:
    """One process of the group, placed as torchrun places ``lrcn train``'s."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if threads:
        torch.set_num_threads(threads)
    with distributed.process_group(device_type):
        device = distributed.local_device(torch.device(device_type))
        _, weights, grads = train_steps(cfg, device, grid, steps, rank, world)
        if rank == 0:
            torch.save((weights, grads), out)


# --------------------------------------------------------------------------- main


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2, as ``lrcn``'s."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny models and few steps: the CI run (--device cpu --tiny)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"),
                        help="JSON file, rewritten after every item")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="seconds for the whole check; items that do not fit are skipped")
    parser.add_argument("--vg-questions", type=int, default=VG_QUESTIONS,
                        help="questions of the VG augmentation, for the epoch time "
                             f"(default {VG_QUESTIONS:,}, an estimate)")
    args = parser.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except LrcnError as exc:
        parser.error(str(exc))
    if args.budget_s <= 0 or args.vg_questions < 0:
        parser.error("--budget-s must be positive and --vg-questions 0 or more")
    if not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: no folder {args.out.parent}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.tiny and args.device.type == "cpu":
        torch.set_num_threads(1)  # a shared CI machine: threads would wait on each other
    check = Check(args.device, args.tiny, args.out, args.budget_s, args.vg_questions, argv)
    env = check.report["environment"]
    print(f"{'device':<26} {env['device_name']} x {env['device_count']}, torch {env['torch']}, "
          f"CUDA {env['cuda']}, {env['cpu_threads']} CPU threads", flush=True)
    return check.run()


if __name__ == "__main__":
    sys.exit(main())
