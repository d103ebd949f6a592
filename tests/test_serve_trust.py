"""The service under hostile or changing conditions (issue #11): strict JSON, clean error texts, a
shared decode budget (503 + Retry-After), Host checking, original files served only from the
indexed folders, and an index folder followed while serving."""

import io
import json


import pytest
from fastapi.testclient import TestClient
from PIL import Image

from test_index_build import shapes_index
from visembed.serve.app import create_app


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    return create_app(shapes_index(tiny_model_dir, tmp_path_factory), decode_wait_s=0.0)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://localhost") as client:
        yield client


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def an_id(client):
    return client.get("/search", params={"q": "a red circle", "k": 1}).json()["results"][0]["id"]


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


@pytest.mark.parametrize("constant", NON_FINITE)
@pytest.mark.parametrize("field", ["liked", "disliked", "k", "mmr_lambda", "body"])
def test_non_finite_json_numbers_are_422_not_500(client, field, constant):
    a = an_id(client)
    fields = {"liked": json.dumps([a]), "disliked": "[]", "k": "3", "mmr_lambda": "0.5"}
    if field == "body":
        raw = constant
    else:
        fields[field] = f"[{constant}]" if field in ("liked", "disliked") else constant
        raw = "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"
    response = client.post("/recommend", content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422, (raw, response.text)
    assert "detail" in response.json()


def test_a_body_nested_deeper_than_python_recurses_is_422_not_500(client):
    raw = '{"liked": ' + "[" * 1500 + "]" * 1500 + "}"
    response = client.post("/recommend", content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422 and "nested too deeply" in response.text


@pytest.mark.parametrize("raw", ['["\\ud800"]', '{"\\udfff": 1}', '[{"a": ["ok", "\\udc00"]}]'])
def test_strings_with_lone_surrogates_are_not_json_text(raw):
    from visembed.serve.strict_json import strict_loads

    with pytest.raises(json.JSONDecodeError, match="lone UTF-16 surrogate"):
        strict_loads(raw)
    assert strict_loads('["\\ud83d\\ude00"]') == ["\U0001F600"]  # a pair is a character


@pytest.mark.parametrize("value", ["NaN", "inf", "-Infinity", "1e400"])
def test_non_finite_form_numbers_are_422(client, value):
    image = png(Image.new("RGB", (40, 40), "red"))
    response = client.post("/search/image", files={"file": ("x.png", image, "image/png")}, data={"text_weight": value})
    assert response.status_code == 422, response.text
    assert client.get("/search", params={"q": "x", "k": value}).status_code == 422


def test_error_texts_quote_no_internals_and_our_limit(client):
    for payload in (b"hello, I am text", b"%PDF-1.4 not an image", b"GIF89a" + b"\x00" * 3):
        response = client.post("/search/image", files={"file": ("x.png", payload, "image/png")})
        assert response.status_code in (415, 422) and "0x" not in response.text and "BytesIO" not in response.text
    # over Pillow's own bomb limit (~179 MP): Pillow refuses before our check; we still name ours
    bomb = png(Image.new("1", (20000, 10000)))
    response = client.post("/search/image", files={"file": ("bomb.png", bomb, "image/png")})
    detail = response.json()["detail"]
    assert response.status_code == 413 and "40,000,000" in detail
    assert "178956970" not in detail and "89478485" not in detail and "DOS" not in detail


def test_a_full_decode_budget_answers_503_with_retry_after(client, app):
    image = png(Image.new("RGBA", (300, 200), (0, 0, 255, 128)))
    budget = app.state.decode_budget
    with budget.reserve(budget.capacity, wait_s=0):  # as if other uploads were being decoded
        response = client.post("/search/image", files={"file": ("x.png", image, "image/png")})
    assert response.status_code == 503 and response.headers["retry-after"].isdigit()
    assert budget.in_use == 0
    assert client.post("/search/image", files={"file": ("x.png", image, "image/png")}).status_code == 200


@pytest.mark.parametrize("host, status", [
    ("attacker.example", 400), ("attacker.example:8000", 400), ("localhost.attacker.example", 400),
    ("localhost", 200), ("localhost:8000", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200),
])
def test_only_our_host_names_are_answered(client, host, status):
    assert client.get("/healthz", headers={"host": host}).status_code == status


def test_allowed_hosts_are_configurable(tiny_model_dir, tmp_path_factory):
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory), allowed_hosts=["search.example.org"])
    with TestClient(app, base_url="http://search.example.org") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"host": "localhost"}).status_code == 400


def folder_index(tiny_model_dir, tmp_path):
    from visembed.index import build_index

    data = tmp_path / "photos"
    data.mkdir()
    for name, rgb in {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}.items():
        Image.new("RGB", (50, 40), rgb).save(data / f"{name}.png")
        (data / f"{name}.txt").write_text(f"a {name} square")
    Image.new("RGB", (50, 40), (240, 210, 20)).save(data / "yellow.png", format="JPEG")  # named .png
    (data / "yellow.txt").write_text("a yellow square")
    return data, build_index(tiny_model_dir, str(data), tmp_path / "index", progress=False)


def test_originals_only_as_regular_image_files_under_the_data_folder(tiny_model_dir, tmp_path):
    data, out = folder_index(tiny_model_dir, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("the password is swordfish")
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (50, 40), (1, 2, 3)).save(outside / "elsewhere.png")
    with TestClient(create_app(out), base_url="http://localhost") as client:
        red = client.get("/items/red/image")
        assert red.status_code == 200 and red.content == (data / "red.png").read_bytes()
        yellow = client.get("/items/yellow/image")
        assert yellow.status_code == 200 and yellow.headers["content-type"] == "image/jpeg"

        (data / "red.png").unlink()
        (data / "red.png").symlink_to(secret)  # an indexed image replaced by a link to a secret
        (data / "green.png").unlink()
        (data / "green.png").symlink_to(outside / "elsewhere.png")  # a real image, outside the data
        (data / "yellow.png").write_text("the password is swordfish")  # a regular file, not an image
        for item in ("red", "green", "yellow"):
            response = client.get(f"/items/{item}/image")
            assert response.status_code == 404 and b"swordfish" not in response.content, item

        moved = tmp_path / "photos-real"
        data.rename(moved)
        data.symlink_to(outside)  # the whole folder swapped for a link out of the data
        (outside / "blue.png").write_bytes((outside / "elsewhere.png").read_bytes())
        response = client.get("/items/blue/image")
        assert response.status_code == 404
        assert client.get("/items/blue/thumbnail").status_code == 200  # made at build time, inside the index


def test_a_running_server_follows_deletions_adds_and_rebuilds(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from visembed.cli import app as cli
    from visembed.index import add_to_index, build_index

    out = build_index(tiny_model_dir, "builtin:shapes?n=30", tmp_path / "index", split="train", progress=False)
    with TestClient(create_app(out), base_url="http://localhost") as client:
        assert client.get("/healthz").json()["items"] == 24
        hits = client.get("/search", params={"q": "a red circle", "k": 5}).json()["results"]
        gone = hits[0]["id"]
        result = CliRunner().invoke(cli, ["index", "delete", str(out), gone])  # another process's tool
        assert result.exit_code == 0, result.output

        assert client.get("/healthz").json()["items"] == 23
        ids = [r["id"] for r in client.get("/search", params={"q": "a red circle", "k": 23}).json()["results"]]
        assert gone not in ids and len(ids) == 23
        for path in (f"/items/{gone}/image", f"/items/{gone}/thumbnail", f"/items/{gone}/similar"):
            assert client.get(path).status_code == 404
        assert client.post("/recommend", json={"liked": [gone]}).status_code == 422

        report = add_to_index(out, "builtin:shapes?n=30", progress=False)  # committed elsewhere
        assert (report.added, report.still_deleted) == (6, 1)  # the deleted one stays deleted
        assert client.get("/healthz").json()["items"] == 29
        assert client.app.state.searcher.store.search_threads == 1  # the settings carry over a reload

        (out / "index.json").write_text("{ not json")  # a broken commit: keep serving the last good one
        assert client.get("/healthz").json()["items"] == 29
