"""``lrcn compare``: train several models on the same data and tabulate what each achieves.

A compare is a sweep over ``model.arch`` with one seed (`lrcn.engine.sweep`): every model is
trained with the same configuration but its architecture, in ``OUT/arch-<model>/seed<k>/``,
and evaluated on the same validation split; running it again continues it. The table
reports the last epoch (no model is picked by the split it is reported on): answer accuracy
with the dataset's official metric and, for the answerability task, average precision and F1
of "unanswerable".
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from lrcn.config import RunConfig
from lrcn.engine.curves import png_figure
from lrcn.engine.sweep import Sweep, run_sweep
from lrcn.engine.sweep_summary import read_result
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write
from lrcn.models.registry import model_names

log = logging.getLogger(__name__)

COLUMNS = ("model", "answer_accuracy", "answerability_ap", "answerability_f1", "parameters",
           "train_minutes")


def check_models(models: list[str], cfg: RunConfig) -> list[str]:
    """`models`, once they are known, distinct, and scored on a validation split."""
    unknown = [m for m in models if m not in model_names()]
    if unknown or not models:
        raise LrcnError(f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; "
                        f"known models: {', '.join(model_names())}")
    if len(set(models)) != len(models):
        raise LrcnError(f"--models lists a model twice: {', '.join(models)}")
    if cfg.data.val_split is None:
        raise LrcnError("compare needs a validation split with answers (--val-split)")
    return models


def compare(sweep: Sweep, cfg: RunConfig, out: Path) -> list[dict[str, Any]]:
    """Train the sweep's models (its grid: ``model.arch``), write comparison.{md,csv,png},
    return the rows."""
    rows = []
    for run in run_sweep(sweep, out):
        name = run.point["model.arch"]
        result = read_result(run)
        last = json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])["val"]
        answerability = last.get("answerability", {})
        rows.append({
            "model": name,
            "answer_accuracy": round(last["overall"], 2) if "overall" in last else None,
            "answerability_ap": _round(answerability.get("average_precision")),
            "answerability_f1": _round(answerability.get("f1")),
            "parameters": result["parameters"],
            "train_minutes": round(result["train_seconds"] / 60, 1),
        })
    write_table(rows, cfg, out)
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def write_table(rows: list[dict[str, Any]], cfg: RunConfig, out: Path) -> None:
    """comparison.md (Markdown table), comparison.csv and comparison.png (bar chart)."""
    split = f"{cfg.data.dataset} {cfg.data.val_split}"
    lines = [f"Models trained on {cfg.data.dataset} {cfg.data.train_split} for {cfg.train.epochs} "
             f"epochs (task {cfg.model.task}), scored on {split} after the last epoch.", "",
             "| model | answer accuracy | answerability AP | answerability F1 | parameters | "
             "train minutes |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["model"]] + ["—" if r[c] is None else f"{r[c]:,}" if c == "parameters"
                                else str(r[c]) for c in COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write(out / "comparison.md", lambda f: f.write(text.encode("utf-8")))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "comparison.csv", lambda f: f.write(buffer.getvalue().encode("utf-8")))
    plot_comparison(rows, split, out / "comparison.png")


def plot_comparison(rows: list[dict[str, Any]], split: str, path: Path) -> None:
    """Grouped bars: answer accuracy, answerability AP and F1 per model."""
    metrics = [(key, label) for key, label in (("answer_accuracy", "answer accuracy"),
                                               ("answerability_ap", "answerability AP"),
                                               ("answerability_f1", "answerability F1"))
               if any(r[key] is not None for r in rows)]
    width = 0.8 / len(rows)
    with png_figure(path, figsize=(2.2 + 2.2 * len(metrics), 4)) as (fig, ax):
        for i, r in enumerate(rows):
            xs = [m + (i - (len(rows) - 1) / 2) * width for m in range(len(metrics))]
            bars = ax.bar(xs, [r[key] or 0.0 for key, _ in metrics], width, label=r["model"])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
        ax.set(ylabel="percent", ylim=(0, 105), title=f"model comparison on {split}")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
