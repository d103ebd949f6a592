"""A real uvicorn server on 127.0.0.1 under 20 concurrent clients x 200 requests: no errors."""

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from test_index_build import shapes_index
from visembed.serve.app import create_app, make_server
from visembed.serve.connection import bind_socket


@contextlib.contextmanager
def serve_in_thread(app, timeout: float = 60.0, **server_settings):
    """Run `app` on a free loopback port in a thread, as `run_server` runs it (`make_server`:
    uvicorn with our connection deadlines); yields the base URL."""
    sock = bind_socket("127.0.0.1", 0)  # the OS picks a free port; uvicorn serves on this very socket
    port = sock.getsockname()[1]
    server = make_server(app, **{"timeout_keep_alive": 30, **server_settings})
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
        sock.close()


@pytest.fixture(scope="module")
def base_url(tiny_model_dir, tmp_path_factory):
    with serve_in_thread(create_app(shapes_index(tiny_model_dir, tmp_path_factory))) as url:
        yield url


@pytest.mark.slow
def test_twenty_clients_two_hundred_requests_each(base_url):
    """Every request is bounded (60 s client timeout); the server stops when the module ends."""
    ids = [r["id"] for r in httpx.get(f"{base_url}/search", params={"q": "a circle", "k": 20}).json()["results"]]
    queries = ["a red circle", "a large blue square", "两个绿色三角形", "a small yellow triangle left of a circle"]

    def client_session(worker: int) -> list[int]:
        statuses = []
        with httpx.Client(base_url=base_url, timeout=60.0) as client:
            for i in range(200):
                kind = (worker + i) % 5
                if kind == 0:
                    r = client.get("/search", params={"q": queries[i % len(queries)], "k": 10})
                elif kind == 1:
                    r = client.post("/recommend", json={"liked": [ids[i % 20]], "disliked": [ids[(i + 7) % 20]], "k": 10})
                elif kind == 2:
                    r = client.get(f"/items/{ids[(worker + i) % 20]}/thumbnail")
                elif kind == 3:
                    r = client.get(f"/items/{ids[i % 20]}/similar", params={"k": 5})
                else:
                    r = client.get("/healthz")
                statuses.append(r.status_code)
        return statuses

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(client_session, range(20)))
    statuses = [s for worker in results for s in worker]
    assert len(statuses) == 4000
    assert statuses.count(200) == 4000, {s: statuses.count(s) for s in set(statuses)}
