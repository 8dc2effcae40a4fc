"""The scale-out overlay for real: ``docker-compose.yml`` with
``docker-compose.scale-out.yml``, two trainers in one consumer group building one model.

The same images and engine as :mod:`tests.system.test_compose` (the session's fixtures
in ``tests/system/conftest.py``; that module's stack is down before this one comes up).
Checks that both trainers join and own partitions of the 3-partition topic, that both
learn and Prometheus scrapes both, that the server loads the merged model and answers
from it, and that the overlay's second trainer runs as hardened as the main file's
services.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.system.test_compose import (
    COMPOSE_FILE,
    Stack,
    _report,
    inspect,
    new_stack,
    running,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]

OVERLAY = COMPOSE_FILE.parent / "docker-compose.scale-out.yml"
TRAINERS = ("trainer", "trainer-2")


@pytest.fixture(scope="module")
def scaled(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Stack]:
    st = new_stack(images, tmp_path_factory.mktemp("replay-data"), "liverec-scale",
                   COMPOSE_FILE, OVERLAY)
    try:
        with running(st, "a recommendation from a merged snapshot", "scale_out_"):
            yield st
    finally:
        _report(st, write=False)  # LIVEREC_COMPOSE_TIMINGS is the main stack's


def _query(st: Stack, q: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{st.prometheus}/api/v1/query", params={"query": q}, timeout=10).json()
    return list(body["data"]["result"])


def test_two_trainers_share_the_topic_and_both_learn(scaled: Stack) -> None:
    def both_up() -> bool:
        return len(_query(scaled, 'up{job="liverec-trainer"} == 1')) == 2

    wait_for("both trainers scraped by Prometheus", both_up, scaled, 180)
    # Each owns part of the 3 partitions, none owned twice, all owned.
    owned = wait_for(
        "all 3 partitions owned, by both trainers",
        lambda: (r := _query(scaled, "liverec_trainer_partition_owned == 1"))
        and len(r) == 3 and len({s["metric"]["instance"] for s in r}) == 2 and r,
        scaled, 180)
    assert sorted(s["metric"]["partition"] for s in owned) == ["0", "1", "2"], owned
    learned = wait_for(
        "both trainers learning",
        lambda: (r := _query(scaled, "liverec_trainer_events_learned_total > 0"))
        and len(r) == 2 and r, scaled, 180)
    assert {s["metric"]["instance"] for s in learned} == {"trainer:9101", "trainer-2:9101"}


def test_the_server_answers_from_the_merged_model(scaled: Stack) -> None:
    model = wait_for(
        "a merged snapshot loaded by the server",
        lambda: (m := httpx.get(f"{scaled.serving}/v1/model", timeout=10).json())
        and m.get("version", 0) >= 1 and m.get("events_total", 0) > 0 and m,
        scaled, 180)
    assert "itemknn" in model["models"] and model["scale_out"], model
    r = httpx.get(f"{scaled.serving}/v1/recommendations",
                  params={"user_id": "nobody", "k": 5}, timeout=10)
    assert r.status_code == 200 and len(r.json()["items"]) == 5, r.text


def test_the_overlay_runs_its_services_hardened(scaled: Stack) -> None:
    for service in (*TRAINERS, "serving"):
        host = inspect(scaled.container(service))["HostConfig"]
        assert host["ReadonlyRootfs"] is True, (service, host["ReadonlyRootfs"])
        assert [c.upper() for c in host["CapDrop"] or []] in (["ALL"], ["CAP_ALL"]), (
            service, host["CapDrop"])
        assert "no-new-privileges:true" in (host["SecurityOpt"] or []), (
            service, host["SecurityOpt"])
