"""Example images for the demo page: easy-VQA test images with a question each.

The images come from the installed ``easy_vqa`` package (a dependency), so nothing is
copied into this package; an example whose file is missing is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    name: str      # URL-safe name: /api/examples/<name>
    image_id: int  # easy-VQA test image
    question: str  # a question the bundled models can answer


EXAMPLES = (
    Example("red-triangle", 0, "What is the red shape?"),
    Example("yellow-rectangle", 1, "What is the color of the rectangle?"),
    Example("blue-triangle", 2, "Is there a blue shape?"),
    Example("yellow-circle", 3, "What color is the circle?"),
    Example("brown-circle", 5, "What shape does the image contain?"),
    Example("black-rectangle", 11, "Is there a yellow shape?"),
)


def easy_vqa_test_images() -> Path | None:
    """The easy-VQA test image folder, or None when the package is not installed."""
    try:
        import easy_vqa
    except ImportError:
        return None
    return Path(easy_vqa.__file__).parent / "data" / "test" / "images"


def available_examples() -> dict[str, tuple[Example, Path]]:
    """Every example whose image exists, by name, with its file."""
    folder = easy_vqa_test_images()
    if folder is None:
        return {}
    found = {}
    for example in EXAMPLES:
        path = folder / f"{example.image_id}.png"
        if path.is_file():
            found[example.name] = (example, path)
    return found
