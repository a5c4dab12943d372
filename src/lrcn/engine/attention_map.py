"""Where the model looked: one picture of a prediction's attention, for ``lrcn predict``.

The figure, top to bottom: the image (scaled by `display_size`) with the image attention
blended over it as a heat map, a colour bar, the question with each word shaded by its
attention weight, the top answers with their scores and, with that head, P(answerable).

Both maps are scaled to their own maximum: the hottest region and the most-read word get the
full colour, so a map shows *relative* attention (the colour bar states the maximum weight).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lrcn.data.text import tokenize
from lrcn.engine.inference import Prediction
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write

MIN_SIDE = 256        # a smaller image is upscaled until its shorter side is this long
MAX_SIDE = 768        # a larger image is downscaled until its longer side is this long
MARGIN = 12           # blank border around everything, and the gap between sections
COLORMAP = "turbo"    # heat-map colours, low -> high attention
MAX_ALPHA = 0.65      # heat-map opacity at the hottest point; 0 where the weight is 0
WORD_COLOR = (230, 85, 13)  # background of the most-read word; others fade towards white
MAX_ANSWERS = 5       # answers listed under the question
FONT_SIZE = 14
BAR_HEIGHT = 10       # the colour bar under the image
LINE_GAP = 4          # between text lines, and the padding around a shaded word
TEXT = (20, 20, 20)
MUTED = (140, 140, 140)
BACKGROUND = (255, 255, 255)


Box = tuple[int, int, int, int]  # (left, top, right, bottom), right and bottom exclusive


@dataclass
class AttentionMapLayout:
    """Where every part of the figure goes; `render_attention_map` draws exactly this."""

    size: tuple[int, int]                 # (width, height) of the whole figure
    image_box: Box                        # the displayed image (and its heat map)
    bar_box: Box | None                   # the colour bar; None without image attention
    word_boxes: list[Box]                 # one shaded box per word the model read, in order
    texts: list[tuple[int, int, str, tuple[int, int, int]]] = field(default_factory=list)
    # ^ (x, y, text, colour) of every other line or word drawn


def display_size(width: int, height: int) -> tuple[int, int]:
    """The size an image is shown at: shorter side at least MIN_SIDE, longer at most MAX_SIDE
    (the first wins for extreme aspect ratios); an image within both is left as it is."""
    if min(width, height) < MIN_SIDE:
        scale = MIN_SIDE / min(width, height)
    else:
        scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans as bundled with matplotlib (the same on every machine), else Pillow's own."""
    import matplotlib

    try:
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" /
                                      "DejaVuSans.ttf"), size)
    except OSError:
        return ImageFont.load_default(size)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """`text` broken at spaces into lines at most `width` pixels long (a longer word alone)."""
    lines = [""]
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines[-1] else word
        if lines[-1] and font.getlength(candidate) > width:
            lines.append(word)
        else:
            lines[-1] = candidate
    return lines


def _check(prediction: Prediction) -> np.ndarray | None:
    """The image attention as an (h, w) array (None when empty); LrcnError when malformed."""
    tokens, weights = prediction.question_tokens, prediction.question_attention
    if weights and len(weights) != len(tokens):
        raise LrcnError(f"prediction has {len(weights)} question attention weights for "
                        f"{len(tokens)} words")
    if not prediction.image_attention:
        return None
    rows = {len(row) for row in prediction.image_attention}
    if len(rows) != 1 or 0 in rows:
        raise LrcnError(f"prediction image attention is not a grid: row lengths {sorted(rows)}")
    grid = np.asarray(prediction.image_attention, dtype=np.float32)  # (h, w)
    if not np.isfinite(grid).all() or (grid < 0).any():
        raise LrcnError("prediction image attention has negative or non-finite weights")
    return grid


def attention_map_layout(image_size: tuple[int, int], prediction: Prediction,
                         question: str | None = None) -> AttentionMapLayout:
    """Lay out the figure for an image of `image_size` (width, height); nothing is drawn.

    Words of `question` beyond the ones the model read (it truncates long questions) are
    listed in grey after the shaded ones.
    """
    grid = _check(prediction)
    font = _font()
    line = FONT_SIZE + 2 * LINE_GAP  # height of one text line, a shaded word's box included
    w, h = display_size(*image_size)
    width = w + 2 * MARGIN
    right = width - MARGIN
    image_box = (MARGIN, MARGIN, MARGIN + w, MARGIN + h)
    texts: list[tuple[int, int, str, tuple[int, int, int]]] = []
    y = image_box[3] + LINE_GAP

    bar_box = None
    if grid is None:
        texts.append((MARGIN, y, "no image attention: this model does not read the image", MUTED))
        y += line
    else:
        bar_box = (MARGIN, y, right, y + BAR_HEIGHT)
        y = bar_box[3] + LINE_GAP
        texts.append((MARGIN, y, "0", MUTED))
        label = f"image attention, max {float(grid.max()):.3g}"
        texts.append((right - round(font.getlength(label)), y, label, MUTED))
        y += FONT_SIZE + MARGIN

    # The question, word by word, wrapped to the image width.
    words = [(word, True) for word in prediction.question_tokens]
    if question is not None:
        words += [(word, False) for word in tokenize(question)[len(words):]]
    word_boxes: list[Box] = []
    x = MARGIN + round(font.getlength("Q: "))
    texts.append((MARGIN, y + LINE_GAP, "Q:", TEXT))
    for word, read in words:
        box_w = round(font.getlength(word)) + 2 * LINE_GAP
        if x + box_w > right and x > MARGIN:
            x, y = MARGIN, y + line + LINE_GAP
        if read:
            word_boxes.append((x, y, x + box_w, y + line))
        texts.append((x + LINE_GAP, y + LINE_GAP, word, TEXT if read else MUTED))
        x += box_w + LINE_GAP
    y += line + LINE_GAP
    notes = []
    if len(words) > len(prediction.question_tokens):
        notes.append("grey words: past the question length the model reads")
    if not prediction.question_attention and prediction.question_tokens:
        notes.append("no question attention: this model does not read the question")
    answers = [f"{float(a['score']):6.1%}  {a['answer']}"
               for a in prediction.answers[:MAX_ANSWERS]]
    if prediction.answerable is not None:
        answers.append(f"P(answerable) = {prediction.answerable:.1%}")
    for text in notes:
        for part in _wrap(text, font, right - MARGIN):
            texts.append((MARGIN, y, part, MUTED))
            y += line
    y += MARGIN - LINE_GAP
    for text in answers:
        for part in _wrap(text, font, right - MARGIN):
            texts.append((MARGIN, y, part, TEXT))
            y += line
    return AttentionMapLayout((width, y + MARGIN), image_box, bar_box, word_boxes, texts)


def _colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> RGB floats in [0, 1] (shape + (3,))."""
    import matplotlib

    return matplotlib.colormaps[COLORMAP](values)[..., :3]


def render_attention_map(image: Image.Image, prediction: Prediction,
                         question: str | None = None) -> Image.Image:
    """Draw where the model looked for `prediction` on `image` (the one it was given).

    Returns an RGB image laid out by `attention_map_layout`: as wide as the displayed
    image plus 2 * MARGIN. The heat map is the attention grid upsampled bilinearly to the
    displayed image (the model sees the whole image, resized to a square), coloured and
    blended with opacity proportional to weight / max weight. A model without image
    attention gets the plain image and a note.
    """
    grid = _check(prediction)
    layout = attention_map_layout(image.size, prediction, question)
    left, top, right, bottom = layout.image_box
    w, h = right - left, bottom - top
    resample = Image.Resampling.NEAREST if w >= image.width else Image.Resampling.BICUBIC
    shown = image.convert("RGB").resize((w, h), resample)
    if grid is not None and grid.max() > 0:
        heat = Image.fromarray((grid / grid.max()).astype(np.float32)).resize(
            (w, h), Image.Resampling.BILINEAR)
        value = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)[..., None]  # (h, w, 1)
        pixels = np.asarray(shown, dtype=np.float32) / 255.0                    # (h, w, 3)
        alpha = MAX_ALPHA * value
        blended = (1 - alpha) * pixels + alpha * _colormap(value[..., 0])
        shown = Image.fromarray(np.round(blended * 255).astype(np.uint8))

    figure = Image.new("RGB", layout.size, BACKGROUND)
    figure.paste(shown, (left, top))
    draw = ImageDraw.Draw(figure)
    if layout.bar_box is not None:
        bl, bt, br, bb = layout.bar_box
        ramp = _colormap(np.linspace(0.0, 1.0, br - bl))  # (bar width, 3)
        bar = np.broadcast_to(ramp, (bb - bt, br - bl, 3))
        figure.paste(Image.fromarray(np.round(bar * 255).astype(np.uint8)), (bl, bt))
    weights = prediction.question_attention
    top_weight = max(weights, default=0.0)
    for i, box in enumerate(layout.word_boxes):
        strength = weights[i] / top_weight if weights and top_weight > 0 else 0.0
        fill = tuple(round(255 + strength * (c - 255)) for c in WORD_COLOR)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=fill)
    font = _font()
    for x, y, text, colour in layout.texts:
        draw.text((x, y), text, fill=colour, font=font)
    return figure


def check_png_path(path: str | Path) -> Path:
    """`path` as a Path if a PNG can be written there; LrcnError naming it otherwise.

    A missing parent folder is fine: `save_attention_map` creates it.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise LrcnError(f"attention map {path}: the file name must end in .png")
    if path.is_dir():
        raise LrcnError(f"attention map {path}: is a folder; give a file name such as "
                        f"{path / 'attention.png'}")
    return path


def save_attention_map(figure: Image.Image, path: str | Path) -> Path:
    """Write `figure` as a PNG at `path` atomically (parent folders created); returns the path."""
    path = check_png_path(path)
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG")
    try:
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
    except OSError as exc:
        raise LrcnError(f"cannot write attention map {path}: {exc.strerror or exc}") from None
    return path
