"""``lrcn sweep`` results: the runs of every grid point gathered over seeds, and the tables.

Each finished run folder holds ``summary.json`` (what ``lrcn train --json`` prints) and
``metrics.jsonl``. A grid point is reported as mean ± sample standard deviation over its
finished seeds, so a difference between points can be read against the spread that seeds
alone give. With a baseline, every point is also compared with its baseline point seed by
seed (a paired t-test), which removes the part of the spread that the two share.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lrcn.engine.curves import png_figure
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write
from lrcn.json_records import json_kind, load_json, short_repr


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep: a grid point and a seed, trained into `run_dir`."""

    point: dict[str, str]  # grid key (e.g. "model.variant") -> value as given, in grid order
    seed: int
    run_dir: Path


# --------------------------------------------------------------------------- reading


def read_result(run: SweepRun) -> dict[str, Any] | None:
    """The run's summary.json plus ``train_seconds`` (summed over metrics.jsonl); None while
    the run has not finished (no summary.json yet)."""
    path = run.run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = load_json(path, "run summary")
    if not isinstance(summary, dict):
        raise LrcnError(f"{path}: expected a JSON object (the summary lrcn train --json "
                        f"prints), got {json_kind(summary)}")
    if "overall" in summary:
        _check_number(path, "overall", summary["overall"])
    for key in ("per_answer_type", "per_question_type"):
        if key in summary:
            table = summary[key]
            if not isinstance(table, dict):
                raise LrcnError(f"{path}: {key!r} must be an object, got {json_kind(table)}")
            for name, value in table.items():
                _check_number(path, f"{key}[{name!r}]", value)
    if "answerability" in summary:
        answerability = summary["answerability"]
        if not isinstance(answerability, dict):
            raise LrcnError(f"{path}: 'answerability' must be an object, got "
                            f"{json_kind(answerability)}")
        for key in ("average_precision", "f1"):
            if key not in answerability:
                raise LrcnError(f"{path}: 'answerability' has no {key!r}")
            _check_number(path, f"answerability[{key!r}]", answerability[key])
    return {**summary, "train_seconds": _train_seconds(run.run_dir / "metrics.jsonl", path)}


def _check_number(path: Path, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LrcnError(f"{path}: {name} must be a finite number, got {short_repr(value)}")


def _train_seconds(path: Path, summary: Path) -> float:
    """Training time of the run: ``train_seconds`` of every epoch (each its own) added up."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LrcnError(f"{path}: not found, though {summary} says the run finished") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LrcnError(f"{path}: cannot read the metrics log: {exc}") from None
    total = 0.0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LrcnError(f"{path}, line {number}: not valid JSON: {exc.msg}") from None
        if not isinstance(entry, dict) or "train_seconds" not in entry:
            raise LrcnError(f"{path}, line {number}: expected an epoch record with "
                            f"'train_seconds', got {short_repr(entry)}")
        _check_number(path, f"line {number}: 'train_seconds'", entry["train_seconds"])
        total += entry["train_seconds"]
    return total


# --------------------------------------------------------------------------- aggregating


def aggregate(runs: list[SweepRun], baseline: dict[str, str] | None = None
              ) -> list[dict[str, Any]]:
    """One row per grid point, in the order points first appear in `runs`.

    A row: ``point`` (grid key -> value), ``n`` (finished seeds), ``seeds`` (those seeds), and
    ``{"mean", "std"}`` (std with ddof=1; None below two values, both None without any) for
    ``overall``, ``train_seconds``, each type in ``per_answer_type`` and ``per_question_type``
    (empty when no run has them), and ``answerability_ap`` / ``answerability_f1`` (only when
    some run has answerability). Unfinished runs are left out.

    With `baseline` (values for some grid keys, e.g. ``{"model.lrm": "none"}``) each row also
    gets ``diff``: its overall accuracy minus that of the point with the baseline's values and
    its own on the other keys, seed by seed over the seeds both finished (``{"mean", "std",
    "n", "p_value"}``, p from a two-sided paired t-test; None below two pairs or when every
    difference is the same). A point whose baseline point is not in the sweep gets None.
    """
    grid_keys = list(runs[0].point) if runs else []
    if baseline is not None:
        _check_baseline(runs, grid_keys, baseline)
    groups: dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]] = {}
    points: dict[tuple[str, ...], dict[str, str]] = {}
    for run in runs:
        key = tuple(run.point[k] for k in grid_keys)
        points.setdefault(key, dict(run.point))
        groups.setdefault(key, [])
        result = read_result(run)
        if result is not None:
            groups[key].append((run.seed, result))
    rows = [_row(points[key], results) for key, results in groups.items()]
    if baseline is not None:
        overall = {key: {seed: r["overall"] for seed, r in results if "overall" in r}
                   for key, results in groups.items()}
        for key, row in zip(groups, rows):
            base = tuple(baseline.get(k, v) for k, v in zip(grid_keys, key))
            row["diff"] = _paired(overall[key], overall[base]) if base in overall else None
    return rows


def _check_baseline(runs: list[SweepRun], grid_keys: list[str], baseline: dict[str, str]
                    ) -> None:
    for key, value in baseline.items():
        if key not in grid_keys:
            raise LrcnError(f"baseline: {key!r} is not a grid key; grid keys: "
                            f"{', '.join(grid_keys)}")
        values = list(dict.fromkeys(run.point[key] for run in runs))
        if value not in values:
            raise LrcnError(f"baseline: {key}={value} is not in the grid; {key} takes "
                            f"{', '.join(values)}")


def _row(point: dict[str, str], results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Mean and spread over seeds of every metric the point's finished runs report."""
    summaries = [r for _, r in results]
    row: dict[str, Any] = {
        "point": point, "n": len(results), "seeds": [seed for seed, _ in results],
        "overall": _stat([s["overall"] for s in summaries if "overall" in s]),
    }
    for key in ("per_answer_type", "per_question_type"):
        names = list(dict.fromkeys(n for s in summaries for n in s.get(key, {})))
        row[key] = {n: _stat([s[key][n] for s in summaries if n in s.get(key, {})])
                    for n in names}
    with_answerability = [s["answerability"] for s in summaries if "answerability" in s]
    if with_answerability:
        row["answerability_ap"] = _stat([a["average_precision"] for a in with_answerability])
        row["answerability_f1"] = _stat([a["f1"] for a in with_answerability])
    row["train_seconds"] = _stat([s["train_seconds"] for s in summaries])
    return row


def _stat(values: list[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (ddof=1); None where too few values give none."""
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()) if a.size else None,
            "std": float(a.std(ddof=1)) if a.size >= 2 else None}


def _paired(values: dict[int, float], base: dict[int, float]) -> dict[str, Any]:
    """`values` minus `base` over the seeds both have, and the paired t-test's p-value."""
    seeds = [s for s in values if s in base]
    a = np.array([values[s] for s in seeds], dtype=float)
    b = np.array([base[s] for s in seeds], dtype=float)
    d = a - b
    p_value = None
    if d.size >= 2 and np.ptp(d) > 0:  # equal differences: no spread, t undefined
        from scipy import stats  # here, not at the top: every lrcn command imports this
        # module (the parser lists the sweep definitions) and scipy takes ~1 s to import
        p_value = float(stats.ttest_rel(a, b).pvalue)
    return {**_stat(list(d)), "n": int(d.size), "p_value": p_value}


# --------------------------------------------------------------------------- writing


def write_summary(out_dir: Path, rows: list[dict[str, Any]], grid_keys: list[str],
                  table: tuple[str, str] | None = None) -> dict[str, str]:
    """Write out_dir/summary.md, summary.csv and summary.png from `aggregate`'s rows; return
    their paths (keys ``md``, ``csv``, ``png``).

    With `table` = (ROWS, COLS), summary.md also holds the paper-style table of overall
    accuracy: a row per value of grid key ROWS, a column per value of COLS (one table per
    combination of the other grid keys).
    """
    if table is not None:
        unknown = [k for k in table if k not in grid_keys]
        if unknown:
            raise LrcnError(f"table: unknown grid key(s) {', '.join(unknown)}; grid keys: "
                            f"{', '.join(grid_keys)}")
        if table[0] == table[1]:
            raise LrcnError(f"table: rows and columns are both {table[0]}; give two different "
                            f"grid keys of {', '.join(grid_keys)}")
    paths = {"md": out_dir / "summary.md", "csv": out_dir / "summary.csv",
             "png": out_dir / "summary.png"}
    text = summary_markdown(rows, grid_keys, table)
    atomic_write(paths["md"], lambda f: f.write(text.encode("utf-8")))
    columns, records = summary_csv_rows(rows, grid_keys)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write(paths["csv"], lambda f: f.write(buffer.getvalue().encode("utf-8")))
    plot_summary(rows, grid_keys, paths["png"])
    return {kind: str(path) for kind, path in paths.items()}


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """The figures a table shows: (column name, heading, path into a row), in order."""
    answer_types = list(dict.fromkeys(t for r in rows for t in r["per_answer_type"]))
    columns = [("overall", "overall", ["overall"])]
    columns += [(t, t, ["per_answer_type", t]) for t in answer_types]
    if any("answerability_ap" in r for r in rows):
        columns += [("answerability_ap", "answerability AP", ["answerability_ap"]),
                    ("answerability_f1", "answerability F1", ["answerability_f1"])]
    columns.append(("train_seconds", "train seconds", ["train_seconds"]))
    return columns


def _lookup(row: dict[str, Any], path: list[str]) -> dict[str, Any]:
    for key in path:
        row = row.get(key) or {}
    return row


def summary_csv_rows(rows: list[dict[str, Any]], grid_keys: list[str]
                     ) -> tuple[list[str], list[dict[str, Any]]]:
    """The CSV's columns and records: grid keys, n, ``<figure>_mean``/``_std`` and, with a
    baseline, ``diff_mean``, ``diff_std``, ``diff_n``, ``p_value``; numbers unrounded."""
    figures = _columns(rows)
    with_diff = any("diff" in r for r in rows)
    columns = [*grid_keys, "n"] + [f"{name}_{s}" for name, _, _ in figures
                                   for s in ("mean", "std")]
    if with_diff:
        columns += ["diff_mean", "diff_std", "diff_n", "p_value"]
    records = []
    for r in rows:
        record: dict[str, Any] = {**{k: r["point"][k] for k in grid_keys}, "n": r["n"]}
        for name, _, path in figures:
            stat = _lookup(r, path)
            record[f"{name}_mean"], record[f"{name}_std"] = stat.get("mean"), stat.get("std")
        if with_diff:
            diff = r.get("diff") or {}
            record.update(diff_mean=diff.get("mean"), diff_std=diff.get("std"),
                          diff_n=diff.get("n"), p_value=diff.get("p_value"))
        records.append({k: "" if v is None else v for k, v in record.items()})
    return columns, records


def _pm(stat: dict[str, Any] | None, sign: bool = False) -> str:
    """``"97.52 ± 0.31"``; the mean alone without a spread, "—" without a mean."""
    if not stat or stat.get("mean") is None:
        return "—"
    mean = f"{stat['mean']:+.2f}" if sign else f"{stat['mean']:.2f}"
    return mean if stat.get("std") is None else f"{mean} ± {stat['std']:.2f}"


def _md_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _md_table(header: list[str], body: list[list[Any]]) -> list[str]:
    return [_md_row(header), "|" + "---|" * len(header), *(_md_row(cells) for cells in body)]


def summary_markdown(rows: list[dict[str, Any]], grid_keys: list[str],
                     table: tuple[str, str] | None = None) -> str:
    """summary.md: the points table, per question type when present, and the two-axis
    table of overall accuracy with `table`."""
    figures = _columns(rows)
    with_diff = any("diff" in r for r in rows)
    lines = ["Accuracy in percent, mean ± sample standard deviation over the finished seeds "
             "(n)." + (" Δ overall: paired difference from the baseline point over the seeds "
                       "both finished, with the two-sided paired t-test's p." if with_diff
                       else ""), ""]
    header = [*grid_keys, "n"] + [heading for _, heading, _ in figures]
    if with_diff:
        header += ["Δ overall", "pairs", "p"]
    body = []
    for r in rows:
        cells = [*(r["point"][k] for k in grid_keys), r["n"]]
        cells += [_pm(_lookup(r, path)) for _, _, path in figures]
        if with_diff:
            diff = r.get("diff")
            cells += [_pm(diff, sign=True), "—" if diff is None else diff["n"],
                      "—" if not diff or diff["p_value"] is None else f"{diff['p_value']:.3g}"]
        body.append(cells)
    lines += _md_table(header, body)
    question_types = list(dict.fromkeys(t for r in rows for t in r["per_question_type"]))
    if question_types:
        lines += ["", "Accuracy per question type (mean ± std over seeds).", ""]
        lines += _md_table([*grid_keys, *question_types],
                           [[*(r["point"][k] for k in grid_keys),
                             *(_pm(r["per_question_type"].get(t)) for t in question_types)]
                            for r in rows])
    if table is not None:
        lines += _two_axis_tables(rows, grid_keys, *table)
    return "\n".join(lines) + "\n"


def _two_axis_tables(rows: list[dict[str, Any]], grid_keys: list[str], row_key: str,
                     col_key: str) -> list[str]:
    """Overall accuracy with `row_key`'s values down and `col_key`'s across, one table per
    combination of the other grid keys' values."""
    def values(key: str) -> list[str]:
        return list(dict.fromkeys(r["point"][key] for r in rows))

    others = [k for k in grid_keys if k not in (row_key, col_key)]
    by_point = {tuple(r["point"][k] for k in grid_keys): r for r in rows}
    lines = []
    for fixed in dict.fromkeys(tuple(r["point"][k] for k in others) for r in rows):
        setting = dict(zip(others, fixed))
        where = "".join(f", {k} = {v}" for k, v in setting.items())
        lines += ["", f"Overall accuracy (mean ± std over seeds): {row_key} down, {col_key} "
                      f"across{where}.", ""]
        body = []
        for rv in values(row_key):
            cells: list[Any] = [rv]
            for cv in values(col_key):
                point = {**setting, row_key: rv, col_key: cv}
                row = by_point.get(tuple(point[k] for k in grid_keys))
                cells.append(_pm(row["overall"]) if row else "—")
            body.append(cells)
        lines += _md_table([f"{row_key} \\ {col_key}", *values(col_key)], body)
    return lines


def plot_summary(rows: list[dict[str, Any]], grid_keys: list[str], path: Path) -> None:
    """Bars of mean overall accuracy per grid point, with the seeds' standard deviation."""
    labels = ["\n".join(f"{k.rsplit('.', 1)[-1]}={r['point'][k]}" for k in grid_keys)
              for r in rows]
    means = [r["overall"]["mean"] or 0.0 for r in rows]
    stds = [r["overall"]["std"] or 0.0 for r in rows]
    with png_figure(path, figsize=(max(4.0, 1.0 + 0.9 * len(rows)), 4.5)) as (fig, ax):
        bars = ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="tab:blue",
                      alpha=0.8)
        ax.bar_label(bars, labels=[f"{m:.1f}" if r["overall"]["mean"] is not None else "—"
                                   for m, r in zip(means, rows)], fontsize=7, padding=2)
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set(ylabel="overall accuracy (%)", ylim=(0, 105),
               title="sweep: mean overall accuracy ± std over seeds")
        ax.grid(axis="y", alpha=0.3)
