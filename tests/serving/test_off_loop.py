"""Slow request work runs off the event loop: while one request's similar-items scan (or
readiness check) is held up, the loop still answers ``/healthz``.

Each test blocks the slow call on a :class:`threading.Event` and checks that a
concurrent ``/healthz`` completes while the call is still blocked. Were the call on
the event loop, ``/healthz`` could only complete after it, so the check fails (the
blocked call gives up after ``GIVE_UP_S`` rather than hang the test); nothing here
asserts a duration.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from online_models.content import ItemFeatures
from serving.content import ContentIndex
from tests.serving.client import TestClient
from tests.serving.conftest import Trained

GIVE_UP_S = 30.0


class Gate:
    """A stand-in for a slow call: records where it ran and blocks until opened."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.returned = threading.Event()
        self.on_loop: bool | None = None

    def __call__(self, *args: Any) -> Any:
        try:
            asyncio.get_running_loop()
            self.on_loop = True
        except RuntimeError:  # no loop runs in this thread: a worker thread
            self.on_loop = False
        self.entered.set()
        self.opened.wait(GIVE_UP_S)
        self.returned.set()
        return self.answer


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as ex:
        yield ex


def _healthz_while_blocked(
    client: TestClient, gate: Gate, pool: ThreadPoolExecutor, call: Callable[[], Any]
) -> Future[Any]:
    """Start ``call`` (which reaches ``gate``), probe /healthz meanwhile, then open it."""
    pending = pool.submit(call)
    try:
        assert gate.entered.wait(GIVE_UP_S), "the request never reached the slow call"
        assert client.get("/healthz").status_code == 200
        assert not gate.returned.is_set(), "/healthz waited for the slow call"
    finally:
        gate.opened.set()
    return pending


def test_model_similar_runs_off_the_event_loop(
    client: TestClient, trained: Trained, pool: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    item = str(trained[0]["bpr"].items.ids[0])
    _, model = client.app.state.serving.current.model("bpr")  # type: ignore[attr-defined]
    gate = Gate([("other", 0.5)])
    monkeypatch.setattr(model, "similar", gate)
    pending = _healthz_while_blocked(
        client, gate, pool,
        lambda: client.get(f"/v1/items/{item}/similar", params={"model": "bpr"}))
    r = pending.result(GIVE_UP_S)
    assert r.status_code == 200 and r.json()["items"] == [{"item_id": "other", "score": 0.5}]
    assert gate.on_loop is False


class GateLock(Gate):
    """A lock whose acquisition is recorded and held up like :class:`Gate`'s call."""

    def __init__(self) -> None:
        super().__init__(None)
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@pytest.mark.parametrize("params", [{}, {"model": "content"}])
def test_content_index_lock_is_never_taken_on_the_event_loop(
    client: TestClient, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch,
    params: dict[str, str],
) -> None:
    # An item no model knows: the answer comes from (here: is looked up in) the content
    # index, whose lock a matrix rebuild may hold for most of a second.
    gate = GateLock()
    monkeypatch.setattr(client.app.state.serving.content, "_lock", gate)  # type: ignore[attr-defined]
    pending = _healthz_while_blocked(
        client, gate, pool, lambda: client.get("/v1/items/no-such-item/similar", params=params))
    r = pending.result(GIVE_UP_S)
    assert r.status_code == 404 and gate.on_loop is False


def test_content_rebuild_does_not_hold_the_index_lock(
    pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    ix = ContentIndex(ItemFeatures(n_buckets=256))
    ix.update({"a": "red wooden toy train", "b": "blue glass vase"})
    build = ItemFeatures.matrix
    gate = Gate(None)

    def slow_matrix(self: ItemFeatures, items: Any) -> Any:
        gate()
        return build(self, items)

    monkeypatch.setattr(ItemFeatures, "matrix", slow_matrix)
    pending = pool.submit(ix.similar, "a", 5)
    try:
        assert gate.entered.wait(GIVE_UP_S)
        # While the matrix is being built, membership tests and writes go through.
        assert "b" in ix and "zz" not in ix
        ix.update({"n": "red wooden toy train engine"})
        assert not gate.returned.is_set(), "the index lock was held by the rebuild"
    finally:
        gate.opened.set()
    assert pending.result(GIVE_UP_S) == []  # built from the content before "n" came
    assert [i for i, _ in ix.similar("a", 5)] == ["n"]  # the next call rebuilds


def test_readiness_checks_run_off_the_event_loop(
    client: TestClient, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With scale-out trainers the readiness checks read heartbeat files: a slow file
    # system must not hold up the loop.
    state = client.app.state.serving  # type: ignore[attr-defined]
    gate = Gate(state.dependencies())
    monkeypatch.setattr(state, "dependencies", gate)
    pending = _healthz_while_blocked(client, gate, pool, lambda: client.get("/readyz"))
    assert pending.result(GIVE_UP_S).status_code in (200, 503)
    assert gate.on_loop is False
