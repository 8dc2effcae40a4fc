"""``GET /dashboard`` (the page) and ``GET /v1/dashboard/data`` (its JSON)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from serving.deps import JSON, DashboardDep
from serving.errors import AUTH_RESPONSES_OF_PAGE

router = APIRouter(tags=["dashboard"])

STATIC = Path(__file__).resolve().parents[1] / "static"


@router.get("/dashboard", response_class=HTMLResponse, summary="Live system dashboard",
            responses=AUTH_RESPONSES_OF_PAGE)
async def dashboard_page() -> HTMLResponse:
    return HTMLResponse((STATIC / "dashboard.html").read_text(encoding="utf-8"))


@router.get("/v1/dashboard/data", response_class=JSON, summary="Dashboard time series")
async def dashboard_data(dash: DashboardDep) -> JSON:
    return JSON(dash.data())
