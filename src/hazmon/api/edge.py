"""The API's edge: what every request is checked for before a route sees it, and how refusals read.

- A NUL character (``%00``) in the path or the query string is refused with 422 before any route
  runs: PostgreSQL text cannot hold it, and a parameter that reached a query with one used to fail
  as a 500. JSON bodies are checked by their models (``NoNul`` below; site files by ``reject_nul``).
- A body that fails validation is answered 422 with every error, its input included, made
  JSON-safe: a ``NaN`` or ``Infinity`` in the body (which Python's JSON parser accepts) used to
  crash the error answer itself into a 500.
- A value the database refuses (``StoreInvalid``: out of range, not representable) is the caller's
  input at fault: 422, not 500.
- Every refusal made here is counted by reason: ``hazmon_api_rejections_total{reason}`` on
  ``/metrics`` (nul_character, validation, invalid_value, invalid_parameter: a route's own 422).
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from pydantic import AfterValidator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from hazmon.metrics import HOT_PATH
from hazmon.storage.store import StoreInvalid

log = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
REJECTIONS = Counter(
    "hazmon_api_rejections", "API requests refused at the edge, by reason", ["reason"], registry=HOT_PATH
)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


NoNul = Annotated[str, AfterValidator(_no_nul)]
"""A string field that refuses NUL characters (PostgreSQL text cannot store them)."""


def find_nul(value: Any, path: str = "") -> str | None:
    """The path of the first string (key or value) in a JSON document holding a NUL, or None."""
    if isinstance(value, str):
        return path or "(body)" if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and "\x00" in k:
                return where
            found = find_nul(v, where)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = find_nul(v, f"{path}[{i}]")
            if found:
                return found
    return None


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings ('nan', 'inf'), bytes decoded and lone surrogates
    escaped, for an error answer."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):  # a lone surrogate (valid JSON "\ud800") cannot be encoded as UTF-8
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def reject(reason: str) -> None:
    REJECTIONS.labels(reason).inc()


class RejectNul:
    """ASGI middleware: 422 for a NUL character anywhere in the decoded path or query string."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            where = None
            if "\x00" in scope.get("path", ""):
                where = "the path"
            else:
                query = scope.get("query_string", b"")
                if b"%00" in query or b"\x00" in query:
                    for part in query.split(b"&"):
                        name, _, value = part.partition(b"=")
                        if "\x00" in unquote_plus(value.decode("latin-1")) or "\x00" in unquote_plus(
                            name.decode("latin-1")
                        ):
                            where = f"query parameter {unquote_plus(name.decode('latin-1'))!r}".replace("\x00", "\\0")
                            break
            if where is not None:
                reject("nul_character")
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": f"NUL character in {where}"})
                    return
                response = JSONResponse(
                    {"detail": f"{where} contains a NUL character (%00), which no identifier or value may hold"},
                    status_code=422,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    reject("validation")
    errors = json_safe(jsonable_encoder(exc.errors()))
    return JSONResponse({"detail": errors}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """A route's own refusal of a parameter (422: a time range, a bucket, a since, a site file) is
    counted too; every HTTP error is answered as FastAPI does."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 422:
        reject("invalid_parameter")
    return await http_exception_handler(request, exc)


async def _invalid_value(request: Request, exc: Exception) -> JSONResponse:
    reject("invalid_value")
    log.info("refused %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": str(exc)}, status_code=422)


def _document_refusals(app: FastAPI) -> None:
    """A 422 answers either FastAPI's list of field errors or one message naming what is wrong (a
    value checked by the route itself): the OpenAPI description says so."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        schema = base()
        err = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
        if err is not None:
            detail = err["properties"]["detail"]
            if "anyOf" not in detail:
                err["properties"]["detail"] = {
                    "anyOf": [
                        {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
                        {"type": "string"},
                    ],
                    "title": "Detail",
                    "description": "the field errors, or one message",
                }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    """Put the edge checks on ``app``."""
    _document_refusals(app)
    app.add_middleware(RejectNul)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreInvalid, _invalid_value)
    app.add_exception_handler(StarletteHTTPException, _http_error)
