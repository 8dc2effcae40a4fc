"""The demo's traffic: clicks into Kafka and recommendation requests to the API.

:class:`SyntheticStream` produces synthetic clicks (with a planted drift point) at a
steady rate, each stamped with its send time; :class:`RecommendationClient` asks the
API for recommendations for users who just clicked and records how fresh the answers
are. Both are daemon threads stopped through their ``stop_event``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import threading
import time
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from stream.settings import KafkaSettings

__all__ = ["RecommendationClient", "SyntheticStream"]

# The name of the module this came from: log lines and logging settings stay as they were.
log = logging.getLogger("liverec.demo")


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
