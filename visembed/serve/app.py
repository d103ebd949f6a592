"""The FastAPI app: `create_app(index_dir)`; `run_server(index_dir, host, port)` for the CLI.

The model and the index load once, in the lifespan (or before it, in `run_server`, so that a
missing or corrupt index is one clear line rather than a server traceback). The index folder is
followed while serving: a generation committed by `index delete`, `index add` or a rebuild is
picked up by the next request (see `Searcher.refresh`). With a captioner (`captioner_dir`, or an index
built with one) the service also writes captions and answers questions about uploaded images
(`captions`).

Exposure: the service answers only requests whose Host header names it (`allowed_hosts`; by
default the loopback names and the bound host), so a web page the user visits cannot reach it by
DNS rebinding; a page of another site cannot POST to it (`origin`); half-open and trickling
connections are closed and connections capped (`connection`); original image files are sent only
from folders the operator named (`item_files`).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from visembed.serve.connection import (BODY_IDLE_TIMEOUT_S, BODY_TIMEOUT_S, HEADER_TIMEOUT_S, KEEP_ALIVE_S,
                                       MAX_CONNECTIONS, bind_socket, timed_h11)
from visembed.serve.decode import DecodeBudget
from visembed.serve.captions import find_captioner
from visembed.serve.captions import router as captions_router
from visembed.serve.clip_retrieval import PATHS as CLIP_RETRIEVAL_PATHS
from visembed.serve.clip_retrieval import router as clip_retrieval_router
from visembed.serve.classify_route import load_classifier
from visembed.serve.classify_route import router as classify_router
from visembed.serve.limits import MULTIPART_OVERHEAD, BodySizeLimit, GenerationSlots, Limits
from visembed.serve.origin import SameOriginPosts
from visembed.serve.routes import router
from visembed.serve.strict_json import validation_error_handler
from visembed.models.inference import TextTowerUntrained

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def create_app(index_dir: str | Path, model_dir: str | Path | None = None, *,
               max_upload_bytes: int = Limits.max_upload_bytes, max_pixels: int = Limits.max_pixels,
               decode_budget_pixels: int | None = None, decode_wait_s: float = Limits.decode_wait_s,
               allowed_hosts: list[str] | tuple[str, ...] | None = None, searcher=None,
               captioner_dir: str | Path | None = None, captioner=None,
               generation_slots: GenerationSlots | None = None, data_roots: list[str | Path] = (),
               allowed_origins: list[str] | tuple[str, ...] = (), model_backend: str = "torch",
               model_quantize: str | None = None,
               classifier_dir: str | Path | None = None, classifier=None, captioner_slot=None) -> FastAPI:
    """The service over one index. `searcher` (an opened `Searcher`) skips loading in the lifespan.

    `captioner_dir`: a captioner folder for /caption and /chat (default: the index's model, when it
    is a captioner); `captioner` (a loaded `CaptionerModel`) skips loading it. `generation_slots`:
    how many generation requests may queue (default `GenerationSlots()`). `classifier_dir`: a
    classifier folder for /classify (`classifier`: one loaded already). `captioner_slot`: a
    `CaptionerSlot` through which a captioner still training arrives later (without one loaded, the
    caption endpoints answer 503 with Retry-After until it does).

    `allowed_hosts`: Host header names answered (a port is ignored; "*" allows any, "*.example.com"
    a domain); default `LOOPBACK_HOSTS`. `decode_budget_pixels`: pixels decoded at once across all
    uploads (default twice `max_pixels`); an upload that cannot get its share within
    `decode_wait_s` seconds is answered 503 with Retry-After.

    `data_roots`: folders, besides those of the data the index was built from, whose image files
    may be sent as items' originals. `allowed_origins`: web origins ("https://example.com") whose
    pages may POST to the service besides its own. `model_backend` / `model_quantize`: how the model's
    encoders run (torch, onnx or auto; int8 or None; see `visembed.api.load`)."""
    from visembed.index.searcher import Searcher

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if getattr(app.state, "searcher", None) is None:
            app.state.searcher = await run_in_threadpool(Searcher.open, index_dir, model_dir, model_backend,
                                                           model_quantize)
        if app.state.captioner is None and captioner_slot is None:
            app.state.captioner = await run_in_threadpool(find_captioner, app.state.searcher, captioner_dir)
        if app.state.classifier is None and classifier_dir is not None:
            app.state.classifier = await run_in_threadpool(load_classifier, classifier_dir)
        # Parallelism comes from concurrent requests: one thread per search (a team of threads per
        # request thread would oversubscribe the cores and collapse throughput under load).
        app.state.searcher.set_search_threads(1)
        yield
        app.state.searcher = app.state.captioner = app.state.classifier = None

    app = FastAPI(title="visembed", version="0.1.0", lifespan=lifespan,
                  description="Search and recommendation over visual embeddings (images and text in one space); "
                              "with a captioner, captions and questions about uploaded images.")
    app.state.searcher, app.state.captioner, app.state.classifier = searcher, captioner, classifier
    app.state.captioner_slot = captioner_slot
    app.state.generation = generation_slots or GenerationSlots()
    budget = decode_budget_pixels or 2 * max_pixels
    app.state.limits = Limits(max_upload_bytes, max_pixels, budget, decode_wait_s)
    app.state.decode_budget = DecodeBudget(budget)
    app.state.data_roots = [Path(root).resolve() for root in data_roots]
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(TextTowerUntrained, text_tower_untrained_handler)  # an image-only model: 422
    app.add_middleware(BodySizeLimit, max_body_bytes=max_upload_bytes + MULTIPART_OVERHEAD)
    # clip-retrieval's front end calls its back end from its own origin: those search routes stay open (CORS)
    app.add_middleware(SameOriginPosts, allowed_origins=list(allowed_origins), open_paths=CLIP_RETRIEVAL_PATHS)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts or LOOPBACK_HOSTS), www_redirect=False)
    app.include_router(router)
    app.include_router(captions_router)
    app.include_router(clip_retrieval_router)  # POST /knn-service, POST /metadata, GET /indices-list
    app.include_router(classify_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app


def default_allowed_hosts(host: str) -> list[str]:
    """Loopback names, plus the bound address when it is a specific one (not 0.0.0.0 / ::)."""
    hosts = list(LOOPBACK_HOSTS)
    if host not in WILDCARD_ADDRESSES:
        hosts.append(f"[{host}]" if ":" in host else host.lower())
    return list(dict.fromkeys(hosts))


def make_server(app: FastAPI, *, timeout_keep_alive: int = KEEP_ALIVE_S, header_timeout: float = HEADER_TIMEOUT_S,
                body_idle_timeout: float = BODY_IDLE_TIMEOUT_S, body_timeout: float = BODY_TIMEOUT_S,
                max_connections: int = MAX_CONNECTIONS, log_level: str = "warning"):
    """A uvicorn server for `app` with the connection deadlines and cap set; run it with
    `server.run(sockets=[bind_socket(host, port)])`."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=timeout_keep_alive,
                            limit_concurrency=max_connections,
                            http=timed_h11(header_timeout, body_idle_timeout, body_timeout))
    return uvicorn.Server(config)


def run_server(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
               model_dir: str | Path | None = None, captioner_dir: str | Path | None = None,
               classifier_dir: str | Path | None = None, max_upload_bytes: int = Limits.max_upload_bytes,
               allowed_hosts: list[str] | tuple[str, ...] | None = None, timeout_keep_alive: int = KEEP_ALIVE_S,
               header_timeout: float = HEADER_TIMEOUT_S, data_roots: list[str | Path] = (),
               allowed_origins: list[str] | tuple[str, ...] = (), model_backend: str = "torch",
               model_quantize: str | None = None,
               captioner_slot=None) -> None:
    """Bind the port, load the index and model, print the URL, serve until interrupted.

    A taken port raises `PortUnavailable` (one line, before anything is announced or loaded).
    `allowed_hosts` extends the default (loopback names and `host`); pass the names the service
    is reached by when it listens on 0.0.0.0. `captioner_dir`: a captioner folder for /caption and
    /chat (default: the index's model, when it is a captioner). `data_roots`, `allowed_origins`: as
    for `create_app` (a missing data root is a ValueError before anything is loaded).
    `captioner_slot`: as for `create_app` (`visembed demo` trains its captioner while serving)."""
    from visembed.index.searcher import Searcher

    for root in data_roots:
        if not Path(root).is_dir():
            raise ValueError(f"--data-root {root}: no such folder")
    sock = bind_socket(host, port)
    try:
        searcher = Searcher.open(index_dir, model_dir, model_backend, model_quantize)  # raises IndexStoreError with a clear message
        captioner = None if captioner_slot is not None else find_captioner(searcher, captioner_dir)  # a dual encoder there: ValueError
        classifier = load_classifier(classifier_dir) if classifier_dir is not None else None
        hosts = default_allowed_hosts(host) + list(allowed_hosts or [])
        app = create_app(index_dir, model_dir, max_upload_bytes=max_upload_bytes, searcher=searcher,
                         allowed_hosts=hosts, captioner=captioner, data_roots=data_roots,
                         allowed_origins=allowed_origins, classifier=classifier, captioner_slot=captioner_slot)
        server = make_server(app, timeout_keep_alive=timeout_keep_alive, header_timeout=header_timeout)
        shown = f"[{host}]" if ":" in host else host
        bound_port = sock.getsockname()[1]
        print(f"serving {len(searcher.store)} items from {index_dir} at http://{shown}:{bound_port}/  (API docs: /docs)",
              flush=True)
        if captioner is not None:
            print(f"captions and image chat: POST /caption, POST /chat (captioner {captioner_dir or 'of the index'})",
                  flush=True)
        elif captioner_slot is not None:
            print("captions and image chat: POST /caption, POST /chat once the captioner has trained "
                  "(503 with Retry-After until then; GET /capabilities says how far it is)", flush=True)
        if classifier is not None:
            print(f"labels of uploaded images: POST /classify (classifier {classifier_dir}, "
                  f"{len(classifier.classes)} classes)", flush=True)
        if host in WILDCARD_ADDRESSES and not allowed_hosts:
            print("note: only requests addressed to localhost/127.0.0.1/[::1] are answered; "
                  "add the names clients use with --allowed-host", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()


async def text_tower_untrained_handler(request, exc: TextTowerUntrained):
    """A text query against an index of an image-only model: 422 with the reason, never a 500."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": str(exc)}, status_code=422)
