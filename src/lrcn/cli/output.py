"""What the ``lrcn`` commands print for a person (without ``--json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def print_human(command: str, summary: dict[str, Any]) -> None:
    """A command's summary as lines for a person; ``lrcn COMMAND --json`` prints it whole."""
    if command == "data":
        from lrcn.cli.data import print_data
        print_data(summary)
        return
    if command in ("compare", "sweep"):
        print(Path(summary["table"] if command == "compare" else summary["md"])
              .read_text(encoding="utf-8"), end="")
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
    if command == "export":
        what = ("model folder" if summary["format"] == "hf" else
                f"ONNX model (opset {summary['opset']}, {summary['bytes'] / 1e6:.1f} MB; ONNX "
                f"Runtime vs PyTorch at batch sizes "
                f"{', '.join(map(str, summary['checked_batch_sizes']))}: "
                f"max |diff| {summary['max_abs_diff']:.1e})")
        print(f"exported {what}: {summary['out']}")
        if "hub" in summary:
            print(f"uploaded: {summary['hub']}")
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
