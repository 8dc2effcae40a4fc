"""FastAPI dependencies as ``Annotated`` aliases (tests can override the functions)."""

from __future__ import annotations

import math
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from serving.dashboard import DashboardSeries
from serving.errors import api_error
from serving.ranking import LoadedSnapshot
from serving.settings import ServeSettings
from serving.state import ServingState

__all__ = [
    "JSON",
    "DashboardDep",
    "LoadedDep",
    "SettingsDep",
    "StateDep",
    "get_loaded",
    "get_state",
]


class JSON(JSONResponse):
    """A JSON response serialised with orjson (fast, handles numpy floats as floats).

    A :class:`JSONResponse`, so that the OpenAPI schema describes a route's body by its
    declared model (FastAPI documents any other response class as a string).
    """

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# Dependencies are ``async def``: FastAPI runs plain ``def`` ones in its thread pool,
# a thread hop per dependency per request for what is an attribute read.
async def get_state(request: Request) -> ServingState:
    return request.app.state.serving


async def get_settings(request: Request) -> ServeSettings:
    return request.app.state.serving.settings


async def get_dashboard(request: Request) -> DashboardSeries:
    return request.app.state.dashboard


async def get_loaded(state: Annotated[ServingState, Depends(get_state)]) -> LoadedSnapshot:
    """The snapshot this request uses, read once (a swap mid-request cannot affect it)."""
    cur = state.current
    if cur is None:
        retry = max(1, math.ceil(state.settings.reload_interval_s))
        raise api_error(503, "no_snapshot", "no snapshot loaded yet",
                        headers={"Retry-After": str(retry)})
    return cur


StateDep = Annotated[ServingState, Depends(get_state)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
LoadedDep = Annotated[LoadedSnapshot, Depends(get_loaded)]
DashboardDep = Annotated[DashboardSeries, Depends(get_dashboard)]
