"""``POST /v1/events``: validate clicks with the stream's own contract, queue them for Kafka.

The body is read and checked here rather than by a pydantic model so the answer is
exactly the stream's: the same :func:`stream.events.validate_dict` and the same
bounded rejection reasons the consumer sends to the dead-letter topic.

Order of checks, cheapest first and all before the body is parsed: API key and scope
(401/403), the caller's rate limit (429), content type (415), declared and actual body
size (413), and the body's arrival within ``body_timeout_s`` (408). Then the JSON (one
event or an array of at most ``max_batch_events``), each event's contract (422,
nothing is sent when one event is bad), and the send: records go to a background
sender (:mod:`serving.ingest`), and the request waits for Kafka's acknowledgement at
most ``delivery_timeout_s`` on the event loop without blocking it; a refusal or
timeout is a 503 with ``Retry-After``.

Event ids are scoped to the caller: an ``event_id`` posted with key ``ingest``
travels as ``ingest/<event_id>`` (``anonymous/...`` without a key), so no caller can
make the trainer drop another source's event as a duplicate, while a retried post
with the same id is still de-duplicated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from serving.auth import Principal, require
from serving.deps import JSON, StateDep
from serving.errors import ErrorOut
from serving.ingest import Delivered, IngestRefused, Record
from stream.events import (
    EVENT_TYPES,
    REJECT_REASONS,
    ClickEvent,
    Limits,
    Rejected,
    encode,
    event_key,
    validate_dict,
)
from stream.logfilter import RepeatFilter

__all__ = ["router", "scoped_event_id"]

#: Kafka's refusals of POSTed events, each kind at most once per 10 s (the next line
#: says how many were held back)
_refusals = logging.getLogger(__name__ + ".refusals")
_refusals.addFilter(RepeatFilter(every_s=10.0))

router = APIRouter(prefix="/v1", tags=["events"])

_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["user_id", "item_id", "event_type", "timestamp"],
    "properties": {
        "event_id": {
            "anyOf": [{"type": "string", "minLength": 1, "maxLength": 256}, {"type": "null"}],
            "description": "scoped to the caller: stored as '<key name>/<event_id>'; "
                           "absent or null: the server gives the event a fresh id",
        },
        "user_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "item_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
        "timestamp": {
            "description": "epoch seconds, epoch milliseconds or ISO-8601; at most "
                           "LIVEREC_MAX_FUTURE_S (1 day) ahead of the server's clock and "
                           "LIVEREC_MAX_PAST_S (50 years) behind it (else 422 "
                           "timestamp_out_of_range)",
            "anyOf": [{"type": "number"}, {"type": "string"}],
        },
        "session_id": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 256},
                                 {"type": "null"}]},
        "context": {"type": "object"},
    },
}

WriteKey = Annotated[Principal, Depends(require("write"))]


class AcceptedOne(BaseModel):
    """202 for one event: where Kafka stored it."""

    accepted: bool
    event_id: str
    topic: str
    partition: int
    offset: int


class AcceptedEvent(BaseModel):
    event_id: str
    partition: int
    offset: int


class AcceptedBatch(BaseModel):
    """202 for an array: where Kafka stored each event, in order."""

    accepted: bool
    topic: str
    events: list[AcceptedEvent]


class EventError(BaseModel):
    index: int
    reason: str
    detail: str


class Refused(BaseModel):
    """An event post's refusal (413, 415, 422, 503): ``errors`` per refused event of an
    array (422); of a partly sent array (503), ``delivered`` the ids of the events Kafka
    did store and ``delivered_indices`` their positions in the posted array (a client
    that sent no ``event_id`` cannot match the server's ids to its events: it retries
    the others by position)."""

    accepted: bool
    reason: str
    detail: str
    errors: list[EventError] | None = None
    delivered: list[str] | None = None
    delivered_indices: list[int] | None = None


def _reject(
    status: int, reason: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSON:
    body = {"accepted": False, "reason": reason, "detail": detail, **extra}
    return JSON(body, status_code=status, headers=headers)


def scoped_event_id(owner: str, event_id: str | None, max_chars: int) -> str:
    """``owner/event_id`` (a fresh uuid when none), hashed when that would be too long.

    >>> scoped_event_id("ingest", "e-1", 256)
    'ingest/e-1'
    >>> len(scoped_event_id("ingest", "x" * 256, 256)) <= 256
    True
    """
    eid = event_id if event_id is not None else uuid.uuid4().hex
    scoped = f"{owner}/{eid}"
    if len(scoped) > max_chars:
        scoped = f"{owner}/sha256:{hashlib.sha256(eid.encode()).hexdigest()[:40]}"
    return scoped


@router.post(
    "/events",
    response_class=JSON,
    status_code=202,
    summary="Ingest click events (one object or an array; produced to Kafka for the trainer)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            _EVENT_SCHEMA,
                            {"type": "array", "items": _EVENT_SCHEMA, "minItems": 1},
                        ]
                    },
                    "examples": {
                        "one": {"summary": "one click", "value": {
                            "user_id": "u1", "item_id": "i9", "event_type": "click",
                            "timestamp": 1700000000}},
                        "batch": {"summary": "an array, with the client's own event ids "
                                             "(a retry then counts once)", "value": [
                            {"user_id": "u1", "item_id": "i9", "event_type": "view",
                             "timestamp": 1700000000, "event_id": "web-0001"},
                            {"user_id": "u1", "item_id": "i9", "event_type": "add_to_cart",
                             "timestamp": 1700000042.5, "event_id": "web-0002"}]},
                    },
                }
            },
        }
    },
    responses={
        202: {"model": AcceptedOne | AcceptedBatch,
              "description": "accepted and acknowledged by Kafka (one event, or an array)"},
        401: {"model": ErrorOut, "description": "missing or unknown API key"},
        403: {"model": ErrorOut,
              "description": "the key lacks the write scope (reason wrong_scope), or an "
                             "anonymous write was addressed to a name that could be "
                             "rebound (reason foreign_host)"},
        408: {"model": Refused, "description": "the body did not arrive within "
                                                "LIVEREC_BODY_TIMEOUT_S (reason "
                                                "body_timeout; the connection closes)"},
        413: {"model": Refused, "description": "body too large or too many events"},
        415: {"model": Refused, "description": "not application/json"},
        422: {"model": Refused,
              "description": f"rejected; reason is one of {', '.join(REJECT_REASONS)}"},
        429: {"model": ErrorOut, "description": "rate limit exceeded (see Retry-After)"},
        503: {"model": Refused,
              "description": "Kafka unavailable, queue full or delivery timed out "
                             "(see Retry-After); no Kafka bootstrap configured. Of an "
                             "array partly stored: delivered and delivered_indices say "
                             "which events Kafka has (retry only the others)"},
    },
)
async def post_event(request: Request, state: StateDep, principal: WriteKey) -> JSON:
    metrics = state.metrics
    settings = state.settings
    limit = settings.max_body_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        metrics.count_events(principal.name, "bad_content_type")
        return _reject(415, "bad_content_type", "send Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        metrics.count_events(principal.name, "too_large")
        return _reject(413, "too_large", f"body must be at most {limit} bytes")
    body = bytearray()
    try:
        # A body that stalls would hold its connection and this task for ever (uvicorn
        # bounds neither): it must be whole within body_timeout_s of its head.
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    metrics.count_events(principal.name, "too_large")
                    return _reject(413, "too_large", f"body must be at most {limit} bytes")
    except TimeoutError:
        metrics.count_events(principal.name, "body_timeout")
        # The rest of the body may still come: the connection closes after the answer.
        return _reject(408, "body_timeout", "the body must arrive within "
                       f"{settings.body_timeout_s:g} s of the request head",
                       {"Connection": "close"})
    raw = bytes(body)
    if not raw.strip():
        metrics.count_events(principal.name, "empty")
        return _reject(422, "empty", "the body is empty: send an event or an array of them")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        metrics.count_events(principal.name, "not_utf8")
        return _reject(422, "not_utf8", str(exc))
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        metrics.count_events(principal.name, "not_json")
        return _reject(422, "not_json", str(exc))
    batch = isinstance(obj, list)
    items = obj if batch else [obj]
    if batch and not items:
        metrics.count_events(principal.name, "empty")
        return _reject(422, "empty", "the array holds no event")
    if len(items) > settings.max_batch_events:
        metrics.count_events(principal.name, "too_large")
        return _reject(413, "too_large", f"at most {settings.max_batch_events} events per post")
    limits = Limits(max_id_chars=settings.max_id_chars)
    events: list[ClickEvent] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        ev = _validate(item, raw if not batch else None, principal, limits)
        if isinstance(ev, Rejected):
            metrics.count_events(principal.name, ev.reason)
            errors.append({"index": index, "reason": ev.reason, "detail": ev.detail})
        else:
            events.append(ev)
    if errors:
        first = errors[0]
        extra: dict[str, Any] = {"errors": errors} if batch else {}
        return _reject(422, first["reason"], first["detail"], None, **extra)
    # One write token per event sent (the request's own was taken with the key check):
    # a refused batch costs its request only, so a client's field bug does not use up
    # the allowance its valid writes need. Retry-After covers the whole batch again.
    if len(events) > 1:
        access = request.app.state.access
        rate, burst = access.limit("write", principal)
        if rate > 0 and len(events) > burst:  # could never pass: no Retry-After helps
            metrics.count_events(principal.name, "too_large")
            return _reject(413, "too_large", f"at most {int(burst)} events per post under "
                           "the write rate limit of this caller (its burst)")
        access.take("write", principal, cost=len(events) - 1, retry_cost=len(events))
    return await _send(state, events, batch, principal.name)


def _validate(
    item: object, raw: bytes | None, principal: Principal, limits: Limits
) -> ClickEvent | Rejected:
    ev = validate_dict(item, raw=raw, limits=limits, generate_event_id=True)
    if isinstance(ev, Rejected):
        return ev
    given = item.get("event_id") if isinstance(item, dict) else None
    ev = dataclasses.replace(
        ev, event_id=scoped_event_id(principal.name, given, limits.max_id_chars)
    )
    if len(encode(ev)) > limits.max_event_bytes:
        return Rejected(raw or b"", "too_large",
                        f"an event must encode to at most {limits.max_event_bytes} bytes")
    return ev


async def _send(state: Any, events: list[ClickEvent], batch: bool, caller: str) -> JSON:
    metrics = state.metrics
    settings = state.settings
    retry = {"Retry-After": str(settings.retry_after_s)}
    records = [Record(settings.topic, encode(ev), key=event_key(ev)) for ev in events]
    t0 = time.perf_counter()
    try:
        futures = state.ingestor.submit(records)
    except IngestRefused as exc:
        metrics.count_events(caller, exc.reason, len(events))
        # no Kafka configured: no retry will do better (no Retry-After)
        return _reject(503, exc.reason, exc.detail,
                       None if exc.reason == "no_producer" else retry)
    waiting = [asyncio.wrap_future(f) for f in futures]
    done, pending = await asyncio.wait(waiting, timeout=settings.delivery_timeout_s)
    for f in futures:
        f.cancel()  # a record still queued is then never sent
    reports: list[Delivered | None] = []
    failure: BaseException | None = None
    for w in waiting:
        if w in done and not w.cancelled() and w.exception() is None:
            reports.append(w.result())
        else:
            reports.append(None)
            if w in done and not w.cancelled():
                failure = failure or w.exception()
    for w in pending:
        w.cancel()
    # events hold the posted array in order (one bad event refuses the whole post)
    stored = [i for i, r in enumerate(reports) if r is not None]
    delivered = [events[i].event_id for i in stored]
    if len(delivered) < len(events):
        reason = "delivery_timeout" if pending else "produce_failed"
        if isinstance(failure, IngestRefused):
            reason = failure.reason
        metrics.count_events(caller, reason, len(events) - len(delivered))
        if delivered:
            metrics.count_events(caller, "accepted", len(delivered))
        if pending:
            detail = f"Kafka did not acknowledge within {settings.delivery_timeout_s:g} s"
            state.ingestor.delivery_timed_out(settings.delivery_timeout_s)
        elif isinstance(failure, IngestRefused):
            detail = failure.detail
        else:
            # The client learns the kind; the text (broker addresses, settings) goes to
            # the server's log.
            _refusals.warning("Kafka refused events of POST /v1/events: %s: %s",
                              type(failure).__name__, failure)
            detail = (f"Kafka refused the events ({type(failure).__name__}"
                      f"{', retriable' if getattr(failure, 'retriable', False) else ''}; "
                      "the server's log says why)")
        extra: dict[str, Any] = {"delivered": delivered,
                                 "delivered_indices": stored} if batch else {}
        return _reject(503, reason, detail, retry, **extra)
    metrics.ingest_delivery_seconds.observe(time.perf_counter() - t0)
    metrics.count_events(caller, "accepted", len(events))
    if not batch:
        r = reports[0]
        assert r is not None
        return JSON(
            {"accepted": True, "event_id": events[0].event_id, "topic": r.topic,
             "partition": r.partition, "offset": r.offset},
            status_code=202,
        )
    return JSON(
        {"accepted": True, "topic": settings.topic, "events": [
            {"event_id": ev.event_id, "partition": r.partition, "offset": r.offset}
            for ev, r in zip(events, reports, strict=True) if r is not None
        ]},
        status_code=202,
    )
