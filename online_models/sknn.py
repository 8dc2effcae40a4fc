"""Session-based kNN: neighbours are other users' recent sessions that share the latest items.

A *session* is a run of one user's events with no gap longer than
``session_gap_seconds`` and at most ``max_session_items`` distinct items (then a new
one opens). Sessions are kept in order, in a ring of at most ``max_sessions``
(oldest overwritten), and an inverted index keeps, per item, the
``sessions_per_item`` sessions that touched it most recently.

A query takes the user's ``query_items`` most recent items, the most recent weighing
most (``recency_decay`` per step back), and finds the candidate sessions of *other*
users through the inverted index. A session's similarity is the summed weight of
the query items it shares (V-SKNN), divided by ``len(session)**length_power`` and
decayed with the session's age (``session_half_life_seconds``). The
``n_neighbours`` most similar sessions vote for their other items with
``similarity × position_decay**(d - 1)``, ``d`` the distance in the neighbour
session to the nearest shared item (STAN's idea: what sits next to the shared item
in someone else's session is what comes next), and items *before* that shared item
count ``before_factor`` as much. A tiny decayed-popularity term breaks ties.

Work is bounded: learning an event is O(1) (append to its session, one slot of the
item's ring), a query reads at most ``query_items × sessions_per_item`` index slots
and ``n_neighbours × max_session_items`` session items, all in numpy. Memory is
``max_sessions × max_session_items`` int32 plus ``sessions_per_item`` int64 per item.
Learning runs event by event in stream order, so the state does not depend on
where mini-batch boundaries fall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np

from online_models.base import Batch, IdIndex, ModelState, OnlineModel, grow_rows

__all__ = ["SessionKNN"]


class SessionKNN(OnlineModel):
    """Incremental session-kNN (V-SKNN / STAN style) over other users' recent sessions.

    Parameters
    ----------
    session_gap_seconds
        Inactivity (event time) that closes a user's session.
    max_session_items
        Distinct items per session; a full session is closed.
    sessions_per_item
        Most recent sessions kept per item in the inverted index.
    max_sessions
        Sessions kept in all (a ring: the oldest is overwritten).
    n_neighbours
        Neighbour sessions that vote.
    query_items
        Most recent items of the user used as the query.
    recency_decay
        Weight factor per step back among the query items.
    length_power
        Similarity is divided by ``len(session)**length_power`` (0: plain overlap).
    position_decay
        Vote factor per step of distance from the nearest shared item.
    before_factor
        Weight of votes for items *before* the nearest shared item (1: symmetric).
    session_half_life_seconds
        Event-time half-life of a neighbour session's weight (``None``: no decay).
    idf_power
        A shared query item weighs ``(1 + log(sessions / sessions with it))**idf_power``.
    popularity_half_life_seconds
        Half-life of the tie-breaking popularity.
    popularity_tiebreak
        Weight of the tiny decayed-popularity term that breaks ties.

    Examples
    --------
    >>> m = SessionKNN()
    >>> m.learn(Batch.from_columns(["a"] * 3 + ["b"] * 3, list("xyz") + list("xyz"),
    ...                            None, range(6)))
    >>> [i for i, _ in m.recommend("c", 1, history=["x", "y"], exclude=["x", "y"])]
    ['z']
    >>> m.similar("x", 1)[0][0]
    'y'
    """

    name: ClassVar[str] = "sknn"
    adaptable: ClassVar[Mapping[str, str]] = {
        "session_half_life_seconds": "half_life",
        "popularity_half_life_seconds": "half_life",
    }

    def __init__(
        self,
        session_gap_seconds: float = 3600.0,
        max_session_items: int = 30,
        sessions_per_item: int = 100,
        max_sessions: int = 1_000_000,
        n_neighbours: int = 50,
        query_items: int = 10,
        recency_decay: float = 0.8,
        length_power: float = 0.5,
        position_decay: float = 0.8,
        before_factor: float = 0.5,
        session_half_life_seconds: float | None = None,
        idf_power: float = 2.0,
        popularity_half_life_seconds: float | None = 365 * 86_400.0,
        popularity_tiebreak: float = 1e-6,
    ) -> None:
        if max_session_items < 1 or sessions_per_item < 1 or max_sessions < 1:
            raise ValueError("session sizes must be >= 1")
        self.session_gap_seconds = session_gap_seconds
        self.max_session_items = max_session_items
        self.sessions_per_item = sessions_per_item
        self.max_sessions = max_sessions
        self.n_neighbours = n_neighbours
        self.query_items = query_items
        self.recency_decay = recency_decay
        self.length_power = length_power
        self.position_decay = position_decay
        self.before_factor = before_factor
        self.session_half_life_seconds = session_half_life_seconds
        self.idf_power = idf_power
        self.popularity_half_life_seconds = popularity_half_life_seconds
        self.popularity_tiebreak = popularity_tiebreak

        self.users = IdIndex()
        self.items = IdIndex()
        L, P = max_session_items, sessions_per_item
        # per user: current session id (-1: none) and time of their last event
        self._cur = np.zeros(0, np.int64)
        self._last = np.zeros(0, np.float64)
        # per item: ring of recent session ids and its write counter; decayed popularity
        self._item_sess = np.zeros((0, P), np.int64)
        self._item_ptr = np.zeros(0, np.int64)
        self._pop = np.zeros(0, np.float64)
        # per session slot (session id % max_sessions)
        self._sess_items = np.zeros((0, L), np.int32)
        self._sess_len = np.zeros(0, np.int32)
        self._sess_user = np.zeros(0, np.int64)
        self._sess_id = np.zeros(0, np.int64)
        self._sess_time = np.zeros(0, np.float64)
        self._n_sessions = 0
        self._watermark = -np.inf

    # ------------------------------------------------------------------ learning
    def _decay_pop_to(self, t: float) -> None:
        hl = self.popularity_half_life_seconds
        if hl is not None and np.isfinite(self._watermark) and t > self._watermark:
            self._pop *= float(np.exp2(-(t - self._watermark) / hl))

    def _open_session(self, u: int, t: float) -> int:
        sid = self._n_sessions
        self._n_sessions += 1
        slot = sid % self.max_sessions
        if slot >= len(self._sess_len):
            lim = self.max_sessions
            self._sess_items = grow_rows(self._sess_items, slot + 1, -1, min_capacity=16, limit=lim)
            self._sess_len = grow_rows(self._sess_len, slot + 1, 0, min_capacity=16, limit=lim)
            self._sess_user = grow_rows(self._sess_user, slot + 1, -1, min_capacity=16, limit=lim)
            self._sess_id = grow_rows(self._sess_id, slot + 1, -1, min_capacity=16, limit=lim)
            self._sess_time = grow_rows(self._sess_time, slot + 1, 0.0, min_capacity=16, limit=lim)
        self._sess_items[slot] = -1
        self._sess_len[slot] = 0
        self._sess_user[slot] = u
        self._sess_id[slot] = sid
        self._sess_time[slot] = t
        return sid

    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users``: their rows are freed, and their sessions (which stay, as
        neighbours of others) belong to no one."""
        rows = self.users.remove_many(users)
        if not rows:
            return
        held = np.asarray(rows, np.int64)
        held = held[held < len(self._cur)]
        self._cur[held] = -1
        self._last[held] = -np.inf
        self._sess_user[np.isin(self._sess_user, rows)] = -1

    def learn(self, batch: Batch) -> None:
        n = len(batch)
        if n == 0:
            return
        u_rows = self.users.add_many(batch.users)
        i_rows = self.items.add_many(batch.items)
        ts = np.asarray(batch.timestamps, np.float64)
        ws = np.asarray(batch.weights, np.float64)
        self._cur = grow_rows(self._cur, self.users.capacity, -1, min_capacity=16)
        self._last = grow_rows(self._last, self.users.capacity, -np.inf, min_capacity=16)
        self._item_sess = grow_rows(self._item_sess, self.items.capacity, -1, min_capacity=16)
        self._item_ptr = grow_rows(self._item_ptr, self.items.capacity, 0, min_capacity=16)
        self._pop = grow_rows(self._pop, self.items.capacity, 0.0, min_capacity=16)

        t_max = float(ts.max())
        self._decay_pop_to(t_max)
        hl = self.popularity_half_life_seconds
        if hl is not None:
            np.add.at(self._pop, i_rows, ws * np.exp2(-(t_max - ts) / hl))
        else:
            np.add.at(self._pop, i_rows, ws)
        self._watermark = max(self._watermark, t_max)

        L, P, M = self.max_session_items, self.sessions_per_item, self.max_sessions
        gap = self.session_gap_seconds
        cur, last = self._cur, self._last
        for u, i, t in zip(u_rows.tolist(), i_rows.tolist(), ts.tolist(), strict=True):
            sid = int(cur[u])
            slot = sid % M
            if (
                sid < 0
                or t - last[u] > gap
                or self._sess_id[slot] != sid  # overwritten by the ring
                or self._sess_len[slot] >= L
            ):
                sid = self._open_session(u, t)
                cur[u] = sid
                slot = sid % M
            last[u] = max(t, last[u])
            length = int(self._sess_len[slot])
            row = self._sess_items[slot]
            if length and (row[:length] == i).any():
                continue
            row[length] = i
            self._sess_len[slot] = length + 1
            self._sess_time[slot] = t
            self._item_sess[i, self._item_ptr[i] % P] = sid
            self._item_ptr[i] += 1

    # ------------------------------------------------------------------ scoring
    def _query(
        self, user: str, history: Sequence[str], tail: np.ndarray | None = None
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """The user's row (-1 if unknown), query item rows and their recency weights.

        ``tail``: the rows of ``history``'s last ``query_items`` items, if looked up.
        """
        u = self.users.get(user)
        if history:
            rows = tail if tail is not None else self.items.rows(
                list(history)[-self.query_items :]
            )
        elif 0 <= u < len(self._cur) and self._cur[u] >= 0:
            slot = int(self._cur[u]) % self.max_sessions
            if self._sess_id[slot] != self._cur[u]:
                return u, np.zeros(0, np.int64), np.zeros(0)
            rows = self._sess_items[slot, : self._sess_len[slot]].astype(np.int64)
            rows = rows[-self.query_items :]
        else:
            return u, np.zeros(0, np.int64), np.zeros(0)
        keep = (rows >= 0) & (rows < len(self._item_sess))
        weights = self.recency_decay ** np.arange(len(rows) - 1, -1, -1, dtype=np.float64)
        return u, rows[keep], weights[keep]

    def _votes(self, u: int, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Neighbour-session votes for every item row (zeros when no neighbour)."""
        cap = self.items.capacity
        scores = np.zeros(cap, np.float64)
        if len(rows) == 0:
            return scores
        # A repeated query item (the model's own session) counts with its latest weight.
        uniq, first = np.unique(rows[::-1], return_index=True)
        rows, weights = uniq, weights[::-1][first]
        if self.idf_power:
            # Sharing a rare item says more than sharing a blockbuster.
            idf = np.log((self._n_sessions + 1.0) / (self._item_ptr[rows] + 1.0)) + 1.0
            weights = weights * idf**self.idf_power
        cand = self._item_sess[rows]  # (m, P) session ids
        cw = np.broadcast_to(weights[:, None], cand.shape)
        M = self.max_sessions
        ok = cand >= 0
        slots = np.where(ok, cand % M, 0)
        ok &= self._sess_id[slots] == cand
        if u >= 0:
            ok &= self._sess_user[slots] != u
        if not ok.any():
            return scores
        sids, inv = np.unique(cand[ok], return_inverse=True)
        sim: np.ndarray = np.bincount(inv, weights=cw[ok]).astype(np.float64)
        slots = sids % M
        if self.length_power:
            sim = sim / self._sess_len[slots].astype(np.float64) ** self.length_power
        if self.session_half_life_seconds is not None:
            age = np.maximum(self._watermark - self._sess_time[slots], 0.0)
            sim = sim * np.exp2(-age / self.session_half_life_seconds)
        if len(sim) > self.n_neighbours:
            top = np.argpartition(-sim, self.n_neighbours - 1)[: self.n_neighbours]
            sim, slots = sim[top], slots[top]
        items = self._sess_items[slots].astype(np.int64)  # (n, L), -1 padded
        shared = np.isin(items, rows)
        L = items.shape[1]
        pos = np.arange(L)
        # Signed offset of every position from the nearest shared item of its session.
        offset = pos[None, :, None] - pos[None, None, :]  # (1, L, L): p - q
        dist = np.where(shared[:, None, :], np.abs(offset), L + 1)  # (n, L, L)
        nearest = dist.argmin(axis=2)  # (n, L): q of the nearest shared item
        d = np.take_along_axis(dist, nearest[:, :, None], axis=2)[:, :, 0]
        # position_decay ** k from a table: the same np.power values, without a pow each.
        powers = self.position_decay ** np.arange(L + 1).astype(np.float64)
        vote = sim[:, None] * powers[np.maximum(d - 1, 0)]
        if self.before_factor != 1.0:
            vote = np.where(pos[None, :] < nearest, vote * self.before_factor, vote)
        use = (items >= 0) & ~shared
        votes = np.bincount(items[use], weights=vote[use], minlength=cap)[:cap]
        return votes.astype(np.float64, copy=False)  # bincount of nothing is int64

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        cap = self.items.capacity
        u, rows, weights = self._query(user, history)
        scores = self._votes(u, rows, weights)
        return self._finish_scores(scores, self._pop[:cap], self.popularity_tiebreak)

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """:meth:`_votes` of every query at once (per-query neighbour selection only)."""
        if len(users) != len(histories):
            raise ValueError("score_many needs one history per user")
        cap = self.items.capacity
        tails = self._tail_rows(histories, self.query_items)
        queries = [self._query(u, h, t) for u, h, t in zip(users, histories, tails, strict=True)]
        scores = self._votes_many(queries, cap)
        return self._finish_many(scores, self._pop[:cap], self.popularity_tiebreak)

    def _votes_many(
        self, queries: list[tuple[int, np.ndarray, np.ndarray]], cap: int
    ) -> np.ndarray:
        """Row ``q`` equals ``_votes(*queries[q])``, bit for bit (same summation orders)."""
        n = len(queries)
        out = np.zeros((n, cap), np.float64)
        lengths = np.fromiter((len(r) for _, r, _ in queries), np.int64, count=n)
        if n == 0 or cap == 0 or lengths.sum() == 0:
            return out
        us = np.fromiter((u for u, _, _ in queries), np.int64, count=n)
        # Per query, its rows reversed (the latest occurrence of a repeated row wins).
        rows = np.concatenate([r[::-1] for _, r, _ in queries])
        wts = np.concatenate([w[::-1] for _, _, w in queries])
        owner = np.repeat(np.arange(n), lengths)
        keys, first = np.unique(owner * cap + rows, return_index=True)
        rows, wts, owner = keys % cap, wts[first], keys // cap
        if self.idf_power:
            idf = np.log((self._n_sessions + 1.0) / (self._item_ptr[rows] + 1.0)) + 1.0
            wts = wts * idf**self.idf_power
        cand = self._item_sess[rows]  # (R, P) session ids
        cw = np.broadcast_to(wts[:, None], cand.shape)
        c_owner = np.broadcast_to(owner[:, None], cand.shape)
        M = self.max_sessions
        ok = cand >= 0
        slots = np.where(ok, cand % M, 0)
        ok &= self._sess_id[slots] == cand
        u_of = us[c_owner]
        ok &= (u_of < 0) | (self._sess_user[slots] != u_of)
        if not ok.any():
            return out
        sid, sw, so = cand[ok], cw[ok], c_owner[ok]
        # Groups (owner, session id), sorted by owner then session id as np.unique
        # sorts one query's; bincount sums each group in query order.
        shift = np.int64(max(1, int(sid.max()) + 1).bit_length())
        g_keys, inv = np.unique((so << shift) | sid, return_inverse=True)
        sim = np.bincount(inv.ravel(), weights=sw).astype(np.float64)
        g_sid, g_owner = g_keys & ((np.int64(1) << shift) - 1), g_keys >> shift
        g_slots = g_sid % M
        if self.length_power:
            sim = sim / self._sess_len[g_slots].astype(np.float64) ** self.length_power
        if self.session_half_life_seconds is not None:
            age = np.maximum(self._watermark - self._sess_time[g_slots], 0.0)
            sim = sim * np.exp2(-age / self.session_half_life_seconds)
        # The n_neighbours best of each query, picked exactly as _votes picks them.
        bounds = np.searchsorted(g_owner, np.arange(n + 1))
        picks: list[np.ndarray] = []
        nn = self.n_neighbours
        for q in range(n):
            lo, hi = int(bounds[q]), int(bounds[q + 1])
            if hi - lo > nn:
                picks.append(lo + np.argpartition(-sim[lo:hi], nn - 1)[:nn])
            elif hi > lo:
                picks.append(np.arange(lo, hi))
        pick = np.concatenate(picks)
        sim, slots_n, nb_owner = sim[pick], g_slots[pick], g_owner[pick]
        full_l = self.max_session_items
        # Columns past the longest picked session are padding only: trim them.
        L = max(1, int(self._sess_len[slots_n].max()))
        items = self._sess_items[slots_n, :L].astype(np.int64)  # (N, L), -1 padded
        # Shared: the neighbour's item is one of its own query's rows.
        item_keys = np.where(items >= 0, nb_owner[:, None] * cap + items, -1)
        if n * cap <= 1 << 25:  # a lookup table over all (query, item) keys: no sort
            table = np.zeros(n * cap + 1, bool)
            table[owner * cap + rows] = True
            shared = table[item_keys]  # key -1 reads the last slot, always False
        else:
            shared = np.isin(item_keys, owner * cap + rows)
        # Nearest shared position (the left one on a tie, as argmin picks it), by a
        # sweep each way over positions, on the transposed (position-major) layout.
        small = np.int16 if full_l < 16_000 else np.int64
        pos_t = np.arange(L, dtype=small)[:, None]
        shared_t = shared.T
        left = np.where(shared_t, pos_t, small(-1))
        right = np.where(shared_t, pos_t, small(2 * L))
        for p in range(1, L):
            np.maximum(left[p], left[p - 1], out=left[p])
            np.minimum(right[L - 1 - p], right[L - p], out=right[L - 1 - p])
        none = small(full_l + 1)  # "no shared item": dist L + 1 of the untrimmed arrays
        d_left = np.where(left >= 0, pos_t - left, none)
        d_right = np.where(right < L, right - pos_t, none)
        use_left = d_left <= d_right
        d = np.where(use_left, d_left, d_right)
        nearest = np.where(use_left, left, right)
        nearest = np.where(d == none, small(0), nearest)  # argmin's q = 0 then
        # position_decay ** k from a table: the same np.power values, without a pow each.
        powers = self.position_decay ** np.arange(full_l + 2).astype(np.float64)
        vote = sim[:, None] * powers[np.maximum(d - 1, 0).T]
        if self.before_factor != 1.0:
            vote = np.where(np.arange(L)[None, :] < nearest.T, vote * self.before_factor, vote)
        use = (items >= 0) & ~shared
        flat = np.bincount(
            (nb_owner[:, None] * cap + items)[use], weights=vote[use], minlength=n * cap
        )
        return flat[: n * cap].reshape(n, cap).astype(np.float64, copy=False)

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        """Items near ``item`` in the sessions that hold it (any user's)."""
        row = self.items.get(item)
        if row < 0 or row >= len(self._item_sess):
            return []
        return self._similar_from(row, self._votes(-1, np.array([row], np.int64), np.ones(1)), k)

    # ------------------------------------------------------------------ state
    @property
    def n_sessions(self) -> int:
        """Sessions opened so far (the ring keeps the last ``max_sessions``)."""
        return self._n_sessions

    def get_state(self) -> ModelState:
        nu, ni = self.users.capacity, self.items.capacity
        ns = min(self._n_sessions, self.max_sessions)
        arrays = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            "user.session": self._cur[:nu].copy(),
            "user.last": self._last[:nu].copy(),
            "item.sessions": self._item_sess[:ni].copy(),
            "item.ptr": self._item_ptr[:ni].copy(),
            "item.pop": self._pop[:ni].copy(),
            "session.items": self._sess_items[:ns].copy(),
            "session.len": self._sess_len[:ns].copy(),
            "session.user": self._sess_user[:ns].copy(),
            "session.id": self._sess_id[:ns].copy(),
            "session.time": self._sess_time[:ns].copy(),
        }
        meta: dict[str, Any] = {
            "class": self.name,
            "params": self.get_params(),
            "n_sessions": self._n_sessions,
            "watermark": float(self._watermark) if np.isfinite(self._watermark) else None,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        a, meta = state.arrays, state.meta
        m = cls(**meta["params"])
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        L, P = m.max_session_items, m.sessions_per_item
        m._cur = np.asarray(a["user.session"], np.int64).copy()
        m._last = np.asarray(a["user.last"], np.float64).copy()
        m._item_sess = np.asarray(a["item.sessions"], np.int64).reshape(-1, P).copy()
        m._item_ptr = np.asarray(a["item.ptr"], np.int64).copy()
        m._pop = np.asarray(a["item.pop"], np.float64).copy()
        m._sess_items = np.asarray(a["session.items"], np.int32).reshape(-1, L).copy()
        m._sess_len = np.asarray(a["session.len"], np.int32).copy()
        m._sess_user = np.asarray(a["session.user"], np.int64).copy()
        m._sess_id = np.asarray(a["session.id"], np.int64).copy()
        m._sess_time = np.asarray(a["session.time"], np.float64).copy()
        m._n_sessions = int(meta["n_sessions"])
        wm = meta["watermark"]
        m._watermark = -np.inf if wm is None else float(wm)
        return m
