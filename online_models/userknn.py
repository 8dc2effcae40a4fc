"""Incremental user-based collaborative filtering with bounded work and event-time decay.

Two bounded indexes are kept up to date event by event:

* per user, the ``max_user_items`` most recent distinct items with their last event time
  and accumulated weight;
* per item (the inverted index), the ``max_users_per_item`` users who touched it most
  recently.

A query walks the inverted index from the user's items to candidate neighbours (at most
``max_candidates``, the ones sharing the most decayed weight), keeps the
``n_neighbours`` most similar by decayed cosine, and scores each neighbour's items by
``similarity × decayed weight``. An update costs O(1) dict work per event, a query at
most ``max_user_items × max_users_per_item`` index reads plus
``n_neighbours × max_user_items`` score updates, whatever the traffic.

Decay runs in event time relative to the model's watermark (latest event time seen):
an interaction ``Δt`` seconds old weighs ``0.5 ** (Δt / half_life_seconds)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, ClassVar, Self

import numpy as np

from online_models.base import Batch, IdIndex, ModelState, OnlineModel, grow_rows

__all__ = ["UserKNN"]


class UserKNN(OnlineModel):
    """User-kNN over recent items, neighbours found through a bounded inverted index.

    A user without stored items (unknown) but with a ``history`` is matched through the
    history items, so a brand-new user is personalised from live clicks; with neither,
    items are ranked by decayed popularity. Neighbour scores carry a tiny popularity
    term so that ties break towards popular items.

    Parameters
    ----------
    n_neighbours
        Neighbours whose items are scored.
    max_candidates
        Candidate neighbours whose similarity is computed per query.
    max_users_per_item
        Recent users kept per item in the inverted index.
    max_user_items
        Recent distinct items kept per user.
    half_life_seconds
        Event-time half-life of an interaction's weight; ``None`` disables decay.

    Examples
    --------
    >>> m = UserKNN()
    >>> m.learn(Batch.from_columns(["a", "a", "b", "b"], ["x", "y", "x", "z"]))
    >>> [item for item, _ in m.recommend("a", 2, exclude=["x", "y"])]
    ['z']
    """

    name: ClassVar[str] = "userknn"
    adaptable: ClassVar[Mapping[str, str]] = {"half_life_seconds": "half_life"}

    def __init__(
        self,
        n_neighbours: int = 30,
        max_candidates: int = 50,
        max_users_per_item: int = 20,
        max_user_items: int = 50,
        half_life_seconds: float | None = 7 * 86_400.0,
    ) -> None:
        self.n_neighbours = n_neighbours
        self.max_candidates = max_candidates
        self.max_users_per_item = max_users_per_item
        self.max_user_items = max_user_items
        self.half_life_seconds = half_life_seconds

        self.users = IdIndex()
        self.items = IdIndex()
        # user row -> {item row: entry}, least recent first (plain dicts keep insertion
        # order; an OrderedDict's iteration looks every key up again, which made reading
        # neighbours' items most of a query's time). An entry is the pair (last time,
        # accumulated weight) held as one complex number, ``complex(time, weight)``
        # (read back as ``.real`` and ``.imag``, both exact float64s): one small object
        # instead of a list and two floats, so a snapshot or a batched query flattens a
        # table of them in one C-level pass (``np.fromiter`` into complex128), about 10x
        # faster than lists of two floats.
        self._user_items: dict[int, dict[int, complex]] = {}
        # item row -> {user row: last time}, least recent first
        self._item_users: dict[int, dict[int, float]] = {}
        # Decayed popularity, expressed at the watermark.
        self._pop = np.zeros(0, np.float64)
        self._watermark = -np.inf
        # The two tables flattened at the last get_state, and the rows changed since:
        # a snapshot flattens only those again (a trainer copies the state every few
        # seconds, and flattening every pair was most of its snapshot pause). Costs
        # 24-32 bytes per stored pair once get_state has been called, far less than the
        # dicts' own objects; a model that is never snapshotted tracks nothing.
        self._ui_flat = _FlatCache(np.complex128)
        self._iu_flat = _FlatCache(np.float64)

    # ------------------------------------------------------------------ learning
    def _decay(self, t: np.ndarray) -> np.ndarray:
        if self.half_life_seconds is None or not np.isfinite(self._watermark):
            return np.ones_like(t)
        return 0.5 ** ((self._watermark - t) / self.half_life_seconds)

    def _decayer(self) -> Callable[[float], float]:
        """Scalar decay to the watermark, as a plain-float function for the query loops."""
        hl, wm = self.half_life_seconds, self._watermark
        if hl is None or not np.isfinite(wm):
            return lambda t: 1.0
        return lambda t: 0.5 ** ((wm - t) / hl)

    def learn(self, batch: Batch) -> None:
        if len(batch) == 0:
            return
        u_rows = self.users.add_many(batch.users)
        i_rows = self.items.add_many(batch.items)
        ts, ws = batch.timestamps, batch.weights.astype(np.float64)

        new_wm = max(self._watermark, float(ts.max()))
        if np.isfinite(self._watermark) and self.half_life_seconds is not None:
            self._pop *= 0.5 ** ((new_wm - self._watermark) / self.half_life_seconds)
        self._watermark = new_wm
        self._pop = grow_rows(self._pop, self.items.capacity)
        np.add.at(self._pop, i_rows, ws * self._decay(ts))

        max_ui, max_iu = self.max_user_items, self.max_users_per_item
        user_items, item_users = self._user_items, self._item_users
        hl = self.half_life_seconds
        u_list, i_list = u_rows.tolist(), i_rows.tolist()
        self._ui_flat.touch(u_list)
        self._iu_flat.touch(i_list)
        evicted = self._iu_flat.touch_one
        for u, i, t, w in zip(u_list, i_list, ts.tolist(), ws.tolist(), strict=True):
            items = user_items.get(u)
            if items is None:
                items = user_items[u] = {}
            entry = items.pop(i, None)
            items[i] = complex(t, w) if entry is None else _merged(entry, t, w, hl)
            if len(items) > max_ui:
                gone = next(iter(items))
                del items[gone]
                evicted(gone)
                users_of_gone = item_users.get(gone)
                if users_of_gone is not None:
                    users_of_gone.pop(u, None)
            users = item_users.get(i)
            if users is None:
                users = item_users[i] = {}
            users.pop(u, None)
            users[u] = t
            if len(users) > max_iu:
                del users[next(iter(users))]

    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users``: their item lists, their places in the items' user lists and
        their rows (freed for reuse)."""
        user_items, item_users = self._user_items, self._item_users
        for u in self.users.remove_many(users):
            self._ui_flat.touch_one(u)
            for i in user_items.pop(u, {}):
                self._iu_flat.touch_one(i)
                of_item = item_users.get(i)
                if of_item is not None:
                    of_item.pop(u, None)

    # ------------------------------------------------------------------ scoring
    def _profile(self, user: str, history: Sequence[str]) -> tuple[int, dict[int, float]]:
        """The query user's row (-1 if none) and item row -> decayed weight."""
        row = self.users.get(user)
        stored = self._user_items.get(row) if row >= 0 else None
        if stored:
            dec = self._decayer()
            return row, {i: e.imag * dec(e.real) for i, e in stored.items()}
        rows = self.items.rows(list(history)[-self.max_user_items :])
        return row, {int(i): 1.0 for i in rows.tolist() if i >= 0}

    def _neighbour_weights(self, u: int, profile: dict[int, float]) -> list[tuple[int, float]]:
        if not profile:
            return []
        overlap: dict[int, float] = {}
        for i, wi in profile.items():
            for v in self._item_users.get(i, ()):
                if v != u:
                    overlap[v] = overlap.get(v, 0.0) + wi
        if not overlap:
            return []
        cands = sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0]))[: self.max_candidates]
        norm_u = float(np.sqrt(sum(w * w for w in profile.values())))
        dec = self._decayer()
        sims: list[tuple[int, float]] = []
        for v, _ in cands:
            v_items = self._user_items[v]
            dot, norm_v = 0.0, 0.0
            for i, e in v_items.items():
                wv = e.imag * dec(e.real)
                norm_v += wv * wv
                wu = profile.get(i)
                if wu is not None:
                    dot += wu * wv
            if dot > 0:
                sims.append((v, dot / (norm_u * np.sqrt(norm_v) + 1e-12)))
        sims.sort(key=lambda kv: (-kv[1], kv[0]))
        return sims[: self.n_neighbours]

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        n = self.items.capacity
        pop = self._pop[:n]
        tiebreak = (pop / pop.max()).astype(np.float32) if n and pop.max() > 0 else None
        u, profile = self._profile(user, history)
        neigh = self._neighbour_weights(u, profile)
        if not neigh:
            return (np.log1p(pop)).astype(np.float32)
        scores = np.zeros(n, np.float64)
        dec = self._decayer()
        for v, sim in neigh:
            for i, e in self._user_items[v].items():
                scores[i] += sim * e.imag * dec(e.real)
        out = scores.astype(np.float32)
        if tiebreak is not None:
            out += 1e-6 * tiebreak
        return out

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """:meth:`score_all` of every query, the index walks done as array gathers.

        Every sum runs in the order the per-query loops use, so rows equal
        ``score_all`` bit for bit.
        """
        if len(users) != len(histories):
            raise ValueError("score_many needs one history per user")
        n_items = self.items.capacity
        n = len(users)
        pop = self._pop[:n_items]
        tiebreak = (pop / pop.max()).astype(np.float32) if n_items and pop.max() > 0 else None
        # 1. Profiles, in the per-query order.
        owners: list[int] = []
        p_items: list[int] = []
        p_w: list[float] = []
        u_rows = np.empty(n, np.int64)
        for r, (user, hist) in enumerate(zip(users, histories, strict=True)):
            u_rows[r], profile = self._profile(user, hist)
            owners.extend([r] * len(profile))
            p_items.extend(profile)
            p_w.extend(profile.values())
        p_owner = np.asarray(owners, np.int64)
        p_item = np.asarray(p_items, np.int64)
        pw = np.asarray(p_w, np.float64)
        found = self._neighbours_many(n, u_rows, p_owner, p_item, pw)
        out = np.empty((n, n_items), np.float32)
        fallback = np.log1p(pop).astype(np.float32)
        has = np.zeros(n, bool)
        if found is not None:
            (nb_owner, nb_user, nb_sim), table = found
            has[nb_owner] = True
            ptr, items, weights, dec = table.gather(nb_user)
            lengths = np.diff(ptr)
            own = np.repeat(nb_owner, lengths)
            # ``sim * w * dec(t)``, left to right, as the loop computes it.
            vals = np.repeat(nb_sim, lengths) * weights * dec
            flat = np.bincount(own * n_items + items, weights=vals, minlength=n * n_items)
            scores = flat[: n * n_items].reshape(n, n_items).astype(np.float32)
            if tiebreak is not None:
                scores += 1e-6 * tiebreak
            out[has] = scores[has]
        out[~has] = fallback
        return out

    def _stored(self, rows: np.ndarray) -> _Stored:
        """The stored items of the distinct sorted user ``rows``, read from the
        per-user dicts once, with each entry's decay to the watermark."""
        items: list[int] = []
        tw: list[complex] = []  # the entries: time + 1j * weight
        lengths = np.empty(len(rows), np.int64)
        get = self._user_items.get
        for j, v in enumerate(rows.tolist()):
            stored = get(v)
            if stored is None:
                lengths[j] = 0
                continue
            lengths[j] = len(stored)
            items.extend(stored)
            tw.extend(stored.values())
        ptr = np.concatenate(([0], np.cumsum(lengths)))
        pairs = np.fromiter(tw, np.complex128, count=len(tw))
        return _Stored(rows, ptr, np.asarray(items, np.int64), pairs.imag.copy(),
                       self._decay(pairs.real.copy()))

    def _neighbours_many(
        self, n: int, u_rows: np.ndarray, p_owner: np.ndarray, p_item: np.ndarray, pw: np.ndarray
    ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], _Stored] | None:
        """Every query's neighbours (owner, user row, similarity), best first per owner,
        and the stored items of the candidates they were chosen from."""
        if len(p_item) == 0:
            return None
        # 2. Candidates: users sharing profile items, overlap summed in profile order.
        # Each distinct profile item's users read once, then gathered per entry.
        uniq, inv = np.unique(p_item, return_inverse=True)
        lists = [list(self._item_users.get(i, ())) for i in uniq.tolist()]
        u_len = np.fromiter(map(len, lists), np.int64, count=len(lists))
        u_flat = np.fromiter((v for lst in lists for v in lst), np.int64, count=int(u_len.sum()))
        u_ptr = np.concatenate(([0], np.cumsum(u_len)))
        lengths = u_len[inv]
        if lengths.sum() == 0:
            return None
        ptr = np.concatenate(([0], np.cumsum(lengths)))
        cand = u_flat[np.repeat(u_ptr[:-1][inv] - ptr[:-1], lengths) + np.arange(int(ptr[-1]))]
        c_owner = np.repeat(p_owner, lengths)
        c_w = np.repeat(pw, lengths)
        keep = cand != u_rows[c_owner]
        cand, c_owner, c_w = cand[keep], c_owner[keep], c_w[keep]
        if len(cand) == 0:
            return None
        group, g_owner, g_user = _groups(c_owner, cand)
        overlap = np.bincount(group, weights=c_w)
        # Per owner: the max_candidates largest overlaps (ties: lower user row first).
        order = np.lexsort((g_user, -overlap, g_owner))
        order = order[_rank_in_group(g_owner[order]) < self.max_candidates]
        k_owner, k_user = g_owner[order], g_user[order]
        # 3. Cosine of each candidate's decayed vector with its query's profile.
        table = self._stored(np.unique(k_user))
        ptr, items, weights, dec = table.gather(k_user)
        wv = weights * dec
        pair = np.repeat(np.arange(len(k_user)), np.diff(ptr))
        # The query's weight of each candidate entry's item (0 outside its profile),
        # looked up in a dense (query, distinct profile item) table.
        slot = np.full(max(1, self.items.capacity), len(uniq), np.int64)
        slot[uniq] = np.arange(len(uniq))
        table_w = np.zeros((n, len(uniq) + 1))  # the last column: not a profile item
        table_w[p_owner, inv] = pw
        wu = table_w[k_owner[pair], slot[items]]
        dot = np.bincount(pair, weights=wu * wv, minlength=len(k_user))
        norm_v = np.bincount(pair, weights=wv * wv, minlength=len(k_user))
        norm_u = np.sqrt(np.bincount(p_owner, weights=pw * pw, minlength=n))
        sim = dot / (norm_u[k_owner] * np.sqrt(norm_v) + 1e-12)
        pos = dot > 0
        k_owner, k_user, sim = k_owner[pos], k_user[pos], sim[pos]
        if len(sim) == 0:
            return None
        order = np.lexsort((k_user, -sim, k_owner))
        order = order[_rank_in_group(k_owner[order]) < self.n_neighbours]
        return (k_owner[order], k_user[order], sim[order]), table

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        """Items co-occurring with ``item`` among its recent users, by decayed weight."""
        row = self.items.get(item)
        if row < 0:
            return []
        co: dict[int, float] = {}
        dec = self._decayer()
        for v in self._item_users.get(row, ()):
            for i, e in self._user_items[v].items():
                if i != row:
                    co[i] = co.get(i, 0.0) + e.imag * dec(e.real)
        best = sorted(co.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        ids = self.items.ids
        return [(ids[i], float(s)) for i, s in best]  # type: ignore[misc]

    # ------------------------------------------------------------------ state
    def get_state(self) -> ModelState:
        # C-level walks over the nested dicts (a Python loop per pair made this the
        # trainer's longest snapshot pause), and only over the rows touched since the
        # last call: the outer keys come in ascending order (nothing reads their order;
        # each inner dict keeps its own, least recent first).
        ui_user, ui_item, ui_tw = self._ui_flat.arrays(self._user_items)
        iu_item, iu_user, iu_t = self._iu_flat.arrays(self._item_users)
        arrays = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            "user_items.user": ui_user,
            "user_items.item": ui_item,
            "user_items.time": ui_tw.real.copy(),
            "user_items.weight": ui_tw.imag.copy(),
            "item_users.item": iu_item,
            "item_users.user": iu_user,
            "item_users.time": iu_t,
            "pop": self._pop.copy(),
        }
        meta = {
            "class": self.name,
            "params": self.get_params(),
            "watermark": float(self._watermark) if np.isfinite(self._watermark) else None,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        m = cls(**state.meta["params"])
        a = state.arrays
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        for u, i, t, w in zip(
            a["user_items.user"].tolist(),
            a["user_items.item"].tolist(),
            a["user_items.time"].tolist(),
            a["user_items.weight"].tolist(),
            strict=True,
        ):
            m._user_items.setdefault(u, {})[i] = complex(t, w)
        for i, u, t in zip(
            a["item_users.item"].tolist(),
            a["item_users.user"].tolist(),
            a["item_users.time"].tolist(),
            strict=True,
        ):
            m._item_users.setdefault(i, {})[u] = t
        m._pop = np.array(a["pop"], np.float64)
        wm = state.meta["watermark"]
        m._watermark = -np.inf if wm is None else float(wm)
        return m


@dataclass(frozen=True, slots=True)
class _Stored:
    """CSR of some users' stored items: ``users`` (sorted, distinct), ``ptr``, and per
    entry the item row, its accumulated weight and its decay to the watermark."""

    users: np.ndarray
    ptr: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    decay: np.ndarray

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(ptr, items, weights, decay)`` of ``rows`` (each one of ``users``; in order,
        repeats allowed)."""
        pos = np.searchsorted(self.users, rows)
        lengths = np.diff(self.ptr)[pos]
        ptr = np.concatenate(([0], np.cumsum(lengths)))
        idx = np.repeat(self.ptr[:-1][pos] - ptr[:-1], lengths) + np.arange(int(ptr[-1]))
        return ptr, self.items[idx], self.weights[idx], self.decay[idx]


def _merged(entry: complex, t: float, w: float, hl: float | None) -> complex:
    """A stored ``time + 1j * weight`` entry with an event ``(t, w)`` of the same item
    added: the older of the two weights decays to the later time, which is kept.

    Only ever a factor ``<= 1``: a late event (``t`` before the entry's time) adds its
    weight decayed, however late (no overflow, the stored weight is not inflated).

    >>> _merged(complex(10.0, 1.0), 20.0, 1.0, 10.0)  # the stored weight decays
    (20+1.5j)
    >>> _merged(complex(20.0, 1.0), 10.0, 1.0, 10.0)  # the late event's weight decays
    (20+1.5j)
    >>> _merged(complex(1.7e9, 1.0), 0.0, 1.0, 86_400.0)  # 54 years late
    (1700000000+1j)
    """
    t_old, w_old = entry.real, entry.imag
    if t >= t_old:
        return complex(t, w_old * (0.5 ** ((t - t_old) / hl) if hl else 1.0) + w)
    return complex(t_old, w_old + w * (0.5 ** ((t_old - t) / hl) if hl else 1.0))


def _groups(owner: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group id of each (owner, key) pair (ids sorted by owner, key) and each group's pair."""
    order = np.lexsort((key, owner))
    so, sk = owner[order], key[order]
    new = np.concatenate(([True], (so[1:] != so[:-1]) | (sk[1:] != sk[:-1])))
    group = np.empty(len(order), np.int64)
    group[order] = np.cumsum(new) - 1
    return group, so[new], sk[new]


def _rank_in_group(sorted_owner: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted array."""
    n = len(sorted_owner)
    start = np.concatenate(([True], sorted_owner[1:] != sorted_owner[:-1]))
    return np.arange(n) - np.maximum.accumulate(np.where(start, np.arange(n), 0))


class _FlatCache:
    """A two-level dict's :func:`_flatten` arrays (outer keys in ascending order),
    kept between calls: :meth:`arrays` flattens again only the outer keys touched since
    the last call and merges them with the rest of the last result.

    >>> table, cache = {5: {1: 0.5}, 2: {7: 1.0, 3: 2.0}}, _FlatCache()
    >>> [a.tolist() for a in cache.arrays(table)]
    [[2, 2, 5], [7, 3, 1], [1.0, 2.0, 0.5]]
    >>> table[4] = {9: 3.0}; del table[5]; cache.touch([4, 5])
    >>> [a.tolist() for a in cache.arrays(table)]
    [[2, 2, 4], [7, 3, 9], [1.0, 2.0, 3.0]]
    """

    def __init__(self, dtype: type[np.generic] = np.float64) -> None:
        self.dtype = dtype
        self._flat: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._touched: set[int] = set()  # outer keys changed since _flat (once it exists)

    def touch(self, keys: list[int]) -> None:
        if self._flat is not None:
            self._touched.update(keys)

    def touch_one(self, key: int) -> None:
        if self._flat is not None:
            self._touched.add(key)

    def arrays(self, table: dict[int, dict[int, Any]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`_flatten` of ``table`` with its outer keys in ascending order (read-only
        arrays: the next call reuses them)."""
        if self._flat is not None and not self._touched:
            return self._flat
        if self._flat is None:
            flat = _flatten({k: table[k] for k in sorted(table)}, self.dtype)
        else:
            outer, inner, values = self._flat
            touched = sorted(self._touched)
            fresh = _flatten({k: table[k] for k in touched if k in table}, self.dtype)
            if len(outer):
                mark = np.zeros(max(touched[-1], int(outer.max())) + 1, bool)
                mark[touched] = True
                keep = ~mark[outer]
                outer, inner, values = outer[keep], inner[keep], values[keep]
            # Two runs sorted by outer key, no key in both: a stable sort merges them
            # and keeps each key's inner order.
            merged = [np.concatenate((old, new)) for old, new in zip(
                (outer, inner, values), fresh, strict=True)]
            order = np.argsort(merged[0], kind="stable")
            flat = (merged[0][order], merged[1][order], merged[2][order])
        for a in flat:
            a.flags.writeable = False
        self._flat, self._touched = flat, set()
        return flat


def _flatten(table: dict[int, dict[int, Any]], dtype: type[np.generic] = np.float64
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(outer keys, inner keys, inner values)`` of a two-level dict, one row per inner
    pair, in iteration order; the values as ``dtype`` (complex128 for the user tables'
    ``time + 1j * weight`` entries).

    >>> [a.tolist() for a in _flatten({3: {1: 0.5, 2: 0.25}, 4: {}, 5: {9: 1.0}})]
    [[3, 3, 5], [1, 2, 9], [0.5, 0.25, 1.0]]
    >>> _flatten({7: {1: complex(10.0, 2.0)}}, np.complex128)[2].tolist()
    [(10+2j)]
    """
    inner = table.values()
    lengths = np.fromiter(map(len, inner), np.int64, count=len(table))
    n = int(lengths.sum())
    outer = np.repeat(np.fromiter(table, np.int64, count=len(table)), lengths)
    keys = np.fromiter(chain.from_iterable(inner), np.int64, count=n)
    values = np.fromiter(chain.from_iterable(map(dict.values, inner)), dtype, count=n)
    return outer, keys, values

