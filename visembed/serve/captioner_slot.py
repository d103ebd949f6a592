"""A captioner that arrives while the service runs: `CaptionerSlot`.

`visembed demo` serves search as soon as the dual encoder and its index are ready and trains the
captioner afterwards, in another process. The slot is how the running service learns about it:
whoever trains the captioner reports its progress (`training`), then hands over the loaded model
(`ready`) or says why there will be none (`failed`). Until then the caption and chat endpoints
answer 503 with Retry-After (the ETA where one is known), and `GET /capabilities` tells the page
what to say; no restart is needed when the model arrives.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

RETRY_AFTER_UNKNOWN_S = 30  # a training captioner without an estimate yet: ask again in this long
RETRY_AFTER_MAX_S = 600


@dataclass(frozen=True)
class SlotStatus:
    """What the slot says now: `state` is "training", "ready" or "failed"; `step`/`total` the
    training steps done and planned (None before the first step); `eta_s` seconds until the
    captioner is expected (None while there is no honest estimate); `detail` a sentence."""
    state: str
    step: int | None = None
    total: int | None = None
    eta_s: float | None = None
    detail: str = ""


class CaptionerSlot:
    """Thread-safe: one thread (the trainer's watcher) writes, request threads read."""

    def __init__(self, detail: str = "the captioner is training"):
        self._lock = threading.Lock()
        self._status = SlotStatus("training", detail=detail)
        self._model = None
        self.since = time.monotonic()

    def progress(self, step: int | None, total: int | None, eta_s: float | None, detail: str) -> None:
        with self._lock:
            if self._status.state == "training":
                self._status = SlotStatus("training", step, total, eta_s, detail)

    def ready(self, model) -> None:
        """Hand over the loaded captioner: from the next request on, /caption and /chat use it."""
        with self._lock:
            self._model = model
            self._status = SlotStatus("ready", detail="the captioner is loaded")

    def failed(self, detail: str) -> None:
        with self._lock:
            if self._status.state != "ready":
                self._status = SlotStatus("failed", detail=detail)

    def status(self) -> SlotStatus:
        with self._lock:
            return self._status

    @property
    def model(self):
        with self._lock:
            return self._model

    def retry_after_s(self) -> int:
        """For a 503 while training: the ETA (bounded), or a short wait when there is none."""
        eta = self.status().eta_s
        if eta is None:
            return RETRY_AFTER_UNKNOWN_S
        return int(min(max(eta, 1.0), RETRY_AFTER_MAX_S))


__all__ = ["CaptionerSlot", "SlotStatus"]
