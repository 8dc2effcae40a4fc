"""deploy/prometheus/prometheus-local.yml: the Prometheus config for runs without Docker.

The compose configs name containers (``trainer:9101``, DNS ``serving``) and mount the
rules at /etc/prometheus/alerts.yml; this one scrapes a ``liverec serve`` and a
``liverec train`` on loopback at their default ports, with the rules found beside it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from liverec.demo import ChildProcess
from liverec.ports import pick_port
from serving.app import create_app
from serving.settings import ServeSettings
from tests.serving.conftest import settings_for
from tests.serving.threaded import serve_in_thread
from tests.system.helpers import ALERTS, DEPLOY, REPO
from trainer.settings import TrainerSettings

LOCAL = DEPLOY / "prometheus" / "prometheus-local.yml"


def _targets(cfg: dict[str, Any]) -> dict[str, list[str]]:
    return {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]]
            for j in cfg["scrape_configs"]}


def test_local_config_scrapes_the_default_ports_with_the_compose_job_names() -> None:
    cfg = yaml.safe_load(LOCAL.read_text())
    serve_port = ServeSettings.model_fields["port"].default
    trainer_port = TrainerSettings.model_fields["metrics_port"].default
    assert _targets(cfg) == {
        "liverec-serving": [f"127.0.0.1:{serve_port}"],
        "liverec-trainer": [f"127.0.0.1:{trainer_port}"],
    }
    # The alert rules select on these job names (up{job="liverec-trainer"} and so on).
    compose = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert {j["job_name"] for j in compose["scrape_configs"]} == set(_targets(cfg))
    # Relative, so it resolves beside the config file from any working directory.
    assert cfg["rule_files"] == ["alerts.yml"]
    assert (LOCAL.parent / cfg["rule_files"][0]).resolve() == ALERTS.resolve()


def test_promtool_accepts_the_local_config_from_another_directory(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool absent (make test installs prometheus via scripts/system-deps.sh)")
    # Run from elsewhere: the rule file must be found relative to the config, not the cwd.
    out = subprocess.run([promtool, "check", "config", str(LOCAL)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "SUCCESS: 1 rule files found" in text
    assert f"Checking {ALERTS}" in text and "rules found" in text


def test_readme_gives_the_local_prometheus_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "--config.file deploy/prometheus/prometheus-local.yml" in readme


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[int]:
    """A real ``liverec serve`` app (no snapshot, no Kafka) on a free loopback port."""
    port = pick_port(0)
    settings = settings_for(tmp_path / "snapshots", port=port)
    with serve_in_thread(create_app(settings), port):
        yield port


def test_prometheus_with_the_local_config_scrapes_a_running_server(
    serving: int, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus absent (make test installs it via scripts/system-deps.sh)")
    # The file as shipped, with only what a test must change: the ports (8000 and 9101
    # may be taken here), a 1 s interval, and the rules' path (the copy lives in tmp).
    cfg = yaml.safe_load(LOCAL.read_text())
    trainer_port, prom_port = pick_port(0), pick_port(0)  # nobody serves the trainer's
    cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = "1s"
    cfg["rule_files"] = [str(ALERTS)]
    for job in cfg["scrape_configs"]:
        port = serving if job["job_name"] == "liverec-serving" else trainer_port
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    base = f"http://127.0.0.1:{prom_port}"
    child = ChildProcess("prometheus", [
        prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
    ], tmp_path / "prometheus.log")

    def query(q: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{base}/api/v1/query", params={"query": q}, timeout=5)
        r.raise_for_status()
        return list(r.json()["data"]["result"])

    child.start()
    try:
        deadline = time.monotonic() + 60
        up: dict[str, str] = {}
        while time.monotonic() < deadline:
            assert child.alive(), child.log_tail(40)
            try:
                up = {r["metric"]["job"]: r["value"][1] for r in query("up")}
            except httpx.HTTPError:
                up = {}
            if up.get("liverec-serving") == "1" and "liverec-trainer" in up:
                break
            time.sleep(0.5)
        assert up == {"liverec-serving": "1", "liverec-trainer": "0"}, (up, child.log_tail(40))
        # Real samples of the server's own metrics, not just the synthetic `up`.
        built = query('liverec_build_info{job="liverec-serving"}')
        assert built and built[0]["value"][1] == "1", built
        rules = httpx.get(f"{base}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert sum(len(g["rules"]) for g in rules) > 0
    finally:
        child.stop()
