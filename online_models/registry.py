"""Model registry: one name per model class, resolved lazily (torch loads only if used).

>>> {"bpr", "embedding", "hybrid"} <= set(MODEL_PATHS)
True
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from online_models.base import ModelState, OnlineModel, learning_order

#: registry name -> "module:Class"
MODEL_PATHS: dict[str, str] = {
    "popularity": "online_models.popularity:Popularity",
    "itemknn": "online_models.itemknn:ItemKNN",
    "userknn": "online_models.userknn:UserKNN",
    "bpr": "online_models.bpr:BPR",
    "embedding": "online_models.embedding:EmbeddingModel",
    "sequence": "online_models.sequence:SequenceModel",
    "sknn": "online_models.sknn:SessionKNN",
    "hybrid": "online_models.hybrid:Hybrid",
    "river-funkmf": "online_models.river_baseline:RiverFunkMF",
    "river-biasedmf": "online_models.river_baseline:RiverBiasedMF",
    "seqnn": "online_models.seqnn:SeqNN",
    "content-knn": "online_models.content:ContentKNN",
    "ranked": "online_models.reranker:ReRanker",
}

#: what the trainer learns by default ("all" on the command line)
DEFAULT_MODELS: tuple[str, ...] = (
    "popularity",
    "itemknn",
    "userknn",
    "bpr",
    "embedding",
    "sequence",
    "hybrid",
)


def model_class(name: str) -> type[OnlineModel]:
    try:
        path = MODEL_PATHS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_PATHS))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
    module, cls = path.split(":")
    found: type[OnlineModel] = getattr(importlib.import_module(module), cls)
    return found


def check_params(params: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> None:
    """Refuse constructor arguments for a model not in ``names`` or that it does not take.

    ``names`` are the models built (``kind@label`` is another instance of the registry
    model ``kind``, as in a hybrid's components); ``params`` maps some of them to
    constructor arguments. Raises :class:`ValueError` with a one-line reason.

    >>> check_params({"itemknn": {"window": 20}}, ["popularity", "itemknn"])
    >>> check_params({"nomodel": {"x": 1}}, ["popularity", "seqnn"])
    Traceback (most recent call last):
    ...
    ValueError: names models not evaluated: nomodel (evaluated: popularity, seqnn)
    >>> check_params({"popularity@b": {"nope": 1}}, ["popularity@b"])
    Traceback (most recent call last):
    ...
    ValueError: names parameters popularity does not take: nope (it takes: half_life_seconds)
    """
    unknown = [m for m in params if m not in names]
    if unknown:
        raise ValueError(f"names models not evaluated: {', '.join(unknown)} "
                         f"(evaluated: {', '.join(names)})")
    for name, given in params.items():
        kind = name.split("@", 1)[0]
        sig = inspect.signature(model_class(kind))
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            continue
        takes = [p for p, v in sig.parameters.items()
                 if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
        bad = [p for p in given if p not in takes]
        if bad:
            raise ValueError(f"names parameters {kind} does not take: {', '.join(bad)} "
                             f"(it takes: {', '.join(takes) or 'none'})")


def create(name: str, **params: Any) -> OnlineModel:
    """A fresh model by registry name."""
    return model_class(name)(**params)


def from_state(state: ModelState) -> OnlineModel:
    """Rebuild any model from its exported state (dispatch on ``meta['class']``)."""
    return model_class(state.meta["class"]).from_state(state)


def bind(models: Mapping[str, OnlineModel]) -> dict[str, OnlineModel]:
    """Bind every model that blends others (the hybrid) to the models beside it.

    A hybrid component named like a model of ``models`` is shared instead of a
    private copy: the hybrid reads it and the owner of ``models`` learns it once.
    Returns the same models in the order they must learn a batch (readers first,
    :func:`~online_models.base.learning_order`); learn them in that order.

    >>> models = bind({"popularity": create("popularity"), "itemknn": create("itemknn"),
    ...                "hybrid": create("hybrid", components=["popularity", "itemknn"])})
    >>> list(models), sorted(models["hybrid"].shared_components())
    (['hybrid', 'popularity', 'itemknn'], ['itemknn', 'popularity'])
    """
    for model in models.values():
        binder = getattr(model, "bind", None)
        if callable(binder):
            binder(models)
    return {name: models[name] for name in learning_order(models)}


def create_models(
    names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, OnlineModel]:
    """Fresh models by registry name (``params[name]``: constructor arguments), bound.

    What the trainer and ``liverec evaluate`` build: a hybrid among ``names``
    blends the other models of the list instead of learning private copies.
    """
    params = params or {}
    return bind({name: create(name, **params.get(name, {})) for name in names})


def give_item_features(models: Mapping[str, OnlineModel], features: Any) -> list[str]:
    """Hand one :class:`~online_models.content.ItemFeatures` to every model that takes it.

    Models (and a hybrid's private components) keep it by reference, so later
    ``features.set_text`` calls reach them all. Returns the names that took it.
    """
    took: list[str] = []
    for name, model in models.items():
        setter = getattr(model, "set_item_features", None)
        if callable(setter):
            setter(features)
            took.append(name)
    return took


def content_rankers(models: Mapping[str, OnlineModel]) -> list[str]:
    """Names of the models that rank by item content alone (content-kNN), also as a
    component of a blend (``"hybrid/content-knn"``): without item content they rank
    by popularity, under their own name. Other models use content where it is given
    and learn from clicks without it.

    >>> content_rankers(create_models(["popularity", "content-knn"]))
    ['content-knn']
    >>> content_rankers({"hybrid": create("hybrid", components=["popularity", "content-knn"])})
    ['hybrid/content-knn']
    """
    from online_models.content import ContentKNN

    found: list[str] = []
    for name, model in models.items():
        if isinstance(model, ContentKNN):
            found.append(name)
        parts = getattr(model, "models", None)  # a blend's components
        if isinstance(parts, Mapping):
            found += [f"{name}/{c}" for c, m in parts.items()
                      if isinstance(m, ContentKNN) and c not in models]
    return found


def parse_models(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of registry names, validated.

    >>> parse_models("popularity, itemknn")
    ['popularity', 'itemknn']
    """
    if spec.strip() in ("", "all"):
        return list(DEFAULT_MODELS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in MODEL_PATHS:
            model_class(n)  # raises with the list of known names
    return names
