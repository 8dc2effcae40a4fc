"""Liveness, readiness and Prometheus metrics.

``/healthz`` and ``/readyz`` answer ``GET`` and ``HEAD`` (load balancers probe with
either), need no key and are never rate limited. ``/readyz`` lists every dependency's
state; see :meth:`serving.state.ServingState.dependencies` for when it is ready.
``/readyz?scope=read`` is ready once a snapshot is loaded, Kafka or not. With
``protect_ops``, a caller without an ``ops`` key gets the status and the names of the
degraded dependencies, not their details (paths, addresses, error texts).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from serving.auth import require
from serving.deps import JSON, StateDep
from serving.errors import AUTH_RESPONSES

router = APIRouter(tags=["health"])


@router.get("/healthz", response_class=JSON, summary="Liveness")
@router.head("/healthz", response_class=JSON, include_in_schema=False)
async def healthz() -> JSON:
    return JSON({"status": "ok"})


#: dependency states that are not a degradation ("owned": every scale-out partition
#: has a live trainer)
_HEALTHY = frozenset({"loaded", "connected", "disabled", "owned"})


class Readiness(BaseModel):
    """``/readyz``'s body, ready (200) or not (503). With ``protect_ops``, a caller
    without an ``ops`` key gets ``ready``, ``status``, ``degraded`` and
    ``snapshot_version`` only."""

    ready: bool
    status: Literal["ready", "degraded", "not_ready"]
    #: the dependencies not in a healthy state (ready with some: ``degraded``)
    degraded: list[str]
    #: absent before the first snapshot loads
    snapshot_version: int | None = None
    #: each dependency's state (``state``, and ``reason``, ``error``... where degraded)
    dependencies: dict[str, dict[str, Any]] | None = None
    #: why not ready: "<dependency>: <reason>" joined by "; " (503 only)
    reason: str | None = None


@router.head("/readyz", response_class=JSON, include_in_schema=False)
@router.get(
    "/readyz",
    response_class=JSON,
    summary="Readiness: 200 when a snapshot is loaded and configured dependencies work",
    responses={200: {"model": Readiness},
               503: {"model": Readiness,
                     "description": "not ready; the body says which dependency and why"}},
)
async def readyz(
    request: Request,
    state: StateDep,
    scope: Annotated[Literal["all", "read"], Query(
        description="'read': ready to answer reads (a snapshot is loaded), whatever "
                    "Kafka's state -- for a load balancer of the read path, so that a "
                    "Kafka outage, which only stops writes and live context, does not "
                    "take every replica out of it")] = "all",
) -> JSON:
    # In a worker thread: with scale-out trainers it reads their heartbeat files,
    # which a slow or network file system must not turn into an event-loop stall.
    ready, deps = await asyncio.to_thread(state.dependencies)
    if scope == "read":
        ready = state.current is not None
    degraded = sorted(
        name for name, d in deps.items() if d["state"] not in _HEALTHY
    )
    body: dict[str, object] = {
        "ready": ready,
        "status": "ready" if ready and not degraded else ("degraded" if ready else "not_ready"),
        "degraded": degraded,
        "dependencies": deps,
    }
    cur = state.current
    if cur is not None:
        body["snapshot_version"] = cur.version
    if not ready:
        why = [f"{name}: {deps[name].get('reason', deps[name]['state'])}" for name in degraded]
        body["reason"] = "; ".join(why)
    access = request.app.state.access
    if access.settings.protect_ops and not await access.holds(request, "ops"):
        # The dependencies' states hold paths, broker addresses and error texts: with
        # ops protected, only an ops key reads them (a probe needs the status only).
        body = {k: body[k] for k in ("ready", "status", "degraded", "snapshot_version")
                if k in body}
    return JSON(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    dependencies=[Depends(require("ops"))],
    responses=AUTH_RESPONSES,
)
async def metrics(state: StateDep) -> Response:
    state.update_gauges()
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
