"""What keeps rejects from flooding the log or stalling the stream.

* :class:`RejectLog`: one WARNING line per reject, at most ``burst`` per window; the
  rest of the window's rejects are summarised by reason in one line when it ends (at
  the next poll after its end, or the next reject, or at close).
  (20,000 poison messages made 20,000 log lines.)
* :class:`DeadLetterBreaker`: once a batch's dead-letter writes failed every attempt,
  the next batches skip the dead-letter topic for a cool-down (doubling, bounded)
  instead of paying every retry again: a dead-letter topic that cannot be written
  (missing where the broker does not create topics, too small, no ACL) cost every
  batch with a reject its whole retry sequence, about 43 s with the defaults.
* :func:`ensure_dead_letter_topic`: a trainer creates its dead-letter topic at start
  where it is missing, or says at once that it cannot (before, a missing topic on a
  cluster that does not create topics showed only at the first reject; a scale-out
  trainer sends rejects inside its transaction, which a missing topic would fail).
  :func:`ensure_dead_letter_topic_for_source` does so once the source topic exists (a
  trainer started on a mistyped topic created ``<typo>.dlq``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from stream.kafka.admin import create_topics, topic_exists
from stream.kafka.base import KafkaClientError
from stream.settings import KafkaSettings

__all__ = ["DeadLetterBreaker", "RejectLog", "ensure_dead_letter_topic",
           "ensure_dead_letter_topic_for_source", "offset_ranges"]

log = logging.getLogger(__name__)

#: (reject, topic, partition, offset); the reject has ``reason`` and ``detail``
RejectAt = tuple[Any, str, int, int]


def offset_ranges(rejects: Sequence[RejectAt]) -> str:
    """Where ``rejects`` lie: ``topic[partition]@first-last`` per partition.

    >>> offset_ranges([(None, "clicks", 0, 7), (None, "clicks", 0, 3), (None, "clicks", 1, 5)])
    'clicks[0]@3-7, clicks[1]@5'
    """
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for _, topic, partition, offset in rejects:
        lo, hi = spans.get((topic, partition), (offset, offset))
        spans[topic, partition] = (min(lo, offset), max(hi, offset))
    return ", ".join(f"{t}[{p}]@{lo}" + (f"-{hi}" if hi != lo else "")
                     for (t, p), (lo, hi) in sorted(spans.items()))


class RejectLog:
    """Rate-limited per-reject log lines (see module doc)."""

    def __init__(self, logger: logging.Logger, burst: int = 20, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.burst, self.window_s, self.clock = logger, burst, window_s, clock
        self._start: float | None = None
        self._shown = 0
        self._wall = 0.0
        self._held: Counter[str] = Counter()

    def rejects(self, rejects: Sequence[RejectAt]) -> None:
        now = self.clock()
        if self._start is None or now - self._start >= self.window_s:
            self.flush()
            self._start, self._shown, self._wall = now, 0, time.time()
        for rej, topic, partition, offset in rejects:
            if self._shown < self.burst:
                self._shown += 1
                self.log.warning("reject %s at %s[%d]@%d: %s", rej.reason, topic, partition,
                                 offset, rej.detail[:200])
            else:
                self._held[rej.reason] += 1

    def tick(self) -> None:
        """Close the window once it is over (call it often: one clock read)."""
        if self._start is not None and self.clock() - self._start >= self.window_s:
            self.flush()
            self._start = None

    def flush(self) -> None:
        """Log the summary of the rejects not shown in the current window."""
        if self._held and self._start is not None:
            n = sum(self._held.values())
            by = ", ".join(f"{r}={c}" for r, c in sorted(self._held.items()))
            span = min(self.clock() - self._start, self.window_s)
            since = time.strftime("%H:%M:%S", time.localtime(self._wall))
            self.log.warning("%d more rejects in the %.0f s from %s, not logged one by "
                             "one (%s); liverec_*_events_rejected_total counts them by "
                             "reason, and the dead-letter topic holds each one it could "
                             "take", n, span, since, by)
        self._held.clear()


class DeadLetterBreaker:
    """Skips dead-letter writes for a cool-down after a batch's writes all failed."""

    def __init__(self, cooldown_s: float = 30.0, max_cooldown_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_s, self.max_s, self.clock = cooldown_s, max_cooldown_s, clock
        self.cooldown_s = cooldown_s
        self.open_until: float | None = None
        #: rejects skipped without a try since the breaker opened
        self.skipped = 0
        self.last_error = ""

    def is_open(self) -> bool:
        return self.open_until is not None and self.clock() < self.open_until

    def opened(self, error: str) -> float:
        """Writes failed every attempt: skip them for the cool-down (returned), which
        doubles (up to ``max_cooldown_s``) each time it opens again without a success
        in between."""
        now = self.clock()
        wait = self.cooldown_s
        self.open_until, self.last_error = now + wait, error
        self.cooldown_s = min(self.max_s, 2 * self.cooldown_s)
        return wait

    def closed(self) -> int:
        """Writes succeed again: back to the first cool-down; returns how many rejects
        were skipped while it was open."""
        skipped, self.skipped = self.skipped, 0
        self.open_until, self.cooldown_s = None, self.base_s
        return skipped


#: what a missing dead-letter topic means for a single trainer (the breaker's skips)
SKIPPED_REJECTS = "rejects will be skipped and counted in liverec_trainer_dlq_failures_total"


def ensure_dead_letter_topic(settings: KafkaSettings, timeout_s: float = 30.0,
                             consequence: str = SKIPPED_REJECTS) -> bool:
    """Create ``settings.dlq_topic`` (one partition) if it does not exist.

    Returns whether it exists now. Where it cannot be checked or created (no ACL to
    describe or create topics, Kafka down), one WARNING says what a missing topic
    would mean (``consequence``: for a single trainer, rejects counted and skipped, see
    :class:`DeadLetterBreaker`) and what to do; nothing is raised: the topic may
    exist all the same.
    """
    topic = settings.dlq_topic
    try:
        created = create_topics(settings, {topic: 1}, timeout_s=timeout_s)
    except (KafkaClientError, ValueError, RuntimeError) as exc:  # any client's refusal
        log.warning(
            "cannot make sure the dead-letter topic %s exists (%s). If it is missing "
            "and the brokers do not create topics, %s: create it (one partition) or let "
            "this trainer's principal create topics", topic, exc, consequence)
        return False
    if created:
        log.info("created the dead-letter topic %s", topic)
    return True


def ensure_dead_letter_topic_for_source(settings: KafkaSettings, stop: threading.Event,
                                        every_s: float = 5.0) -> bool:
    """:func:`ensure_dead_letter_topic` once ``settings.topic`` exists, checked every
    ``every_s`` until ``stop`` is set (then False: nothing created). Where the check
    itself fails (Kafka down, no ACL to describe), the topic is made sure of at once,
    so that its warning says what is wrong."""
    said = False
    while not stop.is_set():
        try:
            exists = topic_exists(settings, settings.topic)
        except (KafkaClientError, ValueError, RuntimeError):
            exists = True
        if exists:
            return ensure_dead_letter_topic(settings)
        if not said:  # (also what a principal that may not describe the topic sees)
            log.info("the dead-letter topic %s waits for %s to exist (or to be visible "
                     "to this principal); checked every %g s", settings.dlq_topic,
                     settings.topic, every_s)
            said = True
        stop.wait(every_s)
    return False
