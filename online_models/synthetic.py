"""A synthetic click stream with planted structure, for tests, benchmarks and the demo.

The generator simulates users browsing in sessions that overlap in time:

* **latent factors** -- every item belongs to one of ``n_topics`` latent topics and
  every user has a peaked Dirichlet mixture over topics (most users care about one to
  three). A session picks a topic from its user's mixture and mostly stays in it;
* **Zipf popularity** -- items carry Zipf weights (``rank ** -zipf_a``, random ranks),
  so within a topic a few items take most of the traffic;
* **sequential structure** -- each item has a few fixed *successors* in its topic;
  with probability ``p_next`` a session's next item is a successor of its last one,
  which gives next-item models their signal;
* **new items** -- a fraction ``new_item_frac`` of the catalogue is released at random
  points over the stream and cannot be seen before;
* **a funnel** -- each touch is one event whose type is the deepest funnel stage the
  user reached (view -> click -> add_to_cart -> purchase); users go deeper on items
  of topics they like, so the type carries preference signal;
* **drift** -- from event ``drift_at`` on, user mixtures are redrawn, popularity ranks
  are reshuffled and successors are rewired, so item popularity (PSI) and every
  model's hit rate visibly shift.

Events come out in timestamp order and are identical for the same arguments and
``seed``. Rows have the ``liverec`` CSV columns (:data:`~online_models.datasets.LIVEREC_COLUMNS`).
"""

from __future__ import annotations

import csv
import gzip
import heapq
import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from online_models.datasets import LIVEREC_COLUMNS

__all__ = ["DEFAULT_START_TS", "generate_events", "iter_events", "write_csv"]

#: 2024-01-01T00:00:00Z
DEFAULT_START_TS = 1_704_067_200.0


@dataclass
class _Phase:
    """What drifts: user tastes, item popularity, successor links."""

    # Plain lists: the generator draws scalars, where bisect on lists beats numpy.
    user_topics: list[list[float]]  # (n_users, n_topics) row-stochastic
    user_topic_cdf: list[list[float]]
    topic_items: list[list[int]]  # per topic: item rows sorted by release time
    topic_release: list[list[int]]  # per topic: release event index, same order
    topic_cum: list[list[float]]  # per topic: cumulative popularity, same order
    global_items: list[int]
    global_release: list[int]
    global_cum: list[float]
    successors: list[list[int]]  # (n_items, 3)
    item_topic: list[int]  # topic of each item


@dataclass(order=True)
class _Session:
    next_ts: float
    seq: int
    user: int = field(compare=False)
    topic: int = field(compare=False)
    remaining: int = field(compare=False)
    last_item: int = field(compare=False, default=-1)
    session_id: str = field(compare=False, default="")


def iter_events(
    n_events: int,
    n_users: int,
    n_items: int,
    seed: int = 0,
    drift_at: int | None = None,
    *,
    start_ts: float = DEFAULT_START_TS,
    n_topics: int | None = None,
    zipf_a: float = 1.0,
    user_alpha: float = 0.1,
    p_next: float = 0.45,
    p_stay: float = 0.85,
    p_random: float = 0.05,
    new_item_frac: float = 0.2,
    drift_item_frac: float = 0.5,
    mean_session: float = 6.0,
    events_per_s: float = 5.0,
    mean_gap_s: float = 30.0,
) -> Iterator[dict[str, Any]]:
    """Yield ``n_events`` synthetic events (dicts with the ``liverec`` columns) in time order.

    Parameters
    ----------
    n_events, n_users, n_items
        Stream length and the sizes of the user base and the catalogue.
    seed
        All randomness comes from it.
    drift_at
        Index of the first event after the drift, or ``None`` for a stationary stream.
    start_ts
        Epoch seconds of the first session.
    n_topics
        Latent topics; default ``clip(n_items // 40, 2, 50)``.
    zipf_a
        Zipf exponent of item popularity.
    user_alpha
        Dirichlet concentration of user tastes (smaller = more peaked).
    p_next, p_stay, p_random
        Per event: follow a successor of the last item; else stay in the session topic
        (vs. a fresh topic from the user's mixture); ``p_random`` of all events pick an
        item by global popularity instead.
    new_item_frac
        Share of items released during the stream rather than at its start.
    drift_item_frac
        Share of items that move to another topic at the drift.
    mean_session, events_per_s, mean_gap_s
        Mean session length (events), overall event rate, mean gap inside a session.

    Examples
    --------
    >>> ev = list(iter_events(50, n_users=10, n_items=30, seed=1))
    >>> len(ev), sorted(ev[0])
    (50, ['event_id', 'event_type', 'item_id', 'session_id', 'timestamp', 'user_id'])
    >>> ev == list(iter_events(50, n_users=10, n_items=30, seed=1))
    True
    >>> all(a["timestamp"] <= b["timestamp"] for a, b in zip(ev, ev[1:]))
    True
    """
    if n_events < 0 or n_users <= 0 or n_items <= 0:
        raise ValueError("n_events must be >= 0 and n_users, n_items > 0")
    rng = np.random.default_rng(seed)
    k = n_topics if n_topics is not None else int(np.clip(n_items // 40, 2, 50))
    k = max(1, min(k, n_items))

    item_topic = rng.permutation(np.arange(n_items) % k)
    # Release index (in events) of each item; the rest of the catalogue exists at t=0.
    release = np.zeros(n_items, dtype=np.int64)
    n_new = round(new_item_frac * n_items) if n_events > 0 else 0
    if n_new:
        new_rows = rng.choice(n_items, size=n_new, replace=False)
        release[new_rows] = rng.integers(1, max(2, n_events), size=n_new)
    user_activity = rng.lognormal(0.0, 1.0, size=n_users)
    user_cdf = np.cumsum(user_activity / user_activity.sum()).tolist()

    def make_phase(item_topic: np.ndarray) -> _Phase:
        tastes = rng.dirichlet(np.full(k, user_alpha), size=n_users)
        pop = 1.0 / np.power(rng.permutation(n_items) + 1.0, zipf_a)
        topic_rows = []
        succ = np.zeros((n_items, 3), dtype=np.int64)
        for t in range(k):
            rows = np.flatnonzero(item_topic == t)
            rows = rows[np.argsort(release[rows], kind="stable")]
            topic_rows.append(rows)
            if len(rows):
                p = pop[rows] / pop[rows].sum()
                succ[rows] = rows[rng.choice(len(rows), size=(len(rows), 3), p=p)]
        g = np.argsort(release, kind="stable")
        return _Phase(
            user_topics=tastes.tolist(),
            user_topic_cdf=np.cumsum(tastes, axis=1).tolist(),
            topic_items=[r.tolist() for r in topic_rows],
            topic_release=[release[r].tolist() for r in topic_rows],
            topic_cum=[np.cumsum(pop[r]).tolist() for r in topic_rows],
            item_topic=item_topic.tolist(),
            global_items=g.tolist(),
            global_release=release[g].tolist(),
            global_cum=np.cumsum(pop[g]).tolist(),
            successors=succ.tolist(),
        )

    phase = make_phase(item_topic)
    later = None
    if drift_at is not None:
        # Half the catalogue changes topic, so item-item links learned before go stale.
        moved = rng.random(n_items) < drift_item_frac
        item_topic_after = item_topic.copy()
        item_topic_after[moved] = rng.integers(0, k, size=int(moved.sum()))
        later = make_phase(item_topic_after)

    # Scalar draws come from blocks of uniforms: far faster than one rng call each.
    block: list[float] = []
    pos = 0

    def u() -> float:
        nonlocal block, pos
        if pos >= len(block):
            block = rng.random(65_536).tolist()
            pos = 0
        pos += 1
        return block[pos - 1]

    def pick(items: list[int], rel: list[int], cum: list[float], n: int) -> int:
        # Released items form a prefix (sorted by release): sample within it.
        m = bisect_right(rel, n)
        if m == 0:
            return -1
        return items[min(bisect_right(cum, u() * cum[m - 1], 0, m), m - 1)]

    def draw_topic(ph: _Phase, user: int) -> int:
        cdf = ph.user_topic_cdf[user]
        return min(bisect_right(cdf, u() * cdf[-1]), k - 1)

    def choose(s: _Session) -> int:
        item = -1
        if s.last_item >= 0 and u() < p_next:
            cand = phase.successors[s.last_item][int(u() * 3) % 3]
            if release_at[cand] <= emitted:
                item = cand
        if item < 0 and u() < p_random:
            item = pick(phase.global_items, phase.global_release, phase.global_cum, emitted)
        if item < 0:
            if u() >= p_stay:
                s.topic = draw_topic(phase, s.user)
            t = s.topic
            item = pick(phase.topic_items[t], phase.topic_release[t], phase.topic_cum[t], emitted)
        if item < 0:
            item = pick(phase.global_items, phase.global_release, phase.global_cum, emitted)
        return item

    release_at = release.tolist()
    log_stop = math.log(1.0 - 1.0 / mean_session) if mean_session > 1 else -math.inf
    user_seen: list[set[int]] = [set() for _ in range(n_users)]
    sessions: list[_Session] = []
    arrival = start_ts
    session_rate = events_per_s / mean_session
    n_sessions = 0
    emitted = 0
    while emitted < n_events:
        if drift_at is not None and emitted == drift_at and later is not None:
            phase, later = later, None
        if sessions and sessions[0].next_ts <= arrival:
            s = heapq.heappop(sessions)
        else:
            user = min(bisect_right(user_cdf, u()), n_users - 1)
            length = 1 + int(math.log(1.0 - u()) / log_stop)
            s = _Session(
                arrival,
                n_sessions,
                user,
                draw_topic(phase, user),
                length,
                session_id=f"s{seed}-{n_sessions:08d}",
            )
            n_sessions += 1
            arrival -= math.log(1.0 - u()) / session_rate

        # Users rarely re-consume: redraw a few times before accepting a repeat.
        seen = user_seen[s.user]
        for _attempt in range(4):
            item = choose(s)
            if item not in seen:
                break
        seen.add(item)

        # Funnel depth grows with how much the user likes the item's topic.
        affinity = phase.user_topics[s.user][phase.item_topic[item]]
        etype = "view"
        if u() < 0.2 + 0.3 * affinity:
            etype = "click"
            if u() < 0.3:
                etype = "add_to_cart"
                if u() < 0.5:
                    etype = "purchase"

        yield {
            "event_id": f"ev{seed}-{emitted:010d}",
            "user_id": f"u{s.user:06d}",
            "item_id": f"i{item:06d}",
            "event_type": etype,
            "timestamp": round(s.next_ts, 3),
            "session_id": s.session_id,
        }
        emitted += 1
        s.last_item = item
        s.remaining -= 1
        if s.remaining > 0:
            s.next_ts += 1.0 - mean_gap_s * math.log(1.0 - u())
            heapq.heappush(sessions, s)


def generate_events(
    n_events: int,
    n_users: int,
    n_items: int,
    seed: int = 0,
    drift_at: int | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """All of :func:`iter_events` as a list (same arguments).

    >>> ev = generate_events(200, 20, 50, seed=3, drift_at=100)
    >>> len(ev), {e["event_type"] for e in ev} <= {"view", "click", "add_to_cart", "purchase"}
    (200, True)
    """
    return list(iter_events(n_events, n_users, n_items, seed, drift_at, **kwargs))


def planted_item_texts(n_items: int = 1_000) -> dict[str, list[str]]:
    """Content for the stream's items ``i000000``...: a few words that items share in
    fixed patterns (not the latent topics), so content models have something to match.

    >>> planted_item_texts(2)
    {'i000000': ['topic0', 'shape0', 'tone0'], 'i000001': ['topic1', 'shape1', 'tone1']}
    """
    return {f"i{k:06d}": [f"topic{k % 7}", f"shape{k % 13}", f"tone{k % 5}"]
            for k in range(n_items)}


def write_csv(events: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write events as a ``liverec`` CSV (gzip when the name ends in ``.gz``); returns rows.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_csv(iter_events(5, 3, 10, seed=0), os.path.join(d, "e.csv.gz"))
    5
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(LIVEREC_COLUMNS)
        for e in events:
            ts = e["timestamp"]
            w.writerow(
                (
                    e["event_id"],
                    e["user_id"],
                    e["item_id"],
                    e["event_type"],
                    f"{ts:.3f}" if isinstance(ts, float) else ts,
                    e.get("session_id") or "",
                )
            )
            n += 1
    return n
