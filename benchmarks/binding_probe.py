"""Probe: does the co-attention single out a named object when the image features are ideal?

Splits the own-data model's failure on scenes of several objects into its two halves. One
dataset of relational-shapes scenes (``lrcn.data.generators.relational_shapes``, all question
families) is trained twice with the own-data preset and the same number of epochs:

* **pixels**: as a user trains it, the small CNN learning from the images;
* **ideal grid**: a feature store whose 8 x 8 grid holds, in the cell under each object's
  centre, a one-hot code of its colour and of its shape, and zeros elsewhere; the model
  (with ``model.position: coords``) then only has to learn to attend and relate.

If the ideal grid learns a family and pixels do not, the image encoder is what holds it
back; if neither does, the co-attention does. Prints validation accuracy per family after
every epoch for both runs and a JSON summary as the last line.

    python benchmarks/binding_probe.py [--epochs 8] [--scenes 3000] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from lrcn_run import run_lrcn_train

from lrcn.data.generators.relational_shapes import write_vqa2_layout
from lrcn.data.generators.shapes_scenes import COLORS, QUESTION_FAMILIES, SHAPES, Scene
from lrcn.data.vqa2 import image_key
from lrcn.features.writer import StoreWriter

GRID = 8


def ideal_grid(scene: Scene) -> np.ndarray:
    """(GRID, GRID, colours + shapes): one-hot colour and shape in the cell of each object."""
    grid = np.zeros((GRID, GRID, len(COLORS) + len(SHAPES)), dtype=np.float32)
    colors, shapes = list(COLORS), list(SHAPES)
    for o in scene.objects:
        row = min(GRID - 1, int(o.y / scene.size * GRID))
        col = min(GRID - 1, int(o.x / scene.size * GRID))
        grid[row, col, colors.index(o.color)] = 1.0
        grid[row, col, len(colors) + shapes.index(o.shape)] = 1.0
    return grid


def write_ideal_store(out: Path, scenes: dict[str, Scene]) -> None:
    """A grid feature store of `ideal_grid` for every scene, keyed by its image path."""
    keys = list(scenes)
    writer = StoreWriter(out, len(keys), (GRID, GRID, len(COLORS) + len(SHAPES)), "float32",
                         "grid", with_mask=False, keys=keys,
                         source={"made_by": "benchmarks/binding_probe.py", "kind": "ideal"})
    writer.write(0, np.stack([ideal_grid(scenes[k]) for k in keys]))
    writer.finish()


def per_epoch(run_dir: Path) -> list[dict[str, float]]:
    """Validation accuracy per family (and overall) after each epoch, from metrics.jsonl."""
    rows = []
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            val = json.loads(line)["val"]
            rows.append({"overall": round(val["overall"], 1),
                         **{k: round(v, 1) for k, v in val["per_question_type"].items()}})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--scenes", type=int, default=3000, help="training scenes")
    parser.add_argument("--questions", type=int, default=5, help="questions per scene")
    parser.add_argument("--work", help="folder for the data and runs (default: temporary)")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="lrcn-probe-"))
    root = work / "data"
    root.mkdir(parents=True)
    scenes: dict[str, Scene] = {}
    write_vqa2_layout(root, seed=7, sizes={"train2014": args.scenes, "val2014": 300},
                      questions_per_image=args.questions,
                      on_scene=lambda split, i, scene: scenes.__setitem__(image_key(split, i),
                                                                          scene))
    write_ideal_store(work / "ideal-store", scenes)
    common = ["--dataset", "vqa2", "--data-root", str(root), "--config", "own-data",
              "--epochs", str(args.epochs)]
    result = {"scenes": args.scenes, "questions_per_scene": args.questions,
              "epochs": args.epochs}
    for name, extra in (("ideal grid", ["--features", str(work / "ideal-store")]),
                        ("pixels", [])):
        run_dir = work / name.replace(" ", "-")
        _, seconds = run_lrcn_train([*common, *extra], run_dir)
        result[name] = {"wall_seconds": round(seconds, 1), "per_epoch": per_epoch(run_dir)}
    if not args.json:
        for name in ("ideal grid", "pixels"):
            print(f"\n{name} ({result[name]['wall_seconds'] / 60:.1f} min): validation "
                  "accuracy per family after each epoch")
            print("| epoch | overall | " + " | ".join(QUESTION_FAMILIES) + " |")
            print("|---" * (len(QUESTION_FAMILIES) + 2) + "|")
            for e, row in enumerate(result[name]["per_epoch"], 1):
                print(f"| {e} | {row['overall']} | "
                      + " | ".join(str(row.get(f, "")) for f in QUESTION_FAMILIES) + " |")
    print(json.dumps(result))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
