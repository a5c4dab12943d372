"""Benchmark: `lrcn compare` on the bundled easy-vizwiz data, wall-clock time and the table.

Targets (issue: VizWiz tasks): the four models (lrcn, cnn_lstm, text_only, image_only) train
and are scored within 30 minutes on a 2-core CPU, and the multimodal LRCN beats both
single-modality baselines on answer accuracy and on answerability average precision. Runs
the real command in a subprocess, as a user would; the last stdout line is a JSON summary.

    python benchmarks/vizwiz_compare.py [--out DIR] [--json] [-- extra lrcn compare flags]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 30 * 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="comparison folder (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    parser.add_argument("extra", nargs="*", help="extra flags for lrcn compare (after --)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="lrcn-compare-")) / "compare"
    cmd = [sys.executable, "-m", "lrcn", "compare", "--dataset", "easy-vizwiz", "--out",
           str(out), "--json", *args.extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"lrcn compare failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode
    rows = {r["model"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])["models"]}
    single = [rows[m] for m in ("text_only", "image_only") if m in rows]
    lrcn = rows.get("lrcn")
    beats = lrcn is not None and all(
        lrcn[k] > r[k] for r in single for k in ("answer_accuracy", "answerability_ap"))
    result = {"wall_seconds": round(seconds, 1), "meets_time_target": seconds <= TARGET_SECONDS,
              "lrcn_beats_single_modality": beats, "models": list(rows.values()),
              "table": str(out / "comparison.md")}
    if not args.json:
        print((out / "comparison.md").read_text(encoding="utf-8"))
        print(f"wall-clock {seconds / 60:.1f} min (target <= 30); LRCN beats text-only and "
              f"image-only on answer accuracy and answerability AP: {beats}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
