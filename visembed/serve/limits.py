"""What one request may cost the service: body size, decoded pixels, decode memory, and the wait
for it."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException
from fastapi.responses import JSONResponse

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
