"""clip-retrieval's clients against `visembed serve`: its real `ClipClient` (clip_retrieval/clip_client.py,
loaded on its own: the package's `__init__` imports its whole back end) over a real uvicorn server,
and the request/response rules of `/knn-service`, `/metadata`, `/indices-list` (CORS, 4xx)."""

import base64
import importlib.util
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from test_index_build import shapes_index
from test_serve_concurrency import serve_in_thread
from visembed.index.searcher import Searcher
from visembed.serve.app import create_app


def load_clip_client():
    spec = importlib.util.find_spec("clip_retrieval")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("clip-retrieval is not installed (./dev test installs it: pip install --no-deps clip-retrieval)")
    path = Path(next(iter(spec.submodule_search_locations))) / "clip_client.py"
    module_spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def index_dir(tiny_model_dir, tmp_path_factory):
    return shapes_index(tiny_model_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def searcher(index_dir):
    return Searcher.open(index_dir)


@pytest.fixture(scope="module")
def base_url(index_dir):
    with serve_in_thread(create_app(index_dir)) as url:
        yield url


@pytest.fixture(scope="module")
def client_for(base_url, index_dir):
    clip_client = load_clip_client()

    def make(**options):
        return clip_client.ClipClient(f"{base_url}/knn-service", index_dir.name, **options)

    return make


def png_file(tmp_path, colour=(220, 40, 40)):
    path = tmp_path / "query.png"
    Image.new("RGB", (64, 64), colour).save(path)
    return path


def test_clip_client_text_query_matches_our_search(client_for, searcher, base_url):
    results = client_for(num_images=6, deduplicate=False).query(text="a red circle")
    expected = searcher.search_text("a red circle", 6)
    assert [r["id"] for r in results] == [h.id for h in expected]
    assert all(set(r) == {"id", "similarity", "caption", "url"} for r in results)
    np.testing.assert_allclose([r["similarity"] for r in results], [h.score for h in expected], atol=1e-5)
    assert [r["caption"] for r in results] == [h.caption for h in expected]
    assert results[0]["url"].startswith(f"{base_url}/items/")  # absolute: the front end loads it as is
    image = httpx.get(results[0]["url"])
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")


def test_clip_client_image_and_embedding_queries(client_for, searcher, tmp_path):
    client = client_for(num_images=5, deduplicate=False)
    results = client.query(image=str(png_file(tmp_path)))  # the client base64-encodes the file
    expected = searcher.search_image(Image.open(png_file(tmp_path)), 5)
    assert [r["id"] for r in results] == [h.id for h in expected]

    item = searcher.store.ids()[7]
    own = searcher.store.vectors([item])[0]
    results = client.query(embedding_input=own.tolist())
    assert results[0]["id"] == item and results[0]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_clip_client_image_url_is_refused_offline(client_for, base_url, index_dir):
    answer = client_for().query(image="https://example.com/cat.jpg")  # ClipClient never checks the status
    assert isinstance(answer, dict) and "never downloads" in answer["detail"]
    response = httpx.post(f"{base_url}/knn-service", json={"image_url": "http://127.0.0.1:1/x.jpg",
                                                          "modality": "image", "num_images": 3})
    assert response.status_code == 422 and response.headers["access-control-allow-origin"] == "*"


def test_num_result_ids_beyond_num_images_carry_id_and_similarity_only(base_url, index_dir):
    # the web front end sends text/plain bodies
    body = '{"text": "a blue square", "modality": "image", "num_images": 3, "num_result_ids": 10, ' \
           f'"indice_name": "{index_dir.name}", "aesthetic_score": "", "aesthetic_weight": "0.5"}}'
    response = httpx.post(f"{base_url}/knn-service", content=body, headers={"content-type": "text/plain"})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "*"
    results = response.json()
    assert len(results) == 10 and all(set(r) == {"id", "similarity", "caption", "url"} for r in results[:3])
    assert all(set(r) == {"id", "similarity"} for r in results[3:])
    similarities = [r["similarity"] for r in results]
    assert similarities == sorted(similarities, reverse=True)

    ids = [r["id"] for r in results[3:6]]
    response = httpx.post(f"{base_url}/metadata", json={"ids": ids + ["not-an-id"], "indice_name": index_dir.name})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "*"
    assert [m["id"] for m in response.json()] == ids
    assert all(set(m["metadata"]) == {"caption", "url"} and m["metadata"]["caption"] for m in response.json())
    assert httpx.get(f"{base_url}/indices-list").json() == [index_dir.name]


def test_deduplicate_drops_near_copies_of_better_results(base_url, searcher):
    query = {"text": "a red circle", "modality": "image", "num_images": 40}
    everything = httpx.post(f"{base_url}/knn-service", json={**query, "deduplicate": False}).json()
    unique = httpx.post(f"{base_url}/knn-service", json={**query, "deduplicate": True}).json()
    ids = [r["id"] for r in unique]
    assert len(unique) < len(everything) and ids == [r["id"] for r in everything if r["id"] in ids]
    vectors = searcher.store.vectors(ids)
    cosines = vectors @ vectors.T
    np.fill_diagonal(cosines, 0)
    assert cosines.max() <= 0.94 + 1e-6


@pytest.mark.parametrize("body, status, message", [
    ({"text": "x", "modality": "image", "num_images": 3, "colour": "red"}, 422, "colour: Extra inputs"),
    ({"image": "not base64!!", "modality": "image", "num_images": 3}, 422, "not valid base64"),
    ({"image": base64.b64encode(b"not an image").decode(), "num_images": 3}, 415, "not an image"),
    ({"text": "x", "image": "aGk=", "num_images": 3}, 422, "exactly one of"),
    ({"num_images": 3}, 422, "exactly one of"),
    ({"text": "x", "num_images": 3, "modality": "text"}, 422, "image embeddings only"),
    ({"text": "x", "num_images": 3, "indice_name": "laion5B"}, 404, "no index named 'laion5B'"),
    ({"text": "x", "num_images": 3, "aesthetic_score": "pretty"}, 422, "aesthetic_score"),
    ({"embedding_input": [0.1, 0.2], "num_images": 3}, 422, "finite numbers"),
    ({"text": "x", "num_images": 10**6}, 422, "num_images"),
])
def test_bad_knn_requests_are_4xx_with_a_sentence(base_url, body, status, message):
    response = httpx.post(f"{base_url}/knn-service", json=body)
    assert response.status_code == status and message in str(response.json()["detail"])
    assert response.headers["access-control-allow-origin"] == "*"


def test_bodies_that_are_not_json_and_preflight(base_url):
    response = httpx.post(f"{base_url}/knn-service", content=b'{"text": NaN}')
    assert response.status_code == 422 and "not JSON" in response.json()["detail"]
    response = httpx.post(f"{base_url}/metadata", content=b"\xff\xfe")
    assert response.status_code == 422
    response = httpx.options(f"{base_url}/knn-service", headers={"origin": "http://front.example",
                                                                 "access-control-request-method": "POST"})
    assert response.status_code == 204 and response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in httpx.get(f"{base_url}/search", params={"q": "x"}).headers


def test_the_front_end_of_another_origin_may_search_but_not_use_other_posts(base_url, index_dir):
    foreign = {"origin": "http://front.example"}
    response = httpx.post(f"{base_url}/knn-service", json={"text": "a red circle", "indice_name": index_dir.name},
                          headers=foreign)
    assert response.status_code == 200, response.text
    assert httpx.post(f"{base_url}/recommend", json={"liked": ["x"]}, headers=foreign).status_code == 403


def test_a_base64_image_round_trip_with_a_data_url(base_url, searcher):
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (30, 30, 220)).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    plain = httpx.post(f"{base_url}/knn-service", json={"image": data, "num_images": 4}).json()
    dataurl = httpx.post(f"{base_url}/knn-service", json={"image": f"data:image/png;base64,{data}", "num_images": 4}).json()
    assert [r["id"] for r in plain] == [r["id"] for r in dataurl] == \
        [h.id for h in searcher.search_image(Image.open(io.BytesIO(buffer.getvalue())), 4)]
