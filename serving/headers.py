"""Security headers on every response the app answers, as pure ASGI.

* Everywhere: ``X-Content-Type-Options: nosniff`` (a browser never guesses a type
  the server did not declare) and ``Referrer-Policy: no-referrer`` (a dashboard or
  API URL never leaks to another site).
* The dashboard (``/dashboard`` and its ``/static/`` files): a Content Security
  Policy that lets the page load only its own script, styles and data
  (``default-src 'self'``: no inline script or style, no other origin, no plugins)
  and no site frame it
  (``frame-ancestors 'none'``, and ``X-Frame-Options: DENY`` for older browsers).
* The JSON API: ``default-src 'none'; frame-ancestors 'none'``: a response opened
  in a browser runs and embeds nothing; and ``Cache-Control: no-store``: answers are
  personal (a user's recommendations and history) or live (health, metrics), so no
  shared cache in front of the server may keep one and hand it to another caller.
* The interactive API docs (``/docs``, ``/redoc``) keep FastAPI's defaults: their
  pages load Swagger UI and ReDoc with inline script from a CDN, which a policy would
  block.

>>> headers_for("/dashboard")[b"x-frame-options"]
b'DENY'
>>> b"content-security-policy" in headers_for("/docs")
False
>>> headers_for("/v1/recommendations")[b"content-security-policy"]
b"default-src 'none'; frame-ancestors 'none'"
>>> headers_for("/v1/recommendations")[b"cache-control"]
b'no-store'
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SecurityHeadersMiddleware", "headers_for"]

_ALWAYS = {b"x-content-type-options": b"nosniff", b"referrer-policy": b"no-referrer"}
_DASHBOARD = {
    **_ALWAYS,
    b"content-security-policy": (
        b"default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'"),
    b"x-frame-options": b"DENY",
}
_API = {**_ALWAYS, b"content-security-policy": b"default-src 'none'; frame-ancestors 'none'",
        b"cache-control": b"no-store"}
_DOCS = ("/docs", "/redoc")


def headers_for(path: str) -> dict[bytes, bytes]:
    """The security headers of a response to ``path``."""
    if path == "/dashboard" or path.startswith("/static/"):
        return _DASHBOARD
    if path in _DOCS or path.startswith(("/docs/", "/redoc/")):
        return _ALWAYS
    return _API


class SecurityHeadersMiddleware:
    """Adds :func:`headers_for` the request's path to its response (a header the
    route set itself is left as it is)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = headers_for(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {name.lower() for name, _ in headers}
                headers.extend((k, v) for k, v in extra.items() if k not in have)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
