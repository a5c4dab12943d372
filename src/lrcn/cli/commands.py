"""The ``lrcn`` commands (train, compare, sweep, evaluate, predict, score, serve, features,
data, import, export) and ``main``, which runs one.

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
from typing import TYPE_CHECKING, Any

from lrcn.cli.output import print_human
from lrcn.cli.parser import build_parser, train_args, train_config
from lrcn.errors import LrcnError

if TYPE_CHECKING:  # imported where a command runs: lrcn starts without the engine
    from lrcn.engine.sweep import Sweep

log = logging.getLogger("lrcn")


# --------------------------------------------------------------------------- commands

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
    """A sweep over ``model.arch`` (one seed), tabulated as comparison.{md,csv,png}."""
    from lrcn.engine.compare import check_models, compare
    from lrcn.engine.distributed import launched_world_size
    from lrcn.engine.sweep import Sweep

    if launched_world_size() > 1:
        raise LrcnError("compare trains its models one after another; to train on several "
                        "processes, run lrcn train under torchrun for each model")
    cfg = train_config(args)
    models = check_models([m.strip() for m in args.models.split(",") if m.strip()], cfg)
    sweep = _checked_sweep(args, Sweep({"model.arch": models}, [cfg.train.seed],
                                       train_args(args, skip=("train.seed", "model.arch"))))
    rows = compare(sweep, cfg, Path(args.out))
    return {"out": args.out, "table": str(Path(args.out) / "comparison.md"), "models": rows}


def _checked_sweep(args: argparse.Namespace, sweep: Sweep) -> Sweep:
    """`sweep`, once the config of every point is known to be one lrcn train accepts."""
    from lrcn.engine.setup import check_train_config

    for point in sweep.points():
        sets = [a for key, value in point.items() for a in ("--set", f"{key}={value}")]
        check_train_config(train_config(build_parser().parse_args(
            ["train", *sweep.train_args, *sets])))
    return sweep


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Train the sweep's runs not finished yet (every point checked before any trains), then
    aggregate; with ``--summarize DIR`` only aggregate."""
    from lrcn.engine.sweep import (
        Launcher, Sweep, load_definition, load_sweep, parse_grid, run_sweep,
    )
    from lrcn.engine.sweep_summary import aggregate, write_summary

    if args.sweep:  # the definition's values, under those the command line gives
        definition = load_definition(args.sweep)
        given = {item.partition("=")[0] for item in args.grid}
        args.grid = [g for g in definition["grid"] if g.partition("=")[0] not in given] + args.grid
        args.set = definition["set"] + args.set
        for name in ("config", "seeds", "baseline", "table"):
            if getattr(args, name) is None:
                setattr(args, name, definition[name])
    args.seeds = 1 if args.seeds is None else args.seeds
    table = tuple(args.table.split(",")) if args.table else None
    if table is not None and len(table) != 2:
        raise LrcnError(f"--table {args.table!r}: expected ROWS,COLS, two grid keys")
    if args.summarize:
        out = Path(args.summarize)
        sweep = load_sweep(out)
        runs = sweep.runs(out)
    else:
        if not args.out:
            raise LrcnError("lrcn sweep needs --out DIR (or --summarize DIR)")
        if args.seeds < 1:
            raise LrcnError(f"--seeds must be at least 1, got {args.seeds}")
        out = Path(args.out)
        grid = parse_grid(args.grid)
        first = train_config(args).train.seed
        sweep = _checked_sweep(args, Sweep(grid, [first + k for k in range(args.seeds)],
                                           train_args(args, skip=("train.seed",))))
    if table is not None and not set(table) <= set(sweep.grid):  # refused before any training
        raise LrcnError(f"--table {args.table!r}: ROWS and COLS must be grid keys: "
                        f"{', '.join(sweep.grid)}")
    baseline = None
    if args.baseline:
        key, _, value = args.baseline.partition("=")
        if value not in sweep.grid.get(key, []):
            raise LrcnError(f"--baseline {args.baseline!r}: expected SECTION.KEY=V with V one "
                            f"of the grid's values of that key (grid: {sweep.grid})")
        baseline = {key: value}
    if not args.summarize:
        launcher = Launcher(args.launcher, args.parallel, args.submitit_cluster, args.partition,
                            args.time, args.gpus_per_run)
        runs = run_sweep(sweep, out, launcher)
    rows = aggregate(runs, baseline)
    files = write_summary(out, rows, list(sweep.grid), table)
    return {"out": str(out), "runs": len(runs), "points": rows, **files}


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
    from lrcn.engine.inference import load_predictor

    if args.top_k < 1:
        raise LrcnError("--top-k must be at least 1")
    out = None
    if args.attention_map is not None:
        from lrcn.engine.attention_map import check_png_path
        out = check_png_path(args.attention_map)  # fail before the model runs
    predictor = load_predictor(args.checkpoint, args.device)  # a .onnx file: ONNX Runtime
    image = load_image(Path(args.image))
    prediction = predictor.predict([image], [args.question], args.top_k)[0]
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

    from lrcn.engine.inference import load_predictor
    from lrcn.serve.app import ServeSettings, create_app

    if args.max_upload_mb <= 0:
        raise LrcnError("--max-upload-mb must be positive")
    settings = ServeSettings(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                             max_batch=args.max_batch)
    app = create_app(load_predictor(args.checkpoint, args.device), settings)  # .onnx: ORT
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


def cmd_import(args: argparse.Namespace) -> dict[str, Any]:
    from lrcn.cli.imports import run_import
    return run_import(args)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from lrcn.cli.export import run_export
    return run_export(args)


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "score": cmd_score, "features": cmd_features,
            "serve": cmd_serve, "data": cmd_data, "sweep": cmd_sweep, "import": cmd_import,
            "export": cmd_export}


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
