"""``GET /v1/users/{user_id}``: what the server knows a user has seen.

``GET /v1/users?user_id=...`` is the same with the id in the query: the form for ids
containing ``/`` (see :mod:`serving.routers.items`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from serving.deps import JSON, LoadedDep, StateDep
from serving.errors import SLASH_404, SNAPSHOT_RESPONSES
from serving.routers.recommendations import MAX_ID

if TYPE_CHECKING:
    from serving.ranking import LoadedSnapshot
    from serving.state import ServingState

router = APIRouter(prefix="/v1/users", tags=["users"], responses=SNAPSHOT_RESPONSES)


class UserOut(BaseModel):
    user_id: str
    #: whether the snapshot knows the user (else: no clicks before it, or forgotten)
    in_snapshot: bool
    snapshot_items: list[str]
    live_items: list[str]
    snapshot_version: int


@router.get(
    "",
    response_class=JSON,
    summary="A user's seen items (id in the query)",
    responses={200: {"model": UserOut}},
)
async def user_by_query(
    loaded: LoadedDep,
    state: StateDep,
    user_id: Annotated[str, Query(min_length=1, max_length=MAX_ID)],
) -> JSON:
    return _user(loaded, state, user_id)


@router.get(
    "/{user_id}",
    response_class=JSON,
    summary="A user's seen items: from the snapshot and from live clicks",
    responses={200: {"model": UserOut}, 404: SLASH_404},
)
async def user(
    loaded: LoadedDep,
    state: StateDep,
    user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID)],
) -> JSON:
    return _user(loaded, state, user_id)


def _user(loaded: LoadedSnapshot, state: ServingState, user_id: str) -> JSON:
    seen = loaded.snapshot.history.get(user_id)
    return JSON(
        {
            "user_id": user_id,
            "in_snapshot": bool(seen),
            "snapshot_items": seen,
            "live_items": state.live.items(user_id),
            "snapshot_version": loaded.version,
        }
    )
