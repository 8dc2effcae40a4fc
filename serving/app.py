"""The FastAPI app factory and its lifespan (load snapshot, watch, tail, sample)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auth import SCOPES, AccessControl, AuthSettings, require
from serving.dashboard import DashboardSeries
from serving.errors import AUTH_RESPONSES, URL_RESPONSES, error_body
from serving.headers import SecurityHeadersMiddleware
from serving.metrics import ServingMetrics, method_label
from serving.protocol import json_error_protocol
from serving.ratelimit import RateLimitSettings
from serving.request_id import RequestIdFilter, RequestIdMiddleware
from serving.routers import dashboard, events, health, items, model, recommendations, users
from serving.settings import ServeSettings
from serving.state import ServingState

__all__ = ["create_app"]

log = logging.getLogger(__name__)


class MetricsMiddleware:
    """Latency and status per route *template* (bounded labels), as pure ASGI.

    A request that ends with the connection gone and no response started (the client
    left, or the HTTP protocol refused its body and answered it itself, counting that
    answer: :func:`json_error_protocol`) is not a response and is not counted; one
    that fails before its response starts counts as the 500 the server sends.
    """

    def __init__(self, app: ASGIApp, state: ServingState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status: int | None = None
        disconnected = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_wrapper() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except ClientDisconnect:
            if status is not None or not disconnected:
                raise
            # The client left while the app read its body (or the HTTP protocol
            # refused the body and answered it): nobody is waiting for an answer,
            # and a traceback at ERROR would report a fault the server does not have.
            log.debug("%s %s: the client disconnected before its body was read",
                      scope.get("method"), scope.get("path"))
        finally:
            if status is not None or not disconnected:  # else nothing was answered
                self._record(scope, 500 if status is None else status,
                             time.perf_counter() - t0)

    def _record(self, scope: Scope, status: int, dt: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = method_label(scope.get("method", "GET"))
        m = self.state.metrics
        m.request_seconds.labels(route=template, method=method).observe(dt)
        m.responses.labels(route=template, method=method, status=str(status)).inc()
        self.state.observe_latency(template, dt)


class RequestTargetMiddleware:
    """Refuses, before routing, a request target longer than ``max_bytes`` (JSON 414),
    a path holding an encoded ``/`` (JSON 404, reason ``slash_in_path``) and a target
    whose percent-encoded bytes are not UTF-8 (JSON 400, reason ``bad_encoding``).

    ``%2F`` is decoded before routing, so ``/v1/items/a%2Fsimilar`` would be answered
    as ``/v1/items/a/similar``: for another item. Refused here, every such path gets
    the same answer, whatever route it would have reached (an id with ``/`` goes in
    the query).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            if len(raw) + len(scope.get("query_string", b"")) > self.max_bytes:
                await _refuse(send, 414, "uri_too_long",
                              f"the URL must be at most {self.max_bytes} bytes")
                return
            if b"%2f" in raw.lower():
                await _refuse(send, 404, "slash_in_path", "an id containing '/' cannot be "
                              "part of the path: send it in the query (?item_id= or "
                              "?user_id=)")
                return
            if not _utf8(raw) or not _utf8(scope.get("query_string", b"").replace(b"+", b" ")):
                await _refuse(send, 400, "bad_encoding", "the URL's percent-encoded bytes "
                              "must be UTF-8 (they would read as U+FFFD, another id)")
                return
        await self.app(scope, receive, send)


class InternalErrorMiddleware:
    """Answers an unhandled exception with the API's JSON 500 (reason
    ``internal_error``), from inside the CORS middleware.

    Starlette's own answer is plain text, sent by its error middleware outside every
    other: without CORS headers, so a browser page could read neither its status nor
    its ``X-Request-ID``. The exception's text is not in the answer (it may hold paths
    or addresses); the exception is raised on once answered, so the server logs its
    traceback at ERROR with the request id, and a test client raises it, as before.
    A client that left (:class:`ClientDisconnect`) and a failure after the response
    started pass through untouched: nothing can be answered to them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            raise
        except Exception:
            if not started:
                rid = scope.get("state", {}).get("request_id", "")
                await _refuse(send, 500, "internal_error", "the server failed to answer "
                              f"this request; its log holds the cause under request id {rid}")
            raise


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, its refused preflight (a text/plain 400, ``Disallowed
    CORS origin``) answered in the API's error shape, reason ``cors_refused``."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        headers = {k: v for k, v in response.headers.items()
                   if k not in ("content-length", "content-type")}
        why = bytes(response.body).decode()
        return Response(
            error_body("cors_refused", f"{why} (pages of the origins in "
                       "LIVEREC_CORS_ORIGINS may call this API, with "
                       f"{' or '.join(self.allow_methods)} and the headers it lists in "
                       "Access-Control-Allow-Headers)"),
            status_code=400, headers=headers, media_type="application/json")


def _utf8(raw: bytes) -> bool:
    """Whether ``raw``, percent-decoded, is UTF-8 text."""
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


#: routing's own refusals (their ``detail`` a plain string), in the API's error shape
_ROUTING_REASONS = {404: ("no_route", "no such path: /openapi.json lists the API's routes"),
                    405: ("method_not_allowed", "this path does not take this method "
                          "(the Allow header lists those it takes)")}


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 (``{"detail": "Not Found"}``: no route, or not this
    method; static files too) in the API's error shape; every other HTTP error as
    FastAPI answers it (the routes' own carry their shape)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.detail in ("Not Found", "Method Not Allowed") and exc.status_code in _ROUTING_REASONS:
        reason, text = _ROUTING_REASONS[exc.status_code]
        return Response(error_body(reason, text), status_code=exc.status_code,
                        headers=exc.headers, media_type="application/json")
    return await http_exception_handler(request, exc)


async def _refuse(send: Send, status: int, reason: str, detail: str) -> None:
    body = error_body(reason, detail)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def _watch(state: ServingState) -> None:
    while True:
        try:
            await asyncio.to_thread(state.check_reload)
        except Exception:  # the watcher must keep watching
            log.exception("snapshot watch tick failed")
        await asyncio.sleep(state.settings.reload_interval_s)


async def _reindex(state: ServingState) -> None:
    while True:
        await asyncio.sleep(min(30.0, state.settings.ann_rebuild_s))
        try:
            await asyncio.to_thread(state.refresh_indexes)
        except Exception:  # keep serving from the old index
            log.exception("ANN index rebuild failed")


async def _sample(dash: DashboardSeries, interval: float) -> None:
    async with httpx.AsyncClient() as client:
        while True:
            try:
                await dash.sample(client)
            except Exception:  # the dashboard must keep sampling
                log.exception("dashboard sample failed")
            await asyncio.sleep(interval)


def create_app(
    settings: ServeSettings,
    *,
    auth: AuthSettings | None = None,
    limits: RateLimitSettings | None = None,
    metrics: ServingMetrics | None = None,
) -> FastAPI:
    """Build the serving app. Nothing is loaded until the lifespan starts.

    Parameters
    ----------
    settings
        The process settings (snapshot root, Kafka, limits).
    auth, limits
        API keys and rate limits; read from the environment when not given.
    metrics
        Metrics to record into; a fresh registry by default.

    Raises
    ------
    serving.auth.AuthConfigError
        Anonymous writes would be open on a non-loopback interface, or the keys
        are unusable.

    Examples
    --------
    >>> app = create_app(ServeSettings(snapshots="/tmp/none"))
    >>> sorted(p for p in app.openapi()["paths"] if p.startswith("/v1/"))[:2]
    ['/v1/dashboard/data', '/v1/events']
    """
    state = ServingState(settings, metrics or ServingMetrics())
    access = AccessControl(
        auth if auth is not None else AuthSettings(),
        limits if limits is not None else RateLimitSettings(),
        host=settings.host,
        proxied=settings.forwarded_allow_ips is not None,
        metrics=state.metrics,
        takes_writes=bool(settings.bootstrap),
    )
    dash = DashboardSeries(state, settings.dashboard_points, settings.trainer_metrics_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.load_at_start)
        # Kafka connects in the background: start-up never waits for it, and a server
        # started while Kafka is down connects when it comes back.
        state.start_background()
        tasks = [
            asyncio.create_task(_watch(state), name="liverec-watch"),
            asyncio.create_task(_sample(dash, settings.dashboard_interval_s), name="liverec-dash"),
        ]
        if settings.ann:
            tasks.append(asyncio.create_task(_reindex(state), name="liverec-reindex"))
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await asyncio.to_thread(state.stop)

    app = FastAPI(
        title="liverec serving",
        version="1",
        description="Recommendations from hot-reloaded snapshots with live user context.",
        lifespan=lifespan,
        responses=URL_RESPONSES,  # on every route (a middleware answers it)
        # A path with a trailing slash is the JSON 404 no_route: Starlette's redirect
        # to the path without it built an http:// Location from the Host header (mixed
        # content behind a TLS proxy), and a client should call the documented path.
        redirect_slashes=False,
    )
    if settings.forwarded_allow_ips is not None and "*" in (
            a.strip() for a in settings.forwarded_allow_ips.split(",")):
        log.warning("LIVEREC_FORWARDED_ALLOW_IPS=* believes X-Forwarded-For from any "
                    "peer: a client that reaches this server directly picks its own "
                    "address (per-address rate limits, loopback-only anonymous writes). "
                    "Name your proxies' addresses instead.")
    app.state.serving = state
    app.state.dashboard = dash
    app.state.access = access
    app.add_exception_handler(StarletteHTTPException, _routing_error)
    # The scope each router needs (None: events states its own ``write``; health its
    # ``ops`` for /metrics and none for the probes).
    routers: list[tuple[APIRouter, str | None]] = [
        (health.router, None), (events.router, None),
        *((r.router, "read") for r in (recommendations, items, users)),
        *((r.router, "ops") for r in (model, dashboard))]
    for router, scope in routers:
        if scope is None:
            app.include_router(router)
        else:
            app.include_router(router, dependencies=[Depends(require(scope))],
                               responses=AUTH_RESPONSES)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC), name="static")
    # The last added is outermost: metrics wrap the URL checks, so their 414s and 404s
    # are counted (route "unmatched": they are answered before routing), and CORS
    # wraps the JSON 500 of an unhandled error, so a page can read it.
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(RequestTargetMiddleware, max_bytes=settings.max_url_bytes)
    if settings.cors_origins:
        # Pages of these origins may call the API from the browser (keys travel in
        # headers, never cookies: no credentials mode). Preflights are answered here,
        # before the routes' key checks.
        app.add_middleware(
            JsonCORSMiddleware, allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],  # HEAD only for the probes: not for pages
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID"], max_age=600)
    app.add_middleware(MetricsMiddleware, state=state)
    _document_settings(app, settings, access, [
        scoped for router, scope in routers for scoped in _route_scopes(router, scope)])
    # Security headers and the request id outside everything, Starlette's error
    # middleware included (which add_middleware cannot wrap): unhandled 500s and CORS
    # preflights get them.
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: RequestIdMiddleware(  # type: ignore[method-assign]
        SecurityHeadersMiddleware(build()))
    return app


def _document_settings(app: FastAPI, settings: ServeSettings, access: AccessControl,
                       scoped: list[tuple[str, str, str]]) -> None:
    """``/openapi.json`` states this server's limits and key policy, which are settings
    and so not in the routes' static schemas (shared by every app in the process):

    * ``k``'s maximum is ``max_k``; the ids of ``POST /v1/events``' events are at most
      ``max_id_chars`` long (the read routes' ids are bounded by the schema's own
      bound, which they enforce: an id longer than the events' limit is just unknown);
    * the batch's ``maxItems`` is ``max_batch_events``, or the write burst when a
      write rate limit is on and its burst is smaller (a larger batch gets 413);
    * a route whose scope takes anonymous callers lists the empty security
      requirement (``{}``) beside the keys. Asked at every call: anonymous writes
      close when a key is added at run time. ``scoped`` lists each route with a key
      check as (path, method, scope): :func:`_route_scopes`.

    Every answer also documents the headers a client acts on (:func:`_document_headers`).
    """
    build = app.openapi
    rate, burst = access.limiter.settings.limit("write")
    max_events = settings.max_batch_events if rate <= 0 else min(
        settings.max_batch_events, int(burst))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = copy.deepcopy(build())
            for op in (op for ops in schema["paths"].values() for op in ops.values()):
                for param in op.get("parameters", []):
                    if param["name"] == "k" and "maximum" in param["schema"]:
                        param["schema"]["maximum"] = min(param["schema"]["maximum"],
                                                         settings.max_k)
            body = schema["paths"]["/v1/events"]["post"]["requestBody"]["content"]
            for alt in body["application/json"]["schema"]["anyOf"]:
                event = alt["items"] if alt.get("type") == "array" else alt
                if alt.get("type") == "array":
                    alt["maxItems"] = max_events
                for field in event["properties"].values():
                    for string in (field, *field.get("anyOf", ())):
                        if "maxLength" in string:
                            string["maxLength"] = settings.max_id_chars
            _document_headers(schema)
            app.openapi_schema = schema
        paths = app.openapi_schema["paths"]
        access.refresh()  # a key added since the last request closes anonymous writes
        for path, method, scope in scoped:
            op = paths[path][method]
            keyed = [req for req in op.get("security", []) if req]
            op["security"] = keyed if access.needs_key(scope) else [*keyed, {}]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


#: response headers by status (``None``: every answer), each ``(name, required, text)``
_HEADERS: dict[str | None, list[tuple[str, bool, str]]] = {
    None: [("X-Request-ID", True, "this answer's id (the request's own when it sent a "
            "valid one); the server's log lines of the request carry it")],
    "401": [("WWW-Authenticate", True, "Bearer: the key scheme the route takes")],
    "405": [("Allow", True, "the methods the path takes")],
    "429": [("Retry-After", True, "seconds until the same request would pass")],
    "503": [("Retry-After", False, "seconds to wait before trying again (given when a "
             "retry can help: no snapshot yet, Kafka unreachable)")],
}


def _document_headers(schema: dict[str, Any]) -> None:
    """Add the headers of :data:`_HEADERS` to every documented answer of ``schema``.

    >>> s = {"paths": {"/x": {"get": {"responses": {"200": {}, "429": {}}}}}}
    >>> _document_headers(s)
    >>> sorted(s["paths"]["/x"]["get"]["responses"]["429"]["headers"])
    ['Retry-After', 'X-Request-ID']
    """
    for ops in schema["paths"].values():
        for op in ops.values():
            for status, answer in op.get("responses", {}).items():
                headers = answer.setdefault("headers", {})
                for name, required, text in [*_HEADERS[None], *_HEADERS.get(status, [])]:
                    headers.setdefault(name, {"description": text, "required": required,
                                              "schema": {"type": "string"}})


def _route_scopes(router: APIRouter, scope: str | None) -> list[tuple[str, str, str]]:
    """(path, method, scope) of each documented route of ``router`` that checks a key:
    ``scope`` when the router is included behind it, else the route's own check."""
    found = []
    for route in router.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            need = scope or _scope_of(route.dependant)
            if need is not None:
                found += [(route.path, method.lower(), need) for method in route.methods or ()]
    return found


def _scope_of(dependant: Dependant) -> str | None:
    """The scope a route's key check needs (:func:`serving.auth.require` names its
    dependency ``require_<scope>``), None for a route without one."""
    for dep in dependant.dependencies:
        name = getattr(dep.call, "__name__", "")
        if name.startswith("require_") and name.removeprefix("require_") in SCOPES:
            return name.removeprefix("require_")
        inner = _scope_of(dep)
        if inner is not None:
            return inner
    return None


def run(
    settings: ServeSettings,
    *,
    auth: AuthSettings | None = None,
    limits: RateLimitSettings | None = None,
    **uvicorn_kwargs: Any,
) -> None:
    """Serve ``create_app(settings, auth=auth, limits=limits)`` with uvicorn (blocks)."""
    import uvicorn

    app = create_app(settings, auth=auth, limits=limits)
    metrics = app.state.serving.metrics

    def count(method: str, status: int) -> None:  # as MetricsMiddleware counts its own
        metrics.responses.labels(route="unmatched", method=method, status=str(status)).inc()

    _check_descriptors(settings.max_connections)
    for handler in logging.getLogger().handlers:  # request_id on the lines of a request
        handler.addFilter(RequestIdFilter())
    # The head holds the request line (method, URL, version) and the headers.
    max_head = settings.max_url_bytes + settings.max_header_bytes + 64
    uvicorn.run(
        app,
        http=json_error_protocol(settings.max_url_bytes, on_reject=count,
                                 max_head_bytes=max_head, max_headers=settings.max_headers,
                                 head_timeout_s=settings.head_timeout_s,
                                 max_connections=settings.max_connections,
                                 retry_after_s=settings.retry_after_s),
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go to the root handler, in its format
        access_log=False,
        **uvicorn_kwargs,
    )


#: descriptors the server needs besides its connections (snapshot files, Kafka sockets,
#: the listening socket, logs)
DESCRIPTOR_MARGIN = 64


def _check_descriptors(max_connections: int) -> None:
    """Warns when the process may not open ``max_connections`` connections (its soft
    descriptor limit, raised to the hard one where that suffices, is too low): past it
    accepting fails with EMFILE instead of the JSON 503 the connection cap answers."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + DESCRIPTOR_MARGIN
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("the descriptor limit (%d) is below LIVEREC_MAX_CONNECTIONS (%d) plus "
                    "%d for the server's own files: raise it (ulimit -n) or lower "
                    "LIVEREC_MAX_CONNECTIONS", soft, max_connections, DESCRIPTOR_MARGIN)
