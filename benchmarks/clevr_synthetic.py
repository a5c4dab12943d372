"""Benchmark: CLEVR-style data of one's own, trained from pixels with the documented command.

Target (issue: CLEVR): a CLEVR v1.0-layout dataset of synthetic scenes reaches >= 85%
accuracy in <= 30 minutes on a 2-core CPU with

    lrcn train --dataset clevr --data-root D

and no other flag, with ``per_question_type`` in its JSON, and ``lrcn evaluate --split test``
answers every test question.

The scenes are drawn here in 2-D, in CLEVR's vocabulary: 3-6 objects (``--objects``), each a
shape (cube: square, sphere: circle, cylinder: upright rectangle), one of CLEVR's eight
colours, large or small, rubber (matte) or metal (a white highlight), on a grey 480 x 320
canvas. Questions follow CLEVR's answering functions, each with its program: exist, count,
the integer comparisons (equal_integer, less_than, greater_than), attribute queries about an
object a description singles out, and attribute comparisons of two such objects. The test
split has no answers, as published.

    python benchmarks/clevr_synthetic.py [--work DIR] [--train-images N] [--seed S]
        [--objects MIN-MAX] [--json] [-- FLAGS for lrcn train]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lrcn_run import run_lrcn_train

TARGET_ACCURACY = 85.0
TARGET_SECONDS = 30 * 60
WIDTH, HEIGHT = 480, 320
COLORS = {"gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215),
          "green": (29, 105, 20), "brown": (129, 74, 25), "purple": (129, 38, 192),
          "cyan": (41, 208, 208), "yellow": (255, 238, 51)}
SHAPES = ("cube", "sphere", "cylinder")
SIZES = {"large": 34, "small": 19}  # half-width in pixels
MATERIALS = ("rubber", "metal")
ATTRIBUTES = ("size", "color", "material", "shape")
QUESTIONS_PER_IMAGE = 10


def make_scene(rng: np.random.Generator, objects_range: tuple[int, int] = (3, 6)
               ) -> list[dict[str, Any]]:
    """`objects_range` (3-6) objects with random attributes, at places where they do not overlap
    (where a free place is found in 1,000 draws)."""
    objects: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(objects_range[0], objects_range[1] + 1))):
        for _ in range(1000):
            size = str(rng.choice(list(SIZES)))
            r = SIZES[size]
            x, y = int(rng.integers(r + 4, WIDTH - r - 4)), int(rng.integers(r + 4, HEIGHT - r - 4))
            if all(abs(x - o["x"]) > r + SIZES[o["size"]] + 6 or
                   abs(y - o["y"]) > r + SIZES[o["size"]] + 6 for o in objects):
                break
        objects.append({"shape": str(rng.choice(SHAPES)), "color": str(rng.choice(list(COLORS))),
                        "size": size, "material": str(rng.choice(MATERIALS)), "x": x, "y": y})
    return objects


def draw_scene(objects: list[dict[str, Any]]) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 124))
    draw = ImageDraw.Draw(image)
    for o in objects:
        r, x, y, fill = SIZES[o["size"]], o["x"], o["y"], COLORS[o["color"]]
        if o["shape"] == "cube":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        elif o["shape"] == "sphere":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.rectangle((x - r * 0.6, y - r, x + r * 0.6, y + r), fill=fill)
        if o["material"] == "metal":
            h = max(3, r // 3)
            draw.ellipse((x - h, y - h, x + h, y + h), fill=(245, 245, 245))
    return image


def describe(o: dict[str, Any], rng: np.random.Generator, drop: str | None = None) -> dict[str, str]:
    """A random subset of an object's attributes (its shape or 'thing' as the noun)."""
    keys = [k for k in ("size", "color", "material") if k != drop and rng.random() < 0.5]
    desc = {k: o[k] for k in keys}
    if drop != "shape" and rng.random() < 0.7:
        desc["shape"] = o["shape"]
    return desc


def phrase(desc: dict[str, str], plural: bool = False) -> str:
    noun = desc.get("shape", "thing")
    if plural:
        noun = {"cube": "cubes", "sphere": "spheres", "cylinder": "cylinders"}.get(noun, "things")
    words = [desc[k] for k in ("size", "color", "material") if k in desc]
    return " ".join([*words, noun])


def matches(objects: list[dict[str, Any]], desc: dict[str, str]) -> list[dict[str, Any]]:
    return [o for o in objects if all(o[k] == v for k, v in desc.items())]


def program(desc_list: list[dict[str, str]], tail: list[str]) -> list[dict[str, Any]]:
    """A CLEVR program: for each description, scene then its filters (then unique when the
    tail needs one object); then the answering steps."""
    steps: list[dict[str, Any]] = []
    for desc in desc_list:
        steps.append({"function": "scene", "inputs": [], "value_inputs": []})
        for k, v in desc.items():
            steps.append({"function": f"filter_{k}", "inputs": [len(steps) - 1],
                          "value_inputs": [v]})
    for f in tail:
        steps.append({"function": f, "inputs": [len(steps) - 1], "value_inputs": []})
    return steps


def ask(objects: list[dict[str, Any]], rng: np.random.Generator) -> tuple[str, str, list] | None:
    """One question of a random answering function, or None when this scene cannot give it."""
    kind = rng.choice(["exist", "count", "compare_numbers", "query", "compare_attribute"])
    if kind == "exist":
        seen = rng.random() < 0.5
        o = objects[int(rng.integers(len(objects)))]
        desc = describe(o, rng) if seen else {
            "color": str(rng.choice(list(COLORS))), "shape": str(rng.choice(SHAPES))}
        answer = "yes" if matches(objects, desc) else "no"
        return f"Are there any {phrase(desc, True)}?", answer, program([desc], ["exist"])
    if kind == "count":
        desc = describe(objects[int(rng.integers(len(objects)))], rng)
        return (f"How many {phrase(desc, True)} are there?", str(len(matches(objects, desc))),
                program([desc], ["count"]))
    if kind == "compare_numbers":
        a, b = (describe(objects[int(rng.integers(len(objects)))], rng) for _ in range(2))
        if a == b:
            return None
        na, nb = len(matches(objects, a)), len(matches(objects, b))
        f = str(rng.choice(["greater_than", "less_than", "equal_integer"]))
        text = {"greater_than": "Are there more {a} than {b}?",
                "less_than": "Are there fewer {a} than {b}?",
                "equal_integer": "Are there the same number of {a} and {b}?"}[f]
        answer = {"greater_than": na > nb, "less_than": na < nb, "equal_integer": na == nb}[f]
        return (text.format(a=phrase(a, True), b=phrase(b, True)), "yes" if answer else "no",
                program([a, b], ["count", f]))
    attribute = str(rng.choice(ATTRIBUTES))
    unique = [(o, d) for o in objects for d in [describe(o, rng, drop=attribute)]
              if len(matches(objects, d)) == 1]
    if kind == "query":
        if not unique:
            return None
        o, d = unique[int(rng.integers(len(unique)))]
        return (f"What {attribute} is the {phrase(d)}?", o[attribute],
                program([d], ["unique", f"query_{attribute}"]))
    if len(unique) < 2:
        return None
    i, j = rng.choice(len(unique), size=2, replace=False)
    (oa, da), (ob, db) = unique[int(i)], unique[int(j)]
    same = oa[attribute] == ob[attribute]
    return (f"Is the {phrase(da)} the same {attribute} as the {phrase(db)}?",
            "yes" if same else "no", program([da, db], ["unique", f"equal_{attribute}"]))


def write_layout(root: Path, sizes: dict[str, int], seed: int,
                 objects_range: tuple[int, int] = (3, 6)) -> None:
    """CLEVR_v1.0/questions/CLEVR_<split>_questions.json and images/<split>/*.png."""
    rng = np.random.default_rng(seed)
    for split, count in sizes.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        questions = []
        for index in range(count):
            objects = make_scene(rng, objects_range)
            name = f"CLEVR_{split}_{index:06d}.png"
            draw_scene(objects).save(root / "images" / split / name)
            asked = 0
            while asked < QUESTIONS_PER_IMAGE:
                q = ask(objects, rng)
                if q is None:
                    continue
                record = {"question_index": len(questions), "image_index": index,
                          "image_filename": name, "split": split, "question": q[0]}
                if split != "test":
                    record.update(answer=q[1], program=q[2], question_family_index=0)
                questions.append(record)
                asked += 1
        (root / "questions").mkdir(exist_ok=True)
        (root / "questions" / f"CLEVR_{split}_questions.json").write_text(
            json.dumps({"info": {"split": split, "version": "1.0"}, "questions": questions}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder for the data and the run (default: temporary)")
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--objects", default="3-6", help="objects a scene, MIN-MAX (CLEVR: 3-10)")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    parser.add_argument("extra", nargs="*", help="extra flags for lrcn train (after --)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="lrcn-clevr-"))
    root = work / "CLEVR_v1.0"
    if not root.exists():
        low, high = (int(n) for n in args.objects.split("-"))
        write_layout(root, {"train": args.train_images, "val": 500, "test": 200}, args.seed,
                     (low, high))
    summary, seconds = run_lrcn_train(["--dataset", "clevr", "--data-root", str(root),
                                       *args.extra], work / "run")
    test = subprocess.run([sys.executable, "-m", "lrcn", "evaluate", "--checkpoint",
                           str(work / "run"), "--split", "test", "--json"],
                          stdout=subprocess.PIPE, text=True, check=True)
    written = json.loads(Path(json.loads(test.stdout.strip().splitlines()[-1])["results"])
                         .read_text())
    result = {
        "wall_seconds": round(seconds, 1), "overall": round(summary["overall"], 2),
        "per_question_type": {k: round(v, 2) for k, v in summary["per_question_type"].items()},
        "per_answer_type": {k: round(v, 2) for k, v in summary["per_answer_type"].items()},
        "epochs": summary["epochs"], "test_answers": len(written), "run_dir": str(work / "run"),
        "meets_accuracy_target": summary["overall"] >= TARGET_ACCURACY,
        "meets_time_target": seconds <= TARGET_SECONDS,
    }
    if not args.json:
        print(f"wall-clock {seconds / 60:.1f} min (target <= 30), overall {summary['overall']:.2f}% "
              f"(target >= {TARGET_ACCURACY}), {len(written)} test answers")
        for kind, value in sorted(result["per_question_type"].items()):
            print(f"  {kind}: {value:.2f}%")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
