"""Slow request work runs off the event loop: while one request's similar-items scan is
held up, the loop still answers ``/healthz``.

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
from fastapi.testclient import TestClient

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
