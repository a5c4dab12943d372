"""Sweeps: one ``lrcn train`` run per (grid point, seed), resumable whatever stopped them.

A sweep folder holds ``sweep.yaml`` (what the sweep trains: the grid, the seeds and the
training flags they share), one run folder per point and seed, ``DIR/<point>/seed<k>/``, and
the aggregated ``summary.{md,csv,png}`` (`lrcn.engine.sweep_summary`). A run is finished when
its folder holds ``summary.json`` (written last, after ``lrcn train`` returned), started when
it holds ``config.yaml``; running the same sweep again skips the finished runs and resumes
the started ones with ``lrcn train --resume`` (exact: the same weights as an uninterrupted
run), so a sweep survives Ctrl-C, ``kill -9`` or a lost node.

Each run is a ``lrcn train`` process, so a run trains exactly as the command does; with
``--parallel N`` N of them run at once, the CPU threads divided between them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from lrcn.config import SECTIONS, RunConfig, packaged_names, read_yaml
from lrcn.engine.sweep_summary import SweepRun
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.yaml"
SUMMARY_FILE = "summary.json"  # in a run folder: what lrcn train printed; marks it finished
LOG_FOLDER = "logs"            # DIR/logs/<point>-seed<k>.log: each run's stderr


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What a sweep trains: every point of `grid` with each of `seeds`, and the ``lrcn train``
    flags (`train_args`, without ``--seed`` and ``--out``) every run shares."""

    grid: dict[str, list[str]]  # SECTION.KEY -> values as given on the command line, in order
    seeds: list[int]
    train_args: list[str]

    def points(self) -> list[dict[str, str]]:
        """Every combination of the grid's values, the first key varying slowest."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def runs(self, out: Path) -> list[SweepRun]:
        return [SweepRun(point, seed, out / point_name(point) / f"seed{seed}")
                for point in self.points() for seed in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid, "seeds": self.seeds, "train_args": self.train_args}


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["model.variant=ed,cst", "model.lrm=none,sa"]`` -> ``{key: [values]}``, refusing
    what could not be a sweep: a key not of a config field, a key given twice, an empty or
    repeated value."""
    grid: dict[str, list[str]] = {}
    fields = {f"{s.name}.{f.name}" for s in dataclasses.fields(RunConfig)
              for f in dataclasses.fields(s.default_factory)}
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v.strip() for v in raw.split(",")]
        if not sep or key not in fields:
            raise LrcnError(f"--grid {item!r}: expected SECTION.KEY=V1,V2,... with SECTION.KEY a "
                            f"config field (sections: {', '.join(SECTIONS)})")
        if key in grid:
            raise LrcnError(f"--grid {key} is given twice; give each key once with all its values")
        if any(not v for v in values) or len(set(values)) != len(values):
            raise LrcnError(f"--grid {item!r}: values must be distinct and non-empty")
        grid[key] = values
    if not grid:
        raise LrcnError("a sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def point_name(point: dict[str, str]) -> str:
    """A run folder's name for a grid point: ``variant-ed_lrm-none`` (the field names, or the
    whole keys where two sections share a field name); characters other than letters, digits,
    ``.``, ``_`` and ``-`` become ``+``."""
    names = [key.split(".", 1)[1] for key in point]
    if len(set(names)) != len(names):
        names = list(point)
    return "_".join(f"{name}-{re.sub(r'[^A-Za-z0-9._-]', '+', value)}"
                    for name, value in zip(names, point.values()))


def check_sweep_folder(out: Path, sweep: Sweep) -> None:
    """Record the sweep in ``out/sweep.yaml``, or refuse a folder that holds another sweep."""
    path = out / SWEEP_FILE
    if path.is_file():
        try:
            saved = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise LrcnError(f"{path}: not valid YAML: {exc}") from None
        if saved != sweep.to_dict():
            differs = [k for k in ("grid", "seeds", "train_args")
                       if not isinstance(saved, dict) or saved.get(k) != sweep.to_dict()[k]]
            raise LrcnError(
                f"{out} holds another sweep (its {', '.join(differs)} differ: {path} has "
                f"{ {k: saved.get(k) for k in differs} if isinstance(saved, dict) else saved}); "
                "give another --out, or the same grid, seeds and flags to continue it")
        return
    if out.exists() and any(out.iterdir()):
        raise LrcnError(f"{out} is not empty and holds no {SWEEP_FILE}: give a new folder for "
                        "the sweep")
    text = yaml.safe_dump(sweep.to_dict(), sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def run_state(run: SweepRun) -> str:
    """``finished``, ``started`` (to resume) or ``new``."""
    if (run.run_dir / SUMMARY_FILE).is_file():
        return "finished"
    if (run.run_dir / "config.yaml").is_file():
        return "started"
    return "new"


@dataclasses.dataclass(frozen=True)
class Launcher:
    """Where a sweep's runs train: this machine (``local``: `parallel` at once) or one job
    each through submitit (``submitit``: Slurm, or ``cluster="local"`` to try it on one
    machine); `gpus` per run (more than one: the run trains under torchrun, DDP)."""

    kind: str = "local"
    parallel: int = 1
    cluster: str = "slurm"
    partition: str | None = None
    minutes: int = 240
    gpus: int = 0

    def check(self) -> None:
        if self.kind not in LAUNCHERS:
            raise LrcnError(f"--launcher {self.kind!r} is not one of {', '.join(LAUNCHERS)}")
        if self.cluster not in CLUSTERS:
            raise LrcnError(f"--submitit-cluster {self.cluster!r} is not one of "
                            f"{', '.join(CLUSTERS)}")
        if self.parallel < 1:
            raise LrcnError(f"--parallel must be at least 1, got {self.parallel}")
        if self.gpus < 0 or self.minutes < 1:
            raise LrcnError("--gpus-per-run must be 0 or more and --time at least 1 minute")


LAUNCHERS = ("local", "submitit")
CLUSTERS = ("slurm", "local")  # submitit's: a Slurm cluster, or processes on this machine


def train_command(sweep: Sweep, run: SweepRun, gpus: int = 0) -> list[str]:
    """The ``lrcn train`` command line of a run: resuming it when it has started; under
    torchrun (one process per GPU) with more than one GPU."""
    base = [sys.executable, "-m", "lrcn", "train"]
    if gpus > 1:
        base = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}",
                "-m", "lrcn", "train"]
    if run_state(run) == "started":
        return [*base, "--resume", str(run.run_dir), "--json"]
    sets = [arg for key, value in run.point.items() for arg in ("--set", f"{key}={value}")]
    return [*base, *sweep.train_args, *sets, "--seed", str(run.seed), "--out",
            str(run.run_dir), "--json"]


def _die_with_parent() -> None:
    """In the child, before it runs: on Linux, be killed when the sweep dies (even by
    SIGKILL), so no run trains on unwatched; elsewhere nothing."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def train_run(sweep: Sweep, run: SweepRun, log_dir: Path, threads: int,
              gpus: int = 0) -> dict[str, Any]:
    """Train one run in a ``lrcn train`` process; write its summary.json; return it. (What
    a submitit job runs, too.)"""
    state = run_state(run)
    command = train_command(sweep, run, gpus)
    log_path = log_dir / f"{run.run_dir.parent.name}-{run.run_dir.name}.log"
    log_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s %s (log: %s)", "resuming" if state == "started" else "training",
             run.run_dir, log_path)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RANK": "0"}
    env.pop("WORLD_SIZE", None)
    with open(log_path, "a", encoding="utf-8") as stderr:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                              env=env, preexec_fn=_die_with_parent)
    if done.returncode != 0:
        last = log_path.read_text(encoding="utf-8").strip().splitlines()[-1:] or ["(no output)"]
        raise LrcnError(f"run {run.run_dir} failed (exit {done.returncode}): {last[0]}; "
                        f"the whole log is {log_path}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    text = json.dumps(summary, indent=1)
    atomic_write(run.run_dir / SUMMARY_FILE, lambda f: f.write(text.encode("utf-8")))
    return summary


def run_sweep(sweep: Sweep, out: Path, launcher: Launcher = Launcher()) -> list[SweepRun]:
    """Train every run of the sweep not finished yet, as `launcher` says; return all runs.

    Runs that fail are reported together at the end (the others still train).
    """
    launcher.check()
    check_sweep_folder(out, sweep)
    runs = sweep.runs(out)
    todo = [run for run in runs if run_state(run) != "finished"]
    log.info("sweep %s: %d runs, %d finished, %d to train (%d resumed)", out, len(runs),
             len(runs) - len(todo), len(todo), sum(run_state(r) == "started" for r in todo))
    start = time.perf_counter()
    if launcher.kind == "submitit":
        failures = _run_submitit(sweep, todo, out, launcher)
    else:
        failures = _run_here(sweep, todo, out, launcher.parallel)
    if failures:
        raise LrcnError(f"{len(failures)} of {len(todo)} runs failed; rerun the same command to "
                        f"retry them (finished runs are kept): {failures[0]}")
    log.info("sweep %s: trained %d runs in %.0f s", out, len(todo), time.perf_counter() - start)
    return runs


def _run_here(sweep: Sweep, todo: list[SweepRun], out: Path, parallel: int) -> list[str]:
    """Train `todo` on this machine, `parallel` at a time; the failures' messages."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    failures: list[str] = []

    def train_one(run: SweepRun) -> None:
        try:
            train_run(sweep, run, out / LOG_FOLDER, threads)
        except LrcnError as exc:
            failures.append(str(exc))

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(train_one, todo))
    return failures


def _run_submitit(sweep: Sweep, todo: list[SweepRun], out: Path,
                  launcher: Launcher) -> list[str]:
    """Train `todo` as submitit jobs, one per run (a job array on Slurm, at most
    `launcher.parallel` at once), and wait for them; the failures' messages. submitit keeps
    its job files and logs in ``out/submitit``."""
    import submitit

    executor = submitit.AutoExecutor(folder=out / "submitit", cluster=launcher.cluster)
    params: dict[str, Any] = {"timeout_min": launcher.minutes, "nodes": 1, "tasks_per_node": 1,
                              "name": f"lrcn-sweep-{out.name}"}
    if launcher.gpus:
        params["gpus_per_node"] = launcher.gpus
    if launcher.cluster == "slurm":
        params["slurm_array_parallelism"] = launcher.parallel
        if launcher.partition:
            params["slurm_partition"] = launcher.partition
    executor.update_parameters(**params)
    threads = max(1, (os.cpu_count() or 1) // launcher.parallel)
    failures: list[str] = []
    waves = [todo] if launcher.cluster == "slurm" else [
        todo[i:i + launcher.parallel] for i in range(0, len(todo), launcher.parallel)]
    for wave in waves:  # on one machine: `parallel` jobs at a time
        jobs = executor.map_array(train_run, [sweep] * len(wave), wave,
                                  [out / LOG_FOLDER] * len(wave), [threads] * len(wave),
                                  [launcher.gpus] * len(wave))
        log.info("submitted %d jobs (%s)", len(jobs), ", ".join(str(j.job_id) for j in jobs))
        for run, job in zip(wave, jobs):
            try:
                job.result()
            except Exception as exc:  # submitit wraps the job's error in its own
                failures.append(f"run {run.run_dir}: {str(exc).strip().splitlines()[-1]}")
    return failures


DEFINITION_KEYS = ("config", "grid", "seeds", "set", "baseline", "table")


def definition_names() -> list[str]:
    """The sweep definitions lrcn ships (``src/lrcn/sweeps/<name>.yaml``)."""
    return packaged_names("sweeps")


def load_definition(name_or_file: str) -> dict[str, Any]:
    """A sweep definition (``--sweep``): a shipped name or a YAML file holding ``config``
    (preset or file), ``grid`` ({SECTION.KEY: [values]}), ``seeds``, ``set`` ([SECTION.KEY=V]),
    ``baseline`` (SECTION.KEY=V) and ``table`` ([ROWS, COLS]), all optional but the grid.
    Returned as command-line values: the grid as ``--grid`` items."""
    values, source = read_yaml(name_or_file, "sweeps", "sweep file", "sweep", "shipped")
    if not isinstance(values, dict) or not isinstance(values.get("grid"), dict):
        raise LrcnError(f"{source}: expected a mapping with a grid: {{SECTION.KEY: [values]}}")
    unknown = sorted(set(values) - set(DEFINITION_KEYS))
    if unknown:
        raise LrcnError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: "
                        f"{', '.join(DEFINITION_KEYS)}")
    grid = values["grid"]
    if not all(isinstance(v, list) and v for v in grid.values()):
        raise LrcnError(f"{source}: every grid key needs a list of values")
    return {"config": values.get("config"), "seeds": values.get("seeds"),
            "grid": [f"{key}={','.join(str(v) for v in vs)}" for key, vs in grid.items()],
            "set": [str(item) for item in values.get("set") or []],
            "baseline": values.get("baseline"),
            "table": ",".join(values["table"]) if values.get("table") else None}


def load_sweep(out: Path) -> Sweep:
    """The sweep recorded in ``out/sweep.yaml`` (``lrcn sweep --summarize``)."""
    path = out / SWEEP_FILE
    if not path.is_file():
        raise LrcnError(f"{out} holds no sweep: {path} is missing")
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Sweep({str(k): [str(v) for v in vs] for k, vs in saved["grid"].items()},
                     [int(s) for s in saved["seeds"]], [str(a) for a in saved["train_args"]])
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise LrcnError(f"{path}: not a sweep record ({exc})") from None
