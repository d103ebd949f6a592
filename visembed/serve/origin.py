"""Refusing requests that a web page of another site makes on the user's behalf.

A page the user visits can POST to `http://127.0.0.1:8000/chat` (a form or a `no-cors` fetch needs
no CORS permission to be *sent*), and fill the generation queue or run searches with the user's
machine. Browsers say where such a request comes from: `Origin` on every cross-origin POST (and
`Sec-Fetch-Site: cross-site` in current ones). A request that changes state or costs compute
(any method but GET/HEAD/OPTIONS) is refused with 403 when it comes from an origin other than the
service's own (the Host it was addressed to) or one the operator allowed (`serve --allowed-origin`).
Clients that are not browsers (curl, Python, clip-retrieval's ClipClient) send no Origin and pass.
Endpoints meant for other sites' pages (clip-retrieval's front end) are listed in `open_paths`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class SameOriginPosts:
    def __init__(self, app, allowed_origins: list[str] | tuple[str, ...] = (), open_paths: tuple[str, ...] = ()):
        self.app = app
        self.allowed = {origin.rstrip("/").lower() for origin in allowed_origins}
        self.open_paths = tuple(open_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers") or []}
        origin = headers.get("origin")
        foreign = (origin is not None and not self._own(origin, headers.get("host", ""))) or (
            origin is None and headers.get("sec-fetch-site") == "cross-site")
        if foreign:
            shown = (origin or "another site")[:200]
            response = JSONResponse({"detail": f"cross-origin request from {shown} refused; a page of another site "
                                               "may not use this service (serve --allowed-origin allows one)"}, 403)
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    def _own(self, origin: str, host: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.allowed:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host.strip().lower()
