"""Drift maths: concept drift on hit/miss streams, data drift (PSI, JS), embedding drift.

Three kinds of drift, all pure Python/numpy (the trainer turns them into metrics):

* **Concept drift** -- :class:`ConceptDriftMonitor` feeds a model's per-event
  prequential *miss* stream (``1 - hit``) to River's ``ADWIN`` and ``PageHinkley``
  detectors. Only a *rise* in the miss rate (accuracy falling) counts as an alarm:
  that is what calls for adaptation, while a rise in accuracy is the model learning.
* **Data drift** -- :class:`WindowedDistribution` compares the distribution of ids in
  the latest window of events with the window just before it, as PSI
  (:func:`psi`) and Jensen-Shannon divergence (:func:`js_divergence`).
  :class:`DataDriftTracker` runs one for item popularity (events per item) and one
  for user activity (events per user).
* **Embedding drift** -- :func:`embedding_drift` is the mean cosine distance between
  the embeddings of the same item ids in two snapshots (the trainer compares them
  every ``embedding_drift_every_s``).

Binning a huge id space
-----------------------
Ids are hashed into ``buckets`` bins with CRC-32 of their UTF-8 bytes
(:func:`stable_buckets`): stable across processes and Python versions (unlike
``hash()``), cheap, and with bounded memory whatever the number of ids. A popular
item dominates its bucket, so a shift in which items are popular moves mass between
buckets and shows up in PSI/JS; a change that only swaps ids inside one bucket does
not -- more buckets, finer resolution, at the price of more sampling noise
(expected PSI between two samples of the *same* distribution is about
``(buckets - 1) * (1/n_ref + 1/n_cur)``).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from river import drift as river_drift
from scipy.spatial.distance import jensenshannon

__all__ = [
    "ConceptDriftMonitor",
    "DataDriftTracker",
    "WindowedDistribution",
    "embedding_drift",
    "js_divergence",
    "psi",
    "stable_buckets",
]

DETECTORS: tuple[str, ...] = ("adwin", "page_hinkley")


# --------------------------------------------------------------------------- divergences


def _proportions(x: np.ndarray | Sequence[float], eps: float) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    total = a.sum()
    p = a / total if total > 0 else np.full(len(a), 1.0 / max(len(a), 1))
    # Empty bins would make PSI infinite; a floor keeps it finite and comparable.
    p = np.maximum(p, eps)
    return p / p.sum()


def psi(expected: np.ndarray | Sequence[float], actual: np.ndarray | Sequence[float],
        eps: float = 1e-4) -> float:
    """Population stability index between two histograms (counts or proportions).

    ``sum((a - e) * ln(a / e))`` over bins, with proportions floored at ``eps``.
    Rules of thumb: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant shift.

    >>> psi([50, 30, 20], [50, 30, 20])
    0.0
    >>> round(psi([50, 30, 20], [20, 30, 50]), 3)
    0.55
    """
    e = _proportions(expected, eps)
    a = _proportions(actual, eps)
    if len(e) != len(a):
        raise ValueError("histograms must have the same number of bins")
    return float(np.sum((a - e) * np.log(a / e)))


def js_divergence(p: np.ndarray | Sequence[float], q: np.ndarray | Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2, so in ``[0, 1]``) between two histograms.

    Symmetric and finite even with empty bins.

    >>> js_divergence([1, 0], [1, 0])
    0.0
    >>> js_divergence([1, 0], [0, 1])
    1.0
    """
    a = np.asarray(p, dtype=np.float64)
    b = np.asarray(q, dtype=np.float64)
    if a.sum() <= 0 or b.sum() <= 0:
        return 0.0
    d = jensenshannon(a, b, base=2.0)
    return float(round(d * d, 12))


def stable_buckets(ids: Iterable[str], buckets: int) -> np.ndarray:
    """Bucket of each id: ``crc32(utf8(id)) % buckets`` (stable across processes).

    >>> stable_buckets(["item-1", "item-2", "item-1"], 64).tolist()
    [41, 19, 41]
    """
    if not isinstance(ids, (list, tuple, np.ndarray)):
        ids = list(ids)
    try:  # map() over C functions: no Python frame per id
        crc = np.fromiter(map(zlib.crc32, map(str.encode, ids)), np.int64, count=len(ids))
    except TypeError:  # some id is not a str
        crc = np.fromiter((zlib.crc32(str(i).encode()) for i in ids), np.int64,
                          count=len(ids))
    return crc % buckets


# --------------------------------------------------------------------------- data drift


class WindowedDistribution:
    """Histogram of hashed ids in the latest window vs the window before it.

    Events are counted into slices of ``window // slices`` events; the *current*
    window is the last ``slices`` complete slices and the *reference* the
    ``slices`` before them, so both slide forward one slice at a time. Memory is
    ``2 * slices + 1`` arrays of ``buckets`` counts whatever the stream length.

    Parameters
    ----------
    buckets
        Number of hash bins (see the module docstring).
    window
        Events per window.
    slices
        Slices per window: more slices, smoother sliding.

    Examples
    --------
    >>> w = WindowedDistribution(buckets=8, window=100, slices=4)
    >>> w.update([f"i{k % 5}" for k in range(200)])
    >>> w.ready, w.psi() < 0.01
    (True, True)
    >>> w.update([f"j{k % 3}" for k in range(100)])
    >>> w.psi() > 0.2
    True
    """

    def __init__(self, buckets: int = 64, window: int = 5_000, slices: int = 10) -> None:
        if window < slices or slices < 1 or buckets < 2:
            raise ValueError("need buckets >= 2 and window >= slices >= 1")
        self.buckets = buckets
        self.window = window
        self.slices = slices
        self._slice_size = window // slices
        self._done: deque[np.ndarray] = deque(maxlen=2 * slices)
        self._active = np.zeros(buckets, np.int64)
        self._active_n = 0

    def update(self, ids: Sequence[str] | np.ndarray) -> None:
        b = stable_buckets(ids, self.buckets)
        pos = 0
        while pos < len(b):
            take = min(self._slice_size - self._active_n, len(b) - pos)
            self._active += np.bincount(b[pos : pos + take], minlength=self.buckets)
            self._active_n += take
            pos += take
            if self._active_n == self._slice_size:
                self._done.append(self._active)
                self._active = np.zeros(self.buckets, np.int64)
                self._active_n = 0

    @property
    def ready(self) -> bool:
        """True once both windows are full."""
        return len(self._done) == 2 * self.slices

    def reference(self) -> np.ndarray | None:
        if not self.ready:
            return None
        return np.sum(list(self._done)[: self.slices], axis=0)

    def current(self) -> np.ndarray | None:
        if not self.ready:
            return None
        return np.sum(list(self._done)[self.slices :], axis=0)

    def psi(self) -> float | None:
        ref, cur = self.reference(), self.current()
        return None if ref is None or cur is None else psi(ref, cur)

    def js(self) -> float | None:
        ref, cur = self.reference(), self.current()
        return None if ref is None or cur is None else js_divergence(ref, cur)

    # State, so a restarted trainer resumes the same windows.
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        done = np.stack(list(self._done)) if self._done else np.zeros((0, self.buckets), np.int64)
        return {
            f"{prefix}.done": done,
            f"{prefix}.active": self._active.copy(),
            f"{prefix}.active_n": np.asarray([self._active_n], np.int64),
        }

    def load_arrays(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        done = arrays.get(f"{prefix}.done")
        if done is None or done.shape[1:] != (self.buckets,):
            return  # a snapshot from another configuration: start fresh
        self._done.clear()
        self._done.extend(np.asarray(r, np.int64).copy() for r in done[-2 * self.slices :])
        self._active = np.asarray(arrays[f"{prefix}.active"], np.int64).copy()
        self._active_n = min(int(arrays[f"{prefix}.active_n"][0]), self._slice_size - 1)


class DataDriftTracker:
    """Item-popularity and user-activity drift (PSI and JS) over sliding windows.

    >>> t = DataDriftTracker(buckets=16, window=200, slices=4)
    >>> t.update(["u1"] * 400, [f"i{k % 7}" for k in range(400)])
    >>> sorted(t.values())
    ['item_popularity', 'user_activity']
    >>> t.values()["user_activity"]["psi"]
    0.0
    """

    DISTRIBUTIONS: tuple[str, ...] = ("item_popularity", "user_activity")

    def __init__(self, buckets: int = 64, window: int = 5_000, slices: int = 10) -> None:
        self.items = WindowedDistribution(buckets, window, slices)
        self.users = WindowedDistribution(buckets, window, slices)

    def update(self, users: Sequence[str] | np.ndarray, items: Sequence[str] | np.ndarray) -> None:
        self.items.update(items)
        self.users.update(users)

    def values(self) -> dict[str, dict[str, float | None]]:
        """``{distribution: {"psi": x, "js": y}}`` (``None`` until the windows fill)."""
        return {
            "item_popularity": {"psi": self.items.psi(), "js": self.items.js()},
            "user_activity": {"psi": self.users.psi(), "js": self.users.js()},
        }

    def to_arrays(self, prefix: str = "data_drift") -> dict[str, np.ndarray]:
        return {
            **self.items.to_arrays(f"{prefix}.items"),
            **self.users.to_arrays(f"{prefix}.users"),
        }

    def load_arrays(self, arrays: dict[str, np.ndarray], prefix: str = "data_drift") -> None:
        self.items.load_arrays(arrays, f"{prefix}.items")
        self.users.load_arrays(arrays, f"{prefix}.users")


# --------------------------------------------------------------------------- concept drift


class ConceptDriftMonitor:
    """ADWIN and Page-Hinkley on one model's prequential miss stream.

    Parameters
    ----------
    adwin_delta
        ADWIN confidence (smaller: fewer false alarms, later detection).
    ph_threshold, ph_delta, ph_min_instances
        Page-Hinkley alarm threshold, tolerated drift magnitude and warm-up.

    Only increases of the miss rate alarm (see the module docstring). ``alarms``
    counts alarms per detector, ``last_alarm_time`` is the event time of the last
    one and ``n_seen`` the number of events fed.

    Examples
    --------
    >>> m = ConceptDriftMonitor()
    >>> fired = [m.update(k % 2 == 0, float(k)) for k in range(2000)]  # hit rate 0.5
    >>> sum(len(f) for f in fired)
    0
    >>> fired = [m.update(False, 2000.0 + k) for k in range(500)]      # then all misses
    >>> m.alarms["page_hinkley"] >= 1 and m.last_alarm_time > 2000
    True
    """

    def __init__(
        self,
        adwin_delta: float = 0.002,
        ph_threshold: float = 50.0,
        ph_delta: float = 0.005,
        ph_min_instances: int = 30,
    ) -> None:
        self.adwin_delta = adwin_delta
        self.ph_threshold = ph_threshold
        self.ph_delta = ph_delta
        self.ph_min_instances = ph_min_instances
        self._adwin = river_drift.ADWIN(delta=adwin_delta)
        self._ph = river_drift.PageHinkley(
            min_instances=ph_min_instances, delta=ph_delta, threshold=ph_threshold, mode="up"
        )
        self.alarms: dict[str, int] = dict.fromkeys(DETECTORS, 0)
        self.last_alarm_time: float | None = None
        self.last_alarm_event: int | None = None
        self.n_seen = 0

    def update(self, hit: bool | float, event_time: float | None = None) -> list[str]:
        """Feed one prequential outcome; returns the detectors that alarmed on it."""
        miss = 1.0 - float(hit)
        fired: list[str] = []
        before = self._adwin.estimation
        self._adwin.update(miss)
        # ADWIN alarms on any change; only a higher miss rate (worse accuracy) counts.
        if self._adwin.drift_detected and self._adwin.estimation > before:
            fired.append("adwin")
        self._ph.update(miss)
        if self._ph.drift_detected:
            fired.append("page_hinkley")
        self.n_seen += 1
        for d in fired:
            self.alarms[d] += 1
        if fired:
            self.last_alarm_time = event_time
            self.last_alarm_event = self.n_seen
        return fired

    def update_many(
        self, hits: Iterable[bool | float], event_times: Iterable[float] | None = None
    ) -> list[str]:
        """Feed a batch of outcomes; returns every detector that alarmed (with repeats)."""
        times = iter(event_times) if event_times is not None else None
        out: list[str] = []
        for h in hits:
            out.extend(self.update(h, next(times) if times is not None else None))
        return out

    def state(self) -> dict[str, Any]:
        """Counters (not the detectors' windows) for snapshot metadata."""
        return {
            "alarms": dict(self.alarms),
            "last_alarm_time": self.last_alarm_time,
            "n_seen": self.n_seen,
        }


# --------------------------------------------------------------------------- embeddings


def embedding_drift(
    prev_ids: Sequence[str | None],
    prev_vectors: np.ndarray,
    cur_ids: Sequence[str | None],
    cur_vectors: np.ndarray,
) -> float | None:
    """Mean cosine distance ``1 - cos`` between the same items' rows in two snapshots.

    Rows are matched by id (``None`` ids -- freed rows -- and zero vectors are
    skipped). Returns ``None`` when no item is in both.

    >>> v = np.eye(2, dtype=np.float32)
    >>> embedding_drift(["a", "b"], v, ["b", "a"], v[::-1])
    0.0
    >>> embedding_drift(["a", "b"], v, ["a", "b"], v[::-1])
    1.0
    """
    # Rows keep their item until it expires, so most match position by position
    # (compared in one C loop); only the others are matched by id through a dict.
    n = min(len(prev_ids), len(cur_ids), len(prev_vectors), len(cur_vectors))
    p_head = np.asarray(list(prev_ids[:n]), dtype=object)
    c_head = np.asarray(list(cur_ids[:n]), dtype=object)
    same = np.asarray(p_head == c_head, bool) & np.asarray(p_head != None, bool)  # noqa: E711
    differ = np.flatnonzero(~same).tolist()
    p_rest = differ + list(range(n, len(prev_ids)))
    c_rest = differ + list(range(n, len(cur_ids)))
    prev_row = {prev_ids[r]: r for r in p_rest
                if prev_ids[r] is not None and r < len(prev_vectors)}
    moved = [(prev_row[k], r) for r in c_rest
             if (k := cur_ids[r]) is not None and r < len(cur_vectors) and k in prev_row]
    if not moved and not differ:  # every row kept its item: views, no copies
        a, b = np.asarray(prev_vectors)[:n], np.asarray(cur_vectors)[:n]
    else:
        kept = np.flatnonzero(same)
        p_idx = np.concatenate([kept, np.asarray([p for p, _ in moved], np.int64)])
        c_idx = np.concatenate([kept, np.asarray([c for _, c in moved], np.int64)])
        a, b = np.asarray(prev_vectors)[p_idx], np.asarray(cur_vectors)[c_idx]
    if not len(a):
        return None
    # Sums in float64 whatever the vectors' type, cast chunk by chunk (no full copies).
    na = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))
    nb = np.sqrt(np.einsum("ij,ij->i", b, b, dtype=np.float64))
    ok = (na > 0) & (nb > 0)
    if not ok.any():
        return None
    cos = np.einsum("ij,ij->i", a, b, dtype=np.float64)[ok] / (na[ok] * nb[ok])
    return float(round(np.mean(1.0 - np.clip(cos, -1.0, 1.0)), 12))
