"""Search benchmark: build time, single-query latency (p50/p99) and recall@10 against exact search,
for 100k and 1M vectors of dimension 256; then HTTP search throughput with concurrent clients.

    .venv/bin/python benchmarks/search.py                       # 100k and 1M, every index kind
    .venv/bin/python benchmarks/search.py --sizes 100k --kinds flat,hnsw
    .venv/bin/python benchmarks/search.py --smoke      # 2k vectors, 20 queries, 1 s of HTTP: does it run (CI)

Two kinds of data:
  random   i.i.d. Gaussian directions: the worst case for any ANN index (no structure at all)
  lowrank  16 latent factors plus 5 % noise, L2-normalised: closer to real embeddings, whose
           intrinsic dimension is far below 256
Target: recall@10 >= 0.95 at p50 < 2 ms in-process for 1M vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from visembed.index.backends.faiss_kinds import IndexSettings  # noqa: E402
from visembed.index.backends.faiss_store import FaissStore  # noqa: E402

SWEEP = {"flat": [None], "hnsw": [64, 128, 256, 512], "ivfpq": [16, 32, 64, 128]}  # efSearch / nprobe


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def make_vectors(n: int, dim: int, data: str, seed: int) -> np.ndarray:
    """(n, dim) float32 unit vectors, made in chunks so 1M x 256 needs no more than the result."""
    out = np.empty((n, dim), np.float32)
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).standard_normal((16, dim)).astype(np.float32)  # shared by data and queries
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        if data == "random":
            chunk = rng.standard_normal((m, dim), dtype=np.float32)
        else:
            chunk = rng.standard_normal((m, 16), dtype=np.float32) @ basis  # (m, dim), rank 16
            chunk += 0.05 * np.linalg.norm(chunk, axis=1, keepdims=True) / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        out[start : start + m] = chunk
    return out


def settings_for(kind: str, n: int) -> IndexSettings:
    return IndexSettings(kind=kind, hnsw_m=32, hnsw_ef_construction=80, pq_m=32, rerank=10,
                         ivf_nlist=int(4 * np.sqrt(n)))


def build(vectors: np.ndarray, settings: IndexSettings, directory=None) -> FaissStore:
    store = FaissStore.create(directory, vectors.shape[1], settings)
    ids = [str(i) for i in range(len(vectors))]
    store.add(ids, vectors, [{"caption": ""} for _ in ids])
    return store


def measure(index: FaissStore, queries: np.ndarray, truth: np.ndarray, k: int = 10) -> tuple[float, float, float]:
    latencies, hits = [], 0
    for q, t in zip(queries, truth):
        start = time.perf_counter()
        (found,) = index.search(q[None], k)
        latencies.append(time.perf_counter() - start)
        hits += len(set(found.ids) & {str(i) for i in t.tolist()})
    ms = np.array(latencies) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), hits / (k * len(queries))


def in_process(sizes, kinds, data_kinds, dim, n_queries, table) -> None:
    for data in data_kinds:
        for n in sizes:
            print(f"# {data}: generating {n:,} x {dim} ...", file=sys.stderr, flush=True)
            vectors = make_vectors(n, dim, data, seed=0)
            queries = make_vectors(n_queries, dim, data, seed=1)
            exact = faiss.IndexFlatIP(dim)
            exact.add(vectors)
            _, truth = exact.search(queries, 10)  # (Q, 10) ground truth
            del exact
            for kind in kinds:
                print(f"# {data} {n:,}: building {kind} ...", file=sys.stderr, flush=True)
                start = time.perf_counter()
                index = build(vectors, settings_for(kind, n))
                build_s = time.perf_counter() - start
                for knob in SWEEP[kind]:
                    if kind == "hnsw":
                        index.settings.hnsw_ef_search, label = knob, f"efSearch={knob}"
                    elif kind == "ivfpq":
                        index.settings.ivf_nprobe, label = knob, f"nprobe={knob} rerank=10"
                    else:
                        label = "exact"
                    p50, p99, recall = measure(index, queries, truth)
                    ok = "yes" if recall >= 0.95 and p50 < 2.0 else "no"
                    table.append((data, f"{n:,}", kind, label, f"{build_s:.1f}", f"{p50:.3f}", f"{p99:.3f}", f"{recall:.3f}", ok))
                    print_row(table[-1])
                del index


SERVER = """
import sys, uvicorn
from visembed.index.backends import open_store
from visembed.index.searcher import Searcher
from visembed.serve.app import create_app
index_dir, port = sys.argv[1], int(sys.argv[2])
searcher = Searcher(open_store(index_dir), None, index_dir)  # vector queries only: no model
uvicorn.run(create_app(index_dir, searcher=searcher), host="127.0.0.1", port=port, log_level="warning")
"""


async def http_load(base: str, ids: list[str], clients: int, seconds: float) -> tuple[float, float, float, int]:
    import httpx

    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds
    rng = np.random.default_rng(clients)

    async def client_loop(client):
        nonlocal errors
        while time.perf_counter() < deadline:
            item = ids[int(rng.integers(len(ids)))]
            start = time.perf_counter()
            response = await client.get(f"/items/{item}/similar", params={"k": 10})
            latencies.append(time.perf_counter() - start)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return len(latencies) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), errors


def http_benchmark(n: int, dim: int, concurrency: list[int], seconds: float, table) -> None:
    import socket

    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        print(f"# http: saving a {n:,}-item lowrank hnsw index ...", file=sys.stderr, flush=True)
        vectors = make_vectors(n, dim, "lowrank", seed=0)
        build(vectors, settings_for("hnsw", n), tmp).commit()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-c", SERVER, tmp, str(port)], cwd=Path(__file__).resolve().parents[1])
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            ids = [str(i) for i in range(n)]
            for clients in concurrency:
                rps, p50, p99, errors = asyncio.run(http_load(base, ids, clients, seconds))
                table.append(("http", f"{n:,}", "hnsw", f"{clients} clients, GET /items/ID/similar", "",
                              f"{p50:.2f}", f"{p99:.2f}", f"{rps:.0f} req/s", f"errors={errors}"))
                print_row(table[-1])
        finally:
            server.terminate()
            server.wait(timeout=30)


HEADER = ("data", "items", "index", "setting", "build s", "p50 ms", "p99 ms", "recall@10", "target met")
WIDTHS = (8, 10, 6, 36, 8, 8, 8, 10, 10)


def print_row(row) -> None:
    """One markdown table row, padded so the columns line up in a terminal too."""
    print("| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, WIDTHS)) + " |", flush=True)


def print_header() -> None:
    print_row(HEADER)
    print_row(["-" * width for width in WIDTHS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100k,1M", help="comma-separated, e.g. 100k or 100k,1M")
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    parser.add_argument("--data", default="lowrank,random", help="lowrank, random or both")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--http-items", default="100k", help="index size for the HTTP test; 0 skips it")
    parser.add_argument("--http-clients", default="1,8,32")
    parser.add_argument("--http-seconds", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true",
                        help="2k low-rank vectors, 20 queries, one client for 1 s: does it run")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.data, args.queries = "2k", "lowrank", 20
        args.http_items, args.http_clients, args.http_seconds = "2k", "1", 1.0

    table: list[tuple] = []
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads", flush=True)
    print_header()
    in_process([parse_size(s) for s in args.sizes.split(",")], args.kinds.split(","), args.data.split(","),
               args.dim, args.queries, table)
    if parse_size(args.http_items):
        http_benchmark(parse_size(args.http_items), args.dim, [int(c) for c in args.http_clients.split(",")],
                       args.http_seconds, table)
    print("\nsummary\n")
    print_header()
    for row in table:
        print_row(row)


if __name__ == "__main__":
    main()
