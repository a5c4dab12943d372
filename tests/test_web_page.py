"""The demo page of `lrcn serve`, driven in a real browser.

Playwright drives the Debian ``chromium`` package headless against the real server
(``create_app`` on a tiny checkpoint trained once for this module, served by uvicorn in a
background thread). The tests pick an image, ask, and read what the page shows: answer bars,
the attention heat map on the canvas, the shaded question words, errors, the phone layout.
CI installs ``/usr/bin/chromium`` (``.ci/run``); without it these tests are skipped.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the browser test needs the Debian chromium package at /usr/bin/chromium "
           "(apt-get install chromium; .ci/run installs it)")

TIMEOUT_MS = 15_000

# In the page: the canvas pixels, kept on window so that a second call can compare.
SNAPSHOT_JS = """() => {
  const c = document.getElementById('heatmap');
  window.__pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  return [c.width, c.height];
}"""
# How much the canvas changed since the snapshot, and how smooth the overlay is.
DIFF_JS = """() => {
  const c = document.getElementById('heatmap');
  const now = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const before = window.__pixels;
  let changed = 0, strongest = 0;
  for (let i = 0; i < now.length; i += 4) {
    const d = Math.abs(now[i] - before[i]) + Math.abs(now[i + 1] - before[i + 1])
            + Math.abs(now[i + 2] - before[i + 2]);
    if (d > 30) changed++;
    strongest = Math.max(strongest, d);
  }
  // distinct colours along the middle row of the snapshot (the one with the overlay)
  const row = Math.floor(c.height / 2), colours = new Set();
  for (let x = 0; x < c.width; x++) {
    const k = 4 * (row * c.width + x);
    colours.add(`${before[k]},${before[k + 1]},${before[k + 2]}`);
  }
  return {changed: changed / (now.length / 4), strongest, rowColours: colours.size};
}"""


def _easyvqa_image(index: int) -> Path:
    import easy_vqa

    return Path(easy_vqa.__file__).parent / "data" / "test" / "images" / f"{index}.png"


@pytest.fixture(scope="module")
def checkpoint(tiny_easyvqa_run: Path) -> Path:
    return tiny_easyvqa_run


@pytest.fixture(scope="module")
def server_url(checkpoint: Path) -> Iterator[str]:
    """The real app on a free port, served by uvicorn in a background thread."""
    import uvicorn

    from lrcn.engine.inference import load_model
    from lrcn.serve.app import ServeSettings, create_app

    app = create_app(load_model(checkpoint), ServeSettings())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, server_url: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server_url + "/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _ask(page: Any, question: str | None = None) -> None:
    if question is not None:
        page.get_by_test_id("question").fill(question)
    page.get_by_test_id("ask").click()


def _wait_for_answer(page: Any) -> None:
    page.wait_for_selector("[data-testid=answer-bar]")
    page.wait_for_selector("#heatmap[data-overlay=on]", state="attached")


def test_upload_and_ask_shows_answers_heat_map_and_words(page: Any) -> None:
    page.get_by_test_id("image-input").set_input_files(str(_easyvqa_image(0)))
    page.wait_for_function("document.getElementById('image-name').textContent === '0.png'")
    _ask(page, "what color is the shape?")
    _wait_for_answer(page)

    scores = page.get_by_test_id("answer-score").all_inner_texts()
    assert scores and all(s.endswith("%") for s in scores)
    assert float(scores[0].rstrip("%")) > 0
    widths = page.eval_on_selector_all(
        ".answer-bar", "bars => bars.map(b => b.getBoundingClientRect().width)")
    assert widths[0] > 0

    words = page.get_by_test_id("word")
    assert words.all_inner_texts() == ["what", "color", "is", "the", "shape"]
    shading = [float(w.evaluate("el => getComputedStyle(el).getPropertyValue('--weight')"))
               for w in words.all()]
    assert max(shading) == pytest.approx(1.0) and all(0 <= s <= 1 for s in shading)

    answerable = page.get_by_test_id("answerable").inner_text()
    assert answerable == "not reported by this model"  # an answer-only easy-VQA model
    assert page.get_by_test_id("latency").inner_text().endswith(" ms")
    assert page.get_by_test_id("error").is_hidden()

    # The heat map is drawn over the image: hiding it changes most pixels, strongly, and the
    # upsampled grid is smooth (many colours along a row, not a handful of blocks).
    width, height = page.evaluate(SNAPSHOT_JS)
    assert width > 100 and height > 100
    grid = page.get_attribute("#heatmap", "data-grid")
    cols = int(grid.split("x")[1])
    page.get_by_test_id("toggle-heatmap").uncheck()
    assert page.get_attribute("#heatmap", "data-overlay") == "off"
    diff = page.evaluate(DIFF_JS)
    assert diff["changed"] > 0.5 and diff["strongest"] > 100, diff
    assert diff["rowColours"] > 3 * cols, diff
    page.get_by_test_id("toggle-heatmap").check()
    assert page.get_attribute("#heatmap", "data-overlay") == "on"


def test_example_thumbnail_fills_the_question_and_enter_asks(page: Any) -> None:
    example = page.get_by_test_id("example").first
    example.click()
    question = page.get_by_test_id("question")
    page.wait_for_function("document.getElementById('question').value.length > 0")
    assert page.get_by_test_id("image-name").inner_text() != "No image chosen."
    assert example.locator("img").get_attribute("alt")
    question.press("Enter")
    _wait_for_answer(page)
    assert page.get_by_test_id("answer-bar").count() >= 1


def test_errors_are_shown_as_readable_messages(page: Any, tmp_path: Path) -> None:
    error = page.get_by_test_id("error")
    _ask(page, "what color is the shape?")  # no image yet
    assert "image" in error.inner_text().lower()

    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not a picture", encoding="utf-8")
    page.get_by_test_id("image-input").set_input_files(str(not_an_image))
    page.wait_for_function("document.getElementById('error').textContent.includes('notes.txt')")

    page.get_by_test_id("image-input").set_input_files(str(_easyvqa_image(1)))
    page.wait_for_function("document.getElementById('image-name').textContent === '1.png'")
    _ask(page, "   ")
    assert error.is_visible()
    assert "question" in error.inner_text().lower()

    # A question without a single word goes to the server, whose `detail` is shown.
    _ask(page, "?!?")
    page.wait_for_function("!document.getElementById('ask').disabled")
    assert error.is_visible()
    message = error.inner_text()
    assert "words" in message and "HTTP" not in message and "{" not in message
    assert page.get_by_test_id("answer-bar").count() == 0


def test_answerability_and_error_details_as_the_api_reports_them(page: Any) -> None:
    """What a VizWiz model (with an answerability head) and a refused upload look like:
    the API's answers are stubbed in the browser, the rendering is the page's own."""
    replies = [
        (200, {"answers": [{"answer": "unanswerable", "score": 0.61}], "answerable": 0.87,
               "image_attention": [[0.1, 0.2], [0.3, 0.4]], "question_tokens": ["what", "is"],
               "question_attention": [0.25, 0.75], "latency_ms": 12.5}),
        (413, {"detail": "the image file is over the 10 MB upload limit"}),
        (422, {"detail": [{"loc": ["body", "top_k"], "msg": "Input should be a valid integer"}]}),
    ]

    def fulfil(route: Any) -> None:
        status, body = replies.pop(0)
        route.fulfill(status=status, content_type="application/json", body=json.dumps(body))

    page.route("**/api/predict", fulfil)
    page.get_by_test_id("image-input").set_input_files(str(_easyvqa_image(3)))
    page.wait_for_function("document.getElementById('image-name').textContent === '3.png'")
    _ask(page, "what is it?")
    _wait_for_answer(page)
    assert page.get_by_test_id("answerable").inner_text() == "87%"
    assert page.get_by_test_id("latency").inner_text() == "12.5 ms"
    assert page.get_by_test_id("answer-score").all_inner_texts() == ["61%"]
    assert page.get_attribute("#heatmap", "data-grid") == "2x2"

    _ask(page)
    error = page.get_by_test_id("error")
    page.wait_for_function("!document.getElementById('error').hidden")
    assert error.inner_text() == "the image file is over the 10 MB upload limit"
    assert page.get_by_test_id("answer-bar").count() == 0  # no stale answer beside an error

    _ask(page)
    page.wait_for_function("document.getElementById('error').textContent.includes('top_k')")
    assert error.inner_text() == "top_k: Input should be a valid integer"


def test_phone_layout_has_no_horizontal_overflow(page: Any, tmp_path: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.get_by_test_id("image-input").set_input_files(str(_easyvqa_image(2)))
    _ask(page, "what shape is in the image?")
    _wait_for_answer(page)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # one column: the result sits below the form, and the Ask button is a large target
    form_box = page.get_by_test_id("ask-form").bounding_box()
    result_box = page.get_by_test_id("result").bounding_box()
    assert result_box["y"] >= form_box["y"] + form_box["height"]
    ask_box = page.get_by_test_id("ask").bounding_box()
    assert ask_box["height"] >= 44
    shot = tmp_path / "phone.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
