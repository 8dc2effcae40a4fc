"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.deps import JSON, StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_class=JSON, summary="Liveness")
async def healthz() -> JSON:
    return JSON({"status": "ok"})


@router.get(
    "/readyz",
    response_class=JSON,
    summary="Readiness: 200 once a snapshot is loaded, else 503",
    responses={503: {"description": "no snapshot loaded yet"}},
)
async def readyz(state: StateDep) -> JSON:
    cur = state.current
    if cur is None:
        return JSON({"ready": False, "reason": "no snapshot loaded yet"}, status_code=503)
    return JSON({"ready": True, "snapshot_version": cur.version})


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(state: StateDep) -> Response:
    state.update_gauges()
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
