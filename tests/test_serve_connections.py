"""The listening socket and connections of a real server on 127.0.0.1: a taken port fails before
anything is announced; half-open connections are closed (issue #11)."""

import socket
import time

import pytest
from typer.testing import CliRunner

from test_index_build import shapes_index
from test_serve_concurrency import serve_in_thread
from visembed.cli import app as cli
from visembed.serve.app import create_app

GENEROUS_S = 30.0  # a bound for the test to end, not a speed requirement


def test_a_taken_port_is_one_line_and_a_non_zero_exit(tiny_model_dir, tmp_path_factory):
    index_dir = shapes_index(tiny_model_dir, tmp_path_factory)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(index_dir), "--host", "127.0.0.1", "--port", str(port)])
    finally:
        taken.close()
    assert result.exit_code != 0
    assert "serving" not in result.output and "Traceback" not in result.output
    assert f"127.0.0.1:{port}" in result.output and "already in use" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def base_port(tiny_model_dir, tmp_path_factory):
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory))
    with serve_in_thread(app, timeout_keep_alive=1, header_timeout=1.0, body_idle_timeout=1.0) as url:
        yield int(url.rsplit(":", 1)[1])


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes (True) or GENEROUS_S passes (False); any response is drained."""
    sock.settimeout(GENEROUS_S)
    deadline = time.monotonic() + GENEROUS_S
    try:
        while time.monotonic() < deadline:
            if sock.recv(65536) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


@pytest.mark.parametrize("sent", [
    b"",  # connected, said nothing
    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n",  # half a request head
    b"POST /recommend HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
])
def test_half_open_connections_are_closed(base_port, sent):
    with socket.create_connection(("127.0.0.1", base_port), timeout=GENEROUS_S) as sock:
        sock.sendall(sent)
        assert closed_by_server(sock)


def test_a_stalled_second_request_on_a_kept_alive_connection_is_closed(base_port):
    with socket.create_connection(("127.0.0.1", base_port), timeout=GENEROUS_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # then stalls mid-head: keep-alive no longer applies
        assert closed_by_server(sock)
