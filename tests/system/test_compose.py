"""The compose stack for real: images built on this machine, the stack up, checked through
its published ports on 127.0.0.1.

Starts a Docker engine if none answers (``scripts/docker-engine.sh``; under CI or with
``LIVEREC_DOCKER=1``, as ``make test`` starts one itself; skipped with the reason when
that is impossible or not allowed), builds the images (``scripts/build-images.sh``, cached
by tag and build cache), brings the stack up under a unique project name, sends events
through the stack's published Kafka listener next to the stack's own replay, and checks
that the trainer learns, the server's recommendations change after new events,
Prometheus scrapes both and evaluates the alert rules, and that a crashed trainer comes
back under its restart policy without setting the model back. Containers, networks and
volumes are removed afterwards, also on failure.

Timings (not asserted) are printed and, with ``LIVEREC_COMPOSE_TIMINGS=FILE``, written
as JSON for BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from stream.broker import free_port
from tests.system.conftest import _compose_cli
from tests.system.helpers import REPO, alert_exprs

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]

COMPOSE_FILE = REPO / "docker-compose.yml"
# Light models keep a 2-core machine responsive; the image and wiring are the same.
MODELS = "popularity,itemknn"


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    serving: str
    trainer_metrics: str
    prometheus: str
    kafka: str
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 600, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*self.compose, *args], capture_output=True, text=True,
                             env=self.env, cwd=REPO, timeout=timeout)
        if check:
            assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
        return out

    def container(self, service: str) -> str:
        ids = self.run("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def logs(self, tail: int = 60) -> str:
        out = self.run("logs", "--no-color", f"--tail={tail}", check=False, timeout=120)
        return out.stdout + out.stderr


def inspect(container: str) -> dict[str, Any]:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                         timeout=60, check=True)
    return dict(json.loads(out.stdout)[0])


def new_stack(images: dict[str, str], replay_data: Path, prefix: str,
              *files: Path) -> Stack:
    """A compose project of ``files`` (under a unique ``prefix-`` name) on the local
    ``images``, its ports published on free loopback ports; not up yet."""
    compose = _compose_cli()
    if compose is None:
        pytest.skip("no compose CLI (docker compose plugin or Debian's docker-compose)")
    project = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("serving", "prometheus", "trainer", "kafka")}
    env = {
        **os.environ,
        **images,
        "COMPOSE_PROJECT_NAME": project,
        "LIVEREC_BIND_ADDR": "127.0.0.1",
        "LIVEREC_SERVING_PORTS": str(ports["serving"]),
        "LIVEREC_PROMETHEUS_PORT": str(ports["prometheus"]),
        "LIVEREC_TRAINER_METRICS_PORT": str(ports["trainer"]),
        "LIVEREC_KAFKA_PORT": str(ports["kafka"]),
        "LIVEREC_KAFKA_HOST": "127.0.0.1",
        "LIVEREC_MODELS": MODELS,
        "LIVEREC_DEFAULT_MODEL": "itemknn",
        # An empty folder: the replay service streams its synthetic events, and docker
        # does not create ./data in the checkout.
        "LIVEREC_REPLAY_DATA": str(replay_data),
    }
    return Stack([*compose, *(a for f in files for a in ("-f", str(f))), "-p", project], env,
                 f"http://127.0.0.1:{ports['serving']}",
                 f"http://127.0.0.1:{ports['trainer']}/metrics",
                 f"http://127.0.0.1:{ports['prometheus']}", f"127.0.0.1:{ports['kafka']}")


@contextlib.contextmanager
def running(st: Stack, first: str, timing_prefix: str = "") -> Iterator[Stack]:
    """``st`` up until a recommendation (from ``first``: what loads it) is served; its
    logs printed on failure, and down (volumes too) afterwards."""
    project = st.env["COMPOSE_PROJECT_NAME"]
    t0 = time.monotonic()
    try:
        st.run("up", "-d", timeout=900)
        st.timings[f"{timing_prefix}up_healthy_s"] = time.monotonic() - t0
        wait_for(first, lambda: _first_rec(st), st, 300)
        st.timings[f"{timing_prefix}first_recommendation_s"] = time.monotonic() - t0
        yield st
    except BaseException:
        print(f"--- compose logs ({project}) ---\n{st.logs()}")
        raise
    finally:
        down = st.run("down", "--volumes", "--remove-orphans", "--timeout", "10",
                      check=False, timeout=300)
        print(f"compose down ({project}): exit {down.returncode}\n{down.stderr[-2000:]}")


@pytest.fixture(scope="module")
def stack(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = new_stack(images, tmp_path_factory.mktemp("replay-data"), "liverec-test",
                   COMPOSE_FILE)
    try:
        with running(st, "a recommendation from a loaded snapshot"):
            yield st
    finally:
        _report(st)
        project = st.env["COMPOSE_PROJECT_NAME"]
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True, text=True, timeout=60).stdout.split()
        assert not left, f"containers left behind: {left}"


def _report(st: Stack, write: bool = True) -> None:
    """Print ``st``'s timings; ``write``: also to ``LIVEREC_COMPOSE_TIMINGS`` as JSON."""
    if not st.timings:
        return
    print("compose timings: " + ", ".join(f"{k}={v:.1f}" for k, v in st.timings.items()))
    if write and (path := os.environ.get("LIVEREC_COMPOSE_TIMINGS")):
        with open(path, "w") as fh:
            json.dump(st.timings, fh, indent=2)


def wait_for(what: str, ok: Callable[[], Any], st: Stack, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if result := ok():
                return result
        except (httpx.HTTPError, ValueError, KeyError, AssertionError) as exc:
            last = exc
        time.sleep(1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last})\n"
                f"{st.logs()}")


def _first_rec(st: Stack) -> bool:
    r = httpx.get(f"{st.serving}/v1/recommendations", params={"user_id": "nobody", "k": 5},
                  timeout=10)
    return r.status_code == 200 and bool(r.json()["items"])


def metric(text: str, name: str) -> float | None:
    """Sum of a metric's samples in a Prometheus exposition (None when absent)."""
    values = [float(m.group(1)) for m in
              re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return sum(values) if values else None


def trainer_metric(st: Stack, name: str) -> float | None:
    return metric(httpx.get(st.trainer_metrics, timeout=10).text, name)


def recs(st: Stack, user: str) -> dict[str, Any]:
    r = httpx.get(f"{st.serving}/v1/recommendations", params={"user_id": user, "k": 10},
                  timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def send_clicks(st: Stack, user: str, items: list[str]) -> None:
    from stream.events import validate_dict
    from stream.replay import produce_events

    now = time.time()
    events = [validate_dict({"event_id": f"probe-{uuid.uuid4().hex}", "user_id": user,
                             "item_id": item, "event_type": "click", "timestamp": now + i})
              for i, item in enumerate(items)]
    assert produce_events(st.kafka, "clicks", events) == len(events)


def test_trainer_learns_the_stream(stack: Stack) -> None:
    learned = "liverec_trainer_events_learned_total"
    first = wait_for("the trainer's first learned events",
                     lambda: trainer_metric(stack, learned), stack, 180)
    wait_for("the trainer learning more (the stack's replay streams on)",
             lambda: (trainer_metric(stack, learned) or 0) > first, stack, 120)
    assert trainer_metric(stack, "liverec_trainer_events_rejected_total") in (0, None)
    assert (trainer_metric(stack, "liverec_trainer_snapshot_version") or 0) >= 1


def test_recommendations_change_after_new_events(stack: Stack) -> None:
    user = f"probe-{uuid.uuid4().hex[:8]}"
    before = recs(stack, user)
    assert before["fallback"], before  # a user the model has never seen
    clicked = [f"i{n:06d}" for n in (1, 2, 3, 5, 8)]
    t0 = time.monotonic()
    send_clicks(stack, user, clicked)
    after = wait_for("the new user's clicks in the served model",
                     lambda: (b := recs(stack, user)) and not b["fallback"] and b, stack, 180)
    stack.timings["event_to_personalised_recommendation_s"] = time.monotonic() - t0
    items_before = [i["item_id"] for i in before["items"]]
    items_after = [i["item_id"] for i in after["items"]]
    assert after["model"] == "itemknn"
    assert items_after and items_after != items_before
    assert not set(items_after) & set(clicked)  # what the user clicked is not recommended


def test_prometheus_scrapes_both_and_evaluates_rules(stack: Stack) -> None:
    def targets_up() -> bool:
        body = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()
        up = {t["labels"]["job"] for t in body["data"]["activeTargets"] if t["health"] == "up"}
        return {"liverec-trainer", "liverec-serving"} <= up

    wait_for("both liverec jobs up in Prometheus", targets_up, stack, 120)

    def query(q: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": q},
                         timeout=10).json()
        return list(body["data"]["result"])

    wait_for("trainer samples in Prometheus",
             lambda: query("sum(liverec_trainer_events_learned_total) > 0"), stack, 60)
    wait_for("serving samples in Prometheus",
             lambda: query("liverec_serving_snapshot_version >= 1"), stack, 60)

    def rules_evaluated() -> dict[str, str]:
        groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]
        rules = [r for g in groups["groups"] for r in g["rules"]]
        done = all(not r.get("lastEvaluation", "").startswith("0001") for r in rules)
        return {r["name"]: r["health"] for r in rules} if rules and done else {}

    health = wait_for("every alert rule evaluated", rules_evaluated, stack, 60)
    assert len(health) == len(alert_exprs()) and set(health.values()) == {"ok"}, health


def test_crashed_trainer_restarts_without_setting_the_model_back(stack: Stack) -> None:
    if os.geteuid() != 0:
        pytest.skip("killing the container's process from the host needs root")
    model = httpx.get(f"{stack.serving}/v1/model", timeout=10).json()
    served_events, served_version = model["events_total"], model["version"]
    learned_before = trainer_metric(stack, "liverec_trainer_events_learned_since_start") or 0
    trainer = stack.container("trainer")
    state = inspect(trainer)["State"]
    restarts = inspect(trainer)["RestartCount"]
    # A crash (an OOM kill, a segfault): SIGKILL to the container's main process. `docker
    # kill` would not do: the engine treats it as a manual stop and skips the restart policy.
    t0 = time.monotonic()
    os.kill(int(state["Pid"]), signal.SIGKILL)
    wait_for("the trainer restarted by its restart policy",
             lambda: (s := inspect(trainer)) and s["RestartCount"] > restarts
             and s["State"]["Running"], stack, 120)
    # While it restarts, the served model never goes back.
    seen: list[tuple[int, int]] = []

    def resumed() -> bool:
        m = httpx.get(f"{stack.serving}/v1/model", timeout=10).json()
        seen.append((m["version"], m["events_total"]))
        total = trainer_metric(stack, "liverec_trainer_events_learned_since_start")
        return (m["version"] > served_version and total is not None
                and total >= learned_before)

    wait_for("new snapshots from the restarted trainer", resumed, stack, 240)
    stack.timings["trainer_crash_to_new_snapshot_s"] = time.monotonic() - t0
    versions = [v for v, _ in seen]
    totals = [e for _, e in seen]
    assert versions == sorted(versions) and versions[0] >= served_version, seen
    assert totals == sorted(totals) and totals[0] >= served_events, seen
