"""``GET /v1/model``: the loaded snapshot's manifest summary."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deps import JSON, LoadedDep, StateDep
from serving.errors import SNAPSHOT_RESPONSES

router = APIRouter(prefix="/v1", tags=["model"], responses=SNAPSHOT_RESPONSES)


@router.get("/model", response_class=JSON, summary="Loaded snapshot summary")
async def model(loaded: LoadedDep, state: StateDep) -> JSON:
    out = loaded.summary()
    out["refused_versions"] = {str(v): why for v, why in state.refused.reasons().items()}
    return JSON(out)
