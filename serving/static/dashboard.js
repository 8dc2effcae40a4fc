// liverec dashboard: polls /v1/dashboard/data and draws small SVG line charts.
// No third-party code: the page must work offline and load nothing from a CDN.
"use strict";

const REFRESH_MS = 2000;
// 12 distinct colours: `--models all` trains 9 models, and two lines must not share one.
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
  "#4b5563", "#65a30d", "#9a3412", "#0f766e", "#a21caf"];
const NS = "http://www.w3.org/2000/svg";

function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 1000) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toFixed(3);
}

// A count (drift alarms): an integer, never "0.000".
function fmtCount(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  return Math.abs(v) >= 1e4 ? fmt(Math.round(v)) : String(Math.round(v));
}

// Tick labels of a log axis: 1, 10, 100, 1k, 10k, ... 1M, ...
function fmtDecade(v) {
  for (const [d, suffix] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (v >= d) return String(Math.round(v / d)) + suffix;
  }
  return String(Math.round(v));
}

// The log axis maps v to log10(1 + v): 0 stays 0, and a chart holding both a snapshot
// age of seconds and a freshness of years shows both. Negative values are drawn at 0.
const log1p = v => Math.log10(1 + Math.max(0, v));

// series: [{name, points: [[t, v], ...]}]; draws into the svg, returns points drawn.
// opts.log: a log10(1 + v) y axis. The legend goes in the card's `.legend` element (HTML,
// so it wraps onto more rows however many series there are: an SVG row clipped the 5th
// of 9 models).
function drawChart(svg, series, opts) {
  const log = !!(opts && opts.log);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  drawLegend(svg, series);
  const W = svg.clientWidth || 400, H = svg.clientHeight || 170;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const L = 46, R = 8, T = 8, B = 20;
  const all = series.flatMap(s => s.points.filter(p => p[1] !== null && isFinite(p[1])));
  if (all.length === 0) {
    svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"}, "no data yet"));
    svg.dataset.points = "0";
    return 0;
  }
  const ts = all.map(p => p[0]), vs = all.map(p => log ? log1p(p[1]) : p[1]);
  let t0 = Math.min(...ts), t1 = Math.max(...ts);
  if (t1 - t0 < 1) { t0 -= 30; t1 += 1; }
  let v0 = Math.min(0, ...vs), v1 = Math.max(...vs);
  if (v1 - v0 < 1e-9) v1 = v0 + 1;
  v1 += (v1 - v0) * 0.08;
  const x = t => L + (t - t0) / (t1 - t0) * (W - L - R);
  const yScaled = u => T + (1 - (u - v0) / (v1 - v0)) * (H - T - B);
  const y = v => yScaled(log ? log1p(v) : v);
  const tick = (u, text) => {
    svg.appendChild(el("line", {x1: L, x2: W - R, y1: yScaled(u), y2: yScaled(u), class: "grid"}));
    svg.appendChild(el("text", {x: L - 4, y: yScaled(u) + 3, "text-anchor": "end", class: "lbl ytick"}, text));
  };
  if (log) {
    // 0, then decades (every 2nd or 3rd when there are many), at most about 6 labels;
    // "1" sits a few pixels above "0" on a tall axis, so it is left out there.
    tick(0, "0");
    const top = Math.floor(v1), step = Math.max(1, Math.ceil(top / 5));
    for (let k = top >= 3 ? step : 0; k <= top; k += step) {
      const u = Math.log10(1 + 10 ** k);
      if (u <= v1) tick(u, fmtDecade(10 ** k));  // "1" lies above an axis of values < 1
    }
  } else {
    for (let i = 0; i <= 4; i++) {
      const u = v0 + (v1 - v0) * i / 4;
      tick(u, fmt(u));
    }
  }
  svg.appendChild(el("line", {x1: L, x2: L, y1: T, y2: H - B, class: "axis"}));
  svg.appendChild(el("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis"}));
  const span = Math.round(t1 - t0);
  svg.appendChild(el("text", {x: L, y: H - 5, class: "lbl"}, `-${span}s`));
  svg.appendChild(el("text", {x: W - R, y: H - 5, "text-anchor": "end", class: "lbl"}, "now"));
  let drawn = 0;
  series.forEach((s, i) => {
    const pts = s.points.filter(p => p[1] !== null && isFinite(p[1]));
    if (!pts.length) return;
    const color = COLORS[i % COLORS.length];
    const d = pts.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.appendChild(el("path", {d, fill: "none", stroke: color, "stroke-width": 2, "data-series": s.name}));
    const last = pts[pts.length - 1];
    svg.appendChild(el("circle", {cx: x(last[0]), cy: y(last[1]), r: 3, fill: color}));
    drawn += pts.length;
  });
  svg.dataset.points = String(drawn);
  return drawn;
}

// The card's legend (an element of class "legend" beside the svg), one entry per series.
function drawLegend(svg, series) {
  const box = svg.parentElement && svg.parentElement.querySelector(".legend");
  if (!box) return;
  box.textContent = "";
  series.forEach((s, i) => {
    const item = document.createElement("span");
    item.className = "item";
    item.dataset.series = s.name;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    // CSSOM, not a style attribute: the page's CSP allows no inline style.
    swatch.style.background = COLORS[i % COLORS.length];
    item.append(swatch, document.createTextNode(s.name));
    box.appendChild(item);
  });
}

function col(points, key) { return points.map(p => [p.t, p[key]]); }

function keyed(points, field) {
  const names = new Set();
  points.forEach(p => Object.keys(p[field] || {}).forEach(n => names.add(n)));
  return [...names].sort().map(n => ({name: n, points: points.map(p => [p.t, (p[field] || {})[n] ?? null])}));
}

function nowText(id, pairs) {
  const box = document.getElementById(id);
  box.textContent = "";
  for (const [name, v] of pairs) {
    const s = document.createElement("span");
    s.textContent = `${name}: ${fmt(v)}`;
    box.appendChild(s);
  }
}

async function refresh() {
  try {
    const r = await fetch("/v1/dashboard/data", {cache: "no-store"});
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const data = await r.json();
    const pts = data.points || [];
    const last = pts[pts.length - 1] || {};
    drawChart(document.getElementById("c-ingest"), [{name: "ingest", points: col(pts, "ingest_rate")}]);
    drawChart(document.getElementById("c-lag"), [{name: "lag", points: col(pts, "consumer_lag")}]);
    const hr = keyed(pts, "hr10");
    drawChart(document.getElementById("c-hr"), hr);
    const psi = keyed(pts, "psi");
    drawChart(document.getElementById("c-psi"), psi);
    drawChart(document.getElementById("c-lat"), [
      {name: "p50", points: col(pts, "latency_p50_ms")},
      {name: "p99", points: col(pts, "latency_p99_ms")},
    ]);
    // Freshness is wall clock minus the newest event time. A replay that stamps events
    // ahead of the clock makes it negative; "older than 0 s" means nothing to an operator
    // (the data is as fresh as it gets), so it is drawn at 0 and the figure below says
    // "ahead". The axis is log10(1 + s): a historical replay's freshness (years: 88.6M s)
    // and a snapshot age of seconds share the chart, and a linear axis flattened the age
    // into its bottom pixel (and a negative point pushed the axis below 0).
    drawChart(document.getElementById("c-age"), [
      {name: "snapshot age", points: col(pts, "snapshot_age_s")},
      {name: "freshness", points: col(pts, "freshness_s")},
    ], {log: true});
    nowText("v-ingest", [["now", last.ingest_rate]]);
    nowText("v-lag", [["now", last.consumer_lag]]);
    nowText("v-hr", hr.map(s => [s.name, (last.hr10 || {})[s.name]]));
    nowText("v-psi", psi.map(s => [s.name, (last.psi || {})[s.name]]));
    document.getElementById("v-alarms").textContent = fmtCount(last.drift_alarms);
    nowText("v-lat", [["p50", last.latency_p50_ms], ["p99", last.latency_p99_ms]]);
    nowText("v-age", [["age", last.snapshot_age_s], ["freshness", last.freshness_s]]);
    const fresh = last.freshness_s;
    if (fresh !== null && fresh !== undefined && fresh < 0) {
      document.getElementById("v-age").lastChild.textContent = `freshness: 0 (events ${fmt(-fresh)} s ahead of the clock)`;
    }
    // Without --trainer-metrics-url the rate and lag are the server's own tail of the
    // topic; with it and no answer, the trainer's figures are unknown (gaps), not
    // replaced by the server's.
    document.getElementById("v-source").textContent =
      last.source === "live_tail" ? ", the server's live tail" : "";
    const st = document.getElementById("status");
    const down = last.source === "trainer_down";
    st.classList.toggle("warn", down);
    st.textContent = (down ? "trainer unreachable: its figures are not shown · " : "") +
      `snapshot v${last.snapshot_version ?? "–"} · ${pts.length} samples · live users ${last.live_users ?? 0}` +
      (data.scrape_error ? ` · trainer scrape: ${data.scrape_error}` : "");
    document.body.dataset.samples = String(pts.length);
    document.getElementById("foot").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById("status").textContent = `error: ${e.message}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
