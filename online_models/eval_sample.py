"""Which evaluable events the prequential evaluator scores (:class:`EvalSample`), and
the seeded per-batch draws that pick them (:class:`EventSampler`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["EvalSample", "EventSampler"]


@dataclass(frozen=True)
class EvalSample:
    """Which evaluable events are scored: a seeded sample of them, uniform within a
    batch, and over the whole stream when only ``fraction`` is set.

    Every event of the stream draws one uniform number from a generator seeded
    with ``seed`` (one draw per event, whether it is evaluable or not, so the
    sample does not depend on where mini-batch boundaries fall); an evaluable event
    is scored when its draw is below the batch's acceptance probability. That
    probability is ``fraction``, lowered when ``max_per_s`` is set so that at most
    about ``max_per_s`` events per second of wall time are scored (a token bucket
    holding at most one second's worth; the rate of evaluable events is estimated
    from earlier batches). Unsampled events still move the history and the
    catalogue. ``EvalSample()`` scores every evaluable event.

    With ``max_per_s`` the probability falls in a burst and rises in a quiet spell,
    and the evaluator's totals are plain means over the scored events: they weigh
    each second of the stream about alike, not each event (a burst's accuracy counts
    less than its share of events). An event-weighted figure would weight each scored
    event by the inverse of its batch's acceptance probability; the trainer's gauges
    and drift detectors read the plain hit stream.

    A scoring call costs a fixed part per batch whatever the number of events it
    scores (every model's lookups, the ranking metrics), so a budget that affords
    only a few events per batch would spend most of it on that fixed part. When the
    bucket holds fewer than ``min_batch`` tokens, a batch is therefore scored with
    probability ``tokens / min_batch`` (one more seeded draw), and then at the
    acceptance probability that scores about ``min_batch`` of its evaluable events:
    every event's chance of being scored is the same as without this (``fraction *
    tokens / expected``); they come in fewer, larger groups.

    Parameters
    ----------
    fraction
        Share of evaluable events scored, in ``(0, 1]``.
    max_per_s
        Optional budget of scored events per second of wall time.
    seed
        Seed of the per-event draws.
    min_batch
        Scored events a batch aims at when the budget is tight (see above).

    Examples
    --------
    >>> EvalSample().full, EvalSample(fraction=0.05, seed=3).full
    (True, False)
    """

    fraction: float = 1.0
    max_per_s: float | None = None
    seed: int = 0
    min_batch: int = 32

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"sample fraction must be in (0, 1], got {self.fraction}")
        if self.max_per_s is not None and not self.max_per_s > 0:
            raise ValueError(f"max_per_s must be positive, got {self.max_per_s}")
        if self.min_batch < 1:
            raise ValueError(f"min_batch must be at least 1, got {self.min_batch}")

    @property
    def full(self) -> bool:
        """Whether every evaluable event is scored (no draws at all)."""
        return self.fraction >= 1.0 and self.max_per_s is None


class EventSampler:
    """Per-batch acceptance draws of an :class:`EvalSample` (see its docstring)."""

    def __init__(self, spec: EvalSample, clock: Callable[[], float]) -> None:
        self.spec = spec
        self.clock = clock
        self.rng = np.random.default_rng(spec.seed)
        self.tokens = float(spec.max_per_s or 0.0)
        self.last = clock()
        self.eligible_rate = 1.0  # evaluable share of events, EMA over batches

    def draws(self, n: int) -> tuple[np.ndarray | None, float]:
        """One uniform draw per event of a batch of ``n`` and the acceptance probability."""
        if self.spec.full:
            return None, 1.0
        p = self.spec.fraction
        budget = self.spec.max_per_s
        if budget is not None:
            now = self.clock()
            self.tokens = min(budget, self.tokens + budget * max(0.0, now - self.last))
            self.last = now
            expected = max(1e-9, self.eligible_rate * n * p)
            draws = self.rng.random(n)
            if self.tokens >= expected:
                return draws, p
            group = min(expected, float(self.spec.min_batch))
            if self.tokens >= group:
                return draws, p * self.tokens / expected
            # Too few tokens for a worthwhile group: this batch is scored with
            # probability tokens / group, then about `group` of its events are.
            if self.rng.random() >= self.tokens / group:
                return draws, 0.0
            return draws, p * group / expected
        return self.rng.random(n), p

    def spent(self, n_events: int, n_eligible: int, n_scored: int) -> None:
        if n_events:
            self.eligible_rate = 0.8 * self.eligible_rate + 0.2 * n_eligible / n_events
        if self.spec.max_per_s is not None:
            self.tokens -= n_scored  # a group may overdraw: later refills repay it
