"""Static checks of the deployment files: alert rules, dashboard, compose, Dockerfile.

No Docker engine or compose plugin here, so the compose file is validated as YAML
against what the real CLI accepts (``liverec <cmd> --help``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from functools import cache

import pytest
import yaml

from tests.system.helpers import (
    ALERTS,
    DASHBOARD,
    DEPLOY,
    LIVEREC,
    REPO,
    alert_exprs,
    dashboard_exprs,
    metric_names,
)

COMPOSE = REPO / "docker-compose.yml"
SERVICES = {"kafka", "topics", "trainer", "serving", "replay", "prometheus", "grafana"}


@cache
def cli_help(command: str) -> str:
    env = {**os.environ, "COLUMNS": "300", "TERM": "dumb", "NO_COLOR": "1"}
    out = subprocess.run([LIVEREC, command, "--help"], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    return out.stdout


def flags_of(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def assert_flags_exist(command: str, argv: list[str]) -> None:
    help_text = cli_help(command)
    for flag in flags_of(argv):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
            f"`liverec {command}` has no option {flag}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool absent (make test installs prometheus via scripts/system-deps.sh)")
    out = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in out.stdout


def test_rules_cover_the_issue_and_are_documented() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    exprs = " ".join(r["expr"] for r in rules)
    for needed in ("concept_drift_alarms_total", "data_drift_psi", "rolling_hit_ratio",
                   "consumer_lag_messages", "snapshot_age_seconds", "freshness_seconds",
                   "events_rejected_total", "request_duration_seconds_bucket"):
        assert needed in exprs, needed
    for r in rules:
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
    assert len({r["alert"] for r in rules}) == len(rules)


def test_dashboard_panels_query_liverec_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "liverec"
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("ingest", "lag", "rejects", "hr@10", "ndcg", "drift", "psi", "learn time",
                  "snapshot age", "latency", "freshness"):
        assert topic in titles, topic
    names = metric_names(dashboard_exprs())
    assert all(n.startswith(("liverec_trainer_", "liverec_serving_")) for n in names)
    assert len(names) >= 15
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_grafana_provisioning_points_at_the_dashboard(compose: dict) -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    dashboards = json.loads(DASHBOARD.read_text())
    assert {t["datasource"]["uid"] for p in dashboards["panels"] for t in p["targets"]} == {
        "prometheus"}
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/liverec.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts


def test_prometheus_config_scrapes_trainer_and_serving_with_rules(compose: dict) -> None:
    cfg = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["liverec-trainer"]["static_configs"][0]["targets"] == ["trainer:9101"]
    dns = jobs["liverec-serving"]["dns_sd_configs"][0]
    assert dns["names"] == ["serving"] and dns["port"] == 8000
    assert cfg["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_compose_services_builds_healthchecks_and_ordering(compose: dict) -> None:
    svc = compose["services"]
    assert set(svc) == SERVICES
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    assert svc["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert svc["trainer"]["build"] == "."
    for name in ("serving", "replay"):
        assert svc[name]["image"] == svc["trainer"]["image"], name
    for name in ("kafka", "trainer", "serving", "prometheus"):
        assert "healthcheck" in svc[name], name
    want = {
        "topics": {"kafka": "service_healthy"},
        "trainer": {"topics": "service_completed_successfully"},
        "serving": {"trainer": "service_healthy"},
        "replay": {"trainer": "service_healthy", "topics": "service_completed_successfully"},
        "prometheus": {"trainer": "service_healthy"},
        "grafana": {"prometheus": "service_healthy"},
    }
    for name, deps in want.items():
        got = {k: v["condition"] for k, v in svc[name]["depends_on"].items()}
        assert got == deps, name
    # Health checks poll, nothing sleeps its way to readiness.
    assert "sleep" not in COMPOSE.read_text()


def test_serving_is_stateless_and_scalable(compose: dict) -> None:
    svc = compose["services"]
    assert "snapshots:/snapshots:ro" in svc["serving"]["volumes"]
    assert "snapshots:/snapshots" in svc["trainer"]["volumes"]
    assert "container_name" not in svc["serving"]
    # A port range, so `--scale serving=N` does not collide on one host port.
    assert any(re.fullmatch(r"\d+-\d+:8000", p) for p in svc["serving"]["ports"])
    assert "snapshots" in compose["volumes"]


def test_compose_commands_use_flags_the_cli_accepts(compose: dict) -> None:
    svc = compose["services"]
    for name in ("trainer", "serving"):
        argv = svc[name]["command"]
        assert_flags_exist(argv[0], argv[1:])
    script = svc["replay"]["command"][0]
    seen = set()
    for part in re.split(r"&&|;|\bthen\b|\belse\b|\bfi\b", script):
        words = shlex.split(part.replace("$$", "$"))
        if "liverec" in words:
            sub = words[words.index("liverec") + 1]
            assert_flags_exist(sub, words[words.index("liverec") + 2:])
            seen.add(sub)
    assert seen == {"generate", "replay"}


def test_dockerfile_installs_cpu_torch_and_runs_the_cli() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    assert 'ENTRYPOINT ["liverec"]' in text
    for pkg in ("online_models", "stream", "serving", "liverec"):
        assert f"COPY {pkg} ./{pkg}" in text


def test_promtool_accepts_the_compose_prometheus_config(tmp_path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool absent (make test installs prometheus via scripts/system-deps.sh)")
    cfg = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    # In the container the rules sit at /etc/prometheus/alerts.yml; here, in the repo.
    cfg["rule_files"] = [str(ALERTS)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr
