"""``lrcn data build|list``: build the datasets lrcn generates, explicitly, ahead of a run.

Without it, the first run that reads a generated dataset (``--dataset easy-vizwiz``)
builds it. Either way it goes into the dataset folder given (``--root`` here,
``--data-root`` / ``data.data_root`` for a run), else ``$LRCN_DATA_HOME/<name>-v<version>``
(``~/.cache/lrcn`` if unset), where a run finds it without ``--data-root``.

Only argparse at import: ``lrcn`` builds every parser on every call, and the generators
load inside ``run_data`` when a data command actually runs.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``data`` and its actions to the ``lrcn`` subcommands."""
    p = sub.add_parser("data", help="build the datasets lrcn generates (easy-vizwiz, ...)",
                       description="Build a generated dataset ahead of the run that reads it.")
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    a = actions.add_parser("build", help="build a generated dataset (once; reused after)")
    a.add_argument("name", metavar="NAME", help="generated dataset (lrcn data list)")
    a.add_argument("--root", metavar="DIR",
                   help="dataset folder to build (default: $LRCN_DATA_HOME/<NAME>-v<version>, "
                        "~/.cache/lrcn if unset); pass it as --data-root to the runs")
    a.add_argument("--seed", type=int,
                   help="seed of every random choice (default: the dataset's own, 0)")
    a.add_argument("--force", action="store_true",
                   help="rebuild even if DIR holds a complete build")
    a.add_argument("--json", action="store_true", help="print a JSON summary as the last line")

    a = actions.add_parser("list", help="the generated datasets, their folders, whether built")
    a.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def run_data(args: argparse.Namespace) -> dict[str, Any]:
    """Run one data action; returns a JSON-safe summary."""
    if args.data_command == "list":
        return _list()
    return _build(args.name, args.root, args.seed, args.force)


def _build(name: str, root: str | None, seed: int | None, force: bool) -> dict[str, Any]:
    from lrcn.data.registry import generated_dataset
    from lrcn.errors import LrcnError

    started = time.perf_counter()
    dataset = generated_dataset(name)
    folder = dataset.default_root() if root is None else Path(root).expanduser()
    meta = None if force else dataset.meta(folder)
    already_built = meta is not None
    if meta is None:
        dataset.rebuild(folder, seed)
        meta = dataset.meta(folder)
        assert meta is not None, folder  # rebuild leaves a complete build or raises
    elif seed is not None and seed != meta["seed"]:
        raise LrcnError(f"{folder} already holds a {dataset.title} build with seed "
                        f"{meta['seed']}; add --force to rebuild it with seed {seed}")
    else:
        log.info("%s: %s already holds a complete build (seed %d); --force rebuilds it",
                 dataset.title, folder, meta["seed"])
    return {
        "action": "build",
        "dataset": dataset.name,
        "root": str(folder),
        "version": dataset.version,
        "seed": meta["seed"],
        "splits": meta["sizes"],
        "unit": dataset.unit,
        "already_built": already_built,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _list() -> dict[str, Any]:
    from lrcn.data.generators.generated import data_home
    from lrcn.data.registry import generated_dataset, generated_names

    datasets = []
    for name in generated_names():
        dataset = generated_dataset(name)
        root = dataset.default_root()
        datasets.append({"dataset": name, "version": dataset.version, "root": str(root),
                         "built": dataset.is_complete(root), "unit": dataset.unit,
                         "default_sizes": dict(dataset.default_sizes)})
    return {"action": "list", "data_home": str(data_home()), "datasets": datasets}


def print_data(summary: dict[str, Any]) -> None:
    """The summary of a data action for people (``lrcn data`` without ``--json``)."""
    if summary["action"] == "list":
        print(f"data home: {summary['data_home']} ($LRCN_DATA_HOME)")
        for d in summary["datasets"]:
            state = "built" if d["built"] else "not built"
            print(f"  {d['dataset']:<20}{state:<11}{d['root']}")
        return
    counts = ", ".join(f"{split} {n}" for split, n in summary["splits"].items())
    verb = "already built" if summary["already_built"] else "built"
    print(f"{summary['dataset']} {verb} in {summary['root']} (seed {summary['seed']}; "
          f"{summary['unit']}: {counts})")
