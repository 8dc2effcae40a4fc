"""The scale-out compose overlay: a second trainer, both in scale-out mode, valid flags."""

from __future__ import annotations

import yaml

from tests.system.helpers import REPO
from tests.system.test_deploy import assert_flags_exist

OVERLAY = REPO / "docker-compose.scale-out.yml"


def test_overlay_runs_two_scale_out_trainers_on_one_location() -> None:
    svc = yaml.safe_load(OVERLAY.read_text())["services"]
    ids = []
    for name in ("trainer", "trainer-2"):
        argv = svc[name]["command"]
        assert_flags_exist(argv[0], argv[1:])
        assert "--scale-out" in argv
        assert argv[argv.index("--group") + 1] == "liverec-trainer"
        assert argv[argv.index("--snapshots") + 1] == "/snapshots"
        ids.append(argv[argv.index("--instance-id") + 1])
        models = svc[name]["environment"]["LIVEREC_MODELS"]
        assert "popularity,itemknn,sequence" in models
    assert len(set(ids)) == 2
    assert "snapshots:/snapshots" in svc["trainer-2"]["volumes"]


def test_overlay_prometheus_scrapes_every_trainer() -> None:
    # Only the owner of the last partition evaluates, and any trainer may own it: a
    # trainer left unscraped would silence the accuracy, drift and lag alerts.
    overlay = yaml.safe_load(OVERLAY.read_text())["services"]
    mount = "./deploy/prometheus/prometheus-scale-out.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in overlay["prometheus"]["volumes"]
    cfg = yaml.safe_load((REPO / "deploy/prometheus/prometheus-scale-out.yml").read_text())
    base = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    trainers = [name for name, s in overlay.items() if s.get("command", [""])[0] == "train"]
    ports = {s["command"][s["command"].index("--metrics-port") + 1]
             for name, s in overlay.items() if name in trainers}
    assert jobs["liverec-trainer"]["static_configs"][0]["targets"] == [
        f"{name}:{port}" for name in trainers for port in ports]
    # The rest as in the main stack's configuration.
    assert {k: v for k, v in cfg.items() if k != "scrape_configs"} == {
        k: v for k, v in base.items() if k != "scrape_configs"}
    assert jobs["liverec-serving"] == {j["job_name"]: j for j in base["scrape_configs"]}[
        "liverec-serving"]
