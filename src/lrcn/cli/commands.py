"""The ``lrcn`` command: train, evaluate, predict, score.

With ``--json`` the last line of stdout is one JSON object; everything else (logs, progress
bars) goes to stderr. Errors print one message to stderr and exit non-zero, no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from lrcn.config import DEVICES, RunConfig, apply_overrides, flag_fields, load_config, preset_names
from lrcn.errors import LrcnError

log = logging.getLogger("lrcn")


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
        if kind is bool:
            kwargs["action"] = "store_true"
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

    p = sub.add_parser("evaluate", help="score a checkpoint on a split and write a results file")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    _add_dataset_flags(p)
    p.add_argument("--split", required=True, help="split to evaluate")
    p.add_argument("--results", help="results file to write (default: <run>/results/<dataset>_<split>.json)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="answer a question about one image")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
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
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
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
    add_features_parser(sub)
    add_data_parser(sub)
    return parser


# --------------------------------------------------------------------------- commands

def train_config(args: argparse.Namespace) -> RunConfig:
    """Preset or file (with ``--resume``, the run's config.yaml), then the explicit flags, then
    ``--set`` overrides; the schedule then follows the epochs (`follow_epochs`)."""
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


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train; under torchrun, in every process it started (see lrcn.engine.distributed)."""
    from lrcn.engine import distributed
    from lrcn.engine.setup import check_train_config
    from lrcn.engine.trainer import train

    cfg = train_config(args)
    check_train_config(cfg, bool(args.resume))  # in every process, before any joins the group
    with distributed.process_group(cfg.train.device):
        name = cfg.model.variant if cfg.model.arch == "lrcn" else cfg.model.arch
        out = Path(args.resume or args.out or Path("runs") / (
            f"{cfg.data.dataset}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"))
        out = Path(distributed.broadcast_object(str(out)))  # rank 0's time in the name
        log.info("run folder: %s", out)
        return train(cfg, out, resume=bool(args.resume))


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from lrcn.engine.compare import compare
    from lrcn.engine.distributed import launched_world_size

    if launched_world_size() > 1:
        raise LrcnError("compare trains its models one after another in one process; to train "
                        "on several, run lrcn train under torchrun for each model")
    cfg = train_config(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = compare(cfg, models, Path(args.out))
    return {"out": args.out, "table": str(Path(args.out) / "comparison.md"), "models": rows}


def _run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def default_results_name(dataset: str, split: str) -> str:
    """The results file name; VQA-v2's follows the evaluation server's convention."""
    if dataset == "vqa2":
        return f"vqa_OpenEnded_mscoco_{split}_lrcn_results.json"
    return f"{dataset}_{split}.json"


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from lrcn.data import load_split
    from lrcn.data.pipeline import encode_for_model
    from lrcn.data.registry import dataset_metric
    from lrcn.engine.checkpoint import resolve_checkpoint
    from lrcn.engine.inference import load_model, predict_split
    from lrcn.evaluation import build_evaluator

    if args.batch_size < 1:
        raise LrcnError("--batch-size must be at least 1")
    ckpt_path = resolve_checkpoint(args.checkpoint)
    loaded = load_model(ckpt_path, args.device)
    d = loaded.checkpoint.config.data
    if args.features:
        d = dataclasses.replace(d, features=args.features)
    dataset = args.dataset or d.dataset
    root = args.data_root or (d.data_root if dataset == d.dataset else None)
    split = load_split(dataset, root, args.split)
    encoded = encode_for_model(split, loaded.word_vocab, loaded.answer_vocab, d,
                               loaded.model.image_input(), loaded.device)
    evaluator = build_evaluator(dataset_metric(dataset), encoded.records)
    predict_split(loaded.model, encoded, loaded.answer_vocab, args.batch_size, loaded.device,
                  evaluator)
    results_path = Path(args.results) if args.results else (
        _run_dir_of(ckpt_path) / "results" / default_results_name(dataset, args.split))
    summary: dict[str, Any] = {"checkpoint": str(ckpt_path), "dataset": dataset,
                               "split": args.split}
    summary.update(evaluator.write_results(results_path))  # results[, answerable_results]
    log.info("wrote %d answers to %s", len(encoded), results_path)
    if split.has_answers:
        summary.update(evaluator.evaluate())
    else:
        log.info("split %s has no answers: results written, no accuracy computed", args.split)
    return summary


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from lrcn.data.images import load_image
    from lrcn.engine.inference import load_model, predict_images

    if args.top_k < 1:
        raise LrcnError("--top-k must be at least 1")
    out = None
    if args.attention_map is not None:
        from lrcn.engine.attention_map import check_png_path
        out = check_png_path(args.attention_map)  # fail before the model runs
    loaded = load_model(args.checkpoint, args.device)
    image = load_image(Path(args.image))
    prediction = predict_images(loaded, [image], [args.question], args.top_k)[0]
    summary = {"question": args.question, "image": args.image, **prediction.to_dict()}
    if out is not None:
        from lrcn.engine.attention_map import render_attention_map, save_attention_map
        save_attention_map(render_attention_map(image, prediction, args.question), out)
        summary["attention_map"] = str(out)
    return summary


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    from lrcn.evaluation.score import score_files, write_per_question

    if args.format == "vizwiz":
        from lrcn.evaluation.vizwiz import score_vizwiz_files

        if args.questions:
            raise LrcnError("--questions is not used with --format vizwiz: VizWiz annotation "
                            "files hold the questions")
        summary = score_vizwiz_files(args.annotations, args.results, args.answerable)
        per_question = summary.pop("per_question")
        if args.per_question:
            write_per_question(per_question, args.per_question)
        return summary
    if args.answerable:
        raise LrcnError("--answerable is for --format vizwiz")
    report = score_files(args.annotations, args.results, args.questions)
    if args.per_question:
        write_per_question(report, args.per_question)
    return report.to_dict()


def cmd_serve(args: argparse.Namespace) -> dict[str, Any]:
    """Run the HTTP server until interrupted; the socket is bound first, so a busy port is
    an error message, not a traceback."""
    import socket

    import uvicorn

    from lrcn.engine.inference import load_model
    from lrcn.serve.app import ServeSettings, create_app

    if args.max_upload_mb <= 0:
        raise LrcnError("--max-upload-mb must be positive")
    settings = ServeSettings(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                             max_batch=args.max_batch)
    app = create_app(load_model(args.checkpoint, args.device), settings)
    try:
        family = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((args.host, args.port), family=family)
    except (OSError, OverflowError) as exc:
        raise LrcnError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    log.info("serving %s on http://%s:%d (API docs at /docs)", args.checkpoint, args.host,
             args.port)
    # log_config=None: uvicorn logs through the root logger set up in main(), to stderr.
    server = uvicorn.Server(uvicorn.Config(app, log_config=None))
    with sock:
        server.run(sockets=[sock])
    return {"served": f"http://{args.host}:{args.port}"}


def cmd_features(args: argparse.Namespace) -> dict[str, Any]:
    from lrcn.cli.features import run_features
    return run_features(args)


def cmd_data(args: argparse.Namespace) -> dict[str, Any]:
    from lrcn.cli.data import run_data
    return run_data(args)


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "score": cmd_score, "features": cmd_features,
            "serve": cmd_serve, "data": cmd_data}


# --------------------------------------------------------------------------- output

def print_human(command: str, summary: dict[str, Any]) -> None:
    if command == "data":
        from lrcn.cli.data import print_data
        print_data(summary)
        return
    if command == "compare":
        print(Path(summary["table"]).read_text(encoding="utf-8"), end="")
        return
    if command == "predict":
        print(f"Q: {summary['question']}")
        for a in summary["answers"]:
            print(f"  {a['score']:7.2%}  {a['answer']}")
        if summary.get("answerable") is not None:
            print(f"P(answerable): {summary['answerable']:.2%}")
        if "attention_map" in summary:
            print(f"attention map: {summary['attention_map']}")
        return
    if "overall" in summary:
        print(f"answer accuracy: {summary['overall']:.2f}%")
        for answer_type, acc in summary.get("per_answer_type", {}).items():
            print(f"  {answer_type:<14}{acc:.2f}%")
        # Question types (VQA-v2 has 65): all when few, else the 3 worst and the 3 best.
        per_qtype = summary.get("per_question_type", {})
        ranked = sorted(per_qtype, key=lambda t: (per_qtype[t], t))
        groups = [("question types, worst first", ranked)] if len(ranked) <= 6 else [
            (f"worst 3 of {len(ranked)} question types", ranked[:3]),
            (f"best 3 of {len(ranked)} question types",
             sorted(per_qtype, key=lambda t: (-per_qtype[t], t))[:3])]
        for title, shown in groups if per_qtype else []:
            print(f"{title}:")
            width = max(len(t) for t in shown) + 4
            for t in shown:
                label, count = f'"{t}"', summary["question_type_counts"][t]
                print(f"  {label:<{width}}{per_qtype[t]:6.2f}%  "
                      f"({count} question{'' if count == 1 else 's'})")
    if "answerability" in summary:
        print("Unanswerability AP: {average_precision:.2f}%  F1: {f1:.2f}%".format(
            **summary["answerability"]))
    for key in ("run_dir", "results", "answerable_results", "store"):
        if key in summary:
            print(f"{key.replace('_', ' ')}: {summary[key]}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun (lrcn train in several processes) only rank 0 logs progress and prints.
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        summary = COMMANDS[args.command](args)
    except LrcnError as exc:
        print(f"lrcn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # lrcn train says what it saved and how to resume
        if main_process:
            print(f"lrcn {args.command}: interrupted{f': {exc}' if str(exc) else ''}",
                  file=sys.stderr)
        return 130
    if not main_process:
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        print_human(args.command, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
