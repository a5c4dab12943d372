"""Shared by the benchmark scripts: run ``lrcn train`` as a user would, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_lrcn_train(args: list[str], out: Path | str) -> tuple[dict[str, Any], float]:
    """``lrcn train ARGS --out OUT --json``: its JSON summary and wall-clock seconds; exits
    with a message if the command fails."""
    cmd = [sys.executable, "-m", "lrcn", "train", *args, "--out", str(out), "--json"]
    print("$ lrcn train " + " ".join(args), file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lrcn train failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - start
