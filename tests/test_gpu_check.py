"""benchmarks/gpu_check.py as CI runs it, ``--device cpu --tiny``, so that the GPU check cannot
rot: every item is measured or skipped for a stated reason, the JSON file is the last stdout
line, and two gloo processes train as one. The run takes about 20 s (its budget here: 150 s, for a loaded CI machine)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
ARCHS = ("ed", "cst")


def run_check(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    result = run_check("--device", "cpu", "--tiny", "--out", out, "--budget-s", 150)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return result, out


@pytest.fixture(scope="module")
def report(tiny: tuple[subprocess.CompletedProcess, Path]) -> dict[str, Any]:
    return json.loads(tiny[1].read_text())


def positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_json_file_is_the_last_stdout_line(tiny: tuple[subprocess.CompletedProcess, Path],
                                           report: dict[str, Any]) -> None:
    result, _ = tiny
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == report
    assert report["complete"] and report["failed"] == [] and report["mode"] == "tiny"
    # a human line for every item before it
    for name in ("train/ed/fp32", "train/cst/bf16+compile", "inference/ed/fp32",
                 "extraction/x152", "ddp"):
        assert any(line.startswith(name) for line in lines[:-1]), name


def test_environment_and_peak(report: dict[str, Any]) -> None:
    env = report["environment"]
    assert env["device_type"] == "cpu" and env["torch"] == torch.__version__
    assert env["device_count"] == 1 and "float32" in env
    assert positive(report["peak_tflops"]["fp32"]["tflops"])
    epoch = report["epoch"]
    assert epoch["questions"] == epoch["train2014"] + epoch["val2014"] + epoch["vg"]
    assert epoch["paper_epoch_s"] == 2905


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("setting", ["fp32", "bf16", "bf16+compile"])
def test_training_step_measured_or_skipped_with_a_reason(report: dict[str, Any], arch: str,
                                                         setting: str) -> None:
    r = report["train"][arch][setting]
    if "skipped" in r:  # bf16 on a CPU without it; compile on any CPU under --tiny
        assert setting != "fp32" and r["skipped"] and "budget" not in r["skipped"]
        return
    for key in ("samples_per_s", "step_ms", "train_gflops_per_sample", "achieved_tflops",
                "mfu", "epoch_s"):
        assert positive(r[key]), (key, r)
    assert r["samples_per_s"] == pytest.approx(64_000 / r["step_ms"], rel=0.01)
    assert r["epoch_s"] == pytest.approx(report["epoch"]["questions"] / r["samples_per_s"],
                                         rel=0.01)
    assert r["peak_memory_gb"] is None  # no CUDA allocator on the CPU


def test_compile_is_skipped_on_a_tiny_cpu_run(report: dict[str, Any]) -> None:
    for arch in ARCHS:
        assert "compile" in report["train"][arch]["bf16+compile"]["skipped"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inference_latency(report: dict[str, Any], arch: str, precision: str) -> None:
    r = report["inference"][arch][precision]
    if "skipped" in r:
        assert precision == "bf16"
        return
    for batch in (1, 64):
        ms = r[f"batch{batch}_ms"]
        assert positive(ms["p50"]) and ms["p50"] <= ms["p99"], ms


def test_flops_counted(report: dict[str, Any]) -> None:
    for arch in ARCHS:
        assert positive(report["flops"][arch]["train_gflops"])
        assert report["flops"][arch]["forward_gflops"] < report["flops"][arch]["train_gflops"]


def test_feature_extraction(report: dict[str, Any]) -> None:
    extraction = report["extraction"]
    assert set(extraction) == {"resnet50_trunk", "resnet50", "x152"}
    for name, r in extraction.items():
        assert positive(r["images_per_s"]), (name, r)


def test_two_gloo_processes_train_as_one(report: dict[str, Any]) -> None:
    r = report["ddp"]
    assert r["backend"] == "gloo" and r["processes"] == 2 and r["equal"] is True
    assert r["first_grad_rel_diff"] < r["grad_tolerance"]
    assert r["weight_rel_diff"] < r["weight_tolerance"]
    assert math.isfinite(r["max_abs_weight_diff"])


@pytest.mark.parametrize("args", [
    ["--device", "tpu"],
    ["--device", "cpu", "--budget-s", "0"],
    pytest.param(["--device", "cuda"], marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_arguments_exit_2_with_one_error_line(args: list[str], tmp_path: Path) -> None:
    result = run_check(*args, "--out", tmp_path / "check.json", timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.py: error: "), result.stderr
    assert not (tmp_path / "check.json").exists()
