"""The sweep summary: means, sample stds and paired tests over seeds, checked against numbers
computed by hand, and the tables and figure written from them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from lrcn.engine.sweep_summary import SweepRun, aggregate, read_result, write_summary
from lrcn.errors import LrcnError

KEYS = ["model.variant", "model.lrm"]

# (variant, lrm) -> seed -> (overall, yes/no, other, seconds of each epoch); None: unfinished.
# Question types: "what color" = yes/no - 10, "how many" = other - 20.
GRID: dict[tuple[str, str], dict[int, Any]] = {
    ("small", "none"): {0: (90.0, 98.0, 85.0, [10.0, 20.5]),
                        1: (92.0, 99.0, 88.0, [12.0, 20.0]),
                        2: None},
    ("small", "lrm"): {0: (91.0, 99.0, 86.0, [11.0, 21.0]),
                       1: (95.0, 99.5, 90.0, [11.0, 21.0]),
                       2: (93.0, 100.0, 88.0, [11.0, 24.0])},
    ("large", "none"): {0: (94.0, 99.0, 90.0, [30.0]),
                        1: (95.0, 99.0, 91.0, [31.0]),
                        2: (96.0, 99.0, 93.0, [32.0])},
    ("large", "lrm"): {0: (96.0, 99.0, 93.0, [40.0]),
                       1: (98.0, 100.0, 96.0, [40.0]),
                       2: (99.0, 100.0, 98.0, [43.0])},
}
# large/lrm also reports answerability: seed -> (AP, F1).
ANSWERABILITY = {0: (70.0, 60.0), 1: (72.0, 60.0), 2: (77.0, 63.0)}


def write_run(run_dir: Path, overall: float, yes_no: float, other: float, seconds: list[float],
              answerability: tuple[float, float] | None = None) -> None:
    """A finished run folder: summary.json as lrcn train --json prints it, metrics.jsonl."""
    run_dir.mkdir(parents=True)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "epochs": len(seconds), "best_epoch": len(seconds),
        "train_loss": 1.5, "skipped_steps": 0, "parameters": 1234, "overall": overall,
        "per_answer_type": {"yes/no": yes_no, "other": other}, "num_questions": 500,
        "per_question_type": {"what color": yes_no - 10, "how many": other - 20},
        "question_type_counts": {"what color": 300, "how many": 200},
    }
    if answerability is not None:
        summary["answerability"] = {"average_precision": answerability[0],
                                    "f1": answerability[1]}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    lines = [json.dumps({"epoch": e, "train_loss": 1.5, "train_seconds": s, "eval_seconds": 3.0})
             for e, s in enumerate(seconds)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def runs(tmp_path: Path) -> list[SweepRun]:
    """The 2x2 grid of GRID in tmp_path, seeds 0-2, small/none seed 2 unfinished."""
    out = []
    for (variant, lrm), seeds in GRID.items():
        for seed, values in seeds.items():
            name = f"model.variant={variant},model.lrm={lrm}"
            run_dir = tmp_path / "sweep" / name / f"seed{seed}"
            if values is None:
                run_dir.mkdir(parents=True)  # started, not finished: no summary.json
            else:
                write_run(run_dir, *values, answerability=ANSWERABILITY[seed]
                          if (variant, lrm) == ("large", "lrm") else None)
            out.append(SweepRun({"model.variant": variant, "model.lrm": lrm}, seed, run_dir))
    return out


def stat(mean: float, std: float) -> Any:
    """A ``{"mean", "std"}`` row entry, compared approximately."""
    return pytest.approx({"mean": mean, "std": std})


def by_point(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["point"]["model.variant"], r["point"]["model.lrm"]): r for r in rows}


# --------------------------------------------------------------------------- reading


def test_read_result_adds_train_seconds_and_skips_unfinished(runs: list[SweepRun]) -> None:
    result = read_result(runs[0])
    assert result is not None
    assert result["overall"] == 90.0 and result["num_questions"] == 500
    assert result["train_seconds"] == pytest.approx(30.5)  # 10 + 20.5
    assert read_result(runs[2]) is None  # small/none seed 2 has no summary.json


@pytest.mark.parametrize("text, complaint", [
    ('{"overall": 9', "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"overall": "high"}', "overall must be a finite number"),
    ('{"overall": 90, "per_answer_type": [1]}', "'per_answer_type' must be an object"),
    ('{"overall": 90, "per_question_type": {"what": null}}', "must be a finite number"),
    ('{"overall": 90, "answerability": {"f1": 3}}', "no 'average_precision'"),
])
def test_malformed_summary_is_refused_naming_it(runs: list[SweepRun], text: str,
                                                complaint: str) -> None:
    path = runs[0].run_dir / "summary.json"
    path.write_text(text)
    with pytest.raises(LrcnError, match=complaint) as info:
        aggregate(runs)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_malformed_or_missing_metrics_log_is_refused_naming_it(runs: list[SweepRun]) -> None:
    path = runs[0].run_dir / "metrics.jsonl"
    path.write_text('{"train_seconds": 1}\n{"epoch": 1}\n')
    with pytest.raises(LrcnError, match="line 2") as info:
        read_result(runs[0])
    assert str(path) in str(info.value)
    path.write_text('{"train_seconds": 1}\nnot json\n')
    with pytest.raises(LrcnError, match="line 2: not valid JSON"):
        read_result(runs[0])
    path.unlink()
    with pytest.raises(LrcnError, match="not found") as info:
        read_result(runs[0])
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- aggregating


def test_rows_in_order_with_n_seeds_mean_and_sample_std(runs: list[SweepRun]) -> None:
    rows = aggregate(runs)
    assert [r["point"] for r in rows] == [{"model.variant": v, "model.lrm": lrm}
                                          for v, lrm in GRID]
    row = by_point(rows)
    # small/none: 90, 92 (seed 2 unfinished) -> mean 91, std sqrt(((-1)^2 + 1^2) / 1) = sqrt 2
    assert row["small", "none"]["n"] == 2 and row["small", "none"]["seeds"] == [0, 1]
    assert row["small", "none"]["overall"]["mean"] == pytest.approx(91.0)
    assert row["small", "none"]["overall"]["std"] == pytest.approx(1.4142135623730951)
    # small/lrm: 91, 95, 93 -> mean 93, std sqrt((4 + 4 + 0) / 2) = 2
    assert row["small", "lrm"]["n"] == 3 and row["small", "lrm"]["seeds"] == [0, 1, 2]
    assert row["small", "lrm"]["overall"] == stat(93.0, 2.0)
    # large/none: 94, 95, 96 -> 95 ± 1
    assert row["large", "none"]["overall"] == stat(95.0, 1.0)
    # large/lrm: 96, 98, 99 -> mean 293/3, std sqrt((25/9 + 1/9 + 16/9) / 2) = sqrt(7/3)
    assert row["large", "lrm"]["overall"]["mean"] == pytest.approx(97.66666666666667)
    assert row["large", "lrm"]["overall"]["std"] == pytest.approx(1.5275252316519468)


def test_answer_types_question_types_answerability_and_seconds(runs: list[SweepRun]) -> None:
    row = by_point(aggregate(runs))
    small = row["small", "none"]
    # yes/no 98, 99 -> 98.5 ± sqrt(0.5); other 85, 88 -> 86.5 ± sqrt(4.5)
    assert list(small["per_answer_type"]) == ["yes/no", "other"]
    assert small["per_answer_type"]["yes/no"] == stat(98.5, 0.7071067811865476)
    assert small["per_answer_type"]["other"] == stat(86.5, 2.1213203435596424)
    # what color 88, 89 -> 88.5 ± sqrt(0.5); how many 65, 68 -> 66.5 ± sqrt(4.5)
    assert small["per_question_type"]["what color"] == stat(88.5, 0.7071067811865476)
    assert small["per_question_type"]["how many"] == stat(66.5, 2.1213203435596424)
    # train seconds 10 + 20.5 = 30.5 and 12 + 20 = 32 -> 31.25 ± 1.5 / sqrt 2
    assert small["train_seconds"] == stat(31.25, 1.0606601717798212)
    # small/lrm: 32, 32, 35 -> 33 ± sqrt((1 + 1 + 4) / 2) = sqrt 3
    assert row["small", "lrm"]["train_seconds"] == stat(33.0, 1.7320508075688772)
    # answerability only where reported: large/lrm AP 70, 72, 77 -> 73 ± sqrt 13;
    # F1 60, 60, 63 -> 61 ± sqrt 3
    assert "answerability_ap" not in small and "answerability_f1" not in small
    assert row["large", "lrm"]["answerability_ap"] == stat(73.0, 3.605551275463989)
    assert row["large", "lrm"]["answerability_f1"] == stat(61.0, 1.7320508075688772)


def test_one_finished_seed_has_no_std_and_none_has_no_mean(runs: list[SweepRun]) -> None:
    (runs[1].run_dir / "summary.json").unlink()  # small/none now has seed 0 only
    row = by_point(aggregate(runs))["small", "none"]
    assert row["n"] == 1 and row["overall"] == {"mean": 90.0, "std": None}
    (runs[0].run_dir / "summary.json").unlink()
    row = by_point(aggregate(runs))["small", "none"]
    assert row["n"] == 0 and row["seeds"] == [] and row["overall"] == {"mean": None, "std": None}
    assert row["per_answer_type"] == {} and row["train_seconds"] == {"mean": None, "std": None}


def test_paired_difference_against_the_baseline(runs: list[SweepRun]) -> None:
    row = by_point(aggregate(runs, baseline={"model.lrm": "none"}))
    # large/lrm - large/none by seed: 2, 3, 3 -> mean 8/3, std sqrt(1/3);
    # t = (8/3) / (sqrt(1/3) / sqrt 3) = 8 with 2 degrees of freedom, whose two-sided p is
    # 1 - 8 / sqrt(8^2 + 2) (the t(2) distribution: P(|T| > t) = 1 - t / sqrt(t^2 + 2)).
    diff = row["large", "lrm"]["diff"]
    assert diff["n"] == 3
    assert diff["mean"] == pytest.approx(8 / 3)
    assert diff["std"] == pytest.approx(math.sqrt(1 / 3))
    assert diff["p_value"] == pytest.approx(1 - 8 / math.sqrt(66))  # 0.01527...
    assert diff["p_value"] == pytest.approx(0.015268, abs=1e-6)
    # small/lrm - small/none over the seeds both finished (0, 1): 1, 3 -> mean 2, std sqrt 2;
    # t = 2 / (sqrt 2 / sqrt 2) = 2 with 1 degree of freedom (Cauchy): p = 1 - 2 atan(2) / pi
    diff = row["small", "lrm"]["diff"]
    assert diff["n"] == 2
    assert diff["mean"] == pytest.approx(2.0)
    assert diff["std"] == pytest.approx(math.sqrt(2))
    assert diff["p_value"] == pytest.approx(1 - 2 * math.atan(2) / math.pi)  # 0.29517...
    # the baseline points themselves: difference 0, no test
    assert row["small", "none"]["diff"] == {"mean": 0.0, "std": 0.0, "n": 2, "p_value": None}
    assert row["large", "none"]["diff"] == {"mean": 0.0, "std": 0.0, "n": 3, "p_value": None}


def test_no_p_value_for_one_pair_or_equal_differences(tmp_path: Path) -> None:
    runs = []
    for lrm, seeds in {"none": {0: 90.0, 1: 92.0}, "lrm": {0: 91.0, 1: 93.0}}.items():
        for seed, overall in seeds.items():
            write_run(tmp_path / lrm / f"seed{seed}", overall, 99.0, 80.0, [1.0])
            runs.append(SweepRun({"model.lrm": lrm}, seed, tmp_path / lrm / f"seed{seed}"))
    diff = aggregate(runs, baseline={"model.lrm": "none"})[1]["diff"]
    assert diff == {"mean": 1.0, "std": 0.0, "n": 2, "p_value": None}  # 1, 1: no spread
    (tmp_path / "lrm" / "seed1" / "summary.json").unlink()
    diff = aggregate(runs, baseline={"model.lrm": "none"})[1]["diff"]
    assert diff == {"mean": 1.0, "std": None, "n": 1, "p_value": None}


def test_baseline_must_name_a_grid_key_and_value(runs: list[SweepRun]) -> None:
    with pytest.raises(LrcnError, match="'model.depth' is not a grid key; grid keys: "
                                        "model.variant, model.lrm"):
        aggregate(runs, baseline={"model.depth": "2"})
    with pytest.raises(LrcnError, match="model.lrm=off is not in the grid; model.lrm takes "
                                        "none, lrm"):
        aggregate(runs, baseline={"model.lrm": "off"})


# --------------------------------------------------------------------------- writing


def test_csv_has_the_columns_and_unrounded_values(runs: list[SweepRun], tmp_path: Path) -> None:
    paths = write_summary(tmp_path / "out", aggregate(runs, {"model.lrm": "none"}), KEYS)
    assert paths == {"md": str(tmp_path / "out" / "summary.md"),
                     "csv": str(tmp_path / "out" / "summary.csv"),
                     "png": str(tmp_path / "out" / "summary.png")}
    with open(paths["csv"], newline="") as f:
        reader = csv.DictReader(f)
        records = list(reader)
    assert reader.fieldnames == [
        "model.variant", "model.lrm", "n", "overall_mean", "overall_std", "yes/no_mean",
        "yes/no_std", "other_mean", "other_std", "answerability_ap_mean",
        "answerability_ap_std", "answerability_f1_mean", "answerability_f1_std",
        "train_seconds_mean", "train_seconds_std", "diff_mean", "diff_std", "diff_n", "p_value"]
    assert [(r["model.variant"], r["model.lrm"], r["n"]) for r in records] == [
        ("small", "none", "2"), ("small", "lrm", "3"), ("large", "none", "3"),
        ("large", "lrm", "3")]
    large_lrm = records[3]
    assert float(large_lrm["overall_mean"]) == pytest.approx(97.66666666666667, abs=1e-12)
    assert float(large_lrm["overall_std"]) == pytest.approx(1.5275252316519468, abs=1e-12)
    assert len(large_lrm["overall_mean"]) > 10  # unrounded
    assert float(large_lrm["answerability_ap_mean"]) == 73.0
    assert float(large_lrm["diff_mean"]) == pytest.approx(8 / 3, abs=1e-12)
    assert large_lrm["diff_n"] == "3"
    assert float(large_lrm["p_value"]) == pytest.approx(1 - 8 / math.sqrt(66), abs=1e-12)
    small_none = records[0]
    assert float(small_none["overall_std"]) == pytest.approx(math.sqrt(2), abs=1e-12)
    assert small_none["answerability_ap_mean"] == "" and small_none["p_value"] == ""
    assert float(small_none["train_seconds_mean"]) == 31.25
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_without_baseline_or_answerability(runs: list[SweepRun], tmp_path: Path) -> None:
    small = [r for r in runs if r.point["model.variant"] == "small"]
    paths = write_summary(tmp_path / "out", aggregate(small), KEYS)
    with open(paths["csv"], newline="") as f:
        header = next(csv.reader(f))
    assert header == ["model.variant", "model.lrm", "n", "overall_mean", "overall_std",
                      "yes/no_mean", "yes/no_std", "other_mean", "other_std",
                      "train_seconds_mean", "train_seconds_std"]


def test_markdown_tables(runs: list[SweepRun], tmp_path: Path) -> None:
    paths = write_summary(tmp_path, aggregate(runs, {"model.lrm": "none"}), KEYS)
    lines = Path(paths["md"]).read_text().splitlines()
    header = ("| model.variant | model.lrm | n | overall | yes/no | other | answerability AP | "
              "answerability F1 | train seconds | Δ overall | pairs | p |")
    i = lines.index(header)
    assert lines[i + 1] == "|" + "---|" * 12
    assert lines[i + 2] == ("| small | none | 2 | 91.00 ± 1.41 | 98.50 ± 0.71 | 86.50 ± 2.12 | "
                            "— | — | 31.25 ± 1.06 | +0.00 ± 0.00 | 2 | — |")
    assert lines[i + 3] == ("| small | lrm | 3 | 93.00 ± 2.00 | 99.50 ± 0.50 | 88.00 ± 2.00 | "
                            "— | — | 33.00 ± 1.73 | +2.00 ± 1.41 | 2 | 0.295 |")
    assert lines[i + 5] == ("| large | lrm | 3 | 97.67 ± 1.53 | 99.67 ± 0.58 | 95.67 ± 2.52 | "
                            "73.00 ± 3.61 | 61.00 ± 1.73 | 41.00 ± 1.73 | +2.67 ± 0.58 | 3 | "
                            "0.0153 |")
    # per question type: point x question type
    j = lines.index("| model.variant | model.lrm | what color | how many |")
    assert lines[j + 2] == "| small | none | 88.50 ± 0.71 | 66.50 ± 2.12 |"
    assert lines[j + 5] == "| large | lrm | 89.67 ± 0.58 | 75.67 ± 2.52 |"


def test_markdown_shows_a_lone_seed_without_spread(runs: list[SweepRun], tmp_path: Path) -> None:
    (runs[1].run_dir / "summary.json").unlink()
    paths = write_summary(tmp_path, aggregate(runs), KEYS)
    assert "| small | none | 1 | 90.00 | 98.00 | 85.00 | — | — | 30.50 |" in (
        Path(paths["md"]).read_text().splitlines())


def test_two_axis_table(runs: list[SweepRun], tmp_path: Path) -> None:
    paths = write_summary(tmp_path, aggregate(runs), KEYS, table=("model.lrm", "model.variant"))
    text = Path(paths["md"]).read_text()
    assert text.endswith(
        "Overall accuracy (mean ± std over seeds): model.lrm down, model.variant across.\n"
        "\n"
        "| model.lrm \\ model.variant | small | large |\n"
        "|---|---|---|\n"
        "| none | 91.00 ± 1.41 | 95.00 ± 1.00 |\n"
        "| lrm | 93.00 ± 2.00 | 97.67 ± 1.53 |\n")


def test_two_axis_table_per_value_of_a_third_key(tmp_path: Path) -> None:
    runs = []
    overall = {("a", "x", "1"): 10.0, ("a", "y", "1"): 20.0, ("b", "x", "1"): 30.0,
               ("a", "x", "2"): 40.0, ("b", "y", "2"): 50.0}
    for (p, q, r), value in overall.items():
        run_dir = tmp_path / f"{p}{q}{r}" / "seed0"
        write_run(run_dir, value, 99.0, 80.0, [1.0])
        runs.append(SweepRun({"p": p, "q": q, "r": r}, 0, run_dir))
    paths = write_summary(tmp_path / "out", aggregate(runs), ["p", "q", "r"], table=("p", "q"))
    text = Path(paths["md"]).read_text()
    assert ("Overall accuracy (mean ± std over seeds): p down, q across, r = 1.\n\n"
            "| p \\ q | x | y |\n|---|---|---|\n| a | 10.00 | 20.00 |\n| b | 30.00 | — |\n"
            "\nOverall accuracy (mean ± std over seeds): p down, q across, r = 2.\n\n"
            "| p \\ q | x | y |\n|---|---|---|\n| a | 40.00 | — |\n| b | — | 50.00 |\n") in text


def test_unknown_table_key_is_refused_listing_the_grid_keys(runs: list[SweepRun],
                                                           tmp_path: Path) -> None:
    rows = aggregate(runs)
    with pytest.raises(LrcnError, match="unknown grid key.*model.depth; grid keys: "
                                        "model.variant, model.lrm"):
        write_summary(tmp_path / "out", rows, KEYS, table=("model.depth", "model.lrm"))
    with pytest.raises(LrcnError, match="two different grid keys"):
        write_summary(tmp_path / "out", rows, KEYS, table=("model.lrm", "model.lrm"))
    assert not (tmp_path / "out").exists()  # refused before writing anything
