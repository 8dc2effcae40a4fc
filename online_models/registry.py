"""Model registry: one name per model class, resolved lazily (torch loads only if used).

Other installed packages add models through the entry-point group
:data:`PLUGIN_GROUP` (``liverec.models``): in the package's ``pyproject.toml``::

    [project.entry-points."liverec.models"]
    transitions = "my_package.models:Transitions"

The name is the model's registry name everywhere (``--models``, ``--model-params``,
a hybrid's components, the snapshot's ``class``); the class subclasses
:class:`~online_models.base.OnlineModel` and sets ``name`` to it. A server or
trainer that loads a snapshot naming a plugin model needs the plugin installed: no
snapshot can make liverec import a module that is not a registered model.
``liverec models check NAME`` runs a model through the protocol
(:mod:`online_models.conformance`).

>>> {"bpr", "embedding", "hybrid"} <= set(MODEL_PATHS)
True
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

#: the entry-point group through which installed packages add models
PLUGIN_GROUP = "liverec.models"

#: what a model's registry name may be (a plugin's other names are left out)
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

log = logging.getLogger(__name__)

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


class UnknownModelError(ValueError):
    """A model name that is neither built in nor an installed plugin's."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(message)
        self.model = model


@dataclass(frozen=True)
class Plugin:
    """A model an installed package adds (an entry point of :data:`PLUGIN_GROUP`)."""

    name: str
    #: ``"module:Class"``
    path: str
    #: the distribution that declares it, with its version (``"pkg 1.0"``)
    source: str


@functools.cache
def plugins() -> dict[str, Plugin]:
    """The installed plugin models by name, read once per process.

    An entry point that cannot be a model is left out with a WARNING saying why: a
    name that is not a valid registry name, that a built-in model has (the built-in
    stays), or that two packages give (both are left out: which one a snapshot means
    would be a guess). ``plugins.cache_clear()`` reads them again.
    """
    found: dict[str, list[Plugin]] = {}
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        dist = getattr(ep, "dist", None)
        source = f"{dist.name} {dist.version}" if dist is not None else "unknown package"
        plugin = Plugin(ep.name, f"{ep.module}:{ep.attr}", source)  # no [extras]
        if plugin not in found.setdefault(ep.name, []):  # one distribution seen twice
            found[ep.name].append(plugin)
    out: dict[str, Plugin] = {}
    for name, given in sorted(found.items()):
        where = "; ".join(f"{p.path} from {p.source}" for p in given)
        if not _NAME.fullmatch(name):
            log.warning("plugin model %r (%s) left out: a model name is lower-case letters, "
                        "digits and . _ - (at most 64)", name, where)
        elif name in MODEL_PATHS:
            log.warning("plugin model %r (%s) left out: a built-in model has that name",
                        name, where)
        elif len(given) > 1:  # which one a snapshot's model means would be a guess
            log.warning("plugin model %r left out: %d packages declare it (%s); uninstall "
                        "all but one", name, len(given), where)
        else:
            out[name] = given[0]
    return out


def package_of(name: str) -> str | None:
    """``"package version"`` of the plugin that provides model ``name`` (or
    ``kind@label``); None for a built-in or an unknown name. A built-in's answer needs
    no scan of the installed packages (snapshots ask for every model they capture)."""
    kind = name.partition("@")[0]
    if kind in MODEL_PATHS:
        return None
    plugin = plugins().get(kind)
    return plugin.source if plugin is not None else None


def known_models() -> list[str]:
    """Every model name this process can build: the built-ins, then the plugins."""
    return [*MODEL_PATHS, *plugins()]


def model_class(name: str) -> type[OnlineModel]:
    """The class of the model called ``name`` (a built-in or an installed plugin).

    ``kind@label`` is another instance of the model ``kind`` (its own constructor
    arguments under that name in ``--model-params``): two settings of one model side
    by side, in a run or as a hybrid's components.

    Raises :class:`ValueError` with a one-line reason: an unknown name (with the known
    ones), or a plugin that fails to import or is not an ``OnlineModel``.

    >>> model_class("itemknn@short").__name__
    'ItemKNN'
    """
    kind, at, label = name.partition("@")
    if at:
        if not _NAME.fullmatch(label):
            raise ValueError(f"model {name!r}: the label after '@' is lower-case letters, "
                             "digits and . _ - (e.g. itemknn@short)")
        return model_class(kind)
    path = MODEL_PATHS.get(name)
    plugin = None if path is not None else plugins().get(name)
    if plugin is not None:
        path = plugin.path
    if path is None:
        known = ", ".join(sorted(known_models()))
        raise UnknownModelError(name, f"unknown model {name!r}; known models: {known} (a "
                                "plugin model needs its package installed here: `liverec "
                                "models list`)")
    module, _, attr = path.partition(":")
    if plugin is None:
        found: type[OnlineModel] = getattr(importlib.import_module(module), attr)
        return found
    what = f"plugin model {name!r} ({path} from {plugin.source})"
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # a plugin's own import error, told in one line
        raise ValueError(f"{what} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, OnlineModel)):
        raise ValueError(f"{what} is not a subclass of online_models.base.OnlineModel")
    if obj.name == OnlineModel.name:
        raise ValueError(f"{what} does not set its name (it inherits {obj.name!r}): add "
                         f"`name: ClassVar[str] = {name!r}` to the class")
    if obj.name != name:
        raise ValueError(f"{what} sets name = {obj.name!r}: it must be {name!r}, the name "
                         "its snapshots record it by")
    return obj


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

    >>> parse_models("popularity, itemknn, itemknn@short")
    ['popularity', 'itemknn', 'itemknn@short']
    """
    if spec.strip() in ("", "all"):
        return list(DEFAULT_MODELS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in MODEL_PATHS:
            model_class(n)  # a plugin's import; raises with the list of known names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"model(s) named twice: {', '.join(twice)} (another instance of "
                         "a model is kind@label, e.g. itemknn@short)")
    return names
