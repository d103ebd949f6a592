"""`--store milvus:FILE.db` and `milvus://HOST:PORT` through the real CLI and service: the same answers as
the FAISS folder, deletions that survive rebuilds, and one clear line for a dead address, a Lite file
held by another process, or a collection made by another model. (The store contract itself runs on
Milvus in `test_index_backends.py`.)"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import visembed
from visembed.cli import app

pytest.importorskip("milvus_lite", reason="the `milvus` extra (./dev test installs it)")

runner = CliRunner()
REPO = Path(visembed.__file__).resolve().parents[1]
DATA = "builtin:shapes?n=60"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_indexes(tiny_model_dir, tmp_path_factory):
    """The same model and data indexed twice: (FAISS folder, Milvus Lite index folder, its .db file)."""
    base = tmp_path_factory.mktemp("milvus_cli")
    faiss_dir, milvus_dir, db = base / "faiss", base / "milvus", base / "items.db"
    for out, store in ((faiss_dir, "faiss"), (milvus_dir, f"milvus:{db}")):
        result = run("index", "build", tiny_model_dir, "--data", DATA, "--out", out, "--store", store, "--quiet")
        assert result.exit_code == 0, result.output
        assert "indexed 60 items" in result.output
    return faiss_dir, milvus_dir, db


def hits(*args):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def same_answers(a, b):
    assert [h["id"] for h in a] == [h["id"] for h in b]
    np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-5)
    assert [h["caption"] for h in a] == [h["caption"] for h in b]


def test_milvus_index_answers_like_faiss(two_indexes, tmp_path):
    faiss_dir, milvus_dir, _ = two_indexes
    pointer = json.loads((milvus_dir / "store.json").read_text())
    assert pointer["backend"] == "milvus" and pointer["kind"] == "flat" and pointer["live"] == 60
    assert not (milvus_dir / "index.json").exists()  # the vectors are in Milvus, not in the folder

    same_answers(hits("search", faiss_dir, "a red circle", "-k", "8"), hits("search", milvus_dir, "a red circle", "-k", "8"))
    first = hits("search", faiss_dir, "a blue square", "-k", "3")
    image = tmp_path / "query.png"  # a composed query: this image, moved towards the text
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    same_answers(hits("search", faiss_dir, "green", "--image", image, "-k", "6"),
                 hits("search", milvus_dir, "green", "--image", image, "-k", "6"))
    liked = [h["id"] for h in first[:2]]
    same_answers(hits("recommend", faiss_dir, "--liked", *liked, "-k", "5"),
                 hits("recommend", milvus_dir, "--liked", *liked, "-k", "5"))


def test_service_over_milvus_answers_like_faiss(two_indexes):
    from visembed.serve.app import create_app

    answers = []
    for index_dir in two_indexes[:2]:
        with TestClient(create_app(index_dir), base_url="http://localhost") as client:
            found = client.get("/search", params={"q": "a yellow triangle", "k": 5}).json()["results"]
            first = found[0]["id"]
            similar = client.get(f"/items/{first}/similar", params={"k": 4}).json()["results"]
            thumb = client.get(f"/items/{first}/thumbnail")
            assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")
            recs = client.post("/recommend", json={"liked": [first], "k": 3}).json()["results"]
            answers.append([[r["id"] for r in part] for part in (found, similar, recs)])
    assert answers[0] == answers[1]


def test_deletions_and_additions_survive_a_rebuild(tiny_model_dir, tmp_path):
    out, store = tmp_path / "index", f"milvus:{tmp_path / 'items.db'}"
    assert run("index", "build", tiny_model_dir, "--data", "builtin:shapes?n=30", "--out", out, "--store", store,
               "--quiet").exit_code == 0
    gone = hits("search", out, "a red circle", "-k", "2")[0]["id"]
    result = run("index", "delete", out, gone)
    assert result.exit_code == 0 and "29 items left" in result.output, result.output
    result = run("index", "add", out, "--data", "builtin:shapes?n=40", "--quiet")
    assert result.exit_code == 0 and "added 10 items" in result.output, result.output
    assert gone not in {h["id"] for h in hits("search", out, "a red circle", "-k", "50")}

    result = run("index", "build", tiny_model_dir, "--data", "builtin:shapes?n=30", "--out", out, "--store", store,
                 "--quiet")  # a rebuild: a new generation (collection), the deletion and the added items kept
    assert result.exit_code == 0 and "indexed 39 items" in result.output, result.output
    found = {h["id"] for h in hits("search", out, "a red circle", "-k", "50")}
    assert len(found) == 39 and gone not in found
    pointer = json.loads((out / "store.json").read_text())
    assert pointer["collection"].endswith("_g00004") and pointer["deleted"] == [gone]

    result = run("index", "build", tiny_model_dir, "--data", "builtin:shapes?n=30", "--out", out, "--quiet")
    assert result.exit_code == 2 and "is a milvus index, not faiss" in result.output  # no silent switch


def test_a_second_process_on_a_lite_file_gets_one_line(two_indexes):
    """This test process holds the Lite file (the fixture opened it): `index delete` from another
    process must say so, not hang or print a traceback."""
    _, milvus_dir, db = two_indexes
    assert run("search", milvus_dir, "a red circle", "--json").exit_code == 0  # holds it open
    proc = subprocess.run([sys.executable, "-m", "visembed.cli", "index", "delete", str(milvus_dir), "anything"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "another process has it open" in lines[0] and str(db) in lines[0]


def test_a_milvus_address_that_does_not_answer_is_one_line(tiny_model_dir, tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "visembed.cli", "index", "build", str(tiny_model_dir), "--data", DATA, "--out",
             str(tmp_path / "index"), "--store", f"milvus://127.0.0.1:{port}", "--milvus-timeout", "1", "--quiet"],
            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no Milvus server answers at http://127.0.0.1:{port} within 1 s" in lines[0]
    assert not (tmp_path / "index" / "embeddings").exists()  # refused before any embedding


@pytest.mark.parametrize("spec, message", [
    ("milvus:items.sqlite", "ends in .db"), ("milvus://", "expected faiss"), ("redis://h:1", "expected faiss"),
    ("milvus://h:19530/bad-name", "letters, digits"),
])
def test_bad_store_specs_are_one_line(tiny_model_dir, tmp_path, spec, message):
    result = run("index", "build", tiny_model_dir, "--data", DATA, "--out", tmp_path / "i", "--store", spec)
    assert result.exit_code == 2 and message in result.output


def test_a_collection_of_another_model_is_refused(tmp_path):
    from visembed.index.backends import IndexStoreError, create_store, open_store
    from visembed.index.backends.milvus_store import MilvusSettings

    def settings():
        return MilvusSettings(uri=str(tmp_path / "shared.db"), collection="shared")

    x = np.eye(4, dtype=np.float32)
    mine = create_store(tmp_path / "mine", 4, settings=settings(), info={"weights_sha256": "a" * 64}, backend="milvus")
    mine.add(["a", "b", "c", "d"], x, [{}] * 4)
    mine.commit()
    theirs = create_store(tmp_path / "theirs", 4, settings=settings(), info={"weights_sha256": "b" * 64}, backend="milvus")
    theirs.add(["z"], x[:1], [{}])
    with pytest.raises(IndexStoreError, match="belongs to another index"):
        theirs.commit()  # the same collection name: never overwritten

    pointer = tmp_path / "mine" / "store.json"  # the folder now claims other weights than the collection's
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "weights_sha256": "c" * 64}))
    with pytest.raises(IndexStoreError, match="built by another model"):
        open_store(tmp_path / "mine")
