"""Beyond one machine, measured on one: FAISS folder vs Milvus Lite through visembed's `VectorStore`, and
embedding throughput with 1 and 2 processes (`torchrun`).

    .venv/bin/python benchmarks/milvus.py                       # 1M vectors, 100k with deletes, embedding
    .venv/bin/python benchmarks/milvus.py --sizes 200k          # what fits a shared 2-core machine
    .venv/bin/python benchmarks/milvus.py --smoke               # 3k vectors, 50 images: does it run (CI)

Stores: both HNSW (M 32, efConstruction 80, efSearch 128) over the same 256-d low-rank unit vectors
(`benchmarks/search.py`'s `lowrank`), built with `create_store(..., backend=...)` and committed,
as `index build` does. Recall@10 is against exact search (numpy). Latency: one query at a time,
as a user's search is. Memory: resident-set growth of this process while building and holding the
store (Milvus Lite runs inside it); disk: the index folder (FAISS) or the .db folder (Milvus Lite).

Deletes interleaved: 100k items, then 10 rounds of "delete 1 % (random live ids), commit, 100
queries"; recall@10 against exact search over the items still live, as it stands after the last round.

Embedding: `visembed embed --format clip-retrieval` on builtin:shapes with a freshly initialised
tiny model, 1 process x 2 threads, 1 process x 1 thread and `torchrun --nproc_per_node 2` x 1 thread;
images/s from the difference between a large and a small run, so start-up (torch import, model
load) cancels.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.markdown_table import print_table  # noqa: E402
from benchmarks.search import make_vectors, parse_size  # noqa: E402
from visembed.index.backends import create_store  # noqa: E402

DIM = 256


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def disk_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def new_store(backend: str, where: Path, n: int):
    if backend == "faiss":
        from visembed.index.backends.faiss_kinds import IndexSettings

        settings = IndexSettings(kind="hnsw", hnsw_m=32, hnsw_ef_construction=80, hnsw_ef_search=128)
    else:
        from visembed.index.backends.milvus_store import MilvusSettings

        settings = MilvusSettings(uri=str(where.parent / "milvus.db"), kind="hnsw", hnsw_m=32,
                                  hnsw_ef_construction=80, hnsw_ef_search=128)
    return create_store(where, DIM, settings=settings, backend=backend)


def storage(backend: str, where: Path) -> Path:
    return where if backend == "faiss" else where.parent / "milvus.db"


def exact_top(vectors: np.ndarray, live: np.ndarray, queries: np.ndarray, k: int = 10) -> list[set[str]]:
    scores = queries @ vectors[live].T  # (Q, live)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return [{str(i) for i in live[row]} for row in top]


def latency_and_recall(store, queries: np.ndarray, truth: list[set[str]], k: int = 10) -> tuple[float, float, float]:
    latencies, hits = [], 0
    for query, expected in zip(queries, truth):
        start = time.perf_counter()
        (found,) = store.search(query[None], k)
        latencies.append(time.perf_counter() - start)
        hits += len(set(found.ids) & expected)
    ms = np.array(latencies) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), hits / (k * len(queries))


def build_and_query(n: int, n_queries: int, backends: list[str], work: Path) -> list[dict]:
    rows = []
    vectors = make_vectors(n, DIM, "lowrank", seed=0)
    queries = make_vectors(n_queries, DIM, "lowrank", seed=1)
    truth = exact_top(vectors, np.arange(n), queries)
    ids = [str(i) for i in range(n)]
    for backend in backends:
        where = work / f"{backend}-{n}" / "index"
        print(f"# {backend}: building {n:,} x {DIM} HNSW ...", file=sys.stderr, flush=True)
        before = rss_mb()
        start = time.perf_counter()
        store = new_store(backend, where, n)
        store.add(ids, vectors, [{"caption": ""} for _ in ids])
        store.commit()
        build_s = time.perf_counter() - start
        p50, p99, recall = latency_and_recall(store, queries, truth)
        rows.append({"test": "build + search", "backend": backend, "items": f"{n:,}", "build s": build_s,
                     "recall@10": recall, "p50 ms": p50, "p99 ms": p99, "memory MB": rss_mb() - before,
                     "disk MB": disk_mb(storage(backend, where))})
        print_table(rows[-1:], COLUMNS)
        del store
    return rows


def with_deletes(n: int, rounds: int, backends: list[str], work: Path) -> list[dict]:
    rows = []
    vectors = make_vectors(n, DIM, "lowrank", seed=2)
    queries = make_vectors(100, DIM, "lowrank", seed=3)
    ids = [str(i) for i in range(n)]
    for backend in backends:
        where = work / f"{backend}-deletes-{n}" / "index"
        print(f"# {backend}: {n:,} items, {rounds} rounds of 1 % deletes ...", file=sys.stderr, flush=True)
        store = new_store(backend, where, n)
        store.add(ids, vectors, [{"caption": ""} for _ in ids])
        store.commit()
        rng = np.random.default_rng(0)
        live = np.arange(n)
        delete_s = []
        for _ in range(rounds):
            gone = rng.choice(live, size=n // 100, replace=False)
            start = time.perf_counter()
            store.delete([str(i) for i in gone])
            store.commit()
            delete_s.append(time.perf_counter() - start)
            live = np.setdiff1d(live, gone)
        p50, p99, recall = latency_and_recall(store, queries, exact_top(vectors, live, queries))
        rows.append({"test": f"{rounds} x delete 1 % + commit", "backend": backend, "items": f"{len(live):,} live",
                     "build s": f"{np.mean(delete_s):.3f} per round", "recall@10": recall, "p50 ms": p50,
                     "p99 ms": p99, "memory MB": "-", "disk MB": disk_mb(storage(backend, where))})
        print_table(rows[-1:], COLUMNS)
        del store
    return rows


def embedding_throughput(small: int, large: int, work: Path) -> list[dict]:
    """images/s of `visembed embed` for 1 process (2 threads, 1 thread) and 2 processes (1 thread each)."""
    from visembed.config import apply_overrides, load_preset
    from visembed.train.loop import train

    model = work / "tiny-model"
    train(apply_overrides(load_preset("tiny"), ["train.steps=1", "train.checkpoint_every=1"]), model, progress=False)
    rows = []
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for label, launcher, threads in (("1 process x 2 threads", [sys.executable], "2"),
                                     ("1 process x 1 thread", [sys.executable], "1"),
                                     ("2 processes x 1 thread (torchrun)", torchrun, "1")):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads}
        seconds = {}
        for n in (small, large):
            out = work / f"embed-{threads}-{len(launcher)}-{n}"
            start = time.perf_counter()
            subprocess.run([*launcher, "-m", "visembed.cli", "embed", str(model), "--data", f"builtin:shapes?n={n}",
                            "--split", "all", "--out", str(out), "--format", "clip-retrieval", "--shard-size", "250"],
                           check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds[n] = time.perf_counter() - start
        spent = seconds[large] - seconds[small]
        rows.append({"run": label, "images": f"{large:,}", "wall s": seconds[large], "start-up s": seconds[small],
                     "images/s": (large - small) / spent if spent > 0 else "-"})
        print_table(rows[-1:], EMBED_COLUMNS)
    return rows


COLUMNS = ["test", "backend", "items", "build s", "recall@10", "p50 ms", "p99 ms", "memory MB", "disk MB"]
EMBED_COLUMNS = ["run", "images", "wall s", "start-up s", "images/s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M", help="comma-separated store sizes, e.g. 200k or 100k,1M (0 skips)")
    parser.add_argument("--deletes-size", default="100k", help="items for the interleaved-deletes test (0 skips it)")
    parser.add_argument("--delete-rounds", type=int, default=10)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--backends", default="faiss,milvus")
    parser.add_argument("--embed-images", default="250,2000", help="small,large images for throughput (0 skips it)")
    parser.add_argument("--smoke", action="store_true", help="3k vectors, 2 delete rounds, 50 images: does it run")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.deletes_size, args.delete_rounds, args.queries, args.embed_images = "3k", "3k", 2, 20, "10,50"
    backends = args.backends.split(",")
    import faiss
    import pymilvus

    print(f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), pymilvus {pymilvus.__version__}, "
          f"{os.cpu_count()} cores", flush=True)
    work = Path(tempfile.mkdtemp(prefix="visembed-milvus-bench-"))
    try:
        rows = []
        for size in args.sizes.split(","):
            if parse_size(size):  # --sizes 0: embedding only
                rows += build_and_query(parse_size(size), args.queries, backends, work)
        if parse_size(args.deletes_size):
            rows += with_deletes(parse_size(args.deletes_size), args.delete_rounds, backends, work)
        if rows:
            print("\nsummary: vector stores")
            print_table(rows, COLUMNS)
        small, large = (parse_size(s) for s in args.embed_images.split(","))
        if large:
            embed_rows = embedding_throughput(small, large, work)
            print("\nsummary: embedding throughput")
            print_table(embed_rows, EMBED_COLUMNS)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
