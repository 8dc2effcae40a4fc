"""Component item rows mapped onto a blending model's own rows.

A model that blends others (:class:`online_models.hybrid.HybridRecommender`,
:class:`online_models.reranker.ReRanker`) keeps one :class:`~online_models.ids.IdIndex`
of items; each component numbers its items its own way. :class:`RowMaps` holds, per
component, the array ``rows`` with ``rows[r]`` = our row of the component's row ``r``
(-1 for a row the component freed). Maps grow with the components' indexes; when an
index's ``generation`` changes (rows freed or given to new ids), the rows it changed
are mapped again (:meth:`~online_models.ids.IdIndex.changed_since`), or all of them
when it no longer knows which. The prequential evaluator maps each model's rows onto
its catalogue with the same class.

>>> from online_models.base import IdIndex
>>> class M:
...     items = IdIndex()
>>> m, ours = M(), IdIndex()
>>> ours.add("x"), m.items.add("y"), m.items.add("x")
(0, 0, 1)
>>> maps = RowMaps()
>>> maps.sync({"m": m}, ours)
>>> maps.rows("m").tolist(), maps.is_identity("m")
([1, 0], False)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from online_models import registry
from online_models.base import IdIndex, ModelState

__all__ = ["RowMaps"]

_EMPTY = np.zeros(0, np.int64)
_EMPTY.flags.writeable = False


def _look_up(keys: list[str | None], items: IdIndex) -> np.ndarray:
    """Our rows of a component's ``keys`` (added to ``items``; -1 for a freed row)."""
    if None in keys:
        return np.asarray([-1 if k is None else items.add(k) for k in keys], np.int64)
    return items.add_many(keys)  # type: ignore[arg-type]  # no None here


def _our_rows(fresh: list[str | None], at: int, items: IdIndex) -> np.ndarray:
    """Our rows of a component's new ``fresh`` ids (added to ``items``; -1 for None).

    A component usually adds a batch's items in the order we did, so its new rows
    continue ours from ``at`` (after the row its last mapped row went to): one list
    comparison (by identity first) confirms that without looking each id up.
    """
    if items.ids[at:at + len(fresh)] == fresh:
        return np.arange(at, at + len(fresh), dtype=np.int64)
    return _look_up(fresh, items)


class RowMaps:
    """Per component: its item rows -> our item rows (see the module docstring)."""

    def __init__(self) -> None:
        self._rows: dict[str, np.ndarray] = {}  # a view of the first rows of _buf
        self._buf: dict[str, np.ndarray] = {}  # room to grow in place (amortized)
        self._gens: dict[str, int] = {}
        self._identity: dict[str, bool] = {}  # component rows == our rows

    def rows(self, component: str) -> np.ndarray:
        """Our row of each of ``component``'s rows (-1 where it freed one); do not modify,
        and do not keep across a :meth:`sync` (rows it frees or reuses change in place)."""
        return self._rows.get(component, _EMPTY)

    def is_identity(self, component: str) -> bool:
        """Whether ``component``'s rows are ours, in the same order (no scatter needed)."""
        return self._identity.get(component, False)

    def invalidate(self, component: str) -> None:
        """Rebuild ``component``'s map from scratch at the next :meth:`sync` (a new model)."""
        self._gens[component] = -1

    def sync(self, models: Mapping[str, Any], items: IdIndex) -> None:
        """Extend each component's map by the items it added (ours added to ``items``)."""
        for c, m in models.items():
            index: IdIndex = m.items
            old = self._rows.get(c, _EMPTY)
            start = len(old)
            ids = index.ids
            gen = self._gens.get(c, -1)
            if index.generation != gen:
                # Rows it freed or gave to new ids since: map those again (in place),
                # or all of them when its index no longer knows which.
                changed = index.changed_since(gen)
                if changed is None:
                    start = 0
                else:
                    self._remap(c, ids, {r for r in changed if r < start}, items)
                    self._gens[c] = index.generation
            if start == len(ids) and start == len(old):
                continue
            new = _our_rows(ids[start:], int(old[start - 1]) + 1 if start else 0, items)
            if start == 0:
                self.restore(c, new, index.generation)
            else:
                self._extend(c, start, new)

    def _remap(self, component: str, ids: list[str | None], rows: set[int],
               items: IdIndex) -> None:
        """Map ``rows`` of ``component`` again from its ``ids`` (-1 where freed)."""
        if not rows:
            return
        where = np.fromiter(rows, np.int64, count=len(rows))
        new = _look_up([ids[r] for r in where.tolist()], items)
        self._rows[component][where] = new
        if self._identity[component]:
            self._identity[component] = bool(np.array_equal(new, where))

    def _extend(self, component: str, start: int, new: np.ndarray) -> None:
        """Append ``new`` to the map's first ``start`` rows, in place when there is
        room; the identity check looks at the new rows only (this runs once a batch:
        a copy and a check of every row cost more than the batch's own work)."""
        buf = self._buf[component]
        end = start + len(new)
        if end > len(buf):
            grown = np.empty(max(2 * len(buf), end, 16), np.int64)
            grown[:start] = buf[:start]
            self._buf[component] = buf = grown
        buf[start:end] = new
        self._rows[component] = buf[:end]
        if self._identity[component]:
            self._identity[component] = bool(
                np.array_equal(new, np.arange(start, end, dtype=np.int64)))

    def restore(self, component: str, rows: np.ndarray, generation: int) -> None:
        """Set ``component``'s map (from a snapshot), valid for its index ``generation``."""
        rows = np.asarray(rows, np.int64).copy()
        self._buf[component] = rows
        self._rows[component] = rows
        self._gens[component] = generation
        self._identity[component] = bool(np.array_equal(rows, np.arange(len(rows))))


class BindsComponents:
    """``bind``, ``shared_components`` and the components' part of the state of a model
    that blends registry components (the hybrid, the re-ranker): it needs
    ``components``, ``component_params``, ``models``, ``_maps`` (:class:`RowMaps`),
    ``_shared`` and a ``_sync()``.
    """

    name: ClassVar[str]
    components: list[str]
    component_params: dict[str, dict[str, Any]]
    models: dict[str, Any]
    _maps: RowMaps
    _shared: set[str]

    def _sync(self) -> None:
        raise NotImplementedError

    def bind(self, models: Mapping[str, Any]) -> list[str]:
        """Blend the components found in ``models`` (by component name) instead of copies.

        A component ``c`` is bound when ``models[c]`` exists, is not this model and
        is the registry model ``c`` names (``"itemknn@short"`` binds to
        ``models["itemknn@short"]``, an item-kNN). From then on this model reads it
        and never learns it: whoever owns ``models`` learns it, after this model
        (:func:`~online_models.base.learning_order`). Components not found stay
        private. Returns the names bound.

        Raises ``ValueError`` when ``component_params`` sets a hyperparameter of a
        component to a value the given model does not have.
        """
        bound: list[str] = []
        for c in self.components:
            other = models.get(c)
            if other is None or other is self or other.name != c.split("@", 1)[0]:
                continue
            wanted = self.component_params.get(c, {})
            have = other.get_params()
            clash = {p: v for p, v in wanted.items() if p in have and have[p] != v}
            if clash:
                raise ValueError(f"{self.name} component {c!r}: the given model has "
                                 f"{have!r}, component_params ask for {clash!r}")
            if self.models.get(c) is not other:
                self.models[c] = other
                self._maps.invalidate(c)
            self._shared.add(c)
            bound.append(c)
        self._sync()
        return bound

    def shared_components(self) -> Mapping[str, Any]:
        return {c: self.models[c] for c in self.components if c in self._shared}

    def _components_state(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Add the private components' arrays (``<c>/...``) and row maps (``map/<c>``)
        to ``arrays``; return the state metadata that names them: ``components`` (each
        private one's own metadata) and ``shared`` (the bound ones, by name only: a
        snapshot holds them beside this model)."""
        comp_meta: dict[str, Any] = {}
        for c, m in self.models.items():
            if c in self._shared:
                continue
            st = m.get_state()
            comp_meta[c] = st.meta
            arrays.update({f"{c}/{k}": v for k, v in st.arrays.items()})
            arrays[f"map/{c}"] = self._maps.rows(c).copy()
        return {"components": comp_meta,
                "shared": [c for c in self.components if c in self._shared]}

    def _restore_components(self, arrays: Mapping[str, np.ndarray],
                            meta: Mapping[str, Any]) -> set[str]:
        """Restore what :meth:`_components_state` wrote; return the shared names.

        A shared component gets a placeholder until :meth:`bind` gives this model the
        real one (the snapshot loader binds every blending model to its snapshot's
        models)."""
        shared = set(meta.get("shared", ()))
        for c in self.components:
            if c in shared:
                self._maps.invalidate(c)
                continue
            prefix = f"{c}/"
            sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            self.models[c] = registry.from_state(
                ModelState(arrays=sub, meta=meta["components"][c]))
            self._maps.restore(c, arrays[f"map/{c}"], self.models[c].items.generation)
        return shared
