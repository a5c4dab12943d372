"""``lrcn sweep``: the grid, run folders' names, the sweep record and its refusals, which runs
train, resume or are skipped, and a small sweep end to end."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import yaml

from conftest import VQA2Layout, assert_refused, run_cli, tiny_set_args
from lrcn.engine.sweep import (
    SUMMARY_FILE, Launcher, Sweep, check_sweep_folder, definition_names, load_definition,
    parse_grid, point_name, run_sweep,
    run_state, train_command,
)
from lrcn.engine.sweep_summary import SweepRun
from lrcn.errors import LrcnError

GRID = ["model.variant=ed,cst", "model.lrm=none,sa"]


def test_the_grid_is_every_combination_first_key_slowest() -> None:
    grid = parse_grid(GRID)
    assert grid == {"model.variant": ["ed", "cst"], "model.lrm": ["none", "sa"]}
    sweep = Sweep(grid, [0, 1], [])
    assert sweep.points() == [
        {"model.variant": "ed", "model.lrm": "none"}, {"model.variant": "ed", "model.lrm": "sa"},
        {"model.variant": "cst", "model.lrm": "none"}, {"model.variant": "cst", "model.lrm": "sa"}]
    runs = sweep.runs(Path("S"))
    assert len(runs) == 8
    assert [str(r.run_dir) for r in runs[:3]] == [
        "S/variant-ed_lrm-none/seed0", "S/variant-ed_lrm-none/seed1", "S/variant-ed_lrm-sa/seed0"]


@pytest.mark.parametrize("items, message", [
    (["model.variants=ed,st"], "expected SECTION.KEY=V1,V2,... with SECTION.KEY a config field"),
    (["variant=ed,st"], "expected SECTION.KEY=V1,V2"),
    (["model.variant"], "expected SECTION.KEY=V1,V2"),
    (["model.variant=ed", "model.variant=st"], "--grid model.variant is given twice"),
    (["model.variant=ed,,st"], "values must be distinct and non-empty"),
    (["model.variant=ed,ed"], "values must be distinct and non-empty"),
    ([], "a sweep needs at least one --grid"),
])
def test_a_grid_that_cannot_be_swept_is_refused(items: list[str], message: str) -> None:
    with pytest.raises(LrcnError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_grid(items)


def test_point_names() -> None:
    assert point_name({"model.variant": "ed", "model.lrm": "none"}) == "variant-ed_lrm-none"
    assert point_name({"train.lr": "1e-4"}) == "lr-1e-4"
    assert point_name({"model.arch": "cnn_lstm"}) == "arch-cnn_lstm"
    assert point_name({"data.train_split": "train2014+val2014"}) == "train_split-train2014+val2014"
    assert point_name({"data.glove": "g/vectors 300d.txt"}) == "glove-g+vectors+300d.txt"
    # a field name two sections share: the whole keys
    assert point_name({"model.dropout": "0.1", "data.dropout": "0.2"}) == (
        "model.dropout-0.1_data.dropout-0.2")


def test_the_sweep_record_is_written_once_and_another_grid_is_refused(tmp_path: Path) -> None:
    sweep = Sweep(parse_grid(GRID), [0, 1], ["--epochs", "1"])
    out = tmp_path / "sweep"
    check_sweep_folder(out, sweep)
    assert yaml.safe_load((out / "sweep.yaml").read_text()) == sweep.to_dict()
    check_sweep_folder(out, sweep)  # the same sweep continues
    other = Sweep(parse_grid(["model.variant=ed,st"]), [0, 1], ["--epochs", "1"])
    with pytest.raises(LrcnError, match=r"holds another sweep \(its grid differ"):
        check_sweep_folder(out, other)
    with pytest.raises(LrcnError, match=r"its seeds differ"):
        check_sweep_folder(out, Sweep(sweep.grid, [0, 1, 2], sweep.train_args))
    with pytest.raises(LrcnError, match=r"its train_args differ"):
        check_sweep_folder(out, Sweep(sweep.grid, sweep.seeds, ["--epochs", "2"]))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(LrcnError, match="is not empty and holds no sweep.yaml"):
        check_sweep_folder(tmp_path / "busy", sweep)


def test_runs_are_new_started_or_finished_and_train_or_resume_accordingly(tmp_path: Path) -> None:
    sweep = Sweep(parse_grid(["model.variant=ed,cst"]), [3], ["--epochs", "1"])
    run = SweepRun({"model.variant": "cst"}, 3, tmp_path / "variant-cst" / "seed3")
    assert run_state(run) == "new"
    command = train_command(sweep, run)
    assert command[2:] == ["lrcn", "train", "--epochs", "1", "--set", "model.variant=cst",
                           "--seed", "3", "--out", str(run.run_dir), "--json"]
    run.run_dir.mkdir(parents=True)
    assert run_state(run) == "new"  # a folder alone: killed before the run was set up
    (run.run_dir / "config.yaml").write_text("{}")
    assert run_state(run) == "started"
    assert train_command(sweep, run)[-4:] == ["train", "--resume", str(run.run_dir), "--json"]
    (run.run_dir / SUMMARY_FILE).write_text("{}")
    assert run_state(run) == "finished"


def sweep_args(layout: VQA2Layout, out: Path, grid: str = "model.variant=ed,cst") -> list[str]:
    return ["sweep", "--dataset", "vqa2", "--data-root", str(layout.root), "--train-split",
            "train2014", "--val-split", "val2014", "--epochs", "1", *tiny_set_args(),
            "--grid", grid, "--seeds", "2", "--out", str(out), "--json"]


def test_a_sweep_trains_skips_finished_runs_and_resumes_started_ones(
        vqa2_layout: VQA2Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "sweep"
    result = run_cli(capsys, *sweep_args(vqa2_layout, out))
    assert result.code == 0, result.err
    runs = sorted(p.parent for p in out.glob("*/seed*/summary.json"))
    assert [f"{p.parent.name}/{p.name}" for p in runs] == [
        "variant-cst/seed0", "variant-cst/seed1", "variant-ed/seed0", "variant-ed/seed1"]
    for run in runs:  # each run is the lrcn train run of its point and seed
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["variant"] == run.parent.name.split("-")[1]
        assert config["train"]["seed"] == int(run.name.removeprefix("seed"))
        summary = json.loads((run / SUMMARY_FILE).read_text())
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert summary["overall"] == last["val"]["overall"]
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model.variant"], r["n"]) for r in rows] == [("ed", "2"), ("cst", "2")]

    # A finished run is left alone; a started one (here: its summary lost) is resumed.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
              and "variant-cst/seed1" not in str(p) and p.parent != out and "logs" not in p.parts}
    (out / "variant-cst" / "seed1" / SUMMARY_FILE).unlink()
    with caplog.at_level(logging.INFO, logger="lrcn"):
        again = run_cli(capsys, *sweep_args(vqa2_layout, out))
    assert again.code == 0, again.err
    assert "4 runs, 3 finished, 1 to train (1 resumed)" in caplog.text
    assert (out / "variant-cst" / "seed1" / SUMMARY_FILE).is_file()
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_a_sweep_of_another_grid_into_the_same_folder_is_refused(
        vqa2_layout: VQA2Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    check_sweep_folder(out, Sweep(parse_grid(["model.variant=ed,st"]), [0], []))
    result = run_cli(capsys, *sweep_args(vqa2_layout, out))
    assert_refused(result, "sweep", f"{out} holds another sweep", "give another --out")


def test_a_bad_grid_value_is_refused_before_any_run_trains(
        vqa2_layout: VQA2Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    result = run_cli(capsys, *sweep_args(vqa2_layout, out, grid="model.variant=ed,xx"))
    assert_refused(result, "sweep", "model.variant must be one of ed, st, cst, got 'xx'",
                   absent=(out,))


def test_the_submitit_launcher_trains_the_same_runs_on_this_machine(
        vqa2_layout: VQA2Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Jobs through submitit's local cluster (as on Slurm, one job per run) give the runs
    the local launcher gives with as many at once: the same summaries, run for run."""
    here, jobs = tmp_path / "here", tmp_path / "jobs"
    # --parallel 2 both times: each run gets the same CPU threads, so the same sums
    assert run_cli(capsys, *sweep_args(vqa2_layout, here), "--parallel", "2").code == 0
    result = run_cli(capsys, *sweep_args(vqa2_layout, jobs), "--launcher", "submitit",
                     "--submitit-cluster", "local", "--parallel", "2")
    assert result.code == 0, result.err
    assert any((jobs / "submitit").iterdir())  # submitit's job files
    for summary in here.glob("*/seed*/summary.json"):
        other = jobs / summary.relative_to(here)
        mine, theirs = json.loads(summary.read_text()), json.loads(other.read_text())
        assert {k: v for k, v in mine.items() if k != "run_dir"} == {
            k: v for k, v in theirs.items() if k != "run_dir"}


@pytest.mark.parametrize("launcher, message", [
    (Launcher("cloud"), "--launcher 'cloud' is not one of local, submitit"),
    (Launcher(parallel=0), "--parallel must be at least 1, got 0"),
    (Launcher("submitit", cluster="pbs"), "--submitit-cluster 'pbs' is not one of slurm, local"),
])
def test_launcher_settings_that_cannot_run_are_refused(launcher: Launcher, message: str,
                                                       tmp_path: Path) -> None:
    with pytest.raises(LrcnError) as refused:
        run_sweep(Sweep({"model.variant": ["ed"]}, [0], []), tmp_path / "s", launcher)
    assert str(refused.value) == message and not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", definition_names())
def test_every_shipped_sweep_definition_is_a_sweep_lrcn_train_accepts(name: str) -> None:
    from lrcn.cli import build_parser, train_config
    from lrcn.engine.setup import check_train_config

    definition = load_definition(name)
    grid = parse_grid(definition["grid"])
    sets = [a for item in definition["set"] for a in ("--set", item)]
    for point in Sweep(grid, [0], []).points():
        point_sets = [a for key, value in point.items() for a in ("--set", f"{key}={value}")]
        check_train_config(train_config(build_parser().parse_args(
            ["train", "--config", definition["config"], *sets, *point_sets])))
    key, _, value = definition["baseline"].partition("=")
    assert value in grid[key]
    assert all(axis in grid for axis in definition["table"].split(","))
    assert definition["seeds"] >= 3


def test_a_sweep_file_gives_defaults_the_command_line_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    mine = {"config": "easyvqa", "seeds": 2, "set": ["train.lr=0.001"],
            "grid": {"model.variant": ["ed", "st"], "model.layers": [1, 2]},
            "table": ["model.variant", "model.layers"]}
    path.write_text(yaml.safe_dump(mine, sort_keys=False))
    definition = load_definition(str(path))
    assert definition == {"config": "easyvqa", "seeds": 2, "set": ["train.lr=0.001"],
                          "grid": ["model.variant=ed,st", "model.layers=1,2"], "baseline": None,
                          "table": "model.variant,model.layers"}
    path.write_text(yaml.safe_dump({"grid": {"model.variant": ["ed"]}, "seed": 3}))
    with pytest.raises(LrcnError, match=r"unknown key\(s\) seed; known keys: config, grid"):
        load_definition(str(path))
    with pytest.raises(LrcnError, match="unknown sweep 'nope'; shipped sweeps: cpu-lrm-easyvqa"):
        load_definition("nope")


def test_a_table_of_keys_outside_the_grid_is_refused_before_any_run_trains(
        vqa2_layout: VQA2Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    result = run_cli(capsys, *sweep_args(vqa2_layout, out), "--table", "model.variant,model.lrm")
    assert_refused(result, "sweep", "--table 'model.variant,model.lrm': ROWS and COLS must be "
                   "grid keys: model.variant", absent=(out,))
