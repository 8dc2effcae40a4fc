"""A request id on every answer and on the log lines written while answering it.

A storefront that saw an error must be able to find the server's side of it:
:class:`RequestIdMiddleware` takes the caller's ``X-Request-ID`` when it is a sane
token (letters, digits and ``._:/+=-``, at most 128 characters; a proxy's or the
caller's own id), else makes one, and answers it in ``X-Request-ID``. While the request
runs, :class:`RequestIdFilter` adds it to every log record as ``request_id`` (a field of
``--log-format json`` lines), uvicorn's own "Exception in ASGI application" included:
uvicorn runs each request in a task of its own, whose context holds the id.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUEST_ID", "RequestIdFilter", "RequestIdMiddleware"]

#: the id of the request the current task answers (None outside a request)
REQUEST_ID: ContextVar[str | None] = ContextVar("liverec_request_id", default=None)
_TOKEN = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
_HEADER = b"x-request-id"


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's id when it is a sane token, else a fresh one.

    >>> request_id_of([(b"x-request-id", b"shop-42")])
    'shop-42'
    >>> len(request_id_of([(b"x-request-id", b"bad id\\n")]))  # replaced: 32 hex digits
    32
    """
    for name, value in headers:
        if name.lower() == _HEADER and _TOKEN.fullmatch(value):
            return value.decode("ascii")
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Sets :data:`REQUEST_ID` for the request and answers it in ``X-Request-ID``
    (outermost: an unhandled 500 carries it too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope.get("headers", []))
        # Not reset afterwards: the task is this request's alone, and uvicorn logs an
        # unhandled error after the app has returned.
        REQUEST_ID.set(rid)
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != _HEADER]
                message = {**message, "headers": [*headers, (_HEADER, rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records logged while a request is answered."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True
