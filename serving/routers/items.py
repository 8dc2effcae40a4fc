"""``GET /v1/items/{item_id}`` and ``GET /v1/items/{item_id}/similar``.

An id containing ``/`` cannot be a path segment (``%2F`` is decoded before routing):
``GET /v1/items?item_id=...`` and ``GET /v1/items/similar?item_id=...`` take the id
in the query instead, and the path forms refuse an encoded ``/`` with a 404 that
says so rather than answer for another item.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from serving.content import CONTENT_MODEL
from serving.deps import JSON, LoadedDep, StateDep
from serving.errors import SLASH_404, SNAPSHOT_RESPONSES, ErrorOut, api_error, too_large_k
from serving.ranking import UnknownModelError
from serving.routers.recommendations import MAX_ID, MAX_K, ScoredItem

if TYPE_CHECKING:
    from serving.ranking import LoadedSnapshot
    from serving.state import ServingState

router = APIRouter(prefix="/v1/items", tags=["items"], responses=SNAPSHOT_RESPONSES)

ItemId = Annotated[str, Path(min_length=1, max_length=MAX_ID)]


class SimilarOut(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model: str
    snapshot_version: int


class ItemOut(BaseModel):
    item_id: str
    popularity: float
    in_snapshot: bool
    snapshot_version: int


SimilarK = Annotated[int, Query(ge=1, le=MAX_K)]
ModelName = Annotated[str | None, Query(min_length=1, max_length=64)]
_SIMILAR_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": SimilarOut},
    404: {"model": ErrorOut, "description": "unknown item or model (reason unknown_item, "
          "unknown_model, no_content; slash_in_path: an encoded '/' in the path)"}}


# Literal paths before ``/{item_id}``, which would otherwise take "similar" as an id.
@router.get("/similar", response_class=JSON, summary="Items similar to an item (id in the query)",
            responses=_SIMILAR_RESPONSES)
async def similar_by_query(
    loaded: LoadedDep,
    state: StateDep,
    item_id: Annotated[str, Query(min_length=1, max_length=MAX_ID)],
    k: SimilarK = 10,
    model: ModelName = None,
) -> JSON:
    """:func:`similar` with the id in the query: the form for ids containing ``/``."""
    return await _similar(loaded, state, item_id, k, model)


@router.get("", response_class=JSON, summary="An item's popularity (id in the query)",
            responses={200: {"model": ItemOut}})
async def item_by_query(
    loaded: LoadedDep,
    state: StateDep,
    item_id: Annotated[str, Query(min_length=1, max_length=MAX_ID)],
) -> JSON:
    """:func:`item` with the id in the query: the form for ids containing ``/``."""
    return _item(loaded, state, item_id)


@router.get("/{item_id}/similar", response_class=JSON, summary="Items similar to an item",
            responses=_SIMILAR_RESPONSES)
async def similar(
    loaded: LoadedDep,
    state: StateDep,
    item_id: ItemId,
    k: SimilarK = 10,
    model: ModelName = None,
) -> JSON:
    """Items similar to ``item_id`` by the model asked for (default: the server's).

    ``model=content`` ranks by item content (every item with content, clicked or
    not); an item the model has not learned yet but that has content (from the
    item-features file or topic) gets the content answer too, with ``"model":
    "content"``.
    """
    return await _similar(loaded, state, item_id, k, model)


async def _similar(
    loaded: LoadedSnapshot, state: ServingState, item_id: str, k: int, model: str | None
) -> JSON:
    if k > state.settings.max_k:
        raise too_large_k(k, state.settings.max_k)
    if model == CONTENT_MODEL:
        name, found = CONTENT_MODEL, await _content_similar(state, item_id, k)
        if found is None:
            raise api_error(404, "no_content", f"item {item_id!r} has no content")
        items = found
    else:
        try:
            name, m = loaded.model(model)
        except UnknownModelError as exc:
            raise api_error(404, "unknown_model", str(exc)) from None
        if m.items.get(item_id) >= 0:
            # A model's ``similar`` scans the whole catalogue (a matrix-vector product
            # and a sort for the factor models): on the rank pool.
            items = await state.rank(m.similar, item_id, k)
        elif (found := await _content_similar(state, item_id, k)) is not None:
            name, items = CONTENT_MODEL, found
        else:
            raise api_error(404, "unknown_item", f"item not known to model {name!r} "
                                                 "and without item content")
    return JSON(
        {
            "item_id": item_id,
            "items": [{"item_id": i, "score": float(s)} for i, s in items],
            "model": name,
            "snapshot_version": loaded.version,
        }
    )




async def _content_similar(
    state: ServingState, item_id: str, k: int
) -> list[tuple[str, float]] | None:
    # A matrix-vector product over the featured catalogue, and a rebuild of its matrix
    # after a content change: in a worker thread, as is the index's lock (taken there,
    # never on the event loop). None: the item has no content.
    return await asyncio.to_thread(state.content.similar, item_id, k)


@router.get(
    "/{item_id}",
    response_class=JSON,
    summary="An item's popularity (snapshot + live clicks)",
    responses={200: {"model": ItemOut}, 404: SLASH_404},
)
async def item(loaded: LoadedDep, state: StateDep, item_id: ItemId) -> JSON:
    return _item(loaded, state, item_id)


def _item(loaded: LoadedSnapshot, state: ServingState, item_id: str) -> JSON:
    pop, known = loaded.item_popularity(item_id, state.live)
    return JSON(
        {
            "item_id": item_id,
            "popularity": pop,
            "in_snapshot": known,
            "snapshot_version": loaded.version,
        }
    )
