"""The dashboard's layout in headless Chromium, on fixed figures (no Kafka needed).

The real app serves the page, its script and its Content Security Policy; only the
data the page polls is replaced by a fixed series with the awkward cases an operator
met: nine models (``--models all``), drift alarms, and a freshness that went negative
(a replay ahead of event time) after a historical one of 88.6M s. A same-origin probe
script, added to a copy of the page, measures what the browser actually laid out.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import HTMLResponse, Response

from liverec.ports import pick_port
from online_models.snapshot import SnapshotStore
from serving.app import create_app
from serving.deps import get_dashboard
from serving.headers import headers_for
from serving.routers.dashboard import STATIC
from tests.serving.conftest import settings_for
from tests.serving.test_dashboard_browser import CHROMIUM, _chromium
from tests.serving.threaded import serve_in_thread

pytestmark = pytest.mark.browser

MODELS = ["bpr", "embedding", "hybrid", "itemknn", "popularity", "river-funkmf", "sequence",
          "sknn", "userknn"]

# Runs after the page's first draws (virtual time): for every legend name of the HR@10
# card, whether the browser shows it -- inside its card, and the topmost element at its
# centre (an SVG <text> past the svg's right edge is clipped: something else is there).
PROBE = """
"use strict";
setTimeout(() => {
  const hrCard = document.getElementById("c-hr").closest(".card");
  const card = hrCard.getBoundingClientRect();
  const out = {};
  for (const name of JSON.parse(document.body.dataset.expect)) {
    const hits = [...hrCard.querySelectorAll("*")].filter(e => e.textContent === name);
    out[name] = hits.map(e => {
      const r = e.getBoundingClientRect();
      const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      return {inside: r.width > 0 && r.left >= card.left && r.right <= card.right,
              shown: !!top && (top === e || e.contains(top) || top.contains(e))};
    });
  }
  document.body.dataset.probe = JSON.stringify(out);
}, 3000);
"""


def _points() -> list[dict[str, Any]]:
    now = time.time()
    points = []
    for i in range(30):
        t = now - 58 + 2 * i
        points.append({
            "t": t,
            "ingest_rate": 40.0 + i,
            "consumer_lag": float(i % 5),
            "hr10": {m: 0.05 + 0.01 * j for j, m in enumerate(MODELS)},
            "psi": {"item_popularity": 0.05, "user_activity": 0.02},
            "psi_max": 0.05,
            # What the server sent before this fix (a float); the page must say "3".
            "drift_alarms": 3.0,
            "latency_p50_ms": 2.0,
            "latency_p99_ms": 9.0,
            "snapshot_version": 4,
            "snapshot_age_s": 1.0 + i % 5,
            # A historical replay (events years old), then one stamped ahead of the clock.
            "freshness_s": 88.6e6 if i < 10 else -1056.0,
            "live_users": 12,
        })
    return points


class _FixedDashboard:
    def data(self) -> dict[str, Any]:
        return {"points": _points(), "trainer_metrics_url": None, "scrape_error": None}


@pytest.fixture
def probed_server(store: SnapshotStore) -> Iterator[str]:
    port = pick_port(0)
    app = create_app(settings_for(store.root, port=port))
    app.dependency_overrides[get_dashboard] = _FixedDashboard
    page = (STATIC / "dashboard.html").read_text(encoding="utf-8").replace(
        "<body>", f"<body data-expect='{json.dumps(MODELS)}'>").replace(
        "</body>", '<script src="/probe.js"></script>\n</body>')
    csp = {"content-security-policy": headers_for("/dashboard")[b"content-security-policy"]
           .decode()}

    @app.get("/probe")
    async def probe_page() -> HTMLResponse:  # the dashboard's own policy, not the API's
        return HTMLResponse(page, headers=csp)

    @app.get("/probe.js")
    async def probe_js() -> Response:
        return Response(PROBE, media_type="text/javascript")

    with serve_in_thread(app, port) as base:
        yield base


def _svg(dom: str, chart: str) -> str:
    m = re.search(rf'<svg id="{chart}".*?</svg>', dom, re.S)
    assert m is not None, f"no svg {chart}"
    return m.group(0)


def test_dashboard_legend_alarms_and_freshness_read_right(
    probed_server: str, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    out = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom",
                    f"{probed_server}/probe")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Content Security Policy" not in out.stderr, out.stderr[-2000:]
    dom = out.stdout
    assert "error:" not in dom

    # 1. A count reads as an integer.
    alarms = re.search(r'<span id="v-alarms">([^<]*)</span>', dom)
    assert alarms is not None and alarms.group(1) == "3", alarms

    # 2. Every model's name is shown in the HR@10 card, none clipped.
    m = re.search(r'data-probe="([^"]*)"', dom)
    assert m is not None, "the probe did not run"
    probe = json.loads(html.unescape(m.group(1)))
    for name in MODELS:
        assert any(h["inside"] and h["shown"] for h in probe[name]), (name, probe[name])
    # ... and the lines have as many colours as models.
    hr = _svg(dom, "c-hr")
    strokes = re.findall(r'<path [^>]*stroke="(#[0-9a-f]{6})"', hr)
    assert len(strokes) == len(MODELS) and len(set(strokes)) == len(MODELS), strokes

    # 3. Negative freshness shows as 0 ("ahead"), and the axis stays at 0 and above,
    # with small values (a snapshot age of seconds) still above the bottom gridline.
    now = re.search(r'<div class="now" id="v-age">(.*?)</div>', dom)
    assert now is not None
    assert "freshness: 0 (events 1056 s ahead of the clock)" in now.group(1), now.group(1)
    age = _svg(dom, "c-age")
    ticks = re.findall(r'<text [^>]*class="lbl ytick"[^>]*>([^<]*)</text>', age)
    assert ticks and ticks[0] == "0", ticks
    assert not any(t.startswith("-") for t in ticks), ticks
    assert ticks[1] in ("1", "10", "100") and ticks[-1] == "100M", ticks
    # The freshness line never dips below the 0 gridline (svg y grows downwards).
    zero_y = float(re.findall(r'<line [^>]*y1="([\d.]+)"[^>]*class="grid"', age)[0])
    fresh = re.search(r'<path d="([^"]*)"[^>]*data-series="freshness"', age)
    assert fresh is not None
    ys = [float(v) for v in re.findall(r"[ML][\d.]+,([\d.]+)", fresh.group(1))]
    assert max(ys) <= zero_y + 0.1, (ys, zero_y)

    shot = tmp_path / "dashboard.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", f"{probed_server}/dashboard")
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
