"""``lrcn import openvqa``: another code base's checkpoint as an lrcn run folder.

Only argparse at import; the importer's model list is read when the parser is built and the
importer runs inside ``run_import``.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``import`` and its sources to the ``lrcn`` subcommands."""
    from lrcn.engine.openvqa_import import MODELS

    p = sub.add_parser("import", help="turn another code base's checkpoint into an lrcn run",
                       description="Write an lrcn run folder from a checkpoint trained elsewhere.")
    sources = p.add_subparsers(dest="import_source", required=True, metavar="SOURCE")
    a = sources.add_parser(
        "openvqa", help="an openvqa or mcan-vqa MCAN checkpoint (LRCN-ED without LRM)",
        description="Import an MCAN checkpoint saved by openvqa or mcan-vqa: lrcn evaluate, "
                    "predict and serve then use the run folder like any run, and lrcn train "
                    "--init RUN --lrm sa fine-tunes LRCN-ED from it.")
    a.add_argument("--checkpoint", required=True, help="the .pkl/.pth file openvqa saved")
    a.add_argument("--data-root", required=True, metavar="VQA_ROOT",
                   help="folder of the VQA-v2 question files (train2014, val2014, test2015) "
                        "and VG_questions.json, which openvqa's vocabulary is built from")
    a.add_argument("--answer-dict", required=True, metavar="ANSWER_DICT.json",
                   help="openvqa's answer_dict.json ([ans_to_ix, ix_to_ans])")
    a.add_argument("--model", required=True, choices=list(MODELS),
                   help="the openvqa model the checkpoint holds (its preset: " +
                        ", ".join(MODELS.values()) + ")")
    a.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create")
    a.add_argument("--trust-pickle", action="store_true",
                   help="read a checkpoint that needs more than tensors and plain containers "
                        "(this runs code from the file: only for files you trust)")
    a.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def run_import(args: argparse.Namespace) -> dict[str, Any]:
    """Run one import; its JSON summary (run_dir, vocab_size, num_answers, parameters)."""
    from lrcn.engine.openvqa_import import import_openvqa

    return import_openvqa(args.checkpoint, args.data_root, args.answer_dict, args.model,
                          args.out, args.trust_pickle)
