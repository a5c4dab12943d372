"""``lrcn export --format hf|onnx``: a trained model for use outside its run folder.

Only argparse at import; the exporters load inside ``run_export``.
"""

from __future__ import annotations

import argparse
from typing import Any

from lrcn.cli.parser import CHECKPOINT_HELP

FORMATS = ("hf", "onnx")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``lrcn`` subcommands."""
    p = sub.add_parser(
        "export", help="export a model: a Hugging Face style model folder, or ONNX",
        description="hf: a folder of model.safetensors, config.json, the vocabularies and a "
                    "model card (lrcn.from_pretrained and every --checkpoint take it); onnx: "
                    "one .onnx file that answers with ONNX Runtime (lrcn predict and serve "
                    "take it), checked against PyTorch before it is written.")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True,
                   help="hf: the model folder to create; onnx: the .onnx file to write")
    p.add_argument("--push-to-hub", metavar="REPO_ID",
                   help="hf: also upload the folder to the Hugging Face Hub (needs the 'hub' "
                        "extra: pip install 'lrcn[hub]', and a login)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    """Run one export; its JSON summary."""
    from lrcn.errors import LrcnError

    if args.format == "hf":
        from lrcn.engine.export_hf import export_hf

        return export_hf(args.checkpoint, args.out, push_to_hub=args.push_to_hub)
    if args.push_to_hub:
        raise LrcnError("--push-to-hub uploads a model folder: use it with --format hf")
    from lrcn.engine.export_onnx import export_onnx

    return export_onnx(args.checkpoint, args.out)
