"""Attention maps: the weights `predict_images` returns, the figure drawn from them, and
``lrcn predict --attention-map``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from lrcn.cli import print_human
from lrcn.data.images import load_image
from lrcn.data.text import tokenize
from lrcn.engine.inference import Prediction, load_model, predict_images
from lrcn.errors import LrcnError
from lrcn.engine.attention_map import (MARGIN, MAX_ANSWERS, attention_map_layout, display_size,
                                      render_attention_map, save_attention_map)

QUESTION = "what color is the shape?"
LONG_QUESTION = ("is there a shape in the image and if there is one what color is it and "
                 "is it a circle or a triangle")  # 24 words, more than the 14 read


@pytest.fixture(scope="module")
def run(tiny_easyvqa_run: Path) -> Path:
    return tiny_easyvqa_run


def easyvqa_image() -> Path:
    import easy_vqa

    path = Path(easy_vqa.__file__).resolve().parent / "data" / "test" / "images" / "0.png"
    assert path.is_file()
    return path


def make_prediction(grid: list[list[float]], words: list[str] | None = None,
                    weights: list[float] | None = None, answerable: float | None = None,
                    answers: int = 3) -> Prediction:
    words = ["what", "color", "is"] if words is None else words
    weights = [1.0 / len(words)] * len(words) if weights is None else weights
    return Prediction(answers=[{"answer": f"answer{i}", "score": 0.9 - 0.1 * i}
                               for i in range(answers)],
                      answerable=answerable, image_attention=grid, question_tokens=words,
                      question_attention=weights)


def one_hot_grid(rows: int, cols: int, r: int, c: int) -> list[list[float]]:
    grid = [[0.0] * cols for _ in range(rows)]
    grid[r][c] = 1.0
    return grid


def image_region(figure: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(figure.crop(box), dtype=np.float32)  # (h, w, 3)


# --------------------------------------------------------------------------- predict_images


def test_predict_images_weights_come_from_one_forward(run: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model(run)
    max_len = loaded.checkpoint.config.data.max_question_tokens
    assert max_len == 14 and loaded.checkpoint.config.model.image_encoder == "small_cnn"
    image = load_image(easyvqa_image())
    outputs = []
    forward_all = loaded.model.forward_all

    def spy(*args, **kwargs):
        out = forward_all(*args, **kwargs)
        outputs.append(out)
        return out

    monkeypatch.setattr(loaded.model, "forward_all", spy)
    questions = [QUESTION, LONG_QUESTION]
    predictions = predict_images(loaded, [image, image], questions, top_k=3)
    assert len(outputs) == 1, "one forward pass for answers and attention"
    out = outputs[0]
    for b, (question, p) in enumerate(zip(questions, predictions)):
        grid = torch.tensor(p.image_attention)
        assert grid.shape == (4, 4)  # the small CNN's 8 x 8 grid, reduced (grid_reduction conv)
        assert grid.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert (grid >= 0).all()
        assert p.question_tokens == tokenize(question)[:max_len]
        assert len(p.question_attention) == len(p.question_tokens)
        assert sum(p.question_attention) == pytest.approx(1.0, abs=1e-5)  # padding gets none
        # Exactly the weights of that one pass, and its answer scores.
        assert grid.flatten().tolist() == out.image_weights[b].tolist()
        n = len(p.question_tokens)
        assert p.question_attention == out.question_weights[b, :n].tolist()
        assert out.question_weights[b, n:].abs().sum().item() == 0.0
        top = torch.sigmoid(out.answer[b]).topk(3)
        assert [a["score"] for a in p.answers] == top.values.tolist()
        assert [a["answer"] for a in p.answers] == \
            [loaded.answer_vocab.answer(i) for i in top.indices.tolist()]
    assert len(predictions[1].question_tokens) == 14 < len(tokenize(LONG_QUESTION))

    again = predict_images(loaded, [image, image], questions, top_k=3)
    assert [p.to_dict() for p in again] == [p.to_dict() for p in predictions]  # eval mode


# --------------------------------------------------------------------------- the figure


def test_display_size() -> None:
    assert display_size(64, 64) == (256, 256)            # small: shorter side -> 256
    assert display_size(64, 32) == (512, 256)
    assert display_size(300, 400) == (300, 400)          # within bounds: as it is
    assert display_size(1600, 1200) == (768, 576)        # large: longer side -> 768


def test_figure_size_and_image_box() -> None:
    image = Image.new("RGB", (64, 48), (128, 128, 128))
    prediction = make_prediction(one_hot_grid(8, 8, 0, 0))
    figure = render_attention_map(image, prediction, QUESTION)
    layout = attention_map_layout(image.size, prediction, QUESTION)
    w, h = display_size(64, 48)
    assert (w, h) == (341, 256)
    assert figure.mode == "RGB" and figure.size == layout.size
    assert figure.width == w + 2 * MARGIN and figure.height > h + 2 * MARGIN
    assert layout.image_box == (MARGIN, MARGIN, MARGIN + w, MARGIN + h)


@pytest.mark.parametrize("hot", [(0, 0), (0, 3), (1, 3)])
def test_heat_map_where_the_weight_is(hot: tuple[int, int]) -> None:
    # A non-square grid on a non-square image: a transposed or flipped map fails.
    gray = 128.0
    image = Image.new("RGB", (64, 32), (128, 128, 128))
    prediction = make_prediction(one_hot_grid(2, 4, *hot))
    figure = render_attention_map(image, prediction)
    left, top, right, bottom = attention_map_layout(image.size, prediction).image_box
    cell_w, cell_h = (right - left) // 4, (bottom - top) // 2

    def change(r: int, c: int) -> float:  # mean change over the middle of a cell
        x0, y0 = left + c * cell_w + cell_w // 4, top + r * cell_h + cell_h // 4
        return float(np.abs(image_region(figure, (x0, y0, x0 + cell_w // 2,
                                                  y0 + cell_h // 2)) - gray).mean())

    hot_change = change(*hot)
    assert hot_change > 30
    far = (1 - hot[0], 3 - hot[1])
    assert far != hot and change(*far) < 1
    for r in range(2):
        for c in range(4):
            if (r, c) != hot:
                assert change(r, c) < hot_change / 3


def test_words_shaded_by_attention() -> None:
    words, weights = ["what", "color", "is", "the", "shape"], [0.2, 0.5, 0.05, 0.05, 0.2]
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    prediction = make_prediction(one_hot_grid(8, 8, 4, 4), words, weights)
    figure = render_attention_map(image, prediction, QUESTION)
    boxes = attention_map_layout(image.size, prediction, QUESTION).word_boxes
    assert len(boxes) == len(words)
    # The padding corner of each word's box: white for no weight, darker the more weight.
    shade = [np.asarray(figure.getpixel((box[0] + 1, box[1] + 1)), dtype=float) for box in boxes]
    brightness = [s.sum() for s in shade]
    saturation = [s.max() - s.min() for s in shade]
    assert brightness[1] < brightness[0] < brightness[2]
    assert saturation[1] > saturation[0] > saturation[2]
    assert brightness[0] == brightness[4] and brightness[2] == brightness[3]
    assert brightness[1] < 3 * 255 - 200  # the most-read word is strongly coloured


def test_long_question_unread_words_listed() -> None:
    read = tokenize(LONG_QUESTION)[:14]
    prediction = make_prediction(one_hot_grid(8, 8, 0, 0), read, [1 / 14] * 14)
    layout = attention_map_layout((64, 64), prediction, LONG_QUESTION)
    assert len(layout.word_boxes) == 14
    drawn = [text for _, _, text, _ in layout.texts]
    for word in tokenize(LONG_QUESTION)[14:]:
        assert word in drawn
    # Every box fits within the figure (the words wrap).
    assert all(MARGIN <= box[0] and box[2] <= layout.size[0] - MARGIN
               for box in layout.word_boxes)


def test_answers_and_answerable_listed() -> None:
    grid = one_hot_grid(8, 8, 0, 0)
    with_head = attention_map_layout((64, 64), make_prediction(grid, answerable=0.25,
                                                                answers=MAX_ANSWERS + 3))
    texts = [text for _, _, text, _ in with_head.texts]
    assert "P(answerable) = 25.0%" in texts
    assert sum("answer" in t and "%" in t and "P(" not in t for t in texts) == MAX_ANSWERS
    assert any(t.endswith("answer0") and "90.0%" in t for t in texts)
    without = attention_map_layout((64, 64), make_prediction(grid))
    assert not any("answerable" in text for _, _, text, _ in without.texts)
    assert without.size[1] < with_head.size[1]


def test_model_without_image_attention() -> None:
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    prediction = make_prediction([])
    figure = render_attention_map(image, prediction, QUESTION)
    layout = attention_map_layout(image.size, prediction, QUESTION)
    assert layout.bar_box is None
    assert np.all(image_region(figure, layout.image_box) == 128.0)  # the image, no heat map
    assert any("does not read the image" in text for _, _, text, _ in layout.texts)


def test_malformed_prediction_is_an_error() -> None:
    image = Image.new("RGB", (64, 64))
    with pytest.raises(LrcnError, match="not a grid"):
        render_attention_map(image, make_prediction([[0.5, 0.5], [1.0]]))
    with pytest.raises(LrcnError, match="2 question attention weights for 3 words"):
        render_attention_map(image, make_prediction([[1.0]], weights=[0.5, 0.5]))


# --------------------------------------------------------------------------- saving


def test_save_writes_png_atomically(tmp_path: Path) -> None:
    figure = render_attention_map(Image.new("RGB", (64, 64)), make_prediction([[1.0]]))
    out = save_attention_map(figure, tmp_path / "new" / "folder" / "map.png")
    assert out == tmp_path / "new" / "folder" / "map.png"  # missing folders are created
    with Image.open(out) as saved:
        assert saved.format == "PNG" and saved.size == figure.size
    assert [p.name for p in out.parent.iterdir()] == ["map.png"]  # no temporary file left

    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(LrcnError, match="is a folder"):
        save_attention_map(figure, folder)
    assert list(folder.iterdir()) == []
    with pytest.raises(LrcnError, match="must end in .png"):
        save_attention_map(figure, tmp_path / "map.jpg")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LrcnError, match=f"cannot write attention map {blocker}"):
        save_attention_map(figure, blocker / "map.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.png", "new"]


# --------------------------------------------------------------------------- CLI


def test_cli_predict_attention_map(run: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "maps" / "q1.png"  # the folder does not exist yet
    result = run_cli(capsys, "predict", "--checkpoint", run, "--image", easyvqa_image(),
                     "--question", QUESTION, "--attention-map", out, "--json")
    assert result.code == 0, result.err
    summary = result.json
    assert summary["attention_map"] == str(out)
    assert len(summary["image_attention"]) == 4  # the CNN's 8 x 8 grid, reduced
    assert all(len(row) == 4 for row in summary["image_attention"])
    assert summary["question_tokens"] == tokenize(QUESTION)
    assert len(summary["question_attention"]) == len(summary["question_tokens"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prediction = Prediction(**{k: summary[k] for k in Prediction.__dataclass_fields__})
    with Image.open(easyvqa_image()) as image:
        expected = attention_map_layout(image.size, prediction, QUESTION).size
    with Image.open(out) as saved:
        assert saved.size == expected

    human = run_cli(capsys, "predict", "--checkpoint", run, "--image", easyvqa_image(),
                    "--question", QUESTION, "--top-k", "2", "--attention-map", out)
    assert human.code == 0, human.err
    assert human.out.splitlines()[-1] == f"attention map: {out}"


def test_cli_predict_attention_map_errors(run: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "out.png"
    folder.mkdir()
    for target, message in ((folder, "is a folder"), (tmp_path / "map.jpg", "must end in .png")):
        result = run_cli(capsys, "predict", "--checkpoint", run, "--image", easyvqa_image(),
                         "--question", QUESTION, "--attention-map", target, "--json")
        assert result.code == 2 and result.out == ""
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.err
        assert lines[0].startswith("lrcn predict: error: attention map ")
        assert str(target) in lines[0] and message in lines[0]
    assert list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_print_human_answerable_and_map(capsys: pytest.CaptureFixture[str]) -> None:
    summary = {"question": "q?", "answers": [{"answer": "yes", "score": 0.5}],
               "answerable": 0.875, "attention_map": "maps/q.png"}
    print_human("predict", summary)
    assert capsys.readouterr().out.splitlines() == [
        "Q: q?", "   50.00%  yes", "P(answerable): 87.50%", "attention map: maps/q.png"]
    print_human("predict", {**summary, "answerable": None})  # a model without that head
    assert "answerable" not in capsys.readouterr().out
