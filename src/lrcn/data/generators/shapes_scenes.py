"""Scenes of several coloured shapes, and questions about them that need the image.

The building blocks of the bundled relational dataset (``relational_shapes``) and
of the test data of the tests and benchmarks: a scene is a few objects, each a distinct
colour, one of a few shapes, at a random place; questions name an object by its colour and
ask about its attributes, where it is, and how it relates to the other objects, in the
manner of Sort-of-CLEVR (Santoro et al. 2017):

* non-relational: the shape of a named object; which half of the image it is in (left or
  right, top or bottom);
* relational: the shape of the object nearest to / furthest from a named object; how many
  objects share a named object's shape; whether two named objects have the same shape.

Each question carries its family (``QUESTION_FAMILIES``), used as the VQA ``question_type``
so that per-question-type accuracy is accuracy per family. Everything is drawn from a
``numpy.random.Generator``: the same seed gives the same scenes and questions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from lrcn.errors import LrcnError

__all__ = [
    "COLORS", "NON_RELATIONAL", "QUESTION_FAMILIES", "RELATIONAL", "SHAPES", "Question",
    "Scene", "SceneObject", "SceneStyle", "ask", "check_families", "draw_scene", "make_scene",
]

COLORS = {  # Sort-of-CLEVR's palette
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "orange": (255, 156, 0), "gray": (128, 128, 128), "yellow": (255, 255, 0),
}
SHAPES = ("circle", "square", "triangle")
NON_RELATIONAL = ("shape", "left or right", "top or bottom")
RELATIONAL = ("nearest shape", "furthest shape", "count same shape", "same shape")
QUESTION_FAMILIES = NON_RELATIONAL + RELATIONAL
BACKGROUND = (255, 255, 255)
PLACEMENT_TRIES = 10_000  # the default style needs about 11 on average

# Each family's phrasings; {a} and {b} are colour names. Several per family so that a model
# learns the words, not one template.
TEMPLATES = {
    "shape": ("what shape is the {a} object?", "what is the shape of the {a} object?"),
    "left or right": ("is the {a} object on the left or the right?",
                      "is the {a} object in the left or right half of the image?"),
    "top or bottom": ("is the {a} object at the top or the bottom?",
                      "is the {a} object in the top or bottom half of the image?"),
    "nearest shape": ("what shape is the object nearest to the {a} object?",
                      "what is the shape of the object closest to the {a} one?"),
    "furthest shape": ("what shape is the object furthest from the {a} object?",
                       "what is the shape of the object farthest from the {a} one?"),
    "count same shape": ("how many objects have the same shape as the {a} object?",
                         "how many objects are the same shape as the {a} one?"),
    "same shape": ("do the {a} object and the {b} object have the same shape?",
                   "are the {a} and {b} objects the same shape?"),
}


@dataclass(frozen=True)
class SceneStyle:
    """How scenes look: image size, object size and count, the colours and shapes drawn."""

    image_size: int = 75                 # pixels, square
    object_size: int = 10                # width of a square, diameter of a circle, pixels
    objects: tuple[int, int] = (6, 6)    # fewest and most objects in a scene
    colors: tuple[str, ...] = tuple(COLORS)
    shapes: tuple[str, ...] = SHAPES

    def __post_init__(self) -> None:
        for what, names, known in (("colors", self.colors, tuple(COLORS)),
                                   ("shapes", self.shapes, SHAPES)):
            if not names or len(set(names)) != len(names) or not set(names) <= set(known):
                raise ValueError(f"{what} {names}: need distinct names from "
                                 f"{', '.join(known)}")
        if not 1 <= self.objects[0] <= self.objects[1] <= len(self.colors):
            raise ValueError(f"objects {self.objects}: need 1 <= fewest <= most <= "
                             f"{len(self.colors)} colours")
        if self.image_size < 3 * self.object_size:
            raise ValueError(f"image_size {self.image_size} is too small for objects of "
                             f"{self.object_size} pixels")


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    x: float  # centre, pixels from the left
    y: float  # centre, pixels from the top


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    size: int

    def by_color(self, color: str) -> SceneObject:
        return next(o for o in self.objects if o.color == color)


@dataclass(frozen=True)
class Question:
    family: str         # one of QUESTION_FAMILIES
    question: str
    answer: str
    answer_type: str    # yes/no | number | other, as VQA-v2


def check_families(families: tuple[str, ...], style: SceneStyle) -> None:
    """Refuse question families that are unknown, or that scenes of ``style`` cannot pose."""
    unknown = [f for f in families if f not in QUESTION_FAMILIES]
    if not families or unknown:
        raise LrcnError(f"question families must be some of {', '.join(QUESTION_FAMILIES)}; "
                        f"got {list(families)!r}")
    if style.objects[0] < 2 and all(f in RELATIONAL for f in families):
        raise LrcnError(f"scenes of {style.objects[0]} object cannot pose any of the families "
                        f"{', '.join(families)} (relations need two)")


def make_scene(rng: np.random.Generator, style: SceneStyle) -> Scene:
    """Objects of distinct colours at places where they do not overlap (rejection sampling)."""
    n = int(rng.integers(style.objects[0], style.objects[1] + 1))
    colors = [style.colors[i] for i in rng.permutation(len(style.colors))[:n]]
    half = style.object_size / 2
    gap = style.object_size * 1.5  # between centres (> object_size * sqrt 2): never touch
    for _ in range(PLACEMENT_TRIES):
        centres = rng.uniform(half, style.image_size - half, size=(n, 2))
        d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        if n == 1 or d[np.triu_indices(n, 1)].min() >= gap:
            break
    else:
        raise ValueError(f"could not place {n} objects of {style.object_size} pixels "
                         f"{gap:g} pixels apart in a {style.image_size}-pixel image in "
                         f"{PLACEMENT_TRIES} tries: too many or too large objects")
    objects = tuple(
        SceneObject(c, style.shapes[int(rng.integers(len(style.shapes)))], float(x), float(y))
        for c, (x, y) in zip(colors, centres))
    return Scene(objects, style.image_size)


def draw_scene(scene: Scene, style: SceneStyle) -> np.ndarray:
    """The scene as a (size, size, 3) uint8 image, objects filled on a white background."""
    image = Image.new("RGB", (scene.size, scene.size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    r = style.object_size / 2
    for o in scene.objects:
        box = (o.x - r, o.y - r, o.x + r, o.y + r)
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(box, fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(o.x, o.y - r), (o.x - r, o.y + r), (o.x + r, o.y + r)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
    return np.asarray(image)


def _answer(scene: Scene, family: str, a: SceneObject, b: SceneObject | None) -> tuple[str, str]:
    """(answer, answer type) of a ``family`` question about object ``a`` (and ``b``)."""
    others = [o for o in scene.objects if o is not a]
    distance = [np.hypot(o.x - a.x, o.y - a.y) for o in others]
    half = scene.size / 2
    if family == "shape":
        answer, kind = a.shape, "other"
    elif family == "left or right":
        answer, kind = ("left" if a.x < half else "right"), "other"
    elif family == "top or bottom":
        answer, kind = ("top" if a.y < half else "bottom"), "other"
    elif family == "nearest shape":
        answer, kind = others[int(np.argmin(distance))].shape, "other"
    elif family == "furthest shape":
        answer, kind = others[int(np.argmax(distance))].shape, "other"
    elif family == "count same shape":
        answer, kind = str(sum(o.shape == a.shape for o in scene.objects)), "number"
    elif family == "same shape":
        answer, kind = ("yes" if a.shape == b.shape else "no"), "yes/no"
    else:
        raise ValueError(f"unknown question family {family!r}")
    return answer, kind


def ask(scene: Scene, family: str, rng: np.random.Generator) -> Question | None:
    """A question of ``family`` about a random object of the scene, with its answer; None
    where the scene cannot pose it (a relation needs two objects)."""
    if family in RELATIONAL and len(scene.objects) < 2:
        return None
    picks = rng.permutation(len(scene.objects))
    a = scene.objects[int(picks[0])]
    b = scene.objects[int(picks[1])] if family == "same shape" else None
    templates = TEMPLATES[family]
    text = templates[int(rng.integers(len(templates)))].format(
        a=a.color, b=b.color if b is not None else "")
    return Question(family, text, *_answer(scene, family, a, b))
