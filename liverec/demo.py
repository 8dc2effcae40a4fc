"""The whole system in one command: broker, trainer, server and a click stream.

:func:`run_demo` finds or starts a Kafka broker (``LIVEREC_KAFKA_BOOTSTRAP``, the
detached ``liverec broker start`` one, Docker, or a local KRaft broker), creates a
fresh topic, starts ``liverec train`` and ``liverec serve`` as child processes in
their own process groups, streams synthetic clicks (with a planted drift point) at
a steady rate whose event time follows the wall clock, asks the API for
recommendations like a client would, and prints a status line read from both
``/metrics`` endpoints. Everything it started is stopped in ``finally``: children
get SIGTERM, then SIGKILL after a timeout; the broker only if the demo started it.

``liverec demo`` (:mod:`liverec.cmd_system`) is a thin wrapper around it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import httpx
from prometheus_client.parser import text_string_to_metric_families

from liverec.ports import pick_port

if TYPE_CHECKING:
    from stream.settings import KafkaSettings

__all__ = [
    "ChildProcess",
    "DemoOptions",
    "DemoSummary",
    "Scrape",
    "SyntheticStream",
    "run_demo",
    "scrape",
]

log = logging.getLogger(__name__)

DEFAULT_API_PORT = 8000
DEFAULT_METRICS_PORT = 9101

#: what each child's SIGTERM waits for, as the shutdown says it
_STOP_WAITS = {
    "serving": ("server", "requests in flight, then its event producer's deliveries"),
    "trainer": ("trainer", "its last snapshot, then the commit of the offsets it holds"),
}


# --------------------------------------------------------------------------- metrics


@dataclass
class Scrape:
    """Samples of one ``/metrics`` page, by sample name (``_total`` etc. included).

    Examples
    --------
    >>> s = Scrape.parse('a_total{model="x"} 2.0\\na_total{model="y"} 3.0\\n')
    >>> s.sum("a_total"), s.get("a_total", model="y"), s.get("missing")
    (5.0, 3.0, None)
    """

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        out: dict[str, list[tuple[dict[str, str], float]]] = collections.defaultdict(list)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name].append((dict(sample.labels), float(sample.value)))
        return cls(dict(out))

    def _matching(self, name: str, labels: Mapping[str, str]) -> list[float]:
        return [v for lab, v in self.samples.get(name, [])
                if all(lab.get(k) == want for k, want in labels.items())]

    def get(self, name: str, **labels: str) -> float | None:
        """The first sample matching ``labels``, or ``None``."""
        values = self._matching(name, labels)
        return values[0] if values else None

    def sum(self, name: str, **labels: str) -> float:
        """Sum over the samples matching ``labels`` (0 when there are none)."""
        return float(sum(self._matching(name, labels)))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """``{label value: sample value}`` of one metric."""
        return {lab[label]: v for lab, v in self.samples.get(name, []) if label in lab}


def _all_taken(tr: Scrape, produced: int) -> bool:
    """Whether the trainer read all ``produced`` events and learned, dropped as
    duplicates or capped (the flood guard) every one it read: events never learned
    must not keep the demo waiting.

    >>> page = ("liverec_trainer_events_consumed_total 100\\n"
    ...         "liverec_trainer_events_learned_total 89\\n"
    ...         'liverec_trainer_events_capped_total{reason="repeat"} 11\\n')
    >>> _all_taken(Scrape.parse(page), 100), _all_taken(Scrape.parse(page), 101)
    (True, False)
    """
    s = tr.sum
    read = s("liverec_trainer_events_consumed_total") + s("liverec_trainer_events_rejected_total")
    done = (s("liverec_trainer_events_learned_total") + s("liverec_trainer_events_capped_total")
            + s("liverec_trainer_duplicates_dropped_total"))
    return read >= produced and done >= s("liverec_trainer_events_consumed_total")


def scrape(url: str, timeout_s: float = 2.0) -> Scrape | None:
    """Read and parse a ``/metrics`` URL; ``None`` when it does not answer."""
    try:
        resp = httpx.get(url, timeout=timeout_s)
        resp.raise_for_status()
        return Scrape.parse(resp.text)
    except (httpx.HTTPError, ValueError) as exc:
        log.debug("scrape %s failed: %s", url, exc)
        return None


# --------------------------------------------------------------------------- children


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Linux: a child gets SIGTERM if the demo is killed outright (no finally runs then).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class ChildProcess:
    """A child process in its own process group, its output in a log file.

    Parameters
    ----------
    name
        Short name for messages.
    argv
        The command line.
    log_path
        stdout and stderr go here.
    env
        Environment of the child (the parent's when ``None``).

    Examples
    --------
    >>> import sys, tempfile
    >>> p = ChildProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
    ...                  Path(tempfile.mkdtemp()) / "sleeper.log").start()
    >>> p.alive()
    True
    >>> p.stop(timeout_s=5)  # True had it needed a SIGKILL
    False
    >>> p.alive()
    False
    """

    def __init__(
        self, name: str, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> bool:
        """SIGTERM to the whole process group, SIGKILL after ``timeout_s``; idempotent.
        True when it had to be killed."""
        proc = self.proc
        killed = False
        try:
            if proc is None:
                return False
            if proc.poll() is None:
                self._signal(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0f s: SIGKILL", self.name, timeout_s)
                    killed = True
                    self._signal(proc.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)
            # Grandchildren that outlived their parent go too (same process group).
            self._signal(proc.pid, signal.SIGKILL)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return killed

    @staticmethod
    def _signal(pgid: int, sig: signal.Signals) -> bool:
        try:
            os.killpg(pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_for(what: str, ok: Callable[[], bool], child: ChildProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ok():
            return
        if not child.alive():
            raise RuntimeError(f"{child.name} exited while waiting for {what}; log "
                               f"{child.log_path}:\n{child.log_tail()}")
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}; log "
                       f"{child.log_path}:\n{child.log_tail()}")


# --------------------------------------------------------------------------- the stream


class SyntheticStream(threading.Thread):
    """Produces synthetic clicks into Kafka at a steady rate, stamped with the send time.

    The generator decides who clicks what and when the drift comes; each event's time
    is the moment it is sent, so the trainer's watermark (and the server's freshness)
    measure the real pipeline delay.

    Parameters
    ----------
    bootstrap, topic
        Where to send (an address, or Kafka settings with their security fields).
    rate
        Events per second (on average; sessions make it bursty like real traffic).
    n_events
        How many events at most.
    drift_at
        Index of the first event after the planted drift (``None``: none).
    users, items, seed
        Generator sizes and seed.
    """

    def __init__(
        self, bootstrap: KafkaSettings | str, topic: str, *, rate: float, n_events: int,
        drift_at: int | None, users: int, items: int, seed: int = 0,
    ) -> None:
        super().__init__(name="synthetic-stream", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.rate = rate
        self.n_events = n_events
        self.drift_at = drift_at
        self.users = users
        self.items = items
        self.seed = seed
        self.sent = 0
        self.failed = 0
        self.rejected = 0
        self.error: BaseException | None = None
        self.stop_event = threading.Event()
        self._recent: collections.deque[str] = collections.deque(maxlen=500)
        self._lock = threading.Lock()

    @property
    def produced(self) -> int:
        """Events the broker acknowledged (sends minus failures)."""
        return self.sent - self.failed

    def recent_user(self, rng: random.Random) -> str | None:
        """A user who clicked recently (for the demo's own recommendation requests)."""
        with self._lock:
            return rng.choice(self._recent) if self._recent else None

    def run(self) -> None:
        from online_models.synthetic import iter_events
        from stream.events import ClickEvent, encode, validate_dict
        from stream.kafka import make_producer

        def delivered(err: BaseException | None, rec: object) -> None:
            if err is not None:
                self.failed += 1
                log.warning("send failed: %s", err)

        try:
            producer = make_producer(self.bootstrap, client_id="liverec-demo")
        except Exception as exc:
            self.error = exc
            log.error("demo producer could not connect: %s", exc)
            return
        start = time.monotonic()
        rows = iter_events(self.n_events, self.users, self.items, self.seed, self.drift_at)
        try:
            for n, row in enumerate(rows):
                delay = n / self.rate - (time.monotonic() - start)
                if delay > 0 and self.stop_event.wait(delay):
                    break
                if self.stop_event.is_set():
                    break
                try:
                    # Event time is the send time: the generator fixes order and content,
                    # the clock fixes time, so freshness measures the real pipeline delay.
                    row["timestamp"] = time.time()
                    event = validate_dict(row, now=row["timestamp"])
                    if not isinstance(event, ClickEvent):
                        self.rejected += 1
                        continue
                    producer.send(self.topic, encode(event), key=event.user_id.encode("utf-8"),
                                  on_delivery=delivered)
                    producer.poll(0)
                    self.sent += 1
                    with self._lock:
                        self._recent.append(event.user_id)
                except Exception as exc:  # one bad send must not stop the stream
                    self.failed += 1
                    log.warning("could not send an event: %r", exc)
            producer.flush(30.0)
        except Exception as exc:
            self.error = exc
            log.error("demo stream stopped: %r", exc)
        finally:
            with contextlib.suppress(Exception):
                producer.close(10.0)


# --------------------------------------------------------------------------- clients


class RecommendationClient(threading.Thread):
    """Asks the API for recommendations for recently active users, like a client."""

    def __init__(self, api: str, stream: SyntheticStream, *, per_second: float = 4.0,
                 seed: int = 0) -> None:
        super().__init__(name="demo-client", daemon=True)
        self.api = api
        self.stream = stream
        self.period = 1.0 / per_second
        self.rng = random.Random(seed)
        self.ok = 0
        self.errors = 0
        self.freshness: collections.deque[float] = collections.deque(maxlen=10_000)
        self.stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=5.0) as client:
            while not self.stop_event.wait(self.period):
                user = self.stream.recent_user(self.rng)
                if user is None:
                    continue
                try:
                    resp = client.get("/v1/recommendations", params={"user_id": user, "k": 10})
                    if resp.status_code != 200:
                        self.errors += 1
                        continue
                    self.ok += 1
                    watermark = resp.json().get("watermark")
                    if watermark is not None:
                        self.freshness.append(max(0.0, time.time() - float(watermark)))
                except (httpx.HTTPError, ValueError) as exc:
                    self.errors += 1
                    log.debug("recommendation request failed: %s", exc)


# --------------------------------------------------------------------------- the demo


@dataclass
class DemoOptions:
    """Knobs of :func:`run_demo` (the ``liverec demo`` options).

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


@dataclass
class DemoSummary:
    """The figures of one demo run (also written as JSON)."""

    events_produced: int = 0
    events_learned: int = 0
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
            s.hr_at_10_by_model = tr.by_label("liverec_trainer_rolling_hit_ratio", "model")
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
        hr = f"{f.hr_at_10:.3f}" if f.hr_at_10 is not None else "-"
        n = f.hr_at_10_events_by_model.get(self.opts.default_model)
        if n is not None:
            hr += f" on {n}"
        fresh = f"{f.freshness_p50_s:.1f}s" if f.freshness_p50_s is not None else "-"
        return (f"[{f.seconds:6.1f}s] events in {f.events_produced:>7}  learned "
                f"{f.events_learned:>7}  HR@10({self.opts.default_model}) {hr}  drift alarms "
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


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (e.g. from a supervisor) takes the same clean path as Ctrl-C.

    SIGINT is set too: a shell starts background jobs with SIGINT ignored, and the
    demo should still stop cleanly on ``kill -INT``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


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


def _kafka(bootstrap: str | None, echo: Callable[[str], None]
           ) -> tuple[KafkaSettings, Callable[[], None]]:
    """The Kafka settings to use (the environment's ``LIVEREC_KAFKA_*``, also the
    client and security ones, with the broker found) and how to release the broker
    (stop it only if we started it)."""
    from stream.broker import broker_status, kafka_libs_cached, resolve_bootstrap
    from stream.settings import KafkaSettings

    settings = KafkaSettings()  # LIVEREC_KAFKA_BOOTSTRAP or LIVEREC_BOOTSTRAP, security
    external = bootstrap if bootstrap is not None else settings.bootstrap
    if not external.strip():
        detached = broker_status()
        if detached is not None:
            echo(f"Kafka: the local broker from `liverec broker start` at {detached.bootstrap}")
            return settings.with_bootstrap(detached.bootstrap), lambda: None
        fetch = "" if kafka_libs_cached() else " (this first run fetches Kafka via Maven)"
        echo(f"Kafka: starting a local broker{fetch}...")
    kafka = resolve_bootstrap(env_bootstrap=external, settings=settings)
    echo(f"Kafka ({kafka.source}) at {kafka.bootstrap}")
    if kafka.source == "env":
        return settings.with_bootstrap(kafka.bootstrap), kafka.close

    def release() -> None:  # a broker this demo started: it stops last
        echo(f"stopping the {kafka.source} Kafka broker the demo started ...")
        t0 = time.monotonic()
        kafka.close()
        echo(f"  Kafka broker stopped in {time.monotonic() - t0:.1f} s")

    return settings.with_bootstrap(kafka.bootstrap), release


def run_demo(opts: DemoOptions, echo: Callable[[str], None] = print) -> DemoSummary:
    """Run the whole system until ``opts.duration`` passes or Ctrl-C; return its figures.

    Raises
    ------
    stream.broker.KafkaSetupError
        No broker could be found or started.
    RuntimeError
        A child process died or did not come up (its log tail is in the message).
    """
    import orjson

    from stream.kafka import create_topics, delete_topics

    demo = _Demo(opts, echo)
    demo.run_dir.mkdir(parents=True, exist_ok=True)
    summary: DemoSummary | None = None
    with _sigterm_as_interrupt():
        kafka, release_kafka = _kafka(opts.bootstrap, echo)
        topics_made = False
        try:
            create_topics(kafka, {demo.topic: 4, f"{demo.topic}.dlq": 1})
            topics_made = True
            demo.start_children(kafka.bootstrap)
            demo.banner()
            demo.stream_clicks(kafka)
            try:
                demo.watch()
                demo.drain()
            except KeyboardInterrupt:
                echo("\nCtrl-C: stopping...")
            summary = demo.figures()
        finally:
            try:
                demo.shutdown()
                if topics_made:
                    echo(f"deleting the demo's topics ({demo.topic}, {demo.topic}.dlq) ...")
                    with contextlib.suppress(Exception):
                        delete_topics(kafka, [demo.topic, f"{demo.topic}.dlq"])
            finally:
                release_kafka()
    echo("summary: " + orjson.dumps(summary.as_json()).decode())
    echo(f"logs and snapshots kept in {demo.run_dir}")
    if opts.summary_json is not None:
        opts.summary_json.parent.mkdir(parents=True, exist_ok=True)
        opts.summary_json.write_bytes(
            orjson.dumps(summary.as_json(), option=orjson.OPT_INDENT_2))
    return summary
