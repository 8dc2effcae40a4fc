"""Item content in the server: answers for items the loaded models do not know yet.

A snapshot carries the item features its content models learned with (each model
exports its :class:`~online_models.content.ItemFeatures` with its state). The
server keeps its own :class:`ContentIndex` beside the snapshot: the content of the
``item_features`` file and topic it is configured with (newest), plus -- merged in
at every snapshot swap -- whatever items the snapshot's models carry that it lacks.
The models in the snapshot are never changed by it.

``GET /v1/items/{id}/similar`` answers from this index when the model asked for
does not know the item (a product published with content but not clicked yet), and
when asked for ``model=content``: cosine of the items' hashed-token vectors over
every item with content, clicked or not -- so a new item is listed beside the
items it resembles before its first click.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from online_models.base import OnlineModel
from online_models.content import ItemFeatures

__all__ = ["CONTENT_MODEL", "ContentIndex", "snapshot_features"]

#: the ``model`` name of answers that come from item content
CONTENT_MODEL = "content"


def snapshot_features(models: Mapping[str, OnlineModel]) -> list[ItemFeatures]:
    """Item features held by a snapshot's models (and a hybrid's private components)."""
    found: list[ItemFeatures] = []
    seen: set[int] = set()
    todo: list[object] = list(models.values())
    while todo:
        m = todo.pop(0)
        f = getattr(m, "features", None)
        if isinstance(f, ItemFeatures) and id(f) not in seen:
            seen.add(id(f))
            found.append(f)
        inner = getattr(m, "models", None)
        if isinstance(inner, Mapping):
            todo.extend(inner.values())
    return found


class ContentIndex:
    """Thread-safe item features plus a cached sparse matrix of all featured items.

    Examples
    --------
    >>> ix = ContentIndex(ItemFeatures(n_buckets=256))
    >>> ix.update({"a": "red wooden toy train", "b": "blue glass vase",
    ...            "n": "red wooden toy train engine"})
    3
    >>> [i for i, _ in ix.similar("n", 2)]
    ['a']
    >>> ix.similar("zz", 2) is None, "a" in ix, len(ix)
    (True, True, 3)
    """

    def __init__(self, features: ItemFeatures | None = None) -> None:
        self.features = features if features is not None else ItemFeatures()
        # ``_lock`` guards ``features`` and the cached matrix, held briefly;
        # ``_build_lock`` lets one thread at a time rebuild the matrix, without ``_lock``.
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._ids: list[str] = []
        self._matrix: sp.csr_matrix | None = None
        self._version = -1

    def __len__(self) -> int:
        return len(self.features)

    def __contains__(self, item: object) -> bool:
        with self._lock:
            return len(self.features.tokens_of(str(item))[0]) > 0

    def update(self, texts: Mapping[str, str | Sequence[str]]) -> int:
        """Set items' content (text or tokens; empty clears it). Returns the count."""
        with self._lock:
            self.features.update(texts)
        return len(texts)

    def merge(self, sources: Iterable[ItemFeatures]) -> int:
        """Add the items of ``sources`` this index lacks (a snapshot's, at a swap)."""
        added = 0
        with self._lock:
            for f in sources:
                if f.n_buckets == self.features.n_buckets:
                    added += self.features.merge_missing(f)
        return added

    def _fresh(self) -> tuple[list[str], sp.csr_matrix] | None:
        """The cached ids and matrix if they are of the current features (hold ``_lock``)."""
        if self._matrix is None or self._version != self.features.version:
            return None
        return self._ids, self._matrix

    def _rows(self) -> tuple[list[str], sp.csr_matrix]:
        """Every featured item's id and content vector, rebuilt when the content changed.

        The rebuild (most of a second for 100k items) works on a private copy of the
        features taken under ``_lock`` (``to_arrays``: about a tenth of the build), so
        writers and :meth:`__contains__` wait for the copy only. A rebuild raced by
        an update answers from the content as it was when the copy was taken; the
        next call rebuilds.
        """
        with self._lock:
            cached = self._fresh()
        if cached is not None:
            return cached
        with self._build_lock:  # one rebuild at a time; the others then find it cached
            with self._lock:
                cached = self._fresh()
                if cached is not None:
                    return cached
                version, arrays = self.features.version, self.features.to_arrays()
            copy = ItemFeatures.from_arrays(arrays)
            ids = copy.ids
            mat = copy.matrix(ids)
            with self._lock:
                if version > self._version:
                    self._ids, self._matrix, self._version = ids, mat, version
        return ids, mat

    def similar(self, item: str, k: int) -> list[tuple[str, float]] | None:
        """The ``k`` items whose content is closest to ``item``'s (positive cosine only).

        None when ``item`` has no content. Slow when the content changed since the
        last call (the matrix is rebuilt): call it off the event loop.
        """
        with self._lock:
            f = self.features
            buckets, weights = f.tokens_of(item)
        if len(buckets) == 0:
            return None
        ids, mat = self._rows()
        query = np.zeros(f.n_buckets, np.float64)
        query[buckets] = weights
        sims = np.asarray(mat @ query, np.float64)
        order = np.argsort(-sims, kind="stable")
        out: list[tuple[str, float]] = []
        for row in order[: k + 1].tolist():
            if sims[row] <= 0.0:
                break
            if ids[row] != item:
                out.append((ids[row], float(sims[row])))
        return out[:k]
