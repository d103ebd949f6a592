"""JSON request bodies parsed strictly, and validation errors that always serialise.

Python's `json` accepts `NaN`, `Infinity`, `-Infinity` and turns `1e400` into `inf`; none of them is
JSON (RFC 8259), and once inside a request they made the error response itself fail to serialise
(HTTP 500 for `{"liked": ["x"], "k": 1e400}`). Bodies are parsed with those rejected, which FastAPI
answers as 422 `json_invalid`; and the 422 handler turns any non-finite number that still reaches
an error's `input` (from another route or a future field) into text. Two more things `json` lets
through end as 500s further on: a document nested a few thousand levels deep (`RecursionError`)
and strings holding lone UTF-16 surrogates (`"\ud800"`, which no tokenizer or UTF-8 writer takes);
both are invalid bodies here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute


class _NotJSON(ValueError):
    pass


def _reject_constant(name: str):
    raise _NotJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSON(f"{text} is out of range for a number")
    return value


def strict_loads(body: bytes | str):
    """`json.loads` that refuses NaN, Infinity, numbers out of float range, documents nested too
    deeply and strings that are not text (lone surrogates): JSONDecodeError for each."""
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
        _check_text(value)
        return value
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # ours, an over-long integer, bytes that are not UTF-8, depth
        doc = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:200]
        raise json.JSONDecodeError(reason, doc, 0) from None


def _check_text(value) -> None:
    """ValueError when a string anywhere in `value` (keys too) holds a lone surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff): not text") from None


class StrictJSONRequest(Request):
    async def json(self):
        if not hasattr(self, "_json"):
            self._json = strict_loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body goes through `strict_loads` (FastAPI's documented custom-route hook)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def strict_handler(request: Request):
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, with non-finite numbers in `input`/`ctx` written as text."""
    return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)
