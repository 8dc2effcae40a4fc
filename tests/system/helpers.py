"""Shared bits of the system tests: repo paths, metric names in PromQL, the CLI."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "liverec.json"
LIVEREC = str(Path(sys.executable).parent / "liverec")

_METRIC = re.compile(r"\bliverec_[a-z0-9_]+")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def alert_exprs() -> list[str]:
    import yaml

    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def metric_names(exprs: Iterable[str]) -> set[str]:
    """Every ``liverec_*`` name a PromQL expression refers to."""
    return {m for e in exprs for m in _METRIC.findall(e)}


def exported_names(sample_names: Iterable[str]) -> set[str]:
    """Sample names plus their base names (``x_total`` also counts as ``x``, etc.)."""
    out: set[str] = set()
    for name in sample_names:
        out.add(name)
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                out.add(name[: -len(suffix)])
    return out
