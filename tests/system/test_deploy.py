"""Static checks of the deployment files: alert rules, dashboard, compose, Dockerfiles.

They need no Docker engine: the compose file is read as YAML (its ``${VAR:-default}``
values at their defaults) and checked against what the real CLI accepts
(``liverec <cmd> --help``). tests/system/test_compose.py runs the stack for real.
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
_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")


def default(value: str) -> str:
    """A compose value with every ``${VAR:-default}`` at its default."""
    return _VAR.sub(lambda m: m.group(2), value)


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
    # Every query goes through the dashboard's datasource variable (so it imports into
    # a Grafana whose Prometheus has another uid), which defaults to the provisioned one.
    assert {t["datasource"]["uid"] for p in dashboards["panels"] for t in p["targets"]} == {
        "${datasource}"}
    (var,) = dashboards["templating"]["list"]
    assert (var["name"], var["type"], var["query"]) == ("datasource", "datasource",
                                                        "prometheus")
    assert var["current"]["value"] == ds["datasources"][0]["uid"]
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
    assert svc["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert svc["kafka"]["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "kafka-data:/var/lib/kafka/data" in svc["kafka"]["volumes"]
    assert svc["trainer"]["build"]["context"] == "."
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
    assert any(re.fullmatch(r"127\.0\.0\.1:\d+-\d+:8000", default(p))
               for p in svc["serving"]["ports"])
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


def test_images_are_variables_with_the_public_defaults(compose: dict) -> None:
    svc = compose["services"]
    want = {
        "kafka": ("LIVEREC_KAFKA_IMAGE", "apache/kafka:4.1.1"),
        "topics": ("LIVEREC_KAFKA_IMAGE", "apache/kafka:4.1.1"),
        "trainer": ("LIVEREC_IMAGE", "liverec:latest"),
        "serving": ("LIVEREC_IMAGE", "liverec:latest"),
        "replay": ("LIVEREC_IMAGE", "liverec:latest"),
        "prometheus": ("LIVEREC_PROMETHEUS_IMAGE", "prom/prometheus:"),
        "grafana": ("LIVEREC_GRAFANA_IMAGE", "grafana/grafana:"),
    }
    for name, (var, public) in want.items():
        image = svc[name]["image"]
        assert image.startswith(f"${{{var}:-") and default(image).startswith(public), image
    args = svc["trainer"]["build"]["args"]
    assert default(args["LIVEREC_BASE_IMAGE"]) == "python:3.11-slim"
    for dockerfile in (REPO / "Dockerfile", DEPLOY / "docker/kafka/Dockerfile",
                       DEPLOY / "docker/prometheus/Dockerfile"):
        text = dockerfile.read_text()
        assert "ARG LIVEREC_BASE_IMAGE=python:3.11-slim" in text, dockerfile
        assert "FROM ${LIVEREC_BASE_IMAGE}" in text, dockerfile
    # Grafana has no local stand-in: it runs only with its profile.
    assert svc["grafana"]["profiles"] == ["grafana"]
    assert all("profiles" not in s for n, s in svc.items() if n != "grafana")


def test_published_ports_bind_loopback_by_default(compose: dict) -> None:
    for name, s in compose["services"].items():
        for port in s.get("ports", []):
            assert default(port).startswith("127.0.0.1:"), (name, port)


def test_trainers_serve_metrics_to_the_stacks_network() -> None:
    # The trainer's metrics default to loopback; in the stack Prometheus scrapes them
    # from another container, so every trainer service sets the address.
    from trainer.settings import TrainerSettings

    assert TrainerSettings.model_fields["metrics_addr"].default == "127.0.0.1"
    trainers = 0
    for path in (COMPOSE, REPO / "docker-compose.scale-out.yml"):
        for name, svc in yaml.safe_load(path.read_text())["services"].items():
            if "train" in (svc.get("command") or [])[:1]:
                trainers += 1
                assert svc["environment"]["LIVEREC_METRICS_ADDR"] == "0.0.0.0", (path, name)
    assert trainers == 3  # the trainer, and in the scale-out file its override and trainer-2


def test_liverec_containers_are_hardened() -> None:
    # Read-only root (state in the snapshots volume, scratch in a tmpfs /tmp), no
    # capabilities, no privilege gain: every service that runs the liverec image.
    hardened = 0
    for path in (COMPOSE, REPO / "docker-compose.scale-out.yml"):
        for name, svc in yaml.safe_load(path.read_text())["services"].items():
            if "liverec:latest" not in default(svc.get("image", "")):
                continue
            assert svc["read_only"] is True and svc["tmpfs"] == ["/tmp"], (path, name)
            assert svc["cap_drop"] == ["ALL"], (path, name)
            assert "no-new-privileges:true" in svc["security_opt"], (path, name)
            hardened += 1
    assert hardened == 4  # trainer, serving, replay; trainer-2 in the scale-out file


def test_dockerfile_installs_from_pyproject_and_runs_the_cli() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert '["project"]["dependencies"]' in text  # dependencies from pyproject.toml
    assert "pip wheel --no-deps --wheel-dir /dist ." in text  # the package from pyproject
    assert 'ENTRYPOINT ["liverec"]' in text
    assert "USER liverec" in text
    # Every package pyproject.toml ships is in the build context.
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = meta["tool"]["setuptools"]["packages"]["find"]["include"]
    ignored = {line.strip().rstrip("/") for line in
               (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for pattern in include:
        assert pattern.rstrip("*") not in ignored, pattern
    assert "README.md" not in ignored  # pyproject's readme


def test_kafka_image_uses_the_local_brokers_kafka_release() -> None:
    from stream.broker import KAFKA_VERSION
    from stream.docker_kafka import KAFKA_IMAGES

    pom = (DEPLOY / "docker/kafka/pom.xml").read_text()
    local = (REPO / "stream/kafka_pom.xml").read_text()
    version_of = re.compile(r"<artifactId>(kafka_2\.13|kafka-tools|log4j-core)</artifactId>\s*"
                            r"<version>([^<]+)</version>")
    image_versions = dict(version_of.findall(pom))
    assert image_versions["kafka_2.13"] == image_versions["kafka-tools"] == KAFKA_VERSION
    assert image_versions["kafka_2.13"] in local
    assert image_versions["log4j-core"] == dict(version_of.findall(local))["log4j-core"]
    assert f"liverec-local/kafka:{KAFKA_VERSION}" in KAFKA_IMAGES
    script = (REPO / "scripts/build-images.sh").read_text()
    assert f"liverec-local/kafka:{KAFKA_VERSION}" in script


def test_kafka_entrypoint_maps_kafka_variables_to_properties(tmp_path) -> None:
    # The entry point up to the JVM: a stand-in `java` records its arguments.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").write_text('#!/bin/sh\necho "$@" >> "$KAFKA_CONFIG_DIR/java.args"\n')
    (bin_dir / "java").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "KAFKA_CONFIG_DIR": str(tmp_path),
        "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
        "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_SOME__UNDERSCORE___DASH": "x",
        "KAFKA_HEAP_OPTS": "-Xmx300m",
        "CLUSTER_ID": "abc",
    }
    out = subprocess.run(["bash", str(DEPLOY / "docker/kafka/run")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    props = dict(line.split("=", 1) for line in
                 (tmp_path / "server.properties").read_text().splitlines())
    assert props["log.dirs"] == "/var/lib/kafka/data"
    assert props["advertised.listeners"] == "PLAINTEXT://kafka:9092"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["some_underscore-dash"] == "x"
    assert props["process.roles"] == "broker,controller"  # a default kept
    assert not any("heap" in k or "config.dir" in k for k in props)
    calls = (tmp_path / "java.args").read_text().splitlines()
    assert "StorageTool format --cluster-id=abc" in calls[0] and "-Xmx300m" in calls[0]
    assert calls[1].endswith(f"kafka.Kafka {tmp_path}/server.properties")


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-scale-out.yml"])
def test_promtool_accepts_the_compose_prometheus_config(tmp_path, name: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool absent (make test installs prometheus via scripts/system-deps.sh)")
    cfg = yaml.safe_load((DEPLOY / "prometheus" / name).read_text())
    # In the container the rules sit at /etc/prometheus/alerts.yml; here, in the repo.
    cfg["rule_files"] = [str(ALERTS)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr
