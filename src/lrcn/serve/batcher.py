"""A small dynamic batcher: concurrent requests share one forward pass.

Requests wait in a bounded queue; one worker thread takes the first waiting request, waits
at most ``wait_ms`` for more (up to ``max_batch``), runs the predictor (PyTorch or ONNX
Runtime, `lrcn.engine.inference.Predictor`) once for all of them, and resolves each
request's future. The event loop only ever awaits futures, so a slow forward pass never
blocks it.

A batch that fails is retried one request at a time, so an error is reported to the
request that caused it and never to the others in its batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from lrcn.engine.inference import Prediction, Predictor
from lrcn.errors import LrcnError

log = logging.getLogger(__name__)


class BatcherBusy(Exception):
    """The queue is full (or the batcher is stopped): the request was not accepted."""


@dataclass
class _Request:
    image: Image.Image
    question: str
    top_k: int
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """What the worker has done so far (read it for monitoring and tests)."""

    batches: int = 0                              # forward passes run
    requests: int = 0                             # requests answered or failed in them
    sizes: Counter = field(default_factory=Counter)  # batch size -> number of batches

    @property
    def largest(self) -> int:
        return max(self.sizes, default=0)

    def to_dict(self) -> dict[str, int]:
        return {"batches": self.batches, "requests": self.requests, "largest": self.largest}


class Batcher:
    """Groups `predict` calls from many coroutines into batched ``Predictor.predict`` calls."""

    def __init__(self, predictor: Predictor, max_batch: int = 16, wait_ms: float = 5.0,
                 max_pending: int = 256) -> None:
        if max_batch < 1 or wait_ms < 0 or max_pending < 1:
            raise LrcnError(f"batcher: max_batch ({max_batch}) and max_pending ({max_pending}) "
                            f"must be >= 1, wait_ms ({wait_ms}) >= 0")
        self.predictor = predictor
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lrcn-batcher", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking requests, answer those already queued, then stop the worker."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)  # the worker stops when it reaches this
            self._thread.join(timeout)
            self._thread = None
        while True:  # anything left (a worker that did not start, or timed out)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BatcherBusy("the server is shutting down"))

    async def predict(self, image: Image.Image, question: str, top_k: int) -> Prediction:
        """Queue one request and wait for its answer.

        Raises BatcherBusy when the queue is full or the batcher stopped, LrcnError when the
        model refuses this request, and whatever else the model raised.
        """
        if self._closed or self._thread is None:
            raise BatcherBusy("the model worker is not running")
        request = _Request(image, question, top_k)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise BatcherBusy(f"{self._queue.maxsize} requests are already waiting; "
                              "try again shortly") from None
        return await asyncio.wrap_future(request.future)

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            # A request whose client went away was cancelled: skip it.
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if batch:
                try:
                    self._answer(batch)
                except Exception:  # a bug: log it and keep serving
                    log.exception("model worker error")
            if stop:
                return

    def _answer(self, batch: list[_Request]) -> None:
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.sizes[len(batch)] += 1
        try:
            try:
                results: list[Prediction | Exception] = list(self._forward(batch))
            except Exception as exc:
                if len(batch) == 1:
                    results = [self._failed(batch[0], exc)]
                else:  # find the request at fault: one forward pass each
                    results = [self._one(r) for r in batch]
            for request, result in zip(batch, results):
                if isinstance(result, Exception):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)
        finally:  # whatever went wrong above, no client is left waiting
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(RuntimeError("the model worker gave no answer"))

    def _forward(self, batch: list[_Request]) -> list[Prediction]:
        top_k = max(r.top_k for r in batch)
        predictions = self.predictor.predict([r.image for r in batch],
                                             [r.question for r in batch], top_k)
        for request, prediction in zip(batch, predictions):
            prediction.answers = prediction.answers[: request.top_k]
        return predictions

    def _one(self, request: _Request) -> Prediction | Exception:
        try:
            return self._forward([request])[0]
        except Exception as exc:
            return self._failed(request, exc)

    @staticmethod
    def _failed(request: _Request, exc: Exception) -> Exception:
        if not isinstance(exc, LrcnError):  # the client's fault is no news; anything else is
            log.error("prediction failed for question %r", request.question, exc_info=exc)
        return exc
