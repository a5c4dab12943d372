"""Benchmark: the paper's layer-residual ablation at CPU scale, with seeds and a paired test.

Runs the shipped sweep definitions ``cpu-lrm-easyvqa`` and ``cpu-lrm-relational`` (each
stacking, ED / St / CSt, with ``model.lrm`` none and sa, 3 seeds) as a user would, with
``lrcn sweep``, and prints each dataset's table of mean ± std and the paired difference of
sa over none per stacking (mean, n pairs, paired t-test p), next to the paper's VQA-v2
test-dev gains (+0.38 ED, +0.46 St, +0.83 CSt). A JSON summary is the last line of stdout.

The full sweeps train 36 runs (hours on a 2-core CPU). ``--samples N`` trains each run on
about N samples instead of the preset's epochs (``train.samples``, at least one epoch),
``--train-limit`` / ``--val-limit`` use only the first questions of each split, and
``--seeds`` sets how many seeds; say which budget a reported figure comes from. Rerunning with the same ``--out``
continues the sweeps where they stopped.

    python benchmarks/lrm_ablation.py --out DIR [--datasets easyvqa,relational]
        [--samples N] [--train-limit N] [--val-limit N] [--seeds 3] [--parallel 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PAPER_GAIN = {"ed": 0.38, "st": 0.46, "cst": 0.83}  # SA over none, VQA-v2 test-dev (Table 3)
SWEEPS = {"easyvqa": "cpu-lrm-easyvqa", "relational": "cpu-lrm-relational"}


def run_sweep(name: str, out: Path, budget: dict[str, int | None], seeds: int,
              parallel: int) -> dict:
    """``lrcn sweep --sweep NAME`` into `out`, with the `budget`'s ``--set`` items; its JSON
    summary."""
    command = [sys.executable, "-m", "lrcn", "sweep", "--sweep", name, "--out", str(out),
               "--seeds", str(seeds), "--parallel", str(parallel), "--json"]
    for key, value in budget.items():
        if value is not None:
            command += ["--set", f"{key}={value}"]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"lrcn sweep --sweep {name} failed (exit {done.returncode}); see {out}/logs")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gains(points: list[dict]) -> dict[str, dict]:
    """Per stacking: the paired difference of lrm sa over none (from the sweep's baseline)."""
    return {p["point"]["model.variant"]: p["diff"] for p in points
            if p["point"]["model.lrm"] == "sa" and p.get("diff")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for one sweep per dataset")
    parser.add_argument("--datasets", default="easyvqa,relational")
    parser.add_argument("--samples", type=int, help="train.samples of every run")
    parser.add_argument("--train-limit", type=int, help="data.train_limit of every run")
    parser.add_argument("--val-limit", type=int, help="data.val_limit of every run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    budget = {"train.samples": args.samples, "data.train_limit": args.train_limit,
              "data.val_limit": args.val_limit}
    report = {"budget": {**budget, "seeds": args.seeds}, "paper_gain": PAPER_GAIN}
    for dataset in args.datasets.split(","):
        summary = run_sweep(SWEEPS[dataset], Path(args.out) / dataset, budget, args.seeds,
                            args.parallel)
        print(Path(summary["md"]).read_text(encoding="utf-8"))
        found = gains(summary["points"])
        print(f"{dataset}: sa - none per stacking (paper, VQA-v2 test-dev, in brackets)")
        for variant, diff in found.items():
            p = "n/a" if diff["p_value"] is None else f"{diff['p_value']:.3g}"
            print(f"  {variant:<4} {diff['mean']:+.2f} ± {diff['std'] or 0:.2f} points over "
                  f"{diff['n']} seeds, p = {p}   (+{PAPER_GAIN[variant]:.2f})")
        report[dataset] = {"points": summary["points"], "gain": found}
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
