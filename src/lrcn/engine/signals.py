"""Stopping a training run cleanly: Ctrl-C or a job scheduler's SIGTERM becomes a request to
save a checkpoint and stop after the current step."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from lrcn.engine import distributed

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what was saved and how to resume."""


class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM during training, as a request to stop after the current step.

    The first SIGINT only sets `requested`: the loop saves checkpoints/last after the step (or after
    the epoch's evaluation) and stops. A second one stops at once without saving, in a single
    process; under torchrun every process gets SIGINT from the terminal and again from
    torchrun, so repeats are ignored there. Python delivers signals to the main thread only:
    elsewhere nothing is installed and Ctrl-C is a plain KeyboardInterrupt.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)  # SIGTERM: what job schedulers send first

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and distributed.launched_world_size() == 1:
            raise KeyboardInterrupt
        if not self.requested and distributed.is_main():
            log.warning("interrupted: saving a checkpoint after this step "
                        "(Ctrl-C again to stop at once, without saving)")
        self.requested = True
