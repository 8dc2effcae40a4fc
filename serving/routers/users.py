"""``GET /v1/users/{user_id}``: what the server knows a user has seen."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel

from serving.deps import JSON, LoadedDep, StateDep
from serving.routers.recommendations import MAX_ID

router = APIRouter(prefix="/v1/users", tags=["users"])


class UserOut(BaseModel):
    user_id: str
    snapshot_items: list[str]
    live_items: list[str]
    snapshot_version: int


@router.get(
    "/{user_id}",
    response_class=JSON,
    summary="A user's seen items: from the snapshot and from live clicks",
    responses={200: {"model": UserOut}},
)
async def user(
    loaded: LoadedDep,
    state: StateDep,
    user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID)],
) -> JSON:
    return JSON(
        {
            "user_id": user_id,
            "snapshot_items": loaded.snapshot.history.get(user_id),
            "live_items": state.live.items(user_id),
            "snapshot_version": loaded.version,
        }
    )
