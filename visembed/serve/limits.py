"""What one request may cost the service: body size, decoded pixels, decode memory, and the wait
for it; and how many requests may queue for text generation."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from visembed.serve.decode import RETRY_AFTER_S

MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and other fields around the uploaded file


@dataclass
class Limits:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # decoded size: a tiny file can still be a decompression bomb
    # pixels being decoded at once, all requests together: two uploads at the cap, ~8 bytes a
    # pixel while decoding and reducing (RGBA + its reduced copy), ~0.7 GB at worst
    decode_budget_pixels: int = 2 * 40_000_000
    decode_wait_s: float = 5.0  # how long an upload waits for its share of the budget before a 503


class BodySizeLimit:
    """Answers 413 to request bodies over the limit, whether announced by Content-Length or
    streamed in chunks, before they are buffered in memory or on disk."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            response = JSONResponse({"detail": f"request body larger than {self.max_body_bytes} bytes"}, 413)
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:  # FastAPI passes HTTPExceptions from body parsing through
                raise HTTPException(413, f"request body larger than {self.max_body_bytes} bytes")
            return message

        return await self.app(scope, limited_receive, send)


class GenerationSlots:
    """Text generation (captions, chat replies) runs one request at a time: a reply takes many
    forward passes and each already uses every core. Those waiting for their turn hold a thread
    of the pool every endpoint shares, so at most `max_waiting` may wait, each for at most
    `wait_s` seconds; a request beyond that is answered 503 with Retry-After at once, and search
    keeps its threads. Search forward passes do not queue behind a generation (they take their own
    lock, see `Searcher`), so the page stays responsive while a caption is being written."""

    def __init__(self, max_waiting: int = 4, wait_s: float = 60.0):
        self.max_waiting, self.wait_s = max_waiting, wait_s
        self.admitted = 0  # running + waiting
        self._count = threading.Lock()
        self._turn = threading.Lock()

    @contextlib.contextmanager
    def turn(self):
        busy = HTTPException(503, "the server is busy writing other replies; retry shortly",
                             {"Retry-After": str(RETRY_AFTER_S)})
        with self._count:
            if self.admitted > self.max_waiting:  # one running and `max_waiting` waiting already
                raise busy
            self.admitted += 1
        try:
            if not self._turn.acquire(timeout=self.wait_s):
                raise busy
            try:
                yield
            finally:
                self._turn.release()
        finally:
            with self._count:
                self.admitted -= 1
