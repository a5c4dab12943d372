"""Benchmark: ``lrcn serve`` under load, with a client sending malformed uploads throughout.

Starts the real server (``python -m lrcn serve``) on a free port of 127.0.0.1, waits for
/healthz, then sends ``--requests`` good requests (easy-VQA test images and questions) from
``--clients`` concurrent clients while one more client keeps sending malformed requests
(non-images, truncated images, oversize bodies, pixel bombs, empty questions, missing
fields, ...) until the good ones are done. Reports throughput, p50/p99 latency of the good
requests, non-2xx among them (target 0), 5xx overall (target 0), malformed requests answered
with a 4xx (target: all), whether /healthz still answers, and batch-1 latency of the
predictor in-process. The last stdout line is one JSON object.

The checkpoint is a run folder or checkpoint file (PyTorch), or an ``.onnx`` file from
``lrcn export --format onnx`` (ONNX Runtime): the same load test runs on either.

Needs a trained checkpoint; one epoch of the default model on easy-VQA takes a few minutes:

    lrcn train --epochs 1 --out /tmp/serve-ckpt
    python benchmarks/serve_load.py --checkpoint /tmp/serve-ckpt [--requests 1000]
        [--clients 16] [--json]
    lrcn export --checkpoint /tmp/serve-ckpt --format onnx --out /tmp/serve.onnx
    python benchmarks/serve_load.py --checkpoint /tmp/serve.onnx
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def easy_vqa_samples(n: int) -> list[tuple[bytes, str]]:
    """(PNG bytes, question) for the first n easy-VQA test questions."""
    import easy_vqa

    root = Path(easy_vqa.__file__).parent / "data" / "test"
    questions = json.loads((root / "questions.json").read_text())[:n]
    images: dict[int, bytes] = {}
    samples = []
    for question, _, image_id in questions:
        if image_id not in images:
            images[image_id] = (root / "images" / f"{image_id}.png").read_bytes()
        samples.append((images[image_id], question))
    return samples


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def malformed_requests(png: bytes, max_upload: int) -> dict[str, dict]:
    """httpx keyword arguments of one malformed request of each kind."""
    jpeg = encode(Image.open(io.BytesIO(png)).convert("RGB"), "JPEG")
    bomb_header = bytearray(encode(Image.new("L", (1, 1))))  # 1x1 PNG claiming 50000x50000
    bomb_header[16:24] = (50_000).to_bytes(4, "big") * 2
    bomb_header[29:33] = zlib.crc32(bytes(bomb_header[12:29])).to_bytes(4, "big")
    real_bomb = encode(Image.new("P", (8_000, 8_000)))  # 64 MP, ~60 KB of PNG

    def form(image: bytes | None, question: str | None = "what shape is it?", **extra) -> dict:
        kw: dict = {"data": {**({} if question is None else {"question": question}), **extra}}
        if image is not None:
            kw["files"] = {"image": ("upload.png", image, "image/png")}
        return kw

    def chunked_oversize():
        yield (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(max_upload // (64 * 1024) + 4):
            yield b"\x00" * (64 * 1024)

    return {
        "text_file": form(b"this is not an image\n" * 20),
        "random_bytes": form(os.urandom(4096)),
        "truncated_png": form(png[: len(png) // 2]),
        "truncated_jpeg": form(jpeg[: len(jpeg) * 2 // 3]),
        "empty_file": form(b""),
        "oversize_body": form(b"\x89PNG" + b"\x00" * (max_upload + MB)),
        "oversize_chunked": {"content": chunked_oversize,
                             "headers": {"content-type": "multipart/form-data; boundary=b"}},
        "bomb_header": form(bytes(bomb_header)),
        "bomb_decompression": form(real_bomb),
        "empty_question": form(png, "   "),
        "punctuation_question": form(png, "?!?..."),
        "long_question": form(png, "what " * 200),
        "missing_image": form(None),
        "missing_question": form(png, None),
        "top_k_out_of_range": form(png, top_k="1000"),
        "broken_multipart": {"content": b"--x\r\ngarbage",
                             "headers": {"content-type": "multipart/form-data; boundary=zz"}},
        "json_body": {"json": {"question": "what shape?"}},
    }


def run_load(base: str, samples: list[tuple[bytes, str]], clients: int,
             malformed: dict[str, dict]) -> dict:
    """Good requests from `clients` threads, malformed ones from one more, at the same time."""
    latencies: list[float] = []
    good_status: Counter = Counter()
    bad: dict[str, Counter] = {kind: Counter() for kind in malformed}
    lock = threading.Lock()
    next_index = iter(range(len(samples)))
    done = threading.Event()

    def good_client() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                image, question = samples[i]
                start = time.perf_counter()
                try:
                    r = http.post("/api/predict", files={"image": ("q.png", image, "image/png")},
                                  data={"question": question})
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    latencies.append((time.perf_counter() - start) * 1000)
                    good_status[status] += 1

    def bad_client() -> None:
        kinds = list(malformed)
        with httpx.Client(base_url=base, timeout=120) as http:
            n = 0
            while not done.is_set():
                kind = kinds[n % len(kinds)]
                kw = dict(malformed[kind])
                if callable(kw.get("content")):
                    kw["content"] = kw["content"]()
                try:
                    status = http.post("/api/predict", **kw).status_code
                except httpx.HTTPError as exc:  # the connection failed: not an answer
                    status = type(exc).__name__
                bad[kind][status] += 1
                n += 1

    threads = [threading.Thread(target=good_client) for _ in range(clients)]
    saboteur = threading.Thread(target=bad_client)
    start = time.perf_counter()
    saboteur.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    done.set()
    saboteur.join()

    def is_4xx(s: object) -> bool:
        return isinstance(s, int) and 400 <= s < 500

    def is_5xx(s: object) -> bool:
        return isinstance(s, int) and s >= 500

    sent = sum(sum(c.values()) for c in bad.values())
    lat = np.array(latencies)
    return {
        "seconds": round(seconds, 2),
        "throughput_rps": round(len(samples) / seconds, 1),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1),
                       "p99": round(float(np.percentile(lat, 99)), 1),
                       "mean": round(float(lat.mean()), 1)},
        "good_non_2xx": sum(n for s, n in good_status.items()
                            if not (isinstance(s, int) and 200 <= s < 300)),
        "server_errors_5xx": sum(n for s, n in good_status.items() if is_5xx(s))
        + sum(n for c in bad.values() for s, n in c.items() if is_5xx(s)),
        "malformed": {
            "sent": sent,
            "answered_4xx": sum(n for c in bad.values() for s, n in c.items() if is_4xx(s)),
            "by_kind": {kind: {str(s): n for s, n in c.items()} for kind, c in bad.items()},
        },
    }


def batch1_latency(checkpoint: str, samples: list[tuple[bytes, str]], reps: int) -> dict:
    """The predictor (PyTorch, or ONNX Runtime for a .onnx file) with one image, in-process:
    p50/p99 over `reps` calls."""
    from lrcn.engine.inference import load_predictor

    predictor = load_predictor(checkpoint)
    image, question = samples[0]
    pil = Image.open(io.BytesIO(image)).convert("RGB")
    for _ in range(20):  # warm-up
        predictor.predict([pil], [question])
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        predictor.predict([pil], [question])
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 2),
            "p99": round(float(np.percentile(times, 99)), 2), "reps": reps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="run folder or checkpoint file, or an exported .onnx file")
    parser.add_argument("--requests", type=int, default=1000, help="good requests to send")
    parser.add_argument("--clients", type=int, default=16, help="concurrent good clients")
    parser.add_argument("--max-upload-mb", type=float, default=2.0,
                        help="the server's upload limit (oversize bodies are this + 1 MB)")
    parser.add_argument("--predict-reps", type=int, default=200,
                        help="in-process batch-1 predictions to time")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args()
    if args.requests < 1 or args.clients < 1:
        parser.error("--requests and --clients must be at least 1")

    samples = easy_vqa_samples(args.requests)
    if len(samples) < args.requests:
        samples = (samples * (args.requests // len(samples) + 1))[: args.requests]
    max_upload = int(args.max_upload_mb * MB)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="lrcn-serve-", suffix=".log", delete=False)
    server = subprocess.Popen(
        [sys.executable, "-m", "lrcn", "serve", "--checkpoint", args.checkpoint,
         "--port", str(port), "--max-upload-mb", str(args.max_upload_mb)],
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                print(f"lrcn serve exited with code {server.returncode}; see {log.name}",
                      file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print(f"lrcn serve did not answer /healthz in 180 s; see {log.name}",
                      file=sys.stderr)
                return 1
            time.sleep(0.5)
        load = run_load(base, samples, args.clients, malformed_requests(samples[0][0], max_upload))
        try:
            health = httpx.get(f"{base}/healthz", timeout=10)
            healthy = health.status_code == 200 and health.json()["status"] == "ok"
            batching = health.json().get("batching") if healthy else None
            runtime = health.json().get("runtime") if healthy else None
        except httpx.HTTPError:
            healthy, batching, runtime = False, None, None
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    result = {
        "checkpoint": args.checkpoint,
        "runtime": runtime,
        "requests": args.requests,
        "clients": args.clients,
        "cpu_threads": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        **load,
        "healthz_after": healthy,
        "batching": batching,
        "batch1_predict_ms": batch1_latency(args.checkpoint, samples, args.predict_reps),
        "server_log": log.name,
    }
    result["meets_targets"] = (result["good_non_2xx"] == 0 and result["server_errors_5xx"] == 0
                               and result["malformed"]["answered_4xx"]
                               == result["malformed"]["sent"] and healthy)
    if not args.json:
        print(f"{load['throughput_rps']} good requests/s, latency p50 "
              f"{load['latency_ms']['p50']} ms p99 {load['latency_ms']['p99']} ms; "
              f"{result['good_non_2xx']} good requests failed, "
              f"{result['server_errors_5xx']} 5xx, {load['malformed']['answered_4xx']}/"
              f"{load['malformed']['sent']} malformed answered 4xx, healthz "
              f"{'ok' if healthy else 'DOWN'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
