"""clip-retrieval's HTTP API over a visembed index, so its clients work unchanged.

    POST /knn-service   {"text" | "image" (base64) | "embedding_input" (| "image_url": refused, offline),
                         "modality", "num_images", "num_result_ids", "indice_name", "deduplicate", ...}
                        -> [{"id", "similarity", "caption", "url"}, ... then {"id", "similarity"}, ...]
    POST /metadata      {"ids", "indice_name"} -> [{"id", "metadata": {"caption", "url"}}]
    GET  /indices-list  -> [the index folder's name]

As clip-retrieval's own back end (`clip_back.py`) answers them: bodies are JSON whatever the
Content-Type (`ClipClient` sends none, its web front end `text/plain`), the answer is a bare list,
the first `num_images` results carry metadata and the rest of `num_result_ids` only id and
similarity, `deduplicate` drops results whose image embedding is within cosine 0.94 of a better
one, and every answer carries `Access-Control-Allow-Origin: *` so the front end may call from its
own origin (these three routes only: the rest of the API stays same-origin). Differences: ids are
the index's string ids; `url` is this server's absolute URL of the image; the safety, violence and
aesthetic options are accepted and have no effect (no such models here, as in clip-retrieval
without them); `modality: "text"` is refused (the index holds image embeddings only); `image_url`
is refused, because the service never downloads.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Literal
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from visembed.index.backends import UnknownItem
from visembed.index.searcher import Hit, Searcher
from visembed.serve.decode import UploadRejected, decode_upload
from visembed.serve.schemas import MAX_QUERY_CHARS
from visembed.serve.strict_json import StrictJSONRoute, strict_loads

MAX_RESULT_IDS = 10_000  # clip-retrieval's front end asks for up to 3,000
DUPLICATE_COSINE = 0.94  # clip_back.py's threshold for "the same image"
CORS = {"Access-Control-Allow-Origin": "*"}
PATHS = ("/knn-service", "/metadata", "/indices-list")  # open to other sites' pages (see serve/origin.py)
_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,")


class CORSRoute(StrictJSONRoute):
    """Every answer of the route, errors included, readable from any origin."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def cors_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except HTTPException as exc:
                response = JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
            response.headers.update(CORS)
            return response

        return cors_handler


router = APIRouter(route_class=CORSRoute, tags=["clip-retrieval"])


class KnnRequest(BaseModel):
    """clip-retrieval's knn-service request; null is as good as absent, as in clip_back.py."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    image: str | None = Field(None, description="an image file, base64 (plain, or a data: URL)")
    image_url: str | None = Field(None, description="refused: the service never downloads")
    embedding_input: list[float] | None = Field(None, max_length=65_536)
    modality: Literal["image", "text"] = "image"
    num_images: int = Field(100, ge=0, le=MAX_RESULT_IDS)
    num_result_ids: int | None = Field(None, ge=1, le=MAX_RESULT_IDS)
    indice_name: str | None = None
    deduplicate: bool = False
    use_mclip: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    aesthetic_score: int | float | str | None = ""
    aesthetic_weight: float | str | None = ""


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str | int] = Field(max_length=MAX_RESULT_IDS)
    indice_name: str | None = None


async def _body(request: Request, schema: type[BaseModel]):
    """The body as JSON whatever its Content-Type, validated; 422 with a sentence otherwise."""
    try:
        return schema.model_validate(strict_loads(await request.body()))
    except ValueError as exc:  # JSONDecodeError and pydantic's ValidationError are both ValueErrors
        if isinstance(exc, ValidationError):
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        else:
            detail = f"the body is not JSON ({str(exc).splitlines()[0][:200]})"
        raise HTTPException(422, detail) from None


def _searcher(request: Request, indice_name: str | None) -> Searcher:
    searcher = request.app.state.searcher
    searcher.refresh()
    if indice_name not in (None, index_name(searcher)):
        raise HTTPException(404, f"no index named {indice_name!r} here (GET /indices-list names {index_name(searcher)!r})")
    return searcher


def index_name(searcher: Searcher) -> str:
    return searcher.index_dir.name


def _image_url(request: Request, item_id: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/items/{quote(item_id, safe='')}/image"


@router.get("/indices-list", response_model=list[str])
def indices_list(request: Request) -> list[str]:
    """The index served, by the name clip-retrieval clients pass as `indice_name`."""
    return [index_name(_searcher(request, None))]


@router.post("/knn-service", response_model=list[dict], responses={404: {}, 413: {}, 415: {}, 422: {}, 503: {}})
async def knn_service(request: Request) -> JSONResponse:
    """Nearest images to a text, an image (base64) or an embedding, in clip-retrieval's shape."""
    body = await _body(request, KnnRequest)
    return JSONResponse(await run_in_threadpool(_knn, request, body), headers=CORS)


def _knn(request: Request, body: KnnRequest) -> list[dict]:
    searcher = _searcher(request, body.indice_name)
    given = [name for name in ("text", "image", "image_url", "embedding_input") if getattr(body, name) is not None]
    if len(given) != 1:
        raise HTTPException(422, "give exactly one of text, image, image_url or embedding_input"
                                 + (f" (got {', '.join(given)})" if given else ""))
    if body.image_url is not None:
        raise HTTPException(422, "image_url is refused: this service never downloads (it runs offline); "
                                 "send the image itself, base64-encoded, as `image`")
    if body.modality == "text":
        raise HTTPException(422, "modality \"text\" is not served: this index holds image embeddings only")
    for name in ("aesthetic_score", "aesthetic_weight"):
        value = getattr(body, name)
        if isinstance(value, str) and value.strip():
            try:
                float(value)
            except ValueError:
                raise HTTPException(422, f"{name} must be a number or \"\"") from None
    vector = _query_vector(request, searcher, body)
    n_results = body.num_result_ids or body.num_images
    if n_results < 1:
        return []
    hits = searcher.search_vector(vector, n_results)
    if body.deduplicate:
        hits = _deduplicated(searcher, hits)
    return [{"id": h.id, "similarity": h.score, "caption": h.caption, "url": _image_url(request, h.id)}
            if rank < body.num_images else {"id": h.id, "similarity": h.score} for rank, h in enumerate(hits)]


def _query_vector(request: Request, searcher: Searcher, body: KnnRequest) -> np.ndarray:
    if body.text is not None:
        if not body.text.strip():
            raise HTTPException(422, "text is empty")
        return searcher.text_vector(body.text.strip())
    if body.embedding_input is not None:
        vector = np.asarray(body.embedding_input, np.float32)
        norm = float(np.linalg.norm(vector)) if vector.size else 0.0
        if vector.shape != (searcher.store.dim,) or not np.isfinite(norm) or norm == 0.0:
            raise HTTPException(422, f"embedding_input must be {searcher.store.dim} finite numbers, not all zero")
        return vector / norm
    limits = request.app.state.limits
    text = _DATA_URL.sub("", body.image.strip())
    if len(text) > 4 * (limits.max_upload_bytes // 3 + 1):
        raise HTTPException(413, f"the image is larger than {limits.max_upload_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, "image is not valid base64") from None
    try:
        image = decode_upload(data, max_pixels=limits.max_pixels, model_side=searcher.model.image_size,
                              budget=request.app.state.decode_budget, wait_s=limits.decode_wait_s)
    except UploadRejected as exc:
        raise HTTPException(exc.status, exc.detail, headers=exc.headers) from None
    return searcher.image_vector(image)


def _deduplicated(searcher: Searcher, hits: list[Hit]) -> list[Hit]:
    """Hits whose embedding is not within DUPLICATE_COSINE of a better hit's (clip_back.py's rule)."""
    try:
        vectors = searcher.store.vectors([h.id for h in hits])  # (n, D)
    except UnknownItem:  # deleted since the search: a newer commit came in; answer without deduplicating
        return hits
    kept: list[int] = []
    for i in range(len(hits)):
        if not kept or float(np.max(vectors[kept] @ vectors[i])) <= DUPLICATE_COSINE:
            kept.append(i)
    return [hits[i] for i in kept]


@router.post("/metadata", response_model=list[dict], responses={404: {}, 422: {}})
async def metadata(request: Request) -> JSONResponse:
    """Caption and image URL of each id asked for (ids not in the index are left out)."""
    body = await _body(request, MetadataRequest)
    return JSONResponse(await run_in_threadpool(_metadata, request, body), headers=CORS)


def _metadata(request: Request, body: MetadataRequest) -> list[dict]:
    store = _searcher(request, body.indice_name).store
    known = [str(i) for i in body.ids if str(i) in store]
    try:
        metas = store.meta(known)
    except UnknownItem:  # a Milvus store answers from the server: an id may go between the two looks
        metas = []
    return [{"id": m["id"], "metadata": {"caption": m.get("caption", ""), "url": _image_url(request, m["id"])}}
            for m in metas]


@router.options("/knn-service", include_in_schema=False)
@router.options("/metadata", include_in_schema=False)
@router.options("/indices-list", include_in_schema=False)
def preflight() -> Response:
    """CORS preflight for a browser that sends `application/json`."""
    return Response(status_code=204, headers={**CORS, "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                                              "Access-Control-Allow-Headers": "Content-Type"})
