"""The ``lrcn`` command line's arguments, and the run configuration they give (`train_config`).

The flags of ``train`` and ``compare`` are derived from the config fields that declare one
(`lrcn.config.sections.option`); the registries give the names they accept.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import yaml

from lrcn.config import DEVICES, RunConfig, apply_overrides, flag_fields, load_config, preset_names
from lrcn.errors import LrcnError

log = logging.getLogger(__name__)

CHECKPOINT_HELP = ("a run folder (its best checkpoint), a checkpoint folder (checkpoints/best, "
                   "last, or one lrcn export --format hf wrote) or a .pt file of an earlier "
                   "version")
ONNX_HELP = ", or a model.onnx from lrcn export --format onnx"

# --------------------------------------------------------------------------- arguments

def _add_dataset_flags(p: argparse.ArgumentParser) -> None:
    """The flags that say where a split's data is (``evaluate``: ``args.dataset``, ...), as
    ``train`` has them."""
    _add_field_flags(p, {"data.dataset", "data.data_root", "data.features"}, qualified=False)


def _add_field_flags(p: argparse.ArgumentParser, only: set[str] | None = None,
                     qualified: bool = True) -> None:
    """A flag for every config field that declares one (`lrcn.config.sections.option`), with
    its help and choices; the value lands in ``args.<section>.<field>`` (``args.<field>``
    unless `qualified`), None when not given. The registries give the names ``--dataset``
    and ``--model`` accept."""
    from lrcn.data.registry import dataset_names
    from lrcn.models.registry import model_names

    names = {"data.dataset": dataset_names, "model.arch": model_names}
    for section, f in flag_fields():
        key = f"{section}.{f.name}"
        if only is not None and key not in only:
            continue
        meta = f.metadata
        help_text = meta["help"]
        if key in names:
            help_text = f"{help_text}: {', '.join(names[key]())}"
        kwargs: dict[str, Any] = {"dest": key if qualified else f.name, "help": help_text,
                                  "default": None}
        kind, metavar = _field_kind(f), meta["flag"].lstrip("-").upper()
        if kind is bool:  # --flag; a field that is on by default also gets --no-flag
            kwargs["action"] = (argparse.BooleanOptionalAction if f.default is True
                                else "store_true")
        elif kind is list:
            kwargs.update(nargs="+", metavar=metavar)
        else:
            kwargs.update(type=kind, choices=meta["choices"],
                          metavar=None if meta["choices"] else metavar)
        p.add_argument(meta["flag"], **kwargs)


def _field_kind(f: dataclasses.Field) -> type:
    """bool, int, float, str or list: what a field's annotation holds (None aside)."""
    text = str(f.type).replace(" | None", "")
    return {"bool": bool, "int": int, "float": float, "str": str}.get(text, list)


def train_args(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> list[str]:
    """The ``lrcn train`` flags `args` holds (``--config``, the fields' flags, ``--set``) as a
    command line, without the fields in `skip`: what every run of a sweep is given."""
    argv = ["--config", args.config] if args.config else []
    for section, f in flag_fields():
        key, flag = f"{section}.{f.name}", f.metadata["flag"]
        value = getattr(args, key, None)
        if value is None or key in skip:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv + [arg for item in args.set for arg in ("--set", item)]


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """The configuration flags of ``train`` (and ``compare``): the config fields' flags, then
    ``--config`` and ``--set``."""
    p.add_argument("--config", help=f"preset name ({', '.join(preset_names())}) or YAML file")
    _add_field_flags(p)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set model.d_model=256 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrcn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and evaluate it every epoch")
    _add_train_flags(p)
    p.add_argument("--out", help="run folder (default: runs/<dataset>-<variant>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its "
                   "config.yaml (flags may raise --epochs or change --device, --workers)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")

    p = sub.add_parser("compare", help="train several models on the same data and tabulate them")
    _add_train_flags(p)
    p.add_argument("--models", default="lrcn,cnn_lstm,text_only,image_only",
                   help="comma-separated models to train (default: %(default)s)")
    p.add_argument("--out", required=True,
                   help="folder for one run per model and comparison.{md,csv,png}")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")

    from lrcn.engine.sweep import CLUSTERS, LAUNCHERS, definition_names

    p = sub.add_parser("sweep", help="train a grid of configurations x seeds, resumable, and "
                       "aggregate mean ± std per grid point")
    _add_train_flags(p)
    p.add_argument("--sweep", metavar="NAME|FILE",
                   help="a sweep definition: a shipped one (%s) or a YAML file; its config, "
                   "grid, seeds, --set items, baseline and table, which the flags extend or "
                   "override" % ", ".join(definition_names()))
    p.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2",
                   help="a grid axis: a config field and its values (repeatable; the sweep "
                   "trains every combination)")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="runs per grid point, seeds --seed (or the config's), +1, ... "
                   "(default: the sweep definition's, else 1)")
    p.add_argument("--out", help="sweep folder: sweep.yaml, one run per point and seed, "
                   "summary.{md,csv,png}; the same command again resumes it")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: runs as processes on this machine; submitit: one job per run "
                   "(Slurm, through the submitit package) (default: %(default)s)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="runs at once (local: the CPU threads divided between them; Slurm: the "
                   "job array's parallelism) (default: %(default)s)")
    p.add_argument("--submitit-cluster", choices=CLUSTERS, default="slurm",
                   help="submitit's cluster: slurm, or local to try the jobs on this machine "
                   "(default: %(default)s)")
    p.add_argument("--partition", help="Slurm partition of the jobs")
    p.add_argument("--time", type=int, default=240, metavar="MINUTES",
                   help="time limit of each job (default: %(default)s)")
    p.add_argument("--gpus-per-run", type=int, default=0, metavar="N",
                   help="GPUs per run; more than one: the run trains under torchrun (DDP) "
                   "inside its job (default: %(default)s)")
    p.add_argument("--baseline", metavar="SECTION.KEY=V",
                   help="also the paired difference (per seed) of every point against the "
                   "point with this value, with a paired t-test")
    p.add_argument("--table", metavar="ROWS,COLS",
                   help="lay two grid keys out as a table of mean ± std in summary.md")
    p.add_argument("--summarize", metavar="DIR",
                   help="only aggregate the finished runs of the sweep in DIR (no training)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")

    p = sub.add_parser("evaluate", help="score a checkpoint on a split and write a results file")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    _add_dataset_flags(p)
    p.add_argument("--split", required=True, help="split to evaluate")
    p.add_argument("--results", help="results file to write (default: <run>/results/<dataset>_<split>.json)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="answer a question about one image")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP + ONNX_HELP)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--question", required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--attention-map", metavar="OUT.png",
                   help="also draw where the model looked (image heat map, shaded question "
                   "words, answers) into this PNG; missing folders are created")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("score", help="score a results file against VQA-v2 or VizWiz annotations")
    p.add_argument("--format", choices=["vqa2", "vizwiz"], default="vqa2",
                   help="evaluator to score with (default: vqa2)")
    p.add_argument("--annotations", required=True,
                   help="official annotations JSON (vizwiz: the split file, e.g. val.json)")
    p.add_argument("--results", required=True, help='results JSON: [{"question_id", "answer"}]; '
                   'for vizwiz [{"image", "answer", "answerable" (optional probability)}]')
    p.add_argument("--questions", help="official questions JSON (checked against the annotations; "
                   "vqa2 only)")
    p.add_argument("--answerable", help='vizwiz: the answerability submission [{"image", '
                   '"answerable"}], when not in --results')
    p.add_argument("--per-question", help="write {question_id: accuracy} to this JSON file")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="serve a model over HTTP: a JSON API and a demo page")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP + ONNX_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest image file accepted, in MB (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=16,
                   help="most requests answered by one forward pass (default: %(default)s)")
    p.set_defaults(json=False)

    from lrcn.cli.data import add_data_parser
    from lrcn.cli.features import add_features_parser
    from lrcn.cli.export import add_export_parser
    from lrcn.cli.imports import add_import_parser
    add_features_parser(sub)
    add_data_parser(sub)
    add_import_parser(sub)
    add_export_parser(sub)
    return parser


def train_config(args: argparse.Namespace) -> RunConfig:
    """Preset or file (with ``--resume``, the run's config.yaml; with ``--init SRC`` and no
    ``--config``, the source run's config), then the explicit flags, then ``--set`` overrides;
    the schedule then follows the epochs (`follow_epochs`)."""
    from lrcn.config import default_preset
    from lrcn.config.schedule import follow_epochs
    from lrcn.data import default_splits

    flags = {key: value for key, value in vars(args).items()
             if "." in key and value is not None}  # the config fields' flags given
    dataset, features = flags.get("data.dataset"), flags.get("data.features")
    resume = getattr(args, "resume", None)
    if resume:  # the run's own config, which the flags may change where resuming allows
        if args.config or args.out:
            raise LrcnError("--resume RUN_DIR takes the run's folder and its config.yaml; "
                            "give neither --config nor --out with it")
        if not (Path(resume) / "config.yaml").is_file():
            raise LrcnError(f"no run to resume in {resume}: it has no config.yaml")
        source = str(Path(resume) / "config.yaml")
        cfg = load_config(source)
    elif flags.get("train.init") and not args.config:  # the source run's model, data, schedule
        from lrcn.engine.setup import init_config

        init = flags["train.init"]
        source, cfg = f"the config of --init {init}", init_config(init)
    else:
        source = args.config or default_preset(dataset, bool(features))
        cfg = load_config(source)
    stated = dataclasses.replace(cfg.train)  # the schedule as the preset or file states it
    if dataset and dataset != cfg.data.dataset:
        # Another dataset than the preset's: start from that dataset's usual splits.
        cfg.data.train_split, cfg.data.val_split = default_splits(dataset)
    if flags.get("data.val_split", "").lower() == "none":
        del flags["data.val_split"]
        cfg.data.val_split = None
    if features:
        if cfg.model.image_encoder != "features" and cfg.model.grid_reduction != "none":
            # The preset reduces its own encoder's grid (easyvqa: the small CNN's 8 x 8); a
            # store's grids are read as they are unless --set asks for a reduction.
            log.info("model.grid_reduction %s -> none: %s reduces the grid of its image "
                     "encoder (%s); --features reads the stores' grids as they are",
                     cfg.model.grid_reduction, source, cfg.model.image_encoder)
            cfg.model.grid_reduction = "none"
        cfg.model.image_encoder = "features"
    for key, value in flags.items():
        section, _, name = key.partition(".")
        apply_overrides(getattr(cfg, section), {name: value}, f"--{section} flags")
    explicit: set[str] = set()  # the SECTION.KEYs --set gave
    for item in args.set:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not hasattr(cfg, section):
            raise LrcnError(f"--set {item!r}: expected SECTION.KEY=VALUE with SECTION in data, model, train")
        apply_overrides(getattr(cfg, section), {name: yaml.safe_load(raw)}, f"--set {item}")
        explicit.add(key)
    if ("train.epochs" in flags or "train.epochs" in explicit) and "train.samples" not in explicit:
        cfg.train.samples = None  # epochs given for this run: not derived from the data's size
    follow_epochs(cfg.train, stated, f"preset {source}" if source in preset_names() else source,
                  explicit, resumed=bool(resume))
    return cfg
