"""`index build` and `embed` under torchrun (2 CPU processes, gloo) give what one process gives: the same
vectors, ids and search results; each rank's shards resume like one process's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import visembed
from visembed.index.backends import open_store

REPO = Path(visembed.__file__).resolve().parents[1]
DATA = ["--data", "builtin:shapes?n=44", "--shard-size", "8"]  # 6 shards: 3 per rank, the last one short
# one thread per process in both runs: torchrun's workers get 1 by default, and the same thread count
# keeps the arithmetic of the two runs alike
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.slow


def launch(args, processes=1):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*torchrun, "-m", "visembed.cli", *map(str, args)] if processes > 1 else \
        [sys.executable, "-m", "visembed.cli", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=REPO)


def finish(*procs):
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        outputs.append(out)
    return outputs


@pytest.fixture(scope="module")
def builds(tiny_model_dir, tmp_path_factory):
    """The same index built by 1 process and by 2 (at once: 3 processes share the 2 cores)."""
    base = tmp_path_factory.mktemp("distributed")
    args = ["index", "build", tiny_model_dir, *DATA, "--quiet"]
    one, two = launch([*args, "--out", base / "one"]), launch([*args, "--out", base / "two"], processes=2)
    out_one, out_two = finish(one, two)
    assert "indexed 44 items" in out_one and out_two.count("indexed 44 items") == 1  # rank 0 alone reports
    return base / "one", base / "two"


def test_two_processes_build_the_index_one_process_builds(builds):
    one, two = (open_store(d) for d in builds)
    assert one.ids() == two.ids() and len(one) == 44
    np.testing.assert_allclose(two.vectors(two.ids()), one.vectors(one.ids()), atol=1e-6)
    assert one.meta(one.ids()) == two.meta(two.ids())  # captions, paths and thumbnails alike
    queries = one.vectors(one.ids()[::7])
    for a, b in zip(one.search(queries, 10), two.search(queries, 10)):
        assert a.ids == b.ids
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    shards = sorted(p.name for p in (builds[1] / "embeddings").glob("shard_*.npy"))
    assert len(shards) == 6 and shards == sorted(p.name for p in (builds[0] / "embeddings").glob("shard_*.npy"))


def test_a_rerun_under_torchrun_resumes_each_ranks_shards(builds, tiny_model_dir):
    """A rank that died mid-build leaves its finished shards; the rerun embeds only what is missing."""
    two = builds[1]
    before = open_store(two).vectors(open_store(two).ids())
    lost = sorted((two / "embeddings").glob("shard_*.npy"))
    lost[1].unlink(), lost[4].unlink()  # shard 1 (rank 1's) and shard 4 (rank 0's) never finished
    finish(launch(["index", "build", tiny_model_dir, *DATA, "--quiet", "--out", two], processes=2))
    manifest = json.loads((two / "index.json").read_text())
    assert manifest["reused_shards"] == 4 and manifest["live"] == 44
    np.testing.assert_allclose(open_store(two).vectors(open_store(two).ids()), before, atol=1e-6)


def test_embed_under_torchrun_matches_one_process(tiny_model_dir, tmp_path):
    args = ["embed", tiny_model_dir, *DATA, "--split", "all"]
    procs = [launch([*args, "--out", tmp_path / "one"]),
             launch([*args, "--out", tmp_path / "two"], processes=2),
             launch([*args, "--out", tmp_path / "clip", "--format", "clip-retrieval"], processes=2)]
    finish(*procs)
    ids = (tmp_path / "one.ids.txt").read_text().split()
    assert len(ids) == 44 and (tmp_path / "two.ids.txt").read_text().split() == ids
    vectors = np.load(tmp_path / "one.npy")
    np.testing.assert_allclose(np.load(tmp_path / "two.npy"), vectors, atol=1e-5)

    # clip-retrieval's layout: img_emb_N.npy and metadata_N.parquet, row for row, in file-name order
    parts = sorted((tmp_path / "clip" / "img_emb").glob("img_emb_*.npy"))
    tables = sorted((tmp_path / "clip" / "metadata").glob("metadata_*.parquet"))
    assert [p.stem[len("img_emb_"):] for p in parts] == [t.stem[len("metadata_"):] for t in tables] and len(parts) == 6
    emb = np.concatenate([np.load(p) for p in parts])
    meta = [row for t in tables for row in pq.read_table(t).to_pylist()]
    assert emb.dtype == np.float16 and [row["id"] for row in meta] == ids
    assert set(meta[0]) == {"image_path", "caption", "id"} and all(row["caption"] for row in meta)
    np.testing.assert_allclose(emb.astype(np.float32), vectors, atol=2e-3)
