"""One demo run: its options (:class:`DemoOptions`), its figures (:class:`DemoSummary`)
and :class:`_Demo`, which holds the run's state and does its phases (start the
trainer and the server, stream, watch, drain, shut down) for
:func:`liverec.demo.run_demo`.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from liverec.child_process import ChildProcess, _wait_for
from liverec.demo_metrics import _all_taken, scrape
from liverec.demo_traffic import RecommendationClient, SyntheticStream
from liverec.ports import pick_port

if TYPE_CHECKING:
    from stream.settings import KafkaSettings

__all__ = ["DEFAULT_API_PORT", "DEFAULT_METRICS_PORT", "DemoOptions", "DemoSummary"]

DEFAULT_API_PORT = 8000
DEFAULT_METRICS_PORT = 9101

#: what each child's SIGTERM waits for, as the shutdown says it
_STOP_WAITS = {
    "serving": ("server", "requests in flight, then its event producer's deliveries"),
    "trainer": ("trainer", "its last snapshot, then the commit of the offsets it holds"),
}


@dataclass
class DemoOptions:
    """Knobs of :func:`~liverec.demo.run_demo` (the ``liverec demo`` options).

    ``duration`` ``None`` runs until Ctrl-C. ``drift_after_s`` places the planted
    drift (default: half the duration, or 60 s without one).
    """

    duration: float | None = None
    rate: float = 100.0
    users: int = 500
    items: int = 1_000
    seed: int = 0
    drift_after_s: float | None = None
    models: str = "popularity,itemknn,sequence"
    default_model: str = "itemknn"
    api_port: int = DEFAULT_API_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    status_every_s: float = 5.0
    run_dir: Path | None = None
    summary_json: Path | None = None
    drain_s: float = 20.0
    startup_timeout_s: float = 180.0
    bootstrap: str | None = None


def demo_drift_window(rate: float) -> int:
    """Events per data-drift window in the demo: about 15 s of its stream, so that
    the dashboard's PSI shows within half a minute and the planted drift moves it.

    >>> demo_drift_window(100), demo_drift_window(1)
    (1500, 200)
    """
    return max(200, int(rate * 15))


@dataclass
class DemoSummary:
    """The figures of one demo run (also written as JSON)."""

    events_produced: int = 0
    events_learned: int = 0
    #: events the trainer's flood guard held back (the demo's sessions are sent at its
    #: rate, so a long one can look like a bot to the per-user caps)
    events_capped: int = 0
    hr_at_10: float | None = None
    hr_at_10_by_model: dict[str, float] = field(default_factory=dict)
    #: the evaluated events each model's rolling HR@10 rests on (its evidence)
    hr_at_10_events_by_model: dict[str, int] = field(default_factory=dict)
    drift_alarms: int = 0
    snapshot_version: int = 0
    recommendations_served: int = 0
    freshness_p50_s: float | None = None
    seconds: float = 0.0
    run_dir: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "events_produced": self.events_produced,
            "events_learned": self.events_learned,
            "events_capped": self.events_capped,
            "hr@10": _round(self.hr_at_10),
            "hr@10_by_model": {m: _round(v) for m, v in self.hr_at_10_by_model.items()},
            "hr@10_evaluated_events_by_model": self.hr_at_10_events_by_model,
            "drift_alarms": self.drift_alarms,
            "snapshot_version": self.snapshot_version,
            "recommendations_served": self.recommendations_served,
            "freshness_p50_s": self.freshness_p50_s,
            "seconds": round(self.seconds, 1),
            "run_dir": self.run_dir,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


class _Demo:
    def __init__(self, opts: DemoOptions, echo: Callable[[str], None]) -> None:
        self.opts = opts
        self.echo = echo
        self.started = time.monotonic()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = (opts.run_dir or Path("runs") / f"demo-{stamp}").resolve()
        self.run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
        self.topic = f"liverec-demo-{self.run_id}"
        self.children: list[ChildProcess] = []
        self.stream: SyntheticStream | None = None
        self.client: RecommendationClient | None = None
        self.trainer_url = ""
        self.serving_url = ""
        self.api = ""

    # ---------------------------------------------------------------- readings
    def figures(self) -> DemoSummary:
        s = DemoSummary(run_dir=str(self.run_dir), seconds=time.monotonic() - self.started)
        if self.stream is not None:
            s.events_produced = self.stream.produced
        tr = scrape(self.trainer_url) if self.trainer_url else None
        sv = scrape(self.serving_url) if self.serving_url else None
        if tr is not None:
            s.events_learned = int(tr.sum("liverec_trainer_events_learned_total"))
            s.events_capped = int(tr.sum("liverec_trainer_events_capped_total"))
            s.hr_at_10_by_model = {  # NaN: nothing evaluated yet
                m: v for m, v in tr.by_label("liverec_trainer_rolling_hit_ratio",
                                             "model").items() if math.isfinite(v)}
            s.hr_at_10 = s.hr_at_10_by_model.get(
                self.opts.default_model, max(s.hr_at_10_by_model.values(), default=None))
            s.hr_at_10_events_by_model = {m: int(v) for m, v in tr.by_label(
                "liverec_trainer_rolling_evaluated_events", "model").items()}
            s.drift_alarms = int(tr.sum("liverec_trainer_concept_drift_alarms_total"))
        if sv is not None:
            s.snapshot_version = int(sv.get("liverec_serving_snapshot_version") or 0)
            s.recommendations_served = int(sv.sum(
                "liverec_serving_responses_total", route="/v1/recommendations", status="200"))
        if self.client is not None and self.client.freshness:
            s.freshness_p50_s = round(statistics.median(self.client.freshness), 3)
        return s

    def status_line(self) -> str:
        f = self.figures()
        n = f.hr_at_10_events_by_model.get(self.opts.default_model)
        hr = f"{f.hr_at_10:.3f}" if f.hr_at_10 is not None and n != 0 else "-"
        if n:
            hr += f" on {n}"
        capped = f" (capped {f.events_capped})" if f.events_capped else ""
        fresh = f"{f.freshness_p50_s:.1f}s" if f.freshness_p50_s is not None else "-"
        return (f"[{f.seconds:6.1f}s] events in {f.events_produced:>7}  learned "
                f"{f.events_learned:>7}{capped}  HR@10({self.opts.default_model}) {hr}  "
                f"drift alarms "
                f"{f.drift_alarms}  snapshot v{f.snapshot_version}  served "
                f"{f.recommendations_served}  freshness p50 {fresh}")

    # ---------------------------------------------------------------- phases
    def start_children(self, bootstrap: str) -> None:
        o = self.opts
        exe = shutil.which("liverec", path=str(Path(sys.executable).parent)) or "liverec"
        env = _child_env(os.environ)
        # Loopback only: the demo's ports are for this machine.
        env["LIVEREC_METRICS_ADDR"] = "127.0.0.1"
        env["PYTHONUNBUFFERED"] = "1"
        # Data-drift windows of ~15 s of the demo's stream (5,000 events, the default,
        # took 50 s at 100 clicks/s, and two are compared: a 90 s demo showed no PSI).
        env["LIVEREC_DRIFT_WINDOW"] = str(demo_drift_window(o.rate))
        metrics_port = pick_port(o.metrics_port)
        api_port = pick_port(o.api_port)
        snapshots = self.run_dir / "snapshots"
        logs = self.run_dir / "logs"
        self.trainer_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.api = f"http://127.0.0.1:{api_port}"
        self.serving_url = f"{self.api}/metrics"
        trainer = ChildProcess("trainer", [
            exe, "train", "--bootstrap", bootstrap, "--topic", self.topic,
            "--group", f"{self.topic}-trainer", "--snapshots", str(snapshots),
            "--models", o.models, "--metrics-port", str(metrics_port),
            "--snapshot-every-s", "1", "--status-every-s", "10",
        ], logs / "trainer.log", env).start()
        self.children.append(trainer)
        server = ChildProcess("serving", [
            exe, "serve", "--snapshots", str(snapshots), "--host", "127.0.0.1",
            "--port", str(api_port), "--bootstrap", bootstrap, "--topic", self.topic,
            "--trainer-metrics-url", self.trainer_url, "--default-model", o.default_model,
        ], logs / "serving.log", env).start()
        self.children.append(server)
        self.echo(f"trainer (pid {trainer.pid}) and server (pid {server.pid}) starting; "
                  f"logs in {logs}")
        _wait_for("the trainer's /metrics", lambda: scrape(self.trainer_url) is not None,
                  trainer, o.startup_timeout_s)
        _wait_for("the server's /healthz", lambda: _http_ok(f"{self.api}/healthz"),
                  server, o.startup_timeout_s)

    def banner(self) -> None:
        api = self.api
        self.echo("")
        self.echo("liverec is up:")
        self.echo(f"  API                {api}/docs")
        self.echo(f"  dashboard          {api}/dashboard")
        self.echo(f"  serving metrics    {self.serving_url}")
        self.echo(f"  trainer metrics    {self.trainer_url}")
        self.echo("  try                a sample query follows once users have clicked")
        self.echo(f"  run dir            {self.run_dir}  (snapshots/, logs/)")
        self.echo("  stop               Ctrl-C")
        self.echo("")

    _suggested = False

    def suggest_query(self) -> None:
        """Once, a sample query for a user who has clicked (with history, so the answer
        is personal, not the popularity fallback a never-seen user id gets)."""
        if self._suggested or self.stream is None:
            return
        user = self.stream.recent_user(random.Random(self.opts.seed))
        if user is None:
            return
        self._suggested = True
        self.echo(f"  try                curl '{self.api}/v1/recommendations?user_id={user}"
                  f"&k=10'  ({user} just clicked; an unknown user id gets the popular items, "
                  '"fallback": true)')

    def stream_clicks(self, bootstrap: KafkaSettings | str) -> None:
        o = self.opts
        drift_after = o.drift_after_s
        if drift_after is None:
            drift_after = o.duration / 2 if o.duration else 60.0
        # Without a duration the stream is long enough for any demo (generated lazily).
        horizon = o.duration if o.duration else 7 * 86_400.0
        self.stream = SyntheticStream(
            bootstrap, self.topic, rate=o.rate, n_events=max(1, int(o.rate * horizon)),
            drift_at=int(o.rate * drift_after), users=o.users, items=o.items, seed=o.seed)
        self.stream.start()
        self.client = RecommendationClient(self.api, self.stream, seed=o.seed)
        self.client.start()
        self.echo(f"streaming ~{o.rate:g} clicks/s into {self.topic}; planted drift after "
                  f"{drift_after:g} s")

    def watch(self) -> None:
        o = self.opts
        assert self.stream is not None
        stream_start = time.monotonic()
        next_status = stream_start + o.status_every_s
        while True:
            now = time.monotonic()
            if o.duration is not None and now - stream_start >= o.duration:
                break
            for child in self.children:
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited unexpectedly; log "
                                       f"{child.log_path}:\n{child.log_tail()}")
            if self.stream.error is not None:
                raise RuntimeError(f"the click stream failed: {self.stream.error!r}")
            if now >= next_status:
                self.echo(self.status_line())
                next_status += o.status_every_s
                self.suggest_query()
            time.sleep(0.2)

    def drain(self) -> None:
        """Stop producing and give the trainer a moment to learn what was sent."""
        assert self.stream is not None
        self.stream.stop_event.set()
        self.stream.join(timeout=30)
        self.echo(f"waiting up to {self.opts.drain_s:.0f} s for the trainer to take the "
                  f"last of the {self.stream.produced:,} events sent ...")
        t0 = time.monotonic()
        while time.monotonic() < t0 + self.opts.drain_s:
            tr = scrape(self.trainer_url)
            if tr is not None and _all_taken(tr, self.stream.produced):
                break
            time.sleep(0.5)
        self.echo(f"  took {time.monotonic() - t0:.1f} s")
        # One snapshot period more, so the server holds what was learned.
        time.sleep(2.0)

    def shutdown(self) -> None:
        """Stop the click stream, the server, then the trainer, saying what each
        stop waits for and how long it took."""
        for thread in (self.client, self.stream):
            if thread is not None:
                thread.stop_event.set()
        for child in reversed(self.children):
            if not child.alive():
                child.stop()  # closes its log
                continue
            label, waits = _STOP_WAITS.get(child.name, (child.name, "its shutdown"))
            self.echo(f"waiting for the {label} (pid {child.pid}) to stop: {waits} ...")
            t0 = time.monotonic()
            killed = child.stop()
            took = time.monotonic() - t0
            self.echo(f"  {label} " + (f"killed after {took:.1f} s (see {child.log_path})"
                                       if killed else f"stopped in {took:.1f} s"))
        if self.client is not None:
            self.client.join(timeout=15)
        if self.stream is not None and self.stream.is_alive():
            self.echo("waiting for the click stream to stop: its producer's deliveries ...")
            t0 = time.monotonic()
            self.stream.join(timeout=15)
            self.echo(f"  click stream {'still running' if self.stream.is_alive() else 'stopped'}"
                      f" after {time.monotonic() - t0:.1f} s")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The trainer's and server's environment: the user's ``LIVEREC_*`` settings stay
    out (the demo passes its own), except how to reach Kafka -- its client and security
    settings (the bootstrap goes as a flag).

    >>> sorted(_child_env({"PATH": "/bin", "LIVEREC_MODELS": "bpr",
    ...                    "LIVEREC_KAFKA_BOOTSTRAP": "k:9092", "LIVEREC_BOOTSTRAP": "k:9092",
    ...                    "LIVEREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}))
    ['LIVEREC_KAFKA_SECURITY_PROTOCOL', 'PATH']
    """
    return {k: v for k, v in environ.items() if not k.startswith("LIVEREC_") or (
        k.startswith("LIVEREC_KAFKA_") and k != "LIVEREC_KAFKA_BOOTSTRAP")}
