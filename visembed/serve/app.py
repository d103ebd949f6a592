"""The FastAPI app: `create_app(index_dir)`; `run_server(index_dir, host, port)` for the CLI.

The model and the index load once, in the lifespan (or before it, in `run_server`, so that a
missing or corrupt index is one clear line rather than a server traceback).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from visembed.serve.routes import router

STATIC_DIR = Path(__file__).parent / "static"
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and other fields around the uploaded file


@dataclass
class Limits:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # decoded size: a tiny file can still be a decompression bomb


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


def create_app(index_dir: str | Path, model_dir: str | Path | None = None, *,
               max_upload_bytes: int = Limits.max_upload_bytes, max_pixels: int = Limits.max_pixels,
               searcher=None) -> FastAPI:
    """The service over one index. `searcher` (an opened `Searcher`) skips loading in the lifespan."""
    from visembed.index.searcher import Searcher

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if getattr(app.state, "searcher", None) is None:
            app.state.searcher = await run_in_threadpool(Searcher.open, index_dir, model_dir)
        # Parallelism comes from concurrent requests; an OpenMP team per request thread would
        # oversubscribe the cores (spin-waiting threads) and collapse throughput under load.
        # libgomp keeps the thread count per thread, so every search sets it in its own thread.
        app.state.searcher.index.search_threads = 1
        yield
        app.state.searcher = None

    app = FastAPI(title="visembed", version="0.1.0", lifespan=lifespan,
                  description="Search and recommendation over visual embeddings (images and text in one space).")
    app.state.searcher = searcher
    app.state.limits = Limits(max_upload_bytes, max_pixels)
    app.add_middleware(BodySizeLimit, max_body_bytes=max_upload_bytes + MULTIPART_OVERHEAD)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app


def run_server(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
               model_dir: str | Path | None = None, max_upload_bytes: int = Limits.max_upload_bytes) -> None:
    """Load the index and model, print the URL, serve until interrupted."""
    import uvicorn

    from visembed.index.searcher import Searcher

    searcher = Searcher.open(index_dir, model_dir)  # raises IndexStoreError with a clear message
    app = create_app(index_dir, model_dir, max_upload_bytes=max_upload_bytes, searcher=searcher)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {len(searcher.index)} items from {index_dir} at http://{shown}:{port}/  (API docs: /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
