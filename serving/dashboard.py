"""The dashboard's data: a small in-memory ring buffer of system figures over time.

Each sample gathers the serving side's own figures (latency p50/p99, snapshot age,
freshness, live-tail ingest rate and lag) and the trainer's (rolling HR@10 per
model, drift alarms, PSI, ingest rate, consumer lag), read from the loaded
snapshot's manifest ``metrics`` and, when ``trainer_metrics_url`` is set, from the
trainer's Prometheus endpoint (parsed with ``text_string_to_metric_families``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving.state import ServingState

__all__ = ["DashboardSeries", "flatten_numbers", "trainer_figures"]

log = logging.getLogger(__name__)

_P = "liverec_trainer_"

def flatten_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested mappings, keyed by dotted path.

    >>> flatten_numbers({"hr@10": {"bpr": 0.25}, "psi": 0.1, "name": "x"})
    {'hr@10.bpr': 0.25, 'psi': 0.1}
    """
    out: dict[str, float] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten_numbers(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, bool):
        pass
    elif isinstance(obj, int | float):
        out[prefix] = float(obj)
    return out


def trainer_figures(
    text: str | None, manifest_metrics: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Rolling HR@10 per model, PSI, drift alarms, events learned and lag of the trainer.

    ``text`` is the trainer's Prometheus exposition (may be None); ``manifest_metrics``
    the loaded snapshot's ``metrics`` (``{model: {"rolling": {"hr": x}}, "data_drift":
    {distribution: {"psi": y}}}``). Scraped values win over the manifest's.

    >>> trainer_figures(
    ...     '# TYPE liverec_trainer_rolling_hit_ratio gauge\\n'
    ...     'liverec_trainer_rolling_hit_ratio{model="bpr"} 0.3\\n',
    ...     {"data_drift": {"item_popularity": {"psi": 0.2}}})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'hr10': {'bpr': 0.3}, 'psi': {'item_popularity': 0.2}, 'drift_alarms': 0,
     'events_total': None, 'lag': None}
    """
    hr: dict[str, float] = {}
    psi: dict[str, float] = {}
    alarms = 0.0
    events: float | None = None
    lag: float | None = None
    for key, value in (manifest_metrics or {}).items():
        if key == "data_drift" and isinstance(value, Mapping):
            for dist, vals in value.items():
                v = vals.get("psi") if isinstance(vals, Mapping) else None
                if isinstance(v, int | float):
                    psi[str(dist)] = float(v)
        elif isinstance(value, Mapping):
            rolling = value.get("rolling")
            v = rolling.get("hr") if isinstance(rolling, Mapping) else None
            if isinstance(v, int | float):
                hr[str(key)] = float(v)
    for fam in text_string_to_metric_families(text or ""):
        for s in fam.samples:
            labels = dict(s.labels)
            if s.name == _P + "rolling_hit_ratio" and "model" in labels:
                hr[labels["model"]] = float(s.value)
            elif s.name == _P + "data_drift_psi" and "distribution" in labels:
                psi[labels["distribution"]] = float(s.value)
            elif s.name == _P + "concept_drift_alarms_total":
                alarms += float(s.value)
            elif s.name == _P + "events_learned_total":
                events = (events or 0.0) + float(s.value)
            elif s.name == _P + "consumer_lag_messages":
                lag = (lag or 0.0) + float(s.value)
    psi = {k: v for k, v in psi.items() if math.isfinite(v)}
    hr = {k: v for k, v in hr.items() if math.isfinite(v)}  # NaN: nothing evaluated yet
    # A count: an int in the JSON (the counters' samples are floats, whole ones).
    return {"hr10": hr, "psi": psi, "drift_alarms": round(alarms), "events_total": events,
            "lag": lag}


def _no_figures(drift_alarms: int | None) -> dict[str, Any]:
    """:func:`trainer_figures`' answer when there are none to read."""
    return {"hr10": {}, "psi": {}, "drift_alarms": drift_alarms, "events_total": None,
            "lag": None}


class DashboardSeries:
    """Ring buffer of dashboard samples, one per :meth:`sample` call.

    Parameters
    ----------
    state
        The serving state sampled.
    points
        How many samples are kept.
    trainer_metrics_url
        The trainer's ``/metrics`` URL, or empty.
    """

    def __init__(
        self, state: ServingState, points: int = 300, trainer_metrics_url: str = ""
    ) -> None:
        self.state = state
        self.points: deque[dict[str, Any]] = deque(maxlen=points)
        self.trainer_metrics_url = trainer_metrics_url
        self._prev: tuple[float, float, float | None] | None = None
        self.scrape_error: str | None = None

    async def _scrape(self, client: httpx.AsyncClient | None) -> str | None:
        if not self.trainer_metrics_url or client is None:
            return None
        try:
            r = await client.get(self.trainer_metrics_url, timeout=2.0)
            r.raise_for_status()
            self.scrape_error = None
            return r.text
        except Exception as exc:  # the trainer may be down; the dashboard stays up
            self.scrape_error = f"{type(exc).__name__}: {exc}"
            return None

    async def sample(self, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
        st = self.state
        now = time.time()
        st.update_gauges(now)
        cur = st.current
        text = await self._scrape(client)
        # A trainer that is named but does not answer: its figures are unknown now.
        # (The server's own live-tail figures stood in for them, and the last
        # snapshot's HR@10 drew flat lines: a dead trainer looked healthy.)
        trainer_down = bool(self.trainer_metrics_url) and text is None
        tf = _no_figures(drift_alarms=None)
        if not trainer_down:
            try:
                tf = trainer_figures(
                    text,
                    cur.manifest.get("metrics") if cur is not None else None,
                )
            except Exception as exc:  # a malformed exposition must not stop sampling
                log.warning("cannot parse trainer metrics: %s", exc)
                tf = _no_figures(drift_alarms=0)
        live_events = float(st.live.events)
        ingest = None
        if self._prev is not None:
            t_prev, live_prev, trainer_prev = self._prev
            dt = max(now - t_prev, 1e-6)
            if tf["events_total"] is not None and trainer_prev is not None:
                ingest = max(0.0, (tf["events_total"] - trainer_prev) / dt)
            elif not self.trainer_metrics_url:
                ingest = max(0.0, (live_events - live_prev) / dt)
        self._prev = (now, live_events, tf["events_total"])
        p50, p99 = st.latency_quantiles("/v1/recommendations")
        lag = tf["lag"]
        if lag is None and st.tail is not None and not self.trainer_metrics_url:
            lag = st.tail.lag
        point = {
            "t": now,
            # where the ingest rate and lag come from: the trainer's metrics, or,
            # without --trainer-metrics-url, the server's own tail of the topic
            "source": ("trainer_down" if trainer_down
                       else "trainer" if self.trainer_metrics_url else "live_tail"),
            "ingest_rate": ingest,
            "consumer_lag": lag,
            "hr10": tf["hr10"],
            "psi": tf["psi"],
            "psi_max": max(tf["psi"].values()) if tf["psi"] else None,
            "drift_alarms": tf["drift_alarms"],
            "latency_p50_ms": None if p50 is None else p50 * 1000,
            "latency_p99_ms": None if p99 is None else p99 * 1000,
            "snapshot_version": cur.version if cur is not None else None,
            "snapshot_age_s": (now - cur.created_at) if cur and cur.created_at else None,
            "freshness_s": (now - cur.watermark) if cur and cur.watermark else None,
            "live_users": len(st.live),
        }
        self.points.append(point)
        return point

    def data(self) -> dict[str, Any]:
        return {
            "points": list(self.points),
            "trainer_metrics_url": self.trainer_metrics_url or None,
            "scrape_error": self.scrape_error,
        }
