"""The HTTP endpoints, over a `Searcher` (ids only). Plain `def` endpoints run in Starlette's thread
pool, so model forward passes, image decoding and vector searches never block the event loop."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from PIL import Image

from visembed.index.backends import UnknownItem
from visembed.index.searcher import Hit, Searcher
from visembed.serve.decode import UploadRejected, decode_upload
from visembed.serve.item_files import RefusedFile, data_roots, file_chunks, open_item_image
from visembed.serve.schemas import (
    MAX_K, MAX_QUERY_CHARS, Health, RecommendRequest, Result, SearchResponse, problems,
)
from visembed.serve.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)


def get_searcher(request: Request) -> Searcher:
    """The app's searcher, first brought up to the index folder's committed generation (one
    `stat`; a reload only when `index delete`/`add`/a rebuild committed since)."""
    searcher = request.app.state.searcher
    searcher.refresh()
    return searcher


SearcherDep = Annotated[Searcher, Depends(get_searcher)]
K = Annotated[int, Query(ge=1, le=MAX_K, description="number of results")]


def results(hits: list[Hit]) -> SearchResponse:
    def urls(item_id: str) -> tuple[str, str]:
        base = f"/items/{quote(item_id, safe='')}"
        return f"{base}/image", f"{base}/thumbnail"

    return SearchResponse(results=[
        Result(id=h.id, score=h.score, caption=h.caption, image_url=urls(h.id)[0], thumbnail_url=urls(h.id)[1],
               because=h.because, because_score=h.because_score)
        for h in hits
    ])


def clean_text(text: str | None) -> str | None:
    text = (text or "").strip()
    return text or None


def uploaded_image(request: Request, file: UploadFile, model_side: int) -> Image.Image:
    """An uploaded file -> a small RGB image for a model whose input side is `model_side`, under
    the app's upload and decode limits; HTTPException 413/415/422/503 with a sentence otherwise."""
    limits = request.app.state.limits
    data = file.file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"the upload is larger than {limits.max_upload_bytes} bytes")
    try:
        return decode_upload(data, max_pixels=limits.max_pixels, model_side=model_side,
                             budget=request.app.state.decode_budget, wait_s=limits.decode_wait_s)
    except UploadRejected as exc:
        raise HTTPException(exc.status, exc.detail, headers=exc.headers) from None


@router.get("/healthz", response_model=Health, tags=["service"])
def healthz(searcher: SearcherDep) -> Health:
    return Health(items=len(searcher.store))


@router.get("/search", response_model=SearchResponse, tags=["search"], responses=problems(422))
def search_text(searcher: SearcherDep, q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
                k: K = 12) -> SearchResponse:
    """Text -> images. Any language the model's text tower reads (English, Chinese, ...)."""
    text = clean_text(q)
    if text is None:
        raise HTTPException(422, "the query is empty")
    return results(searcher.search_text(text, k))


@router.post("/search/image", response_model=SearchResponse, tags=["search"],
             responses=problems(400, 413, 415, 422, 503))
def search_image(request: Request, searcher: SearcherDep, file: Annotated[UploadFile, File(description="an image")],
                 q: Annotated[str | None, Form(max_length=MAX_QUERY_CHARS, description="optional text modifier")] = None,
                 k: Annotated[int, Form(ge=1, le=MAX_K)] = 12,
                 text_weight: Annotated[float, Form(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.5) -> SearchResponse:
    """Image -> images; with `q`, a composed query ("like this, but blue"). 503 with `Retry-After`
    when the server is already decoding as many images as its memory budget allows."""
    image = uploaded_image(request, file, searcher.model.image_size)
    return results(searcher.search_image(image, k, text=clean_text(q), text_weight=text_weight))


@router.post("/recommend", response_model=SearchResponse, tags=["recommend"], responses=problems(400, 413, 422))
def recommend(searcher: SearcherDep, body: RecommendRequest) -> SearchResponse:
    """Rocchio preference from liked/disliked ids, seen items left out, MMR-diversified; each result
    names the liked item it is closest to (`because`)."""
    try:
        hits = searcher.recommend(body.liked, body.disliked, body.k, lam=body.mmr_lambda)
    except UnknownItem as exc:
        raise HTTPException(422, str(exc)) from None
    return results(hits)


def _item(searcher: Searcher, item_id: str) -> dict:
    try:
        return searcher.item(item_id)
    except UnknownItem:
        raise HTTPException(404, f"no item with id {item_id!r}") from None


@router.get("/items/{item_id:path}/similar", response_model=SearchResponse, tags=["search"], responses=problems(404))
def similar(searcher: SearcherDep, item_id: str, k: K = 12) -> SearchResponse:
    """"More like this": the item's own embedding as the query."""
    _item(searcher, item_id)
    try:
        return results(searcher.similar(item_id, k))
    except UnknownItem:  # deleted between the two looks
        raise HTTPException(404, f"no item with id {item_id!r}") from None


_IMAGE_RESPONSES = {200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "the image"}, **problems(404)}


@router.get("/items/{item_id:path}/thumbnail", tags=["items"], response_class=Response, responses=_IMAGE_RESPONSES)
def thumbnail(searcher: SearcherDep, item_id: str) -> Response:
    """A small copy made when the index was built. Only items in the index are served."""
    _item(searcher, item_id)
    thumb = searcher.thumbnail(item_id)
    if thumb is None:
        raise HTTPException(404, f"item {item_id!r} has no thumbnail")
    return Response(thumb[0], media_type=thumb[1], headers={"Cache-Control": "public, max-age=3600"})


@router.get("/items/{item_id:path}/image", tags=["items"], response_class=Response, responses=_IMAGE_RESPONSES)
def image(searcher: SearcherDep, item_id: str, request: Request) -> Response:
    """The item's original image file where the data had one, else its thumbnail. The file is
    found through the index metadata only (a URL never names a path on disk), and sent only when
    it is a regular image file under the data folders the index was built from (no links out)."""
    item = _item(searcher, item_id)
    path = item.get("path")
    try:
        opened = open_item_image(path, data_roots(searcher.store.info, request.app.state.data_roots)) if path else None
    except RefusedFile:
        raise HTTPException(404, f"the image file of item {item_id!r} is not served: it is not a regular image "
                                 "file under the folders the index was built from (or given to serve --data-root)") from None
    if opened is not None:
        f, media_type = opened
        return StreamingResponse(file_chunks(f), media_type=media_type)
    return thumbnail(searcher, item_id)
