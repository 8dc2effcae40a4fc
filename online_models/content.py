"""Item content: hashed token features and a content-kNN model.

Items are opaque ids to the collaborative models, so a product nobody has clicked
yet is invisible to them. :class:`ItemFeatures` turns each item's text (a title, a
description, genres) into a sparse bag of hashed tokens: every token is hashed
with CRC-32 (stable across processes, unlike Python's salted ``hash``) into one of
``n_buckets`` buckets and weighted by TF-IDF over the items known so far, each
item's vector L2-normalised. No model weights are downloaded: the features are
the text itself. The bucket space is what the neural models embed
(:mod:`online_models.seqnn` adds a learned vector per bucket to each item's id
embedding) and what :class:`ContentKNN` compares.

Where features come from:

* :func:`load_item_features` reads a file through a preset: MovieLens
  ``movies.csv`` (title words, ``genre:*`` and ``decade:*`` tokens) or the Online
  Retail CSV (the ``Description`` of each ``StockCode``);
* :meth:`ItemFeatures.set_text` adds or replaces one item's text, as the
  ``item_features`` topic (compacted, keyed by item id; :mod:`stream.item_features`)
  delivers it to the trainer and the server.

Models that use content take the features through ``set_item_features(features)``
and keep them in their exported state, so a snapshot carries its features.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from online_models.base import (
    Batch,
    IdIndex,
    ModelState,
    OnlineModel,
    grow_rows,
    pack_strings,
    unpack_strings,
)

__all__ = ["ContentKNN", "ItemFeatures", "load_item_features", "tokenize"]

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    (
        "a", "an", "and", "as", "at", "by", "for", "from", "in", "of", "on", "or", "the",
        "to", "with", "set", "pack", "box",
    )
)


def tokenize(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters and digits), stop words and 1-char words dropped.

    >>> tokenize("WHITE HANGING HEART T-LIGHT HOLDER, set of 3")
    ['white', 'hanging', 'heart', 'light', 'holder']
    """
    return [w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in _STOP]


def _bucket(token: str, n_buckets: int) -> int:
    return zlib.crc32(token.encode("utf-8")) % n_buckets


class ItemFeatures:
    """Hashed, TF-IDF weighted bag-of-token features per item id.

    Parameters
    ----------
    n_buckets
        Size of the hashed token space (the width of a dense feature vector).
    max_tokens
        Most distinct buckets kept per item (the rarest tokens win when an item has
        more).

    Examples
    --------
    >>> f = ItemFeatures(n_buckets=64)
    >>> f.set_text("m1", ["toy", "story", "genre:animation"])
    >>> f.set_text("m2", "Toy soldiers")
    >>> "m1" in f, len(f), f.similarity("m1", "m2") > 0, f.similarity("m1", "zz")
    (True, 2, True, 0.0)
    """

    def __init__(self, n_buckets: int = 1 << 14, max_tokens: int = 24) -> None:
        self.n_buckets = n_buckets
        self.max_tokens = max_tokens
        self._index = IdIndex()
        self._buckets: list[np.ndarray] = []  # per row: distinct bucket ids (int64)
        self._tf: list[np.ndarray] = []  # per row: token counts in those buckets
        self._df = np.zeros(n_buckets, np.float64)
        #: bumped at every change; models compare it to refresh cached rows
        self.version = 0
        #: row -> (version, read-only weights): TF-IDF weights depend on every item's
        #: tokens, so an entry is good for the version it was computed at only
        self._weights_cache: dict[int, tuple[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    @property
    def ids(self) -> list[str]:
        return [i for i in self._index.ids if i is not None]

    # ------------------------------------------------------------------ building
    def set_text(self, item: str, text: str | Sequence[str]) -> None:
        """Set ``item``'s content: free text (tokenised) or ready-made tokens."""
        tokens = tokenize(text) if isinstance(text, str) else [t for t in text if t]
        buckets = np.asarray([_bucket(t, self.n_buckets) for t in tokens], np.int64)
        uniq, counts = np.unique(buckets, return_counts=True)
        if len(uniq) > self.max_tokens:
            # Keep the rarest buckets (most informative) among the item's tokens.
            keep = np.argsort(self._df[uniq], kind="stable")[: self.max_tokens]
            keep.sort()
            uniq, counts = uniq[keep], counts[keep]
        row = self._index.get(item)
        if row >= 0:
            self._df[self._buckets[row]] -= 1.0
            self._buckets[row], self._tf[row] = uniq, counts.astype(np.float64)
        else:
            row = self._index.add(item)
            self._buckets.append(uniq)
            self._tf.append(counts.astype(np.float64))
        self._df[uniq] += 1.0
        self.version += 1

    def update(self, texts: Mapping[str, str | Sequence[str]]) -> None:
        for item, text in texts.items():
            self.set_text(item, text)

    def merge_missing(self, other: ItemFeatures) -> int:
        """Copy the content of ``other``'s items that this object lacks; returns how many.

        Items present here keep their content (this object is the newer source).
        Raises ``ValueError`` when the two hash into different bucket spaces.

        >>> a = ItemFeatures.from_texts({"x": "red car"}, n_buckets=64)
        >>> a.merge_missing(ItemFeatures.from_texts({"x": "blue", "y": "red bus"}, n_buckets=64))
        1
        >>> a.similarity("x", "y") > 0, sorted(a.ids)
        (True, ['x', 'y'])
        """
        if other.n_buckets != self.n_buckets:
            raise ValueError(
                f"bucket spaces differ: {other.n_buckets} vs {self.n_buckets} buckets")
        added = 0
        for row, item in enumerate(other._index.ids):
            if item is None or item in self._index:
                continue
            self._index.add(item)
            self._buckets.append(other._buckets[row].copy())
            self._tf.append(other._tf[row].copy())
            self._df[other._buckets[row]] += 1.0
            added += 1
        if added:
            self.version += 1
        return added

    @classmethod
    def from_texts(
        cls, texts: Mapping[str, str | Sequence[str]], n_buckets: int = 1 << 14,
        max_tokens: int = 24,
    ) -> ItemFeatures:
        f = cls(n_buckets=n_buckets, max_tokens=max_tokens)
        f.update(texts)
        return f

    # ------------------------------------------------------------------ reading
    def _weights(self, row: int) -> np.ndarray:
        """The row's L2-normalised TF-IDF weights (cached per version; read-only)."""
        version = self.version
        hit = self._weights_cache.get(row)
        if hit is not None and hit[0] == version:
            return hit[1]
        n = max(len(self._index), 1)
        b = self._buckets[row]
        w = (1.0 + np.log(self._tf[row])) * (np.log((1.0 + n) / (1.0 + self._df[b])) + 1.0)
        norm = float(np.sqrt((w * w).sum()))
        if norm > 0:
            w = w / norm
        w.flags.writeable = False
        self._weights_cache[row] = (version, w)
        return w

    def tokens_of(self, item: str) -> tuple[np.ndarray, np.ndarray]:
        """``(buckets, weights)`` of ``item`` (empty arrays when it has no content); the
        weights are shared and read-only."""
        row = self._index.get(item)
        if row < 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        return self._buckets[row], self._weights(row)

    def profile(self, items: Sequence[str], decay: float) -> np.ndarray:
        """A dense ``n_buckets`` content profile of ``items`` (oldest first): the last
        item's token weights, plus ``decay`` times the one before, and so on."""
        prof = np.zeros(self.n_buckets, np.float64)
        w = 1.0
        for item in reversed(items):
            b, v = self.tokens_of(item)
            prof[b] += w * v  # an item's buckets are distinct
            w *= decay
        return prof

    def padded(
        self, items: Sequence[str | None], width: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Buckets and weights of ``items`` as ``(n, width)`` arrays, zero-padded.

        ``width`` defaults to the longest of these items' token lists (at least 1);
        padding (and every slot of an item without content) has bucket 0, weight 0.
        Raises ``ValueError`` when an item has more tokens than a given ``width``.
        """
        toks = [self.tokens_of(i) if i is not None else None for i in items]
        longest = max((len(t[0]) for t in toks if t is not None), default=0)
        if width is None:
            width = max(longest, 1)
        elif longest > width:
            raise ValueError(f"an item has {longest} tokens, more than width {width}")
        idx = np.zeros((len(items), width), np.int64)
        w = np.zeros((len(items), width), np.float32)
        for n, t in enumerate(toks):
            if t is not None:
                idx[n, : len(t[0])] = t[0]
                w[n, : len(t[0])] = t[1]
        return idx, w

    def matrix(self, items: Sequence[str | None]) -> sp.csr_matrix:
        """Sparse ``(len(items), n_buckets)`` matrix of L2-normalised content vectors."""
        indptr = [0]
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        for item in items:
            b, v = self.tokens_of(item) if item is not None else (np.zeros(0, np.int64),
                                                                    np.zeros(0))
            cols.append(b)
            vals.append(v)
            indptr.append(indptr[-1] + len(b))
        return sp.csr_matrix(
            (
                np.concatenate(vals) if vals else np.zeros(0),
                np.concatenate(cols) if cols else np.zeros(0, np.int64),
                np.asarray(indptr, np.int64),
            ),
            shape=(len(items), self.n_buckets),
        )

    def similarity(self, a: str, b: str) -> float:
        """Cosine of two items' content vectors (0.0 when either has none)."""
        ba, wa = self.tokens_of(a)
        bb, wb = self.tokens_of(b)
        _, ia, ib = np.intersect1d(ba, bb, return_indices=True)
        return float((wa[ia] * wb[ib]).sum())

    # ------------------------------------------------------------------ state
    def to_arrays(self, prefix: str = "features") -> dict[str, np.ndarray]:
        lengths = np.asarray([len(b) for b in self._buckets], np.int64)
        return {
            **self._index.to_arrays(f"{prefix}.ids"),
            f"{prefix}.lengths": lengths,
            f"{prefix}.buckets": (np.concatenate(self._buckets) if self._buckets
                                  else np.zeros(0, np.int64)),
            f"{prefix}.tf": np.concatenate(self._tf) if self._tf else np.zeros(0),
            f"{prefix}.shape": np.asarray([self.n_buckets, self.max_tokens], np.int64),
        }

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray], prefix: str = "features") -> ItemFeatures:
        n_buckets, max_tokens = (int(x) for x in a[f"{prefix}.shape"])
        f = cls(n_buckets=n_buckets, max_tokens=max_tokens)
        f._index = IdIndex.from_arrays(a, f"{prefix}.ids")
        ends = np.cumsum(np.asarray(a[f"{prefix}.lengths"], np.int64))
        starts = ends - np.asarray(a[f"{prefix}.lengths"], np.int64)
        buckets = np.asarray(a[f"{prefix}.buckets"], np.int64)
        tf = np.asarray(a[f"{prefix}.tf"], np.float64)
        f._buckets = [buckets[s:e].copy() for s, e in zip(starts, ends, strict=True)]
        f._tf = [tf[s:e].copy() for s, e in zip(starts, ends, strict=True)]
        for row, key in enumerate(f._index.ids):
            if key is not None:
                f._df[f._buckets[row]] += 1.0
        return f


def load_item_features(
    path: str | Path, preset: str | None = None, n_buckets: int = 1 << 14,
    max_tokens: int = 24,
) -> ItemFeatures:
    """Item features from a file through a preset (``movielens`` or ``online-retail``).

    ``movielens``: ``movies.csv`` (``movieId,title,genres``); a path to
    ``ratings.csv`` or to the data directory finds ``movies.csv`` beside it.
    ``online-retail``: the Online Retail CSV (``StockCode`` -> ``Description``).
    Without a preset it is guessed from the header.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "movies.csv")
    >>> _ = open(p, "w").write("movieId,title,genres\\n1,Toy Story (1995),Animation|Comedy\\n")
    >>> f = load_item_features(p, "movielens"); len(f), "1" in f
    (1, True)
    """
    from online_models.item_texts import read_item_texts

    texts = read_item_texts(path, preset)
    return ItemFeatures.from_texts(texts, n_buckets=n_buckets, max_tokens=max_tokens)


# --------------------------------------------------------------------------- content kNN


class ContentKNN(OnlineModel):
    """Items ranked by content similarity to the user's recent items.

    The user's profile is the recency-weighted sum of the content vectors of their
    ``query_items`` most recent items (factor ``recency_decay`` per step back); every
    item is scored by its cosine with that profile, plus a sliver of decayed
    popularity that breaks ties (and ranks items for a user with no usable history).

    Parameters
    ----------
    query_items
        Most recent history items in the profile.
    recency_decay
        Weight factor per step back in the history.
    popularity_tiebreak
        Weight of normalised popularity added to every score.
    catalog_from_features
        Give every item with features a row (and a score) before its first click;
        ``False`` keeps the catalogue to items seen in the stream, as every other
        model's, which keeps prequential evaluations comparable.

    Call :meth:`set_item_features` before use; without features the model is a
    popularity ranking.

    Examples
    --------
    >>> m = ContentKNN()
    >>> m.set_item_features(ItemFeatures.from_texts(
    ...     {"x": "red wooden train", "y": "red wooden car", "z": "blue glass vase"}))
    >>> m.learn(Batch.from_columns(["u", "u", "v"], ["x", "z", "y"], None, [1, 2, 3]))
    >>> [i for i, _ in m.recommend("w", 1, history=["x"], exclude=["x"])]
    ['y']
    """

    name: ClassVar[str] = "content-knn"

    def __init__(
        self,
        query_items: int = 10,
        recency_decay: float = 0.8,
        popularity_tiebreak: float = 1e-3,
        catalog_from_features: bool = False,
    ) -> None:
        self.query_items = query_items
        self.recency_decay = recency_decay
        self.popularity_tiebreak = popularity_tiebreak
        self.catalog_from_features = catalog_from_features
        self.users = IdIndex()
        self.items = IdIndex()
        self.features: ItemFeatures | None = None
        self._count = np.zeros(0, np.float64)
        self._last: dict[str, list[str]] = {}
        self._matrix: sp.csr_matrix | None = None
        self._matrix_key: tuple[int, int, int] = (-1, -1, -1)
        self._featured = -1  # features.version last added to the catalogue

    def set_item_features(self, features: ItemFeatures) -> None:
        """Use ``features`` (kept by reference; later ``set_text`` calls are seen)."""
        self.features = features
        self._add_featured()

    def _add_featured(self) -> None:
        f = self.features
        if self.catalog_from_features and f is not None and f.version != self._featured:
            self.items.add_many(f.ids)
            self._count = grow_rows(self._count, self.items.capacity)
            self._featured = f.version

    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users``: their rows and their latest items."""
        for u in users:
            self._last.pop(u, None)
        super().forget_users(users)

    def learn(self, batch: Batch) -> None:
        if len(batch) == 0:
            return
        self.users.add_many(batch.users)
        rows = self.items.add_many(batch.items)
        self._count = grow_rows(self._count, self.items.capacity)
        np.add.at(self._count, rows, 1.0)
        for u, i in zip(batch.users.tolist(), batch.items.tolist(), strict=True):
            q = self._last.setdefault(u, [])
            if i in q:
                q.remove(i)
            q.append(i)
            del q[: -self.query_items]
        self._add_featured()

    def _content_matrix(self) -> sp.csr_matrix | None:
        if self.features is None:
            return None
        key = (self.items.capacity, self.items.generation, self.features.version)
        if self._matrix is None or key != self._matrix_key:
            self._matrix = self.features.matrix(self.items.ids)
            self._matrix_key = key
        return self._matrix

    def _profile(self, items: Sequence[str]) -> np.ndarray | None:
        if self.features is None or not items:
            return None
        prof = self.features.profile(list(items)[-self.query_items:], self.recency_decay)
        return prof if prof.any() else None

    def _popularity(self) -> np.ndarray:
        pop = np.log1p(self._count[: self.items.capacity])
        top = pop.max() if len(pop) else 0.0
        return pop / top if top > 0 else pop

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        self._add_featured()  # items published since the last batch get rows too
        n = self.items.capacity
        ctx = list(history) if history else self._last.get(user, [])
        prof = self._profile(ctx)
        scores = self.popularity_tiebreak * self._popularity()
        mat = self._content_matrix()
        if prof is not None and mat is not None and n:
            scores = scores + mat @ prof
        return self._finish_scores(scores[:n])

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        """Items by content cosine; works for an item with features but no clicks."""
        self._add_featured()
        mat = self._content_matrix()
        if mat is None or self.features is None or item not in self.features:
            return []
        prof = self._profile([item])
        if prof is None:
            return []
        sims = np.asarray(mat @ prof, np.float64)
        row = self.items.get(item)
        if row < 0:
            sims = np.concatenate([sims, [0.0]])
            row = len(sims) - 1
        live = self.items.live_mask()
        sims[: len(live)][~live] = 0.0
        out = self._similar_from(row, sims, k)
        return [(i, s) for i, s in out if i is not None]

    def content_similarity(self, history: Sequence[str]) -> np.ndarray:
        """Cosine of every item row with the profile of ``history`` (zeros without one)."""
        n = self.items.capacity
        prof = self._profile(history)
        mat = self._content_matrix()
        if prof is None or mat is None:
            return np.zeros(n, np.float64)
        return np.asarray(mat @ prof, np.float64)[:n]

    # ------------------------------------------------------------------ state
    def get_state(self) -> ModelState:
        users = list(self._last)
        flat = [i for u in users for i in self._last[u]]
        ud, uo = pack_strings(users)
        idata, ioff = pack_strings(flat)
        arrays: dict[str, np.ndarray] = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            "count": self._count.copy(),
            "last.users.data": ud,
            "last.users.offsets": uo,
            "last.items.data": idata,
            "last.items.offsets": ioff,
            "last.lengths": np.asarray([len(self._last[u]) for u in users], np.int64),
        }
        if self.features is not None:
            arrays.update(self.features.to_arrays("features"))
        meta: dict[str, Any] = {
            "class": self.name,
            "params": self.get_params(),
            "has_features": self.features is not None,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        a = state.arrays
        m = cls(**state.meta["params"])
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        m._count = np.array(a["count"], np.float64)
        users = unpack_strings(a["last.users.data"], a["last.users.offsets"])
        items = unpack_strings(a["last.items.data"], a["last.items.offsets"])
        pos = 0
        for u, n in zip(users, np.asarray(a["last.lengths"]).tolist(), strict=True):
            m._last[u] = items[pos : pos + n]
            pos += n
        if state.meta.get("has_features"):
            m.features = ItemFeatures.from_arrays(a, "features")
        return m

