"""``POST /v1/events``: validate a click with the stream's own contract, produce it.

The body is read and checked here rather than by a pydantic model so the answer is
exactly the stream's: the same :func:`stream.events.validate_dict` and the same
bounded rejection reasons the consumer sends to the dead-letter topic.
"""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request

from serving.deps import JSON, StateDep
from stream.events import EVENT_TYPES, REJECT_REASONS, Rejected, encode, event_key, validate_dict
from stream.kafka import deliver

router = APIRouter(prefix="/v1", tags=["events"])

_EVENT_SCHEMA = {
    "type": "object",
    "required": ["user_id", "item_id", "event_type", "timestamp"],
    "properties": {
        "event_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "user_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "item_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
        "timestamp": {
            "description": "epoch seconds, epoch milliseconds or ISO-8601",
            "anyOf": [{"type": "number"}, {"type": "string"}],
        },
        "session_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "context": {"type": "object"},
    },
}


def _reject(status: int, reason: str, detail: str) -> JSON:
    return JSON({"accepted": False, "reason": reason, "detail": detail}, status_code=status)


@router.post(
    "/events",
    response_class=JSON,
    status_code=202,
    summary="Ingest one click event (produced to Kafka for the trainer)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _EVENT_SCHEMA}},
        }
    },
    responses={
        202: {"description": "accepted and written to the topic"},
        413: {"description": "body too large"},
        415: {"description": "not application/json"},
        422: {"description": f"rejected; reason is one of {', '.join(REJECT_REASONS)}"},
        503: {"description": "no Kafka producer configured or the broker is unavailable"},
    },
)
async def post_event(request: Request, state: StateDep) -> JSON:
    metrics = state.metrics
    limit = state.settings.max_body_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        metrics.ingested.labels(outcome="bad_content_type").inc()
        return _reject(415, "bad_content_type", "send Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        metrics.ingested.labels(outcome="too_large").inc()
        return _reject(413, "too_large", f"body must be at most {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            metrics.ingested.labels(outcome="too_large").inc()
            return _reject(413, "too_large", f"body must be at most {limit} bytes")
    try:
        obj = orjson.loads(bytes(body))
    except orjson.JSONDecodeError as exc:
        metrics.ingested.labels(outcome="not_json").inc()
        return _reject(422, "not_json", str(exc))
    ev = validate_dict(obj, raw=bytes(body), generate_event_id=True)
    if isinstance(ev, Rejected):
        metrics.ingested.labels(outcome=ev.reason).inc()
        return _reject(422, ev.reason, ev.detail)
    producer = getattr(request.app.state, "producer", None)
    if producer is None:
        metrics.ingested.labels(outcome="no_producer").inc()
        return _reject(503, "no_producer", "this server has no Kafka bootstrap configured")
    try:
        meta = await asyncio.to_thread(deliver, producer, state.settings.topic, encode(ev),
                                       event_key(ev), timeout_s=10.0)
    except Exception as exc:  # broker trouble is the server's 503, never a 500
        metrics.ingested.labels(outcome="produce_failed").inc()
        return _reject(503, "produce_failed", f"{type(exc).__name__}: {exc}")
    metrics.ingested.labels(outcome="accepted").inc()
    return JSON(
        {
            "accepted": True,
            "event_id": ev.event_id,
            "topic": meta.topic,
            "partition": meta.partition,
            "offset": meta.offset,
        },
        status_code=202,
    )
