"""The whole system through its real processes, observed through a real Prometheus.

A local Kafka broker, ``liverec train`` and ``liverec serve`` (subprocesses of the
CLI), and Debian's ``prometheus`` server scraping both on loopback with the repo's
alert rules loaded. A synthetic stream with a planted drift is replayed in two
halves; every figure is then read from Prometheus' HTTP API, not from the processes.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from liverec.demo import ChildProcess, Scrape
from liverec.ports import pick_port
from tests.system.helpers import (
    ALERTS,
    LIVEREC,
    alert_exprs,
    dashboard_exprs,
    exported_names,
    metric_names,
)

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

N_EVENTS = 8_000
DRIFT_AT = 4_000
MODELS = "popularity,itemknn"


@dataclass
class System:
    bootstrap: str
    topic: str
    api: str
    trainer_metrics: str
    prometheus: str
    children: list[ChildProcess]

    def prom(self, query: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": query},
                         timeout=10)
        resp.raise_for_status()
        body = resp.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def prom_value(self, query: str) -> float | None:
        result = self.prom(query)
        return float(result[0]["value"][1]) if result else None

    def check_alive(self) -> None:
        for c in self.children:
            assert c.alive(), f"{c.name} died:\n{c.log_tail(40)}"


def wait_until(what: str, ok: Callable[[], bool], system: System, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        system.check_alive()
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.name}\n{c.log_tail(30)}" for c in system.children)
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{logs}")
        time.sleep(0.5)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    from online_models.synthetic import iter_events

    # Stamped in the recent past so the stream passes the "too old/too new" checks and
    # freshness stays a sane number.
    return list(iter_events(N_EVENTS, 300, 600, seed=7, drift_at=DRIFT_AT,
                            start_ts=time.time() - 3_600))


@pytest.fixture(scope="module")
def system(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus absent (make test installs it via scripts/system-deps.sh)")
    from stream.kafka import create_topics, delete_topics

    tmp = tmp_path_factory.mktemp("system")
    topic = f"e2e-{uuid.uuid4().hex[:10]}"
    create_topics(kafka_bootstrap, {topic: 2, f"{topic}.dlq": 1})
    trainer_port, api_port, prom_port = pick_port(0), pick_port(0), pick_port(0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEREC_")}
    env["LIVEREC_METRICS_ADDR"] = "127.0.0.1"
    snapshots = tmp / "snapshots"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "liverec-trainer",
             "static_configs": [{"targets": [f"127.0.0.1:{trainer_port}"]}]},
            {"job_name": "liverec-serving",
             "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    children = [
        ChildProcess("trainer", [
            LIVEREC, "train", "--bootstrap", kafka_bootstrap, "--topic", topic,
            "--group", f"{topic}-trainer", "--snapshots", str(snapshots), "--models", MODELS,
            "--metrics-port", str(trainer_port), "--snapshot-every-s", "1",
            "--status-every-s", "5",
            # The drift detectors need the drifted half scored. Each half arrives as a
            # burst, and the default CPU governor scores a burst at its floor: the
            # bookkeeping of these two cheap models alone takes its 5% share. (It once
            # scored the whole first batch and budgeted as if bookkeeping were free:
            # this test passed on that overspend.) A fixed budget scores them all.
            "--eval-budget-per-s", "100000",
        ], tmp / "trainer.log", env),
        ChildProcess("serving", [
            LIVEREC, "serve", "--snapshots", str(snapshots), "--host", "127.0.0.1",
            "--port", str(api_port), "--bootstrap", kafka_bootstrap, "--topic", topic,
            "--default-model", "itemknn",
        ], tmp / "serving.log", env),
        ChildProcess("prometheus", [
            prometheus, f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ], tmp / "prometheus.log", env),
    ]
    sys_ = System(kafka_bootstrap, topic, f"http://127.0.0.1:{api_port}",
                  f"http://127.0.0.1:{trainer_port}/metrics", f"http://127.0.0.1:{prom_port}",
                  children)
    try:
        for c in children:
            c.start()
        wait_until("Prometheus ready", lambda: _ok(f"{sys_.prometheus}/-/ready"), sys_, 60)
        wait_until("both targets up in Prometheus",
                   lambda: len([r for r in sys_.prom("up") if r["value"][1] == "1"]) == 2,
                   sys_, 120)
        yield sys_
    finally:
        for c in reversed(children):
            c.stop()
        try:
            delete_topics(kafka_bootstrap, [topic, f"{topic}.dlq"])
        except Exception as exc:  # cleanup must not mask the test's result
            print(f"could not delete {topic}: {exc}")


def test_stream_learn_serve_observed_through_prometheus(
    system: System, events: list[dict[str, Any]]
) -> None:
    from online_models.datasets import Dataset
    from stream.replay import replay_dataset

    learned = "sum(liverec_trainer_events_learned_total)"
    drift = "sum(liverec_trainer_concept_drift_alarms_total)"
    before = replay_dataset(Dataset.from_records(events[:DRIFT_AT], name="before"),
                            system.bootstrap, system.topic, progress=False)
    assert before.sent == DRIFT_AT and not before.failed
    wait_until("the first half learned",
               lambda: system.prom_value(learned) == DRIFT_AT, system, 180)
    # A couple more scrapes, so the drift counter read below is the settled one.
    time.sleep(3)
    drift_before = system.prom_value(drift)
    assert drift_before is not None

    after = replay_dataset(Dataset.from_records(events[DRIFT_AT:], name="after"),
                           system.bootstrap, system.topic, progress=False)
    produced = before.sent + after.sent
    assert produced == N_EVENTS and not after.failed
    wait_until("every event learned", lambda: system.prom_value(learned) == produced,
               system, 180)
    time.sleep(3)

    assert system.prom_value(learned) == produced
    assert system.prom_value("sum(liverec_trainer_events_rejected_total)") == 0
    drift_after = system.prom_value(drift)
    assert drift_after is not None and drift_after > drift_before, (drift_before, drift_after)

    hr = {r["metric"]["model"]: float(r["value"][1])
          for r in system.prom("liverec_trainer_rolling_hit_ratio")}
    assert set(hr) == set(MODELS.split(","))
    assert all(0 < v <= 1 for v in hr.values()), hr

    freshness = 'liverec_serving_freshness_seconds{job="liverec-serving"}'
    wait_until("the server's freshness gauge in Prometheus",
               lambda: bool(system.prom(freshness)), system, 60)
    assert (system.prom_value("liverec_serving_snapshot_version") or 0) >= 1

    # The repo's alert rules were loaded and evaluated by the same Prometheus.
    rules = httpx.get(f"{system.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r["health"] for g in rules for r in g["rules"]}
    assert len(loaded) == len(alert_exprs()) and set(loaded.values()) <= {"ok", "unknown"}, loaded

    # The API: an active user's recommendations exclude what they have seen.
    counts: dict[str, int] = {}
    for e in events:
        counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
    user = max(counts, key=lambda u: counts[u])
    seen = {e["item_id"] for e in events if e["user_id"] == user}

    def recs() -> dict[str, Any]:
        resp = httpx.get(f"{system.api}/v1/recommendations",
                         params={"user_id": user, "k": 20}, timeout=10)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    wait_until("a snapshot with every event served",
               lambda: _watermark_reached(recs(), events[-1]["timestamp"]), system, 60)
    body = recs()
    items = [i["item_id"] for i in body["items"]]
    assert body["model"] == "itemknn" and not body["fallback"]
    assert len(items) == 20
    assert not set(items) & seen, set(items) & seen


def _watermark_reached(body: dict[str, Any], last_ts: float) -> bool:
    return body.get("watermark") is not None and body["watermark"] >= last_ts - 1e-3


def test_dashboard_and_alerts_use_only_exported_metric_names(system: System) -> None:
    # Labelled series (per route, per partition) appear once used: use them first.
    for path in ("/healthz", "/v1/recommendations?user_id=nobody&k=5", "/metrics"):
        httpx.get(system.api + path, timeout=10)
    wait_until("trainer partitions assigned",
               lambda: bool(Scrape.parse(httpx.get(system.trainer_metrics, timeout=5).text)
                            .by_label("liverec_trainer_consumer_lag_messages", "partition")),
               system, 60)
    exported: set[str] = set()
    declared: set[str] = set()
    for url in (system.trainer_metrics, f"{system.api}/metrics"):
        text = httpx.get(url, timeout=10).text
        exported |= exported_names(Scrape.parse(text).samples)
        declared |= {f.name for f in text_string_to_metric_families(text)}
    used = metric_names(alert_exprs() + dashboard_exprs())
    assert used, "no liverec metrics found in the expressions"
    # Only a trainer started with --follow has series of these (one per followed
    # model); this one does not follow, so they must at least be declared.
    follow_only = {"liverec_trainer_followed_snapshot_age_seconds",
                   "liverec_trainer_followed_snapshot_version"}
    assert follow_only <= declared, sorted(follow_only - declared)
    assert used <= exported | follow_only, sorted(used - exported - follow_only)
