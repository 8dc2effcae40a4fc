"""The API's error answers: one body shape, a machine-readable reason, documented.

Every error the API raises itself answers ``{"detail": {"reason": ..., "detail": ...}}``
(``reason`` a fixed snake_case word to branch on, ``detail`` the human text), as the
key checks and rate limits always did. Two kinds keep their own documented shapes:
FastAPI's request validation (422, ``{"detail": [{"type", "loc", "msg", ...}]}``,
which :func:`too_large_k` follows) and ``POST /v1/events``' answers
(``{"accepted": false, "reason", "detail"}``).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

__all__ = [
    "AUTH_RESPONSES",
    "AUTH_RESPONSES_OF_PAGE",
    "SLASH_404",
    "SNAPSHOT_RESPONSES",
    "URL_RESPONSES",
    "ErrorOut",
    "api_error",
    "too_large_k",
]


class ErrorDetail(BaseModel):
    reason: str
    detail: str


class ErrorOut(BaseModel):
    """The body of an error answer (see the module docstring)."""

    detail: ErrorDetail


def error_body(reason: str, detail: str) -> bytes:
    """The API's error body, for answers made outside FastAPI (before routing, or by the
    HTTP parser): what :func:`api_error` makes FastAPI send.

    >>> error_body("uri_too_long", "too long")
    b'{"detail":{"reason":"uri_too_long","detail":"too long"}}'
    """
    return orjson.dumps({"detail": {"reason": reason, "detail": detail}})


def api_error(status: int, reason: str, detail: str,
              headers: dict[str, str] | None = None) -> HTTPException:
    """The exception to raise for an error answer in the API's shape.

    >>> e = api_error(404, "unknown_model", "model 'x' is not loaded")
    >>> e.status_code, e.detail["reason"]
    (404, 'unknown_model')
    """
    return HTTPException(status, detail={"reason": reason, "detail": detail},
                         headers=headers)


def too_large_k(k: int, max_k: int) -> RequestValidationError:
    """A ``k`` above the server's ``max_k`` (lower than the schema's bound), refused in
    the shape of every other query validation error."""
    return RequestValidationError([{
        "type": "less_than_equal", "loc": ("query", "k"),
        "msg": f"Input should be less than or equal to {max_k} (this server's max_k)",
        "input": k, "ctx": {"le": max_k},
    }])


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


#: what a route behind a key check may answer besides its own codes
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("missing or unknown API key (reason missing_key, unknown_key)"),
    403: _error("the key lacks the route's scope (reason wrong_scope)"),
    429: _error("rate limit exceeded (reason rate_limited; see Retry-After)"),
}

#: :data:`AUTH_RESPONSES` for a route whose own answer is not JSON (the dashboard's
#: page): FastAPI would file the error schema under the route's media type
AUTH_RESPONSES_OF_PAGE: dict[int | str, dict[str, Any]] = {
    status: {"description": r["description"], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
    for status, r in AUTH_RESPONSES.items()
}

#: a route with an id in its path: an encoded ``/`` in it is refused
SLASH_404: dict[str, Any] = _error(
    "an encoded '/' in the path (reason slash_in_path): send such ids in the query")

#: what every route may answer: the URL limit is checked before routing
URL_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("the path or query has percent-encoded bytes that are not UTF-8 "
                "(reason bad_encoding)"),
    414: _error("the request target (path and query) is longer than max_url_bytes "
                "(reason uri_too_long)"),
}

#: what a route that reads the loaded snapshot may answer before the first load
SNAPSHOT_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: _error("no snapshot loaded yet (reason no_snapshot; see Retry-After)"),
}
