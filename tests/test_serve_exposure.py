"""What a stranger's data file, another site's page and a slow client can make the service do
(issue #21): files are sent only from folders the operator named, foreign pages cannot POST, a
trickling body is cut off, and connections are capped."""

import io
import json
import socket
import time

from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from test_index_build import shapes_index
from test_serve_concurrency import serve_in_thread
from test_serve_connections import GENEROUS_S
from visembed.cli import app as cli
from visembed.index import build_index
from visembed.serve.app import create_app


def planted_manifest(tmp_path):
    """A data file from the internet: one honest row, one reaching up out of its folder, one absolute."""
    data, private = tmp_path / "download", tmp_path / "private-photos"
    data.mkdir()
    private.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(data / "cat.png")
    Image.new("RGB", (40, 40), (30, 30, 200)).save(private / "holiday.png")
    Image.new("RGB", (40, 40), (30, 200, 30)).save(private / "passport.png")
    rows = [{"image": "cat.png", "caption": "a cat", "id": "cat"},
            {"image": "../private-photos/holiday.png", "caption": "a holiday", "id": "holiday"},
            {"image": str(private / "passport.png"), "caption": "a passport", "id": "passport"}]
    manifest = data / "data.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest, private


def test_paths_inside_the_data_never_widen_what_the_server_sends(tiny_model_dir, tmp_path):
    manifest, private = planted_manifest(tmp_path)
    out = tmp_path / "index"
    result = CliRunner().invoke(cli, ["index", "build", str(tiny_model_dir), "--data", str(manifest),
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 items' image files lie outside the data's folders" in result.output  # said at build time
    with TestClient(create_app(out), base_url="http://localhost") as client:
        assert client.get("/items/cat/image").content == (manifest.parent / "cat.png").read_bytes()
        for item in ("holiday", "passport"):
            assert client.get(f"/items/{item}/image").status_code == 404, item
            assert client.get(f"/items/{item}/thumbnail").status_code == 200  # still searchable and shown
    with TestClient(create_app(out, data_roots=[private]), base_url="http://localhost") as client:
        assert client.get("/items/holiday/image").content == (private / "holiday.png").read_bytes()  # the operator said so


def test_an_index_built_before_roots_came_from_the_specs_is_held_to_them_too(tiny_model_dir, tmp_path):
    manifest, private = planted_manifest(tmp_path)
    out = build_index(tiny_model_dir, str(manifest), tmp_path / "index", progress=False)
    recorded = json.loads((out / "index.json").read_text())
    old = {key: value for key, value in recorded.items() if key not in ("data_roots_from", "unserved_files")}
    old["data_roots"] = [str(manifest.parent), str(private)]  # what older builds derived from the items' paths
    (out / "index.json").write_text(json.dumps(old))
    with TestClient(create_app(out), base_url="http://localhost") as client:
        assert client.get("/items/cat/image").status_code == 200
        assert client.get("/items/holiday/image").status_code == 404


def test_a_missing_data_root_is_one_line_before_serving(tiny_model_dir, tmp_path_factory, tmp_path):
    index_dir = shapes_index(tiny_model_dir, tmp_path_factory)
    result = CliRunner().invoke(cli, ["serve", str(index_dir), "--port", "0", "--data-root", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "Traceback" not in result.output and "serving" not in result.output
    assert result.output.strip() == f"error: --data-root {tmp_path / 'nope'}: no such folder"


def _search_upload(client, **headers):
    image = Image.new("RGB", (40, 40), "red")
    body = io.BytesIO()
    image.save(body, format="PNG")
    return client.post("/search/image", files={"file": ("x.png", body.getvalue(), "image/png")}, headers=headers)


def test_pages_of_other_sites_cannot_post(tiny_model_dir, tmp_path_factory):
    index_dir = shapes_index(tiny_model_dir, tmp_path_factory)
    with TestClient(create_app(index_dir, allowed_origins=["https://friend.example"]),
                    base_url="http://localhost:8000") as client:
        assert _search_upload(client).status_code == 200  # curl, Python: no Origin
        assert _search_upload(client, origin="http://localhost:8000").status_code == 200  # the service's own page
        assert _search_upload(client, origin="https://friend.example").status_code == 200  # allowed by the operator
        for headers in ({"origin": "https://evil.example"}, {"origin": "null"}, {"origin": "http://localhost:8001"},
                        {"sec-fetch-site": "cross-site"}):
            refused = _search_upload(client, **headers)
            assert refused.status_code == 403 and "cross-origin" in refused.json()["detail"], headers
        refused = client.post("/recommend", json={"liked": ["x"]}, headers={"origin": "https://evil.example"})
        assert refused.status_code == 403
        # reading stays open: a GET from anywhere is answered as before
        assert client.get("/search", params={"q": "red"}, headers={"origin": "https://evil.example"}).status_code == 200


def test_a_body_that_trickles_in_is_cut_off_at_its_deadline(tiny_model_dir, tmp_path_factory):
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory))
    with serve_in_thread(app, body_idle_timeout=5.0, body_timeout=2.0) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S) as sock:
            sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n")
            started = time.monotonic()
            closed = False
            sock.settimeout(0.5)
            while time.monotonic() - started < GENEROUS_S:  # one byte well within the idle deadline, again and again
                try:
                    sock.sendall(b" ")
                    if sock.recv(65536) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
            assert closed and time.monotonic() - started < GENEROUS_S / 2


def test_connections_beyond_the_cap_are_answered_503_at_once(tiny_model_dir, tmp_path_factory):
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory))
    with serve_in_thread(app, max_connections=3, header_timeout=GENEROUS_S) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S) for _ in range(3)]
        try:
            for sock in idle:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # heads never finished
            time.sleep(0.5)
            with socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 503")
        finally:
            for sock in idle:
                sock.close()
