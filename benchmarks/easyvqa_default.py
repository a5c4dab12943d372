"""Benchmark: the default `lrcn train` on easy-VQA, wall-clock time and test accuracy.

Targets: >= 99.5% VQA accuracy on the easy-VQA test split within 180 s wall-clock, start to
finish, on a 2-core CPU. Runs the real command in a subprocess, exactly as a user would, and
prints a JSON summary as the last line of stdout.

    python benchmarks/easyvqa_default.py [--out DIR] [--json] [-- extra lrcn train flags]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

TARGET_ACCURACY = 99.5
TARGET_SECONDS = 180


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="run folder (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    parser.add_argument("extra", nargs="*", help="extra flags for lrcn train (after --)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="lrcn-bench-")
    cmd = [sys.executable, "-m", "lrcn", "train", "--out", out, "--json", *args.extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"lrcn train failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    result = {
        "command": " ".join(["lrcn", "train", *args.extra]),
        "cpu_threads": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "wall_seconds": round(seconds, 1),
        "test_accuracy": round(summary["overall"], 2),
        "per_answer_type": {k: round(v, 2) for k, v in summary["per_answer_type"].items()},
        "best_epoch": summary["best_epoch"],
        "epochs": summary["epochs"],
        "run_dir": out,
        "meets_accuracy_target": summary["overall"] >= TARGET_ACCURACY,
        "meets_time_target": seconds <= TARGET_SECONDS,
    }
    if not args.json:
        print(f"wall-clock {seconds:.1f} s (target <= {TARGET_SECONDS}), "
              f"test accuracy {summary['overall']:.2f}% (target >= {TARGET_ACCURACY})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
