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

This module holds :func:`run_demo` and re-exports the parts, which live beside it:
:mod:`liverec.demo_phases` (the options, the figures and the run's phases),
:mod:`liverec.demo_traffic` (the click stream and the recommendation client),
:mod:`liverec.child_process` (:class:`ChildProcess`) and :mod:`liverec.demo_metrics`
(:func:`scrape`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

from liverec.child_process import ChildProcess
from liverec.demo_metrics import Scrape, scrape
from liverec.demo_phases import (
    DEFAULT_API_PORT,
    DEFAULT_METRICS_PORT,
    DemoOptions,
    DemoSummary,
    _Demo,
)
from liverec.demo_traffic import RecommendationClient, SyntheticStream

if TYPE_CHECKING:
    from stream.settings import KafkaSettings

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_METRICS_PORT",
    "ChildProcess",
    "DemoOptions",
    "DemoSummary",
    "RecommendationClient",
    "Scrape",
    "SyntheticStream",
    "run_demo",
    "scrape",
]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[Callable[[], None]]:
    """SIGTERM (e.g. from a supervisor) takes the same clean path as Ctrl-C.

    SIGINT is set too: a shell starts background jobs with SIGINT ignored, and the
    demo should still stop cleanly on ``kill -INT``. Only a signal before the stop
    interrupts: once it began (by a first signal, or by calling the function this
    yields when the run ends by itself), a signal is answered with what the stop waits
    for. (It used to interrupt the stop itself, and the broker could then stop before
    the trainer had committed.)
    """
    stopping = False

    def begin_stop() -> None:
        nonlocal stopping
        stopping = True

    if threading.current_thread() is not threading.main_thread():
        yield begin_stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            print("\nalready stopping, in order: the server, the trainer (its last "
                  "snapshot and commit), then a broker the demo started; each waits at "
                  "most 15 s before it is killed", file=sys.stderr, flush=True)
            return
        stopping = True
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield begin_stop
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


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
    with _sigterm_as_interrupt() as begin_stop:
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
            begin_stop()  # from here a signal waits for the ordered stop
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
