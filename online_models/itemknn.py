"""Incremental item-kNN from decayed co-occurrence within each user's recent window.

Every event ``(user, item j, time t, weight w)`` pairs ``j`` with the user's last
``window`` items (event-time order, earlier events of the same batch included).
The pair at distance ``d`` (``d = 1`` is the previous item) adds

    ``w**weight_power · position_decay**(d-1)
    · 2**(-(t - t_partner)/gap_half_life) · 2**((t - t0)/half_life)``

to the co-occurrence ``C[partner, j]`` (and to ``C[j, partner]`` when symmetric).
The last factor is *forward decay*: instead of shrinking every stored count as time
passes, new mass is inflated relative to a landmark ``t0``; ranking only uses ratios,
so this equals exponential decay in event time. When the exponent grows large,
all mass is rescaled by an exact power of two and the landmark moves on. The
exported state holds mass decayed to the watermark, so it is the same (up to
float rounding) wherever the mini-batch boundaries fell.

Similarity is ``C[i, j] / (n_i**alpha · n_j**(1-alpha))`` with ``n`` the decayed item
counts (``alpha = 0.5`` is cosine). A query scores every item from the user's most
recent ``query_items`` items, the most recent weighing most (``recency_decay`` per
step back).

Storage is sparse: pair keys ``i << 32 | j`` (int64) with float64 mass, kept as a
few sorted runs of geometrically growing size (a log-structured merge). A batch
adds one sorted run, built with numpy for the whole batch at once; runs are
merged (``searchsorted`` + ``np.insert``, linear) when a run is not much
larger than the next, so work per pair is amortised ``O(log)``. A query gathers
each query item's row from every run with ``searchsorted`` and sums with
``np.bincount``. Memory is ``~16 bytes × stored pairs × 2`` plus ``window`` int64
and float64 per user, never items × items.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from online_models.deltas import ItemDelta, delta_rows

__all__ = ["CoOccurrenceModel", "ItemKNN"]

_SHIFT = np.int64(32)
_LOW = np.int64(0xFFFFFFFF)
#: rescale forward-decayed mass once it has grown by 2**_MAX_EXP
_MAX_EXP = 400.0


def _sum_sorted(keys: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse equal adjacent keys of a sorted key array, summing their values."""
    if len(keys) == 0:
        return keys, vals
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.add.reduceat(vals, starts)


@dataclass(slots=True)
class _Stack:
    """The arrays behind :meth:`_PairStore.stacked`'s matrix: the serial numbers of
    the runs they hold, each run's row starts (offsets included; then the end), and
    buffers whose first ``total`` entries are used."""

    n_rows: int
    rescaled: int
    serials: list[int]
    ptrs: list[np.ndarray]
    indices: np.ndarray
    data: np.ndarray
    total: int


class _PairStore:
    """Sparse ``(i, j) -> mass`` as sorted runs of int64 keys (a small LSM tree)."""

    def __init__(self, merge_ratio: float = 4.0) -> None:
        self.merge_ratio = merge_ratio
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        #: a number per run, new for every run made (what tells an unchanged run)
        self._serials: list[int] = []
        self._next_serial = 0
        #: bumped whenever the runs change: what :meth:`stacked`'s cache is valid for
        #: (ids of the run arrays would not do: a freed array's id is soon reused)
        self.version = 0
        self._stacked: tuple[int, int, sp.csr_matrix] | None = None
        #: the arrays behind the last stacked matrix, to rebuild only the runs that
        #: changed since (a batch adds a small run and merges the small ones)
        self._stack: _Stack | None = None
        #: bumped when run values change in place (:meth:`scale`): nothing is reusable
        self._rescaled = 0
        self._stack_lock = threading.Lock()

    @property
    def runs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The sorted runs ``(keys, values)``; assign a new list to replace them."""
        return self._runs

    @runs.setter
    def runs(self, runs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self._runs = runs
        self._serials = [self._serial() for _ in runs]
        self.version += 1

    def _serial(self) -> int:
        self._next_serial += 1
        return self._next_serial

    def _push(self, run: tuple[np.ndarray, np.ndarray]) -> None:
        self._runs.append(run)
        self._serials.append(self._serial())

    def _pop(self) -> tuple[np.ndarray, np.ndarray]:
        self._serials.pop()
        return self._runs.pop()

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.runs)

    def add(self, i: np.ndarray, j: np.ndarray, w: np.ndarray) -> None:
        if len(i) == 0:
            return
        keys = (i.astype(np.int64) << _SHIFT) | j.astype(np.int64)
        order = np.argsort(keys, kind="stable")
        self.version += 1
        self._push(_sum_sorted(keys[order], w[order]))
        while len(self.runs) >= 2 and len(self.runs[-2][0]) <= self.merge_ratio * len(
            self.runs[-1][0]
        ):
            (k2, v2), (k1, v1) = self._pop(), self._pop()
            self._push(self._merge(k1, v1, k2, v2))

    @staticmethod
    def _merge(
        k1: np.ndarray, v1: np.ndarray, k2: np.ndarray, v2: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merge two sorted runs of unique keys, summing the values of shared keys."""
        if len(k1) < len(k2):
            k1, v1, k2, v2 = k2, v2, k1, v1
        if len(k2) == 0:
            return k1, v1
        # Linear-time merge: find k2's slots in k1, add to shared keys, insert the rest.
        pos = np.searchsorted(k1, k2)
        shared = k1[np.minimum(pos, len(k1) - 1)] == k2
        vals = v1.copy()
        vals[pos[shared]] += v2[shared]
        new = ~shared
        # Where the new keys land in the output (k2 is sorted, so ``pos`` ascends): one
        # mask serves both arrays (``np.insert`` would sort the slots and build it twice).
        slots = pos[new] + np.arange(int(np.count_nonzero(new)))
        n_out = len(k1) + len(slots)
        old = np.ones(n_out, bool)
        old[slots] = False
        keys = np.empty(n_out, k1.dtype)
        keys[old], keys[slots] = k1, k2[new]
        out = np.empty(n_out, vals.dtype)
        out[old], out[slots] = vals, v2[new]
        return keys, out

    def compact(self) -> tuple[np.ndarray, np.ndarray]:
        """All runs merged into one (also replaces the runs)."""
        if not self.runs:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        # Smallest first: each run is at least ``merge_ratio`` times the next, so the
        # big old run is merged once (in the run order, it was merged once per run).
        keys, vals = self.runs[-1]
        for k, v in reversed(self.runs[:-1]):
            keys, vals = self._merge(k, v, keys, vals)
        self.runs = [(keys, vals)]
        return keys, vals

    def scale(self, factor: float) -> None:
        for _, v in self.runs:
            v *= factor
        self.version += 1
        self._rescaled += 1

    def stacked(self, n_rows: int) -> sp.csr_matrix:
        """Every run as one CSR matrix: row ``r * n_rows + i`` is run ``r``'s row ``i``.

        A product ``Q @ stacked`` whose row lists a query's rows run by run sums
        every output in exactly the order :meth:`rows_of` lays entries out
        (runs, then query rows, then keys): scipy's sparse product accumulates
        in the stored order of both operands. Cached until the runs change; then
        only the runs after the longest unchanged leading ones are copied again
        (the big old runs rarely change), into buffers that grow geometrically.
        """
        with self._stack_lock:
            ident = self.version
            if self._stacked is not None and self._stacked[:2] == (ident, n_rows):
                return self._stacked[2]
            mat = self._restack(n_rows)
            self._stacked = (ident, n_rows, mat)
            return mat

    def _restack(self, n_rows: int) -> sp.csr_matrix:
        runs, serials = list(self.runs), list(self._serials)
        total = sum(len(k) for k, _ in runs)
        idx_type = np.int32 if max(total, n_rows) < 2**31 else np.int64
        old = self._stack
        keep = 0  # leading runs whose rows are in the buffers already
        if old is not None and (old.n_rows, old.rescaled, old.indices.dtype) == (
                n_rows, self._rescaled, np.dtype(idx_type)):
            while keep < min(len(serials), len(old.serials)) and \
                    serials[keep] == old.serials[keep]:
                keep += 1
        if old is None or keep == 0:
            offset = 0
            indices, data = np.empty(total, idx_type), np.empty(total, np.float64)
            ptrs: list[np.ndarray] = []
        else:
            offset = int(old.ptrs[keep][0]) if keep < len(old.ptrs) - 1 else old.total
            indices, data, ptrs = old.indices, old.data, old.ptrs[:keep]
            if len(indices) < total:  # grow, keeping the reused prefix
                cap = max(total, int(1.5 * len(indices)))
                indices, data = np.empty(cap, idx_type), np.empty(cap, np.float64)
                indices[:offset], data[:offset] = old.indices[:offset], old.data[:offset]
        bounds = np.arange(n_rows + 1, dtype=np.int64) << _SHIFT
        for keys, vals in runs[keep:]:
            ptrs.append((np.searchsorted(keys, bounds)[:-1] + offset).astype(idx_type))
            end = offset + len(keys)
            indices[offset:end] = keys & _LOW
            data[offset:end] = vals
            offset = end
        ptrs.append(np.asarray([offset], idx_type))
        self._stack = _Stack(n_rows, self._rescaled, serials, ptrs, indices, data, offset)
        return sp.csr_matrix(
            (data[:offset], indices[:offset], np.concatenate(ptrs)),
            shape=(max(1, len(runs)) * n_rows, n_rows),
        )

    def rows(self, rows: np.ndarray, row_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Columns and ``mass × row weight`` of every stored entry in ``rows``."""
        cols, weights, _ = self.rows_of(rows, row_weights, None)
        return cols, weights

    def rows_of(
        self, rows: np.ndarray, row_weights: np.ndarray, owners: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`rows` plus, per entry, ``owners`` of the row it came from.

        Entries come run by run, and within a run in the order of ``rows``: the
        entries of one owner keep the order they have when its rows are gathered
        alone, so per-owner sums come out bit for bit the same.
        """
        cols: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        owned: list[np.ndarray] = []
        lo_keys = rows.astype(np.int64) << _SHIFT
        hi_keys = (rows.astype(np.int64) + 1) << _SHIFT
        for keys, vals in self.runs:
            lo = np.searchsorted(keys, lo_keys)
            hi = np.searchsorted(keys, hi_keys)
            lengths = hi - lo
            total = int(lengths.sum())
            if total == 0:
                continue
            # Flat indices of the ranges [lo, hi) without a Python loop.
            starts = np.repeat(lo - np.cumsum(lengths) + lengths, lengths)
            idx = starts + np.arange(total)
            cols.append(keys[idx] & _LOW)
            weights.append(vals[idx] * np.repeat(row_weights, lengths))
            if owners is not None:
                owned.append(np.repeat(owners, lengths))
        if not cols:
            return np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64)
        return (
            np.concatenate(cols),
            np.concatenate(weights),
            np.concatenate(owned) if owned else np.zeros(0, np.int64),
        )


class CoOccurrenceModel(OnlineModel):
    """Shared engine of :class:`ItemKNN` and the sequence model (see module docs).

    ``symmetric=True`` counts unordered co-occurrence (item-kNN); ``False`` counts
    ``earlier -> later`` transitions (next-item model).
    """

    name: ClassVar[str] = "cooccurrence"
    adaptable: ClassVar[Mapping[str, str]] = {"half_life_seconds": "half_life"}
    symmetric: ClassVar[bool] = True

    def __init__(
        self,
        window: int = 10,
        half_life_seconds: float | None = 365 * 86_400.0,
        gap_half_life_seconds: float | None = None,
        position_decay: float = 0.8,
        alpha: float = 0.8,
        query_items: int = 20,
        recency_decay: float = 0.6,
        popularity_tiebreak: float = 1e-6,
        weight_power: float = 0.0,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self.half_life_seconds = half_life_seconds
        self.gap_half_life_seconds = gap_half_life_seconds
        self.position_decay = position_decay
        self.alpha = alpha
        self.query_items = query_items
        self.recency_decay = recency_decay
        self.popularity_tiebreak = popularity_tiebreak
        self.weight_power = weight_power

        self.users = IdIndex()
        self.items = IdIndex()
        self._pairs = _PairStore()
        self._counts = np.zeros(0, np.float64)  # forward-decayed item mass
        self._win_items = np.full((0, window), -1, np.int64)  # oldest -> newest
        self._win_times = np.zeros((0, window), np.float64)
        self._t0: float | None = None  # forward-decay landmark
        self._watermark = -np.inf

    # ------------------------------------------------------------------ decay
    def _forward(self, t: np.ndarray) -> np.ndarray:
        if self.half_life_seconds is None or self._t0 is None:
            return np.ones_like(t)
        return np.exp2((t - self._t0) / self.half_life_seconds)

    def _rebase(self) -> None:
        """Move the landmark to the watermark (``None`` before any event): all mass
        becomes mass decayed to the watermark under the current half-life."""
        f = self._to_watermark()
        if f != 1.0:
            self._pairs.scale(f)
            self._counts *= f
        self._t0 = float(self._watermark) if np.isfinite(self._watermark) else None

    def set_param(self, name: str, value: float) -> None:
        """Set an adaptable hyperparameter; a new half-life applies from the watermark on.

        Mass is stored forward-decayed under the current half-life relative to a
        landmark that may lie many half-lives back, so it is first brought to the
        watermark under the old half-life (which becomes the landmark): the state at
        the watermark is unchanged, and the new half-life decays it from there,
        exactly as in a model restored from a snapshot taken before the change.
        """
        v = self._checked_param(name, value)
        if name == "half_life_seconds":
            self._rebase()
        super().set_param(name, v)

    def _rescale_steps(self, t_max: float) -> float:
        """Half-lives the landmark moves on for ``t_max`` (0: none; see below)."""
        hl = self.half_life_seconds
        if hl is None or self._t0 is None:
            return 0.0
        steps = float(np.floor((t_max - self._t0) / hl))
        return steps if steps > _MAX_EXP else 0.0

    def _maybe_rescale(self, t_max: float) -> None:
        hl = self.half_life_seconds
        if hl is None:
            return
        if self._t0 is None:
            self._t0 = t_max
            return
        steps = self._rescale_steps(t_max)
        if steps:
            # A power of two: exact, so only the landmark's position changes.
            factor = float(np.exp2(-steps))
            self._pairs.scale(factor)
            self._counts *= factor
            self._t0 += float(steps) * hl

    # ------------------------------------------------------------------ learning
    def _admit_items(self, names: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows of ``names`` (new ones added). The count array grows with the index
        wherever items enter it -- also user-side (``learn_local``, restored windows),
        before a delta brings the new items' counts -- since scoring covers the index."""
        rows = self.items.add_many(names)
        self._counts = grow_rows(self._counts, self.items.capacity, 0.0, min_capacity=16)
        return rows

    def learn(self, batch: Batch) -> None:
        n = len(batch)
        if n == 0:
            return
        u = self.users.add_many(batch.users)
        i = self._admit_items(batch.items)
        t = np.asarray(batch.timestamps, np.float64)
        w = np.asarray(batch.weights, np.float64)
        if self.weight_power != 1.0:
            w = w**self.weight_power
        self._maybe_rescale(float(t.max()))
        self._watermark = max(self._watermark, float(t.max()))
        fw = w * self._forward(t)
        np.add.at(self._counts, i, fw)
        src, dst, m = self._window_pairs(u, i, t, fw)
        self._add_pairs(src, dst, m)

    def _add_pairs(self, src: np.ndarray, dst: np.ndarray, m: np.ndarray) -> None:
        if self.symmetric:
            self._pairs.add(
                np.concatenate((src, dst)), np.concatenate((dst, src)), np.concatenate((m, m))
            )
        else:
            self._pairs.add(src, dst, m)

    def _window_pairs(
        self, u: np.ndarray, i: np.ndarray, t: np.ndarray, fw: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs ``(partner, item, mass)`` of a batch; moves the users' windows on."""
        n = len(u)
        self._win_items = grow_rows(self._win_items, self.users.capacity, -1, min_capacity=16)
        self._win_times = grow_rows(self._win_times, self.users.capacity, 0.0, min_capacity=16)

        W = self.window
        # Lay out, per user of the batch, [stored window (W) | this batch's events],
        # so every event's W predecessors are the W slots before it.
        order = np.argsort(u, kind="stable")
        us = u[order]
        first = np.concatenate(([True], us[1:] != us[:-1]))
        starts = np.flatnonzero(first)
        counts = np.diff(np.append(starts, n))
        group_users = us[starts]
        group_len = W + counts
        offsets = np.cumsum(group_len) - group_len
        seq_items = np.empty(int(group_len.sum()), np.int64)
        seq_times = np.empty(len(seq_items), np.float64)
        win_idx = offsets[:, None] + np.arange(W)
        seq_items[win_idx] = self._win_items[group_users]
        seq_times[win_idx] = self._win_times[group_users]
        group_of = np.repeat(np.arange(len(starts)), counts)
        flat = offsets[group_of] + W + (np.arange(n) - starts[group_of])
        seq_items[flat] = i[order]
        seq_times[flat] = t[order]

        # Pairs (partner at distance d, event) for d = 1..W, all at once.
        d = np.arange(1, W + 1)
        partner = seq_items[flat[:, None] - d]
        p_time = seq_times[flat[:, None] - d]
        item = i[order][:, None]
        mass = fw[order][:, None] * self.position_decay ** (d - 1)[None, :].astype(np.float64)
        if self.gap_half_life_seconds is not None:
            gap = np.maximum(t[order][:, None] - p_time, 0.0)
            mass = mass * np.exp2(-gap / self.gap_half_life_seconds)
        ok = (partner >= 0) & (partner != item)
        src = partner[ok]
        dst = np.broadcast_to(item, partner.shape)[ok]
        m = mass[ok]

        last_idx = (offsets + counts)[:, None] + np.arange(W)
        self._win_items[group_users] = seq_items[last_idx]
        self._win_times[group_users] = seq_times[last_idx]
        return src, dst, m

    # ------------------------------------------------------------------ scale-out
    # (online_models.deltas.SharesItemState: several trainers, one item state)

    def learn_local(self, batch: Batch) -> ItemDelta:
        """Move the batch's users' windows on; return its counts and pairs as a delta.

        Masses are decayed to the batch's latest event time ``t_ref``; pairs go one
        way only (a symmetric model mirrors them in :meth:`apply_delta`).
        """
        n = len(batch)
        if n == 0:
            return ItemDelta([])
        u = self.users.add_many(batch.users)
        i = self._admit_items(batch.items)
        t = np.asarray(batch.timestamps, np.float64)
        t_ref = float(t.max())
        w = np.asarray(batch.weights, np.float64)
        if self.weight_power != 1.0:
            w = w**self.weight_power
        if self.half_life_seconds is not None:
            w = w * np.exp2((t - t_ref) / self.half_life_seconds)
        src, dst, m = self._window_pairs(u, i, t, w)
        rows = np.unique(np.concatenate((i, src, dst)))
        ids = self.items.ids
        names = [str(ids[r]) for r in rows.tolist()]
        counts = np.bincount(np.searchsorted(rows, i), weights=w, minlength=len(rows))
        keys = (np.searchsorted(rows, src).astype(np.int64) << _SHIFT) | np.searchsorted(
            rows, dst).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        keys, mass = _sum_sorted(keys[order], m[order])
        return ItemDelta(names, {"counts": counts, "pairs.keys": keys, "pairs.values": mass},
                         t_ref)

    def apply_delta(self, delta: ItemDelta) -> None:
        """Add a :meth:`learn_local` delta (this trainer's or another's)."""
        self.apply_deltas([delta])

    def apply_deltas(self, deltas: Sequence[ItemDelta]) -> None:
        """Add :meth:`learn_local` deltas in order, their pairs as one sorted run.

        Equals applying them one by one up to float summation order: each delta's
        masses move to the landmark as :meth:`apply_delta`'s would (pairs gathered so
        far are added before the landmark moves), and the pair store merges one run
        instead of one per delta (a fold of the update topic reads many at a time).
        """
        live = [d for d in deltas if len(d) and d.t_ref is not None]
        if not live:
            return
        rows_each = delta_rows(live, self._admit_items)
        src: list[np.ndarray] = []
        dst: list[np.ndarray] = []
        mass: list[np.ndarray] = []

        def flush() -> None:
            if src:
                self._add_pairs(np.concatenate(src), np.concatenate(dst), np.concatenate(mass))
                for parts in (src, dst, mass):
                    parts.clear()

        for d, rows in zip(live, rows_each, strict=True):
            t_ref = float(d.t_ref)  # type: ignore[arg-type]
            if self._rescale_steps(t_ref):
                flush()  # what is gathered was weighed against the old landmark
            self._maybe_rescale(t_ref)
            self._watermark = max(self._watermark, t_ref)
            factor = float(self._forward(np.asarray([t_ref]))[0])
            self._counts[rows] += np.asarray(d.arrays["counts"], np.float64) * factor
            keys = np.asarray(d.arrays["pairs.keys"], np.int64)
            src.append(rows[keys >> _SHIFT])
            dst.append(rows[keys & _LOW])
            mass.append(np.asarray(d.arrays["pairs.values"], np.float64) * factor)
        flush()

    def user_state(self, users: Sequence[str]) -> dict[str, np.ndarray]:
        """The windows of ``users`` (those this model knows), items as string ids."""
        known = [u for u in users if u in self.users]
        rows = self.users.rows(known)
        rows = rows[rows < len(self._win_items)]
        win = self._win_items[rows] if len(rows) else np.full((0, self.window), -1, np.int64)
        times = self._win_times[rows] if len(rows) else np.zeros((0, self.window))
        used = np.unique(win[win >= 0])
        ids = self.items.ids
        udata, uoff = pack_strings([str(self.users.ids[r]) for r in rows.tolist()])
        idata, ioff = pack_strings([str(ids[r]) for r in used.tolist()])
        local = np.where(win >= 0, np.searchsorted(used, win), -1)
        return {"users.data": udata, "users.offsets": uoff, "items.data": idata,
                "items.offsets": ioff, "window.items": local.astype(np.int64),
                "window.times": np.asarray(times, np.float64)}

    def load_user_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        users = unpack_strings(arrays["users.data"], arrays["users.offsets"])
        if not users:
            return
        items = unpack_strings(arrays["items.data"], arrays["items.offsets"])
        u = self.users.add_many(users)
        i = self._admit_items(items) if items else np.zeros(0, np.int64)
        self._win_items = grow_rows(self._win_items, self.users.capacity, -1, min_capacity=16)
        self._win_times = grow_rows(self._win_times, self.users.capacity, 0.0, min_capacity=16)
        local = np.asarray(arrays["window.items"], np.int64).reshape(len(users), self.window)
        self._win_items[u] = np.where(local >= 0, i[np.maximum(local, 0)] if len(i) else -1, -1)
        self._win_times[u] = np.asarray(arrays["window.times"], np.float64).reshape(
            len(users), self.window)

    def forget_users(self, users: Sequence[str]) -> None:
        """Drop ``users``: their windows are cleared and their rows freed for reuse."""
        rows = np.asarray(self.users.remove_many(users), np.int64)
        held = rows[rows < len(self._win_items)]
        self._win_items[held] = -1
        self._win_times[held] = 0.0

    # ------------------------------------------------------------------ scoring
    def _query(
        self, user: str, history: Sequence[str], rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Query item rows and their recency weights (most recent = 1).

        ``rows``: the rows of ``history``'s last ``query_items`` items, if looked up.
        """
        if history:
            if rows is None:
                rows = self.items.rows(list(history)[-self.query_items :])
        else:
            r = self.users.get(user)
            if r < 0 or r >= len(self._win_items):
                return np.zeros(0, np.int64), np.zeros(0)
            rows = self._win_items[r][-self.query_items :]
        rows = rows[rows >= 0]
        if len(rows) == 0:
            return rows, np.zeros(0)
        # A repeated query item (possible in the model's own window) adds up.
        return rows, self.recency_decay ** np.arange(len(rows) - 1, -1, -1, dtype=np.float64)

    def _row_scores(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        cap = self.items.capacity
        counts = self._counts[:cap]
        safe = np.where(counts > 0, counts, 1.0)
        cols, mass = self._pairs.rows(rows, weights / safe[rows] ** self.alpha)
        scores = np.bincount(cols, weights=mass, minlength=cap)[:cap]
        return scores / safe ** (1.0 - self.alpha)

    def score_all(self, user: str, history: Sequence[str] = ()) -> np.ndarray:
        cap = self.items.capacity
        rows, weights = self._query(user, history)
        scores = self._row_scores(rows, weights) if len(rows) else np.zeros(cap)
        return self._finish_scores(scores, self._counts[:cap], self.popularity_tiebreak)

    def score_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]]
    ) -> np.ndarray:
        """Every query's rows gathered from the pair store at once, summed per query."""
        if len(users) != len(histories):
            raise ValueError("score_many needs one history per user")
        cap = self.items.capacity
        n = len(users)
        tails = self._tail_rows(histories, self.query_items)
        queries = [self._query(u, h, t) for u, h, t in zip(users, histories, tails, strict=True)]
        lengths = np.fromiter((len(r) for r, _ in queries), np.int64, count=n)
        scores = np.zeros((n, cap), np.float64)
        runs = len(self._pairs.runs)
        if lengths.sum() and cap and runs:
            rows = np.concatenate([r for r, _ in queries])
            weights = np.concatenate([w for _, w in queries])
            counts = self._counts[:cap]
            safe = np.where(counts > 0, counts, 1.0)
            rw = weights / safe[rows] ** self.alpha
            owner = np.repeat(np.arange(n), lengths)
            # Q: per query, its rows once per run (run-major), stable-sorted by query.
            # Runs are stacked every `stride` rows, a power of two above the catalogue:
            # the stacked matrix outlives catalogue growth (rebuilt only as runs change).
            stride = max(1024, 1 << (cap - 1).bit_length())
            order = np.argsort(np.tile(owner, runs), kind="stable")
            cols = (np.repeat(np.arange(runs) * stride, len(rows)) + np.tile(rows, runs))[order]
            q = sp.csr_matrix(
                (np.tile(rw, runs)[order], cols,
                 np.concatenate(([0], np.cumsum(lengths * runs)))),
                shape=(n, runs * stride),
            )
            prod = (q @ self._pairs.stacked(stride)).toarray()[:, :cap]
            scores = prod / safe ** (1.0 - self.alpha)
        return self._finish_many(scores, self._counts[:cap], self.popularity_tiebreak)

    def similar(self, item: str, k: int = 10) -> list[tuple[str, float]]:
        row = self.items.get(item)
        if row < 0:
            return []
        return self._similar_from(row, self._row_scores(np.array([row]), np.ones(1)), k)

    # ------------------------------------------------------------------ state
    @property
    def n_pairs(self) -> int:
        """Stored (directed) pair entries."""
        return len(self._pairs)

    def _to_watermark(self) -> float:
        """Factor turning forward-decayed mass into mass decayed to the watermark."""
        if self.half_life_seconds is None or self._t0 is None:
            return 1.0
        return float(np.exp2((self._t0 - self._watermark) / self.half_life_seconds))

    def get_state(self) -> ModelState:
        # Mass is exported decayed to the watermark: a canonical form that does not
        # depend on where the landmark happened to be (hence on batch boundaries).
        keys, vals = self._pairs.compact()
        nu, ni = self.users.capacity, self.items.capacity
        f = self._to_watermark()
        arrays = {
            **self.users.to_arrays("users"),
            **self.items.to_arrays("items"),
            "pairs.keys": keys.copy(),
            "pairs.values": vals * f,
            "counts": self._counts[:ni] * f,
            "window.items": self._win_items[:nu].copy(),
            "window.times": self._win_times[:nu].copy(),
        }
        meta: dict[str, Any] = {
            "class": self.name,
            "params": self.get_params(),
            "watermark": float(self._watermark) if np.isfinite(self._watermark) else None,
        }
        return ModelState(arrays=arrays, meta=meta)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        a, meta = state.arrays, state.meta
        m = cls(**meta["params"])
        m.users = IdIndex.from_arrays(a, "users")
        m.items = IdIndex.from_arrays(a, "items")
        keys = np.asarray(a["pairs.keys"], np.int64).copy()
        vals = np.asarray(a["pairs.values"], np.float64).copy()
        m._pairs.runs = [(keys, vals)] if len(keys) else []
        m._counts = np.asarray(a["counts"], np.float64).copy()
        m._win_items = np.asarray(a["window.items"], np.int64).reshape(-1, m.window).copy()
        m._win_times = np.asarray(a["window.times"], np.float64).reshape(-1, m.window).copy()
        wm = meta["watermark"]
        m._watermark = -np.inf if wm is None else float(wm)
        m._t0 = None if wm is None or m.half_life_seconds is None else float(wm)
        return m


class ItemKNN(CoOccurrenceModel):
    """Incremental item-kNN: decayed, normalised co-occurrence in users' recent windows.

    Recommends from the user's recent items (``history`` when given, else the
    model's own window of the user), the most recent weighing most; serves
    similar items from the same co-occurrence rows. Unknown users with no history
    get decayed popularity (the tie-break term alone).

    Parameters
    ----------
    window
        Each event pairs with the user's last ``window`` items.
    half_life_seconds
        Event-time half-life of co-occurrence mass and item counts (``None``: no decay).
    gap_half_life_seconds
        Half-life on the time gap between the two items of a pair (``None``: off).
    position_decay
        Factor per step of distance in the window (1.0: all partners equal).
    alpha
        Normalisation ``C_ij / (n_i**alpha n_j**(1-alpha))``; 0.5 is cosine.
    query_items
        Most recent items of the user used as the query.
    recency_decay
        Weight factor per step back among the query items.
    popularity_tiebreak
        Weight of a tiny decayed-popularity term that breaks ties.
    weight_power
        Event weights enter as ``w**weight_power``: 0 counts every interaction
        alike (best for next-item accuracy on MovieLens, where the rating says
        little about what is rated next), 1 uses the event type's weight as is.

    Examples
    --------
    >>> m = ItemKNN(half_life_seconds=None)
    >>> m.learn(Batch.from_columns(["a", "a", "b", "b", "c"], ["x", "y", "x", "y", "z"]))
    >>> m.similar("x", 2)[0][0]
    'y'
    >>> [i for i, _ in m.recommend("new-user", 1, history=["x"], exclude=["x"])]
    ['y']
    """

    name: ClassVar[str] = "itemknn"
    symmetric: ClassVar[bool] = True
