"""The listening socket and the HTTP/1.1 connections: bind before announcing, time out half-open
connections.

uvicorn times out an idle keep-alive connection (`timeout_keep_alive`) but not a connection that
sends part of a request and stalls, nor one that sends nothing at all (uvicorn 0.54 has no header
or body read timeout): each such connection holds a file descriptor and memory for ever, so a few
hundred of them (a slowloris) starve the server. `TimedH11Protocol` adds the two missing
deadlines on top of uvicorn's own h11 protocol, and a third: a body must be complete within
`body_timeout` seconds however it trickles in (one byte every 10 s never trips the idle deadline).
How many connections are served at once is capped by uvicorn's `limit_concurrency` (the rest are
answered 503 at once; see `make_server`).
"""

from __future__ import annotations

import asyncio
import socket

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0  # a whole request head (line + headers), from the first moment we wait for it
BODY_IDLE_TIMEOUT_S = 30.0  # longest silence while a request body is coming in
BODY_TIMEOUT_S = 120.0  # a whole request body (the 10 MB upload cap at ~85 KB/s)
MAX_CONNECTIONS = 256  # connections (and requests in progress) served at once; more are answered 503
KEEP_ALIVE_S = 5  # idle time between requests on one connection (uvicorn's own setting)


class PortUnavailable(OSError, ValueError):
    """The address cannot be bound (taken, not ours, not an address here); the message says which.
    A ValueError too, so the CLI's `friendly_errors` prints it as one line with exit code 2."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), bound before anything is announced, so a taken
    port is one clear error and never a "serving at ..." line followed by a failure."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortUnavailable(f"cannot serve on {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart while old sockets linger
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]" if ":" in host else host
        reason = "the port is already in use" if exc.errno in (98, 48, 10048) else (exc.strerror or str(exc))
        raise PortUnavailable(f"cannot serve on {shown}:{port}: {reason} (choose another --port)") from None
    sock.set_inheritable(True)
    return sock


def timed_h11(header_timeout: float = HEADER_TIMEOUT_S, body_idle_timeout: float = BODY_IDLE_TIMEOUT_S,
              body_timeout: float = BODY_TIMEOUT_S) -> type:
    """uvicorn's h11 protocol class with these deadlines (pass it as `uvicorn.Config(http=...)`)."""
    return type("TimedH11Protocol", (TimedH11Protocol,),
                {"header_timeout": header_timeout, "body_idle_timeout": body_idle_timeout, "body_timeout": body_timeout})


class TimedH11Protocol(H11Protocol):
    """Closes a connection whose request head is not complete `header_timeout` seconds after the
    server started waiting for it (a new connection, or the end of the previous response), one
    whose request body stops arriving for `body_idle_timeout` seconds, and one whose body is not
    complete `body_timeout` seconds after its head."""

    header_timeout: float = HEADER_TIMEOUT_S
    body_idle_timeout: float = BODY_IDLE_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    _read_deadline: asyncio.TimerHandle | None = None
    _body_ends_by: float | None = None  # loop time by which the body in progress must be complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._body_ends_by is None:
                self._body_ends_by = self.loop.time() + self.body_timeout
            self._arm(self._body_wait())  # each chunk buys the next one time, up to the body's deadline
        elif state is not h11.IDLE:
            self._body_ends_by = None
            self._disarm()  # the request is in: the app's time is not ours to limit
        # IDLE: the head is still incomplete; the deadline set when waiting began stands

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._body_ends_by = None
        if not self.transport.is_closing():
            self._arm(self.header_timeout)  # the next request's head (keep-alive closes an idle one sooner)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _body_wait(self) -> float:
        return max(0.0, min(self.body_idle_timeout, self._body_ends_by - self.loop.time()))

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY and self.flow.read_paused:  # we stopped reading (back-pressure), not the client
            self._body_ends_by = max(self._body_ends_by or 0.0, self.loop.time() + self.body_idle_timeout)
            self._arm(self.body_idle_timeout)
        elif state in (h11.IDLE, h11.SEND_BODY):
            self.logger.info("closing a connection that did not finish its request in time")
            self.transport.close()
