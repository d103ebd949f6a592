"""The HTTP API in-process (FastAPI TestClient, real model and index): answers, and clear 4xx on bad input."""

import io
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from test_index_build import shapes_index
from visembed.serve.app import create_app

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory), max_upload_bytes=LIMIT)
    with TestClient(app, base_url="http://localhost") as client:  # runs the lifespan: model and index load here
        yield client


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def item_png(client, item_id) -> bytes:
    response = client.get(f"/items/{item_id}/image")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return response.content


def first_ids(client, n=3):
    return [r["id"] for r in client.get("/search", params={"q": "a red circle", "k": n}).json()["results"]]


def test_health_page_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok", "items": 240}
    page = client.get("/")
    assert page.status_code == 200 and 'id="search-form"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/search/image", "/recommend", "/healthz", "/items/{item_id}/image"} <= set(paths)


@pytest.mark.parametrize("query", ["a large blue square", "红色的圆"])
def test_text_search(client, query):
    body = client.get("/search", params={"q": query, "k": 7}).json()
    results = body["results"]
    assert len(results) == 7
    assert set(results[0]) >= {"id", "score", "caption", "image_url"}
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    image = client.get(results[0]["image_url"])
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 64)


def test_image_search_finds_the_item_itself(client):
    target = first_ids(client, 1)[0]
    response = client.post("/search/image", files={"file": ("x.png", item_png(client, target), "image/png")}, data={"k": "3"})
    results = response.json()["results"]
    assert response.status_code == 200 and len(results) == 3
    assert target in [r["id"] for r in results] and results[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_composed_query_blends_image_and_text(client):
    target = first_ids(client, 1)[0]
    image = item_png(client, target)

    def ids(**form):
        response = client.post("/search/image", files={"file": ("x.png", image, "image/png")}, data={"k": "10", **form})
        assert response.status_code == 200, response.text
        return [(r["id"], round(r["score"], 4)) for r in response.json()["results"]]

    image_only = ids()
    text_only = [(r["id"], round(r["score"], 4)) for r in
                 client.get("/search", params={"q": "a small green triangle", "k": 10}).json()["results"]]
    assert ids(q="a small green triangle", text_weight="0") == image_only
    assert ids(q="a small green triangle", text_weight="1") == text_only
    blended = ids(q="a small green triangle", text_weight="0.5")
    assert blended != image_only and blended != text_only


def test_more_like_this_and_recommend(client):
    a, b, c = first_ids(client, 3)
    similar = client.get(f"/items/{a}/similar", params={"k": 5}).json()["results"]
    assert len(similar) == 5 and a not in [r["id"] for r in similar]

    response = client.post("/recommend", json={"liked": [a, b], "disliked": [c], "k": 8})
    results = response.json()["results"]
    assert response.status_code == 200 and len(results) == 8
    assert not {a, b, c} & {r["id"] for r in results}
    assert all(r["because"] in (a, b) for r in results)


def test_thumbnails_and_unknown_items(client):
    a = first_ids(client, 1)[0]
    thumb = client.get(f"/items/{a}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert client.get("/items/no-such-item/image").status_code == 404
    assert client.get("/items/no-such-item/thumbnail").status_code == 404


@pytest.mark.parametrize("path", [
    "/items/..%2F..%2F..%2Fetc%2Fpasswd/image",
    "/items/%2Fetc%2Fpasswd/image",
    "/items/../../etc/passwd/image",
    "/static/..%2F..%2Fapp.py",
])
def test_no_path_traversal(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert b"root:" not in response.content and b"create_app" not in response.content


def test_bad_parameters_are_422(client):
    a = first_ids(client, 1)[0]
    for params in ({"q": "x", "k": 0}, {"q": "x", "k": 101}, {"q": "x", "k": "many"}, {}, {"q": "   "}, {"q": "x" * 501}):
        assert client.get("/search", params=params).status_code == 422, params
    for body in ({"liked": []}, {"liked": ["nope"]}, {"liked": [a], "disliked": ["nope"]}, {"liked": [a], "k": 0},
                 {"liked": [a], "mmr_lambda": 2}, {"liked": "abc"}):
        response = client.post("/recommend", json=body)
        assert response.status_code == 422, body
        assert "detail" in response.json()
    assert client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/search/image", data={"q": "no file"}).status_code == 422


def test_uploads_that_are_not_usable_images(client):
    good = png(Image.new("RGB", (40, 40), "red"))
    cases = {
        415: [b"hello, I am text", b"%PDF-1.4 not an image"],
        422: [good[: len(good) // 2], b""],
    }
    for status, payloads in cases.items():
        for payload in payloads:
            response = client.post("/search/image", files={"file": ("x.png", payload, "image/png")})
            assert response.status_code == status, (payload[:20], response.text)
            assert "image" in response.json()["detail"]


def test_oversized_uploads_are_413(client):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))
    big = png(noise)
    assert LIMIT < len(big) < LIMIT + 64 * 1024  # passes the body check, fails the file check
    response = client.post("/search/image", files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 413
    huge = b"\x89PNG" + b"\x00" * (LIMIT * 3)  # rejected from its Content-Length before being read
    assert client.post("/search/image", files={"file": ("huge.png", huge, "image/png")}).status_code == 413

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(40):
            yield b"\x00" * 8192

    response = client.post("/search/image", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 413


def test_decompression_bomb_is_refused(tiny_model_dir, tmp_path_factory):
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory), max_pixels=100 * 100)
    with TestClient(app, base_url="http://localhost") as client:
        response = client.post("/search/image", files={"file": ("big.png", png(Image.new("RGB", (300, 300))), "image/png")})
    detail = response.json()["detail"]
    assert response.status_code == 413 and "too large" in detail and "at most 10,000 pixels" in detail


def test_missing_or_truncated_thumbnails_are_404_not_500(tiny_model_dir, tmp_path):
    from visembed.index import build_index

    out = build_index(tiny_model_dir, "builtin:shapes?n=10", tmp_path / "index", progress=False, shard_size=5)
    with TestClient(create_app(out), base_url="http://localhost") as client:
        a, b = first_ids(client, 2)
        assert client.get(f"/items/{a}/thumbnail").status_code == 200
        for thumbs in (out / "embeddings").glob("*.thumbs"):
            thumbs.write_bytes(thumbs.read_bytes()[:10])  # truncated
        assert client.get(f"/items/{a}/thumbnail").status_code == 404
        shutil.rmtree(out / "embeddings")  # deleted to save space: the index itself still works
        for kind in ("thumbnail", "image"):
            assert client.get(f"/items/{b}/{kind}").status_code == 404
        assert client.get("/search", params={"q": "a red circle"}).status_code == 200


def test_faiss_searches_run_single_threaded_in_the_request_thread(client):
    import threading

    import faiss

    store = client.app.state.searcher.store
    assert store.search_threads == 1
    seen = []

    def search_in_a_fresh_thread():  # as a thread-pool worker: libgomp's setting is per thread
        faiss.omp_set_num_threads(2)  # whatever the thread started with (OMP_NUM_THREADS, cores)
        store.search(store.vectors(store.ids()[:1]), 3)
        seen.append(faiss.omp_get_max_threads())

    worker = threading.Thread(target=search_in_a_fresh_thread)
    worker.start()
    worker.join()
    assert seen == [1]
