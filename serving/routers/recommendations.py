"""``GET /v1/recommendations``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from serving.deps import JSON, LoadedDep, StateDep
from serving.errors import SNAPSHOT_RESPONSES, ErrorOut, api_error, too_large_k
from serving.ranking import UnknownModelError
from serving.settings import K_BOUND
from stream.events import ID_CHARS_BOUND

router = APIRouter(prefix="/v1", tags=["recommendations"], responses=SNAPSHOT_RESPONSES)

MAX_K = K_BOUND
MAX_ID = ID_CHARS_BOUND


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendationsOut(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model: str
    fallback: bool
    served_by: str
    snapshot_version: int
    watermark: float | None


@router.get(
    "/recommendations",
    response_class=JSON,
    summary="Top-k items for a user",
    responses={
        200: {"model": RecommendationsOut},
        404: {"model": ErrorOut,
              "description": "model not in the loaded snapshot (reason unknown_model)"},
    },
)
async def recommendations(
    loaded: LoadedDep,
    state: StateDep,
    user_id: Annotated[str, Query(min_length=1, max_length=MAX_ID)],
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    model: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    exclude_seen: bool = True,
) -> JSON:
    # Ranking runs on the rank pool: a 100k x 64 product is milliseconds of numpy that
    # releases the GIL, so the loop keeps accepting and answering other requests.
    if k > state.settings.max_k:
        raise too_large_k(k, state.settings.max_k)
    try:
        rec = await state.rank(loaded.recommend, user_id, k, model, exclude_seen, state.live)
    except UnknownModelError as exc:
        raise api_error(404, "unknown_model", str(exc)) from None
    # Timed under what ranked: a fallback's cheap answer is not the model's latency.
    state.metrics.rank_seconds.labels(model=rec.served_by).observe(rec.rank_seconds)
    if rec.fallback:
        state.metrics.fallbacks.inc()
    return JSON(
        {
            "user_id": user_id,
            "items": [{"item_id": i, "score": s} for i, s in rec.items],
            "model": rec.model,
            "fallback": rec.fallback,
            "served_by": rec.served_by,
            "snapshot_version": loaded.version,
            "watermark": loaded.watermark,
        }
    )
