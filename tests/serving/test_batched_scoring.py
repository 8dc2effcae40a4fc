"""Micro-batched exact scoring: same results as one query at a time, swaps, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import serving.batcher
import serving.scoring
from online_models.base import OnlineModel, UserHistory
from online_models.snapshot import Snapshot, SnapshotStore
from serving.app import create_app
from serving.live import LiveContext
from serving.metrics import ServingMetrics
from serving.ranking import FactorScorer, LoadedSnapshot, ScoreBatcher, select_top_k
from serving.settings import ServeSettings
from serving.state import ServingState
from serving.synthetic_state import random_bpr, random_history, random_popularity
from tests.serving.client import TestClient
from tests.serving.conftest import settings_for


def _patch_score_columns(monkeypatch: pytest.MonkeyPatch,
                         fake: Callable[..., list[np.ndarray]]) -> None:
    """Every exact factor product through ``fake``: the batcher's worker and inline
    products and a scorer's own (``score_one``) all call ``score_columns``."""
    monkeypatch.setattr(serving.batcher, "score_columns", fake)
    monkeypatch.setattr(serving.scoring, "score_columns", fake)

N_ITEMS, DIM, N_USERS = 20_000, 64, 300
KS = (1, 3, 10, 50, 200, 1000)


def _snapshot(seed: int, n_items: int = N_ITEMS, dim: int = DIM) -> Snapshot:
    return Snapshot(
        version=seed,
        path=None,  # type: ignore[arg-type]
        manifest={"watermark": 1.0, "created_at": "2024-01-01T00:00:00+00:00"},
        models={
            "bpr": random_bpr(N_USERS, n_items, dim, seed=seed, clusters=50),
            "popularity": random_popularity(n_items, 5000),
        },
        history=random_history(N_USERS, n_items, per_user=20, seed=seed, clusters=50),
    )


@pytest.fixture(scope="module")
def snap() -> Snapshot:
    return _snapshot(seed=2)


def _requests(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(user, k): known users (with seen items), cold users folding in a history."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        user = f"u{rng.integers(N_USERS)}" if i % 4 else f"cold-{i}"
        out.append((user, KS[i % len(KS)]))
    return out


def _live_with_cold_histories(reqs: list[tuple[str, int]]) -> LiveContext:
    live = LiveContext()
    rng = np.random.default_rng(1)
    for user, _ in reqs:
        if user.startswith("cold-"):
            for r in rng.integers(0, N_ITEMS, 7):
                live.observe(user, f"i{r}", now=0.0)
    return live


def test_select_top_k_equals_a_full_sort_with_ties_and_exclusions() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 30_000))
        # Rounded scores make many ties, also at the k-th place; some rows -inf.
        scores = np.round(rng.standard_normal(n), int(rng.integers(0, 3))).astype(np.float32)
        scores[rng.integers(0, n, n // 10)] = -np.inf
        if trial % 7 == 0:
            scores[: n - 3] = -np.inf  # fewer finite scores than k
        exclude = rng.choice(n, size=min(n, int(rng.integers(0, 50))), replace=False)
        k = int(rng.choice([1, 2, 10, 100, 1000, n + 5]))
        masked = scores.copy()
        masked[exclude] = -np.inf
        rows_all = np.arange(n)
        order = np.lexsort((rows_all, -masked))
        want = order[np.isfinite(masked[order])][:k]
        # As a column of a batch block (strided) and as a plain array.
        block = np.repeat(scores[:, None], 3, axis=1)
        for buf in (scores.copy(), block[:, 1]):
            rows, got = select_top_k(buf, k, exclude)
            assert rows.tolist() == want.tolist()
            assert np.array_equal(got, masked[want])


@pytest.mark.parametrize(("n_items", "dim"), [(N_ITEMS, DIM), (300, 8), (5001, 17)])
def test_batch_columns_are_bit_identical_to_single_query_scores(n_items: int, dim: int) -> None:
    model = random_bpr(N_USERS, n_items, dim, seed=3)
    scorer = FactorScorer.probe(model)
    assert scorer is not None
    batcher = ScoreBatcher(max_batch=32, worker=False)
    users = [f"u{u}" for u in range(N_USERS)]
    for size in (1, 2, 3, 5, 7, 9, 16, 17, 31, 32):
        queries = [scorer.query(u, ()) for u in users[:size]]
        tickets = [batcher.submit(scorer, q) for q in queries if q is not None]
        assert batcher.run_once() == size
        for t, q in zip(tickets, queries, strict=True):
            assert t is not None and t.column is not None and not t.failed
            assert np.array_equal(t.scores(), scorer.scores(q))
            batcher.release(t)
    # One block serves every batch: it is lent out and given back each time.
    assert len(batcher._free) == 1


def test_batched_top_k_equals_single_query_top_k_with_exclusions(snap: Snapshot) -> None:
    """Deterministic 32-query batches: same rows and scores, bit for bit, k up to 1000."""
    model = snap.models["bpr"]
    scorer = FactorScorer.probe(model)
    assert scorer is not None
    batcher = ScoreBatcher(max_batch=32, worker=False)
    reqs = _requests(320)
    live = _live_with_cold_histories(reqs)
    loaded = LoadedSnapshot(snap, "bpr")
    for start in range(0, len(reqs), 32):
        chunk = reqs[start : start + 32]
        work = []
        for user, k in chunk:
            history = loaded.history(user, live)
            assert history  # every request here excludes seen items
            exclude = model.items.rows(history)
            q = scorer.query(user, history)
            assert q is not None
            work.append((q, k, exclude[exclude >= 0], batcher.submit(scorer, q)))
        assert batcher.run_once() == len(chunk)
        for q, k, exclude, t in work:
            assert t is not None and t.column is not None
            rows, scores = select_top_k(t.scores(), k, exclude)
            batcher.release(t)
            want_rows, want_scores = scorer.top_k(q, k, exclude)
            assert rows.tolist() == want_rows.tolist()
            assert np.array_equal(scores, want_scores)
            assert not set(rows.tolist()) & set(exclude.tolist())
            assert len(rows) == k


@pytest.mark.parametrize(("inline", "slots"), [(True, 2), (True, 1), (False, 2)])
def test_concurrent_batched_recommendations_equal_the_single_query_path(
    snap: Snapshot, inline: bool, slots: int
) -> None:
    reqs = _requests(600, seed=4)
    live = _live_with_cold_histories(reqs)
    single = LoadedSnapshot(snap, "bpr")
    batcher = ScoreBatcher(max_batch=32, inline=inline, slots=slots)
    batched = LoadedSnapshot(snap, "bpr", batcher=batcher)
    try:
        with ThreadPoolExecutor(32) as pool:
            got = list(pool.map(lambda r: batched.recommend(r[0], r[1], live=live), reqs))
    finally:
        batcher.stop()
    for (user, k), rec in zip(reqs, got, strict=True):
        want = single.recommend(user, k, live=live)
        assert rec.items == want.items  # item ids and float scores, exactly
        assert not rec.fallback and len(rec.items) == k
        seen = set(single.history(user, live))
        assert not {i for i, _ in rec.items} & seen
    assert batcher.queries + batcher.inline_queries == len(reqs)
    assert batcher.failed_batches == 0 and batcher.largest <= 32
    assert inline or batcher.inline_queries == 0


def test_queued_queries_keep_the_snapshot_they_started_with() -> None:
    old, new = _snapshot(seed=2, n_items=4000), _snapshot(seed=5, n_items=4000)
    batcher = ScoreBatcher(max_batch=32, worker=False)
    scorers = [FactorScorer.probe(s.models["bpr"]) for s in (old, new)]
    tickets = []
    for i in range(40):  # a swap in the middle of the queue, and back again
        scorer = scorers[(i // 7) % 2]
        assert scorer is not None
        q = scorer.query(f"u{i}", ())
        assert q is not None
        tickets.append((scorer, q, batcher.submit(scorer, q)))
    sizes = []
    while n := batcher.run_once():
        sizes.append(n)
    assert sum(sizes) == 40
    for scorer, q, t in tickets:
        assert t is not None and t.column is not None
        assert t.scorer is scorer
        assert np.array_equal(t.scores(), scorer.scores(q))
        batcher.release(t)


def test_swaps_under_concurrent_load_fail_nothing_and_score_by_the_request_snapshot() -> None:
    snaps = [_snapshot(seed=s, n_items=4000) for s in (2, 5, 7)]
    batcher = ScoreBatcher(max_batch=32)
    loaded = [LoadedSnapshot(s, "bpr", batcher=batcher) for s in snaps]
    single = [LoadedSnapshot(s, "bpr") for s in snaps]
    current = {"i": 0}
    stop = threading.Event()
    results: list[tuple[int, str, int, list[tuple[str, float]]]] = []
    errors: list[BaseException] = []

    def swapper() -> None:
        while not stop.is_set():
            current["i"] = (current["i"] + 1) % len(loaded)
            time.sleep(0.001)

    def client(c: int) -> None:
        try:
            for j in range(60):
                i = current["i"]  # read once per request, like the app's dependency
                user, k = f"u{(c * 61 + j) % N_USERS}", KS[j % len(KS)]
                results.append((i, user, k, loaded[i].recommend(user, k).items))
        except BaseException as exc:  # any failure is the test's failure
            errors.append(exc)

    sw = threading.Thread(target=swapper)
    sw.start()
    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        sw.join()
        batcher.stop()
    assert not errors
    assert len(results) == 16 * 60
    for i, user, k, items in results:
        assert items == single[i].recommend(user, k).items
    assert batcher.failed_batches == 0


def test_a_failing_batch_falls_back_to_single_scoring_and_the_worker_survives(
    snap: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    original: Callable[..., list[np.ndarray]] = serving.scoring.score_columns
    broken = {"on": True}

    def flaky(*args: Any) -> list[np.ndarray]:
        if broken["on"] and threading.current_thread().name == "liverec-score":
            raise MemoryError("simulated")
        return original(*args)

    _patch_score_columns(monkeypatch, flaky)
    single = LoadedSnapshot(snap, "bpr")
    batcher = ScoreBatcher(max_batch=8, inline=False)  # every query through the worker
    batched = LoadedSnapshot(snap, "bpr", batcher=batcher)
    users = [f"u{u}" for u in range(64)]
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda u: batched.recommend(u, 10), users))
        assert batcher.failed_batches >= 1 and batcher.queries == 0
        assert [r.items for r in got] == [single.recommend(u, 10).items for u in users]
        broken["on"] = False  # the same worker thread scores the next batches
        assert batched.recommend("u1", 10).items == single.recommend("u1", 10).items
        assert batcher.queries == 1
    finally:
        batcher.stop()


def test_stop_with_queued_queries_scores_them_in_their_own_threads(snap: Snapshot) -> None:
    scorer = FactorScorer.probe(snap.models["bpr"])
    assert scorer is not None
    batcher = ScoreBatcher(worker=False, inline=False)  # nothing drains the queue until stop()
    none = np.zeros(0, np.int64)
    users = [f"u{u}" for u in range(6)]
    out: dict[str, np.ndarray] = {}

    def ask(user: str) -> None:
        q = scorer.query(user, ())
        assert q is not None
        out[user] = batcher.top_k(scorer, q, 10, none)[0]

    threads = [threading.Thread(target=ask, args=(u,)) for u in users]
    for t in threads:
        t.start()
    while len(batcher._queue) < len(users):
        time.sleep(0.001)
    batcher.stop()
    for t in threads:
        t.join()
    for u in users:
        q = scorer.query(u, ())
        assert q is not None
        assert out[u].tolist() == scorer.top_k(q, 10, none)[0].tolist()
    q = scorer.query("u9", ())
    assert q is not None
    assert batcher.submit(scorer, q) is None  # after stop: callers score themselves


def test_settings_turn_batching_on_by_default_and_off_by_env(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = ServingState(ServeSettings(snapshots=tmp_path), ServingMetrics())
    assert state.batcher is not None and state.rank_pool is not None
    assert state.rank_pool._max_workers == state.settings.rank_batch_max
    state.stop()
    monkeypatch.setenv("LIVEREC_RANK_BATCH", "false")
    state = ServingState(ServeSettings(snapshots=tmp_path), ServingMetrics())
    assert state.batcher is None and state.rank_pool is not None
    assert state.rank_pool._max_workers == state.settings.rank_threads
    state.stop()
    inline = ServingState(ServeSettings(snapshots=tmp_path, rank_threads=0), ServingMetrics())
    assert inline.batcher is None and inline.rank_pool is None


Trained = tuple[dict[str, OnlineModel], UserHistory, float]


@pytest.fixture
def batched_client(store: SnapshotStore) -> Iterator[TestClient]:
    settings = settings_for(store.root, reload_interval_s=0.01, rank_batch=True)
    with TestClient(create_app(settings)) as c:
        yield c


def test_http_requests_through_the_batcher_survive_swaps(
    batched_client: TestClient, store: SnapshotStore, trained: Trained
) -> None:
    models, history, watermark = trained
    statuses: list[int] = []
    stop = threading.Event()

    def hammer(c: int) -> None:
        while not stop.is_set():
            r = batched_client.get(
                "/v1/recommendations", params={"user_id": f"u{c:06d}", "k": 20, "model": "bpr"}
            )
            statuses.append(r.status_code)

    threads = [threading.Thread(target=hammer, args=(c,)) for c in range(6)]
    for t in threads:
        t.start()
    try:
        for _ in range(8):
            v = store.write(
                models, history=history, offsets={}, events_total=1, watermark=watermark
            ).version
            deadline = time.monotonic() + 30
            while (
                batched_client.get("/v1/model").json()["version"] != v
                and time.monotonic() < deadline
            ):
                time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    state: ServingState = batched_client.app.state.serving  # type: ignore[attr-defined]
    assert statuses and set(statuses) == {200}
    assert state.batcher is not None
    assert state.batcher.queries + state.batcher.inline_queries > 0
    assert state.batcher.failed_batches == 0


def test_a_lone_query_is_scored_inline_without_the_worker(snap: Snapshot) -> None:
    scorer = FactorScorer.probe(snap.models["bpr"])
    assert scorer is not None
    batcher = ScoreBatcher(worker=False)  # no worker: only the inline path can answer
    exclude = np.array([3, 5, 7])
    q = scorer.query("u1", ())
    assert q is not None
    rows, scores = batcher.top_k(scorer, q, 10, exclude)
    want_rows, want_scores = scorer.top_k(q, 10, exclude)
    assert rows.tolist() == want_rows.tolist() and np.array_equal(scores, want_scores)
    assert batcher.inline_queries == 1 and batcher.queries == 0 and batcher._running == 0
    assert len(batcher._free) == 1  # the block it borrowed is back in the pool


def test_a_failing_inline_product_falls_back_to_single_scoring(
    snap: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    original: Callable[..., list[np.ndarray]] = serving.scoring.score_columns
    calls = {"n": 0}

    def fails_once(*args: Any) -> list[np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("simulated")
        return original(*args)

    scorer = FactorScorer.probe(snap.models["bpr"])
    assert scorer is not None
    q = scorer.query("u2", ())
    assert q is not None
    none = np.zeros(0, np.int64)
    want_rows, want_scores = scorer.top_k(q, 10, none)
    _patch_score_columns(monkeypatch, fails_once)
    batcher = ScoreBatcher(worker=False)
    rows, scores = batcher.top_k(scorer, q, 10, none)
    assert calls["n"] == 2  # the inline product failed, the fallback scored
    assert rows.tolist() == want_rows.tolist() and np.array_equal(scores, want_scores)
    assert batcher._running == 0 and len(batcher._free) == 1
