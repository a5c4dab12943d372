"""Screenshot of the demo page of `lrcn serve` answering a question: docs/demo.png.

Starts the real command (`lrcn serve --checkpoint RUN`) on a free local port, opens the page
in headless chromium (Playwright driving Debian's /usr/bin/chromium), uploads an easy-VQA
test image, asks, waits for the answers and the attention heat map, and saves a screenshot.
To regenerate the README's picture from a trained easy-VQA run:

    .venv/bin/lrcn train --epochs 1 --out /tmp/demo-ckpt --json
    .venv/bin/python benchmarks/demo_screenshot.py --checkpoint /tmp/demo-ckpt

Options: --out FILE (default docs/demo.png), --image N (easy-VQA test image, default 7, a
green circle) or --image-file FILE, --question TEXT, --width/--height of the viewport.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    """/healthz's JSON once the server answers; raises if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lrcn serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"lrcn serve did not answer within {timeout:.0f} s")


def screenshot(url: str, image: Path, question: str, out: Path, width: int, height: int) -> dict:
    """Ask on the page at `url` and save the screenshot; returns what the page shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height},
                                    device_scale_factor=1)
            page.set_default_timeout(30_000)
            page.goto(url + "/")
            page.wait_for_selector("[data-testid=example]")  # the page has loaded its examples
            page.get_by_test_id("image-input").set_input_files(str(image))
            page.wait_for_function(
                f"document.getElementById('image-name').textContent === {json.dumps(image.name)}")
            page.get_by_test_id("question").fill(question)
            # Ask twice: the first answer warms the model up, the second shows its latency.
            for answered in ("1", "2"):
                page.get_by_test_id("ask").click()
                page.wait_for_selector(f"[data-testid=result][data-answered='{answered}']")
            page.wait_for_selector("#heatmap[data-overlay=on]", state="attached")
            page.get_by_test_id("question").blur()  # no focus ring or hover in the picture
            page.mouse.move(0, 0)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return {"answers": page.get_by_test_id("answer-bar").all_inner_texts(),
                    "status": page.get_by_test_id("status").inner_text()}
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    parser.add_argument("--out", default="docs/demo.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--image", type=int, default=7, help="easy-VQA test image id")
    parser.add_argument("--image-file", help="an image file instead of an easy-VQA one")
    parser.add_argument("--question", default="What color is the shape?")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    if args.image_file:
        image = Path(args.image_file)
    else:
        import easy_vqa

        image = Path(easy_vqa.__file__).parent / "data" / "test" / "images" / f"{args.image}.png"
    if not image.is_file():
        parser.error(f"no image file {image}")
    if not Path(CHROMIUM).exists():
        parser.error(f"{CHROMIUM} is missing: apt-get install chromium")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "lrcn", "serve", "--checkpoint",
                             args.checkpoint, "--host", "127.0.0.1", "--port", str(port)])
    try:
        health = wait_healthy(url, proc)
        shown = screenshot(url, image, args.question, Path(args.out), args.width, args.height)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps({"out": args.out, "model": health.get("model"), **shown}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
