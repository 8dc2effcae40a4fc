"""Prequential evaluation inside a trainer, shared by both trainer modes.

:class:`TrainerEvaluation` holds the sampled evaluator
(:class:`~online_models.evaluation.PrequentialEvaluator`), the governor that sizes its
sample to a share of the learner's CPU time, the concept-drift monitors that read its
hit stream, and the metrics all three feed (``liverec_trainer_evaluated_events_total``,
the rolling and total HR/NDCG gauges, drift alarms). The single-process trainer
evaluates every batch it learns; a scale-out trainer evaluates the batches of its own
partitions while it holds the whole item state (see :mod:`trainer.partitioned`), the
events of a stable share of users (:func:`eval_users`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from online_models.base import Batch, OnlineModel, UserHistory
from online_models.drift import ConceptDriftMonitor, stable_buckets
from online_models.evaluation import EvalSample, PrequentialEvaluator
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings

__all__ = ["BACKLOG_MIN_PER_S", "TrainerEvaluation", "eval_users"]

#: the governor's cost sums decay by this factor per scored event
_COST_DECAY = 0.98
#: seconds over which the governor pays back evaluation CPU time spent beyond its share
_REPAY_S = 5.0

#: scored events per second that go on while the learner has a backlog, whatever the
#: share (the accuracy gauges keep moving during a catch-up)
BACKLOG_MIN_PER_S = 1.0

log = logging.getLogger(__name__)


def _finite(x: float | None) -> float | None:
    """``x`` as a float, or None when it is missing or not finite."""
    return None if x is None or not math.isfinite(x) else float(x)


def _figure(x: float | None, evidence: float) -> float:
    """An accuracy gauge's value: NaN without evidence or without a finite figure.

    >>> _figure(0.0, 0), _figure(0.0, 12), _figure(None, 12)
    (nan, 0.0, nan)
    """
    v = _finite(x)
    return float("nan") if v is None or evidence <= 0 else v


class TrainerEvaluation:
    """Sampled prequential evaluation, its CPU governor and drift monitors.

    Parameters
    ----------
    models
        The models to evaluate (the trainer's own objects: scored before they learn).
    history
        The user histories the evaluator reads and moves (query context, exclusions).
    settings
        The trainer's settings: ``k``, ``rolling_window``, the ``eval_*`` sample and
        governor settings.
    metrics
        Where the outcomes go.
    on_drift
        Called with a model's name when one of its drift detectors fires (the
        single-process trainer starts its drift adaptation there).
    monitors
        The models' drift monitors (restored ones); default: fresh ones.
    """

    def __init__(self, models: Mapping[str, OnlineModel], history: UserHistory,
                 settings: TrainerSettings, metrics: TrainerMetrics,
                 on_drift: Callable[[str], None] | None = None,
                 monitors: Mapping[str, ConceptDriftMonitor] | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on_drift = on_drift
        budget = settings.eval_budget_per_s or None
        if budget is None and settings.eval_cpu_share:
            # Governed: the floor until the governor has measured something
            # (:meth:`govern`). Scoring every event until then scored the whole first
            # batch: 150 events and 0.09 s on the issue-9 stream.
            budget = max(settings.eval_min_per_minute / 60.0, BACKLOG_MIN_PER_S)
        self.evaluator = PrequentialEvaluator(
            models, k=settings.k, history=history, rolling_window=settings.rolling_window,
            sample=EvalSample(fraction=settings.eval_sample, max_per_s=budget,
                              seed=settings.eval_seed),
        )
        self.monitors = dict(monitors) if monitors is not None else {
            n: ConceptDriftMonitor() for n in models}
        #: wall-clock time of each model's latest drift alarm
        self.alarm_wall: dict[str, float] = {}
        #: scoring CPU seconds and scored events, sums decayed per scored event (memory
        #: ~50 events): their ratio is the cost per scored event, the governor's input.
        #: Every scored event weighs alike; an average over calls let the many calls
        #: that score one or two events hide the higher cost per event of 32-event
        #: groups (measured: 2.5-3 ms/event estimated, 4.3 ms spent; evaluation took
        #: 13-14% of the default trainer's wall time against its 10%)
        self._cost_s = 0.0
        self._cost_n = 0.0
        #: evaluation bookkeeping (every event, scored or not) per second of wall time,
        #: an EWMA over windows of >= 1 s that start at ``_bk_since``
        self._bk_share: float | None = None
        self._bk_seconds = 0.0
        self._bk_since: float | None = None
        #: the process's CPU time per second of wall time (cores busy), an EWMA over the
        #: same windows; ``_cpu_since`` is the process CPU clock at the window's start
        self._cpu_rate: float | None = None
        self._cpu_since = 0.0
        #: scoring CPU seconds spent beyond the share (the first seconds, while the cost
        #: is learned, and a cost rising with the catalogue overrun it), paid back over
        #: :data:`_REPAY_S`: the share holds on average, not only per window
        self._debt = 0.0
        self._window_scoring = 0.0
        #: the learner has a backlog (it found a batch waiting, nearly always, over the
        #: last second): then the floor yields to the share, down to a trickle
        #: (:data:`BACKLOG_MIN_PER_S`), so evaluation never slows a catch-up beyond it
        self.backlog = False

    def govern(self, scored: int, seconds: float, bookkeeping_s: float = 0.0,
               now: float | None = None, cpu_now: float | None = None) -> None:
        """Keep the evaluation's CPU time near ``eval_cpu_share`` of the trainer
        process's CPU time (unless a fixed budget is set).

        The evaluator pays for every event (history, catalogue and count bookkeeping:
        ``bookkeeping_s`` of CPU time) and for the scored sample (``seconds`` of CPU
        time for ``scored`` events). The budget is ``(eval_cpu_share x cores busy -
        bookkeeping share) / cost`` scored events per second, where cores busy is the
        process's recent CPU time per second of wall time, the bookkeeping share the
        recent bookkeeping CPU time per second of wall time and ``cost`` the recent
        scoring CPU time per scored event;
        and at least ``eval_min_per_minute / 60``: a dashboard always has evidence to
        show, even when that costs more than the share -- except while the learner has a
        backlog (:attr:`backlog`: at full speed the share is the bound, as the throughput
        issue asks of the default setting), when the floor is
        :data:`BACKLOG_MIN_PER_S`.

        ``now`` and ``cpu_now`` (tests) stand for the wall and process CPU clocks; with
        ``now`` alone the process counts as one core busy.
        """
        s = self.settings
        if s.eval_budget_per_s or not s.eval_cpu_share:
            return
        if now is None:
            now, cpu_now = time.perf_counter(), time.process_time()
        elif cpu_now is None:
            cpu_now = now
        if self._bk_since is None:
            self._bk_since, self._cpu_since = now, cpu_now
        self._bk_seconds += bookkeeping_s
        self._window_scoring += seconds
        if now - self._bk_since >= 1.0:  # shares over at least a second of wall time
            span = now - self._bk_since
            share, cores = self._bk_seconds / span, (cpu_now - self._cpu_since) / span
            # Only scoring is the governor's to hold back: what it spent beyond what the
            # bookkeeping left of the share, at most a repayment period's worth.
            allowed = max(0.0, s.eval_cpu_share * cores * span - self._bk_seconds)
            self._debt = min(max(0.0, self._debt + self._window_scoring - allowed),
                             s.eval_cpu_share * cores * _REPAY_S)
            self._window_scoring = 0.0
            self._bk_share = share if self._bk_share is None else \
                0.7 * self._bk_share + 0.3 * share
            self._cpu_rate = cores if self._cpu_rate is None else \
                0.7 * self._cpu_rate + 0.3 * cores
            self._bk_since, self._bk_seconds, self._cpu_since = now, 0.0, cpu_now
        if scored == 0:
            return
        decay = _COST_DECAY**scored
        self._cost_s = decay * self._cost_s + seconds
        self._cost_n = decay * self._cost_n + scored
        if self._bk_share is None or self._cpu_rate is None:
            # The first second, from the part of it measured so far (nothing at the
            # first call: the floor), less the scoring it already spent. Assuming no
            # bookkeeping and one core, as before, scored 150-220 events in the first
            # second of the issue-9 stream, whose bookkeeping alone took 5.8% of wall
            # time, and the next 5-8 s paid that back.
            span = now - self._bk_since
            left = 0.0 if span <= 0 else (
                s.eval_cpu_share * (cpu_now - self._cpu_since) / span
                - (self._bk_seconds + self._window_scoring) / span)
        else:
            left = s.eval_cpu_share * self._cpu_rate - self._bk_share - self._debt / _REPAY_S
        floor = s.eval_min_per_minute / 60.0
        if self.backlog:
            floor = min(floor, BACKLOG_MIN_PER_S)
        self.evaluator.set_budget(max(floor, left * self._cost_n / max(self._cost_s, 1e-12),
                                      1e-3))

    def evaluate(self, batch: Batch) -> bool:
        """Score the batch's sample before the models learn it (the history moves for
        every event); False when evaluation failed (the history moved anyway)."""
        m = self.metrics
        t0, cpu0 = time.perf_counter(), time.thread_time()
        scoring_before = self.evaluator.scoring_seconds
        try:
            outcome = self.evaluator.process(batch, learn=False)
        except Exception:
            m.evaluate_errors.inc()
            log.exception("prequential evaluation failed on a batch (it is still learned)")
            self.evaluator.history.extend(batch.users, batch.items)
            return False
        elapsed = time.perf_counter() - t0
        cpu = time.thread_time() - cpu0
        m.evaluate_duration.observe(elapsed)
        m.evaluate_cpu.inc(cpu)
        # The governor counts CPU time: wall time also holds the waits for the GIL
        # while the source thread decodes, which evaluating less would not remove.
        # Scoring's part of it is taken in proportion to its part of the wall time.
        scoring = self.evaluator.scoring_seconds - scoring_before
        scoring_cpu = cpu * min(scoring / elapsed, 1.0) if elapsed > 0 else 0.0
        self.govern(outcome.n_evaluated, scoring_cpu, max(cpu - scoring_cpu, 0.0))
        times = batch.timestamps[outcome.positions]
        for name, out in outcome.models.items():
            m.evaluated.labels(model=name).inc(len(out.hits))
            m.hits.labels(model=name).inc(int(out.hits.sum()))
            fired = self.monitors[name].update_many(out.hits.tolist(), times.tolist())
            for det in fired:
                m.drift_alarms.labels(model=name, detector=det).inc()
            if fired:
                self.alarm_wall[name] = time.time()
                log.warning("concept drift on %s (%s) at event time %s", name,
                            ",".join(sorted(set(fired))), self.monitors[name].last_alarm_time)
                if self.on_drift is not None:
                    self.on_drift(name)
        return True

    def update_gauges(self) -> None:
        """Set the rolling and total accuracy gauges and the drift alarm ages."""
        m = self.metrics
        for name in self.evaluator.models:
            roll = self.evaluator.rolling(name)
            tot = self.evaluator.totals(name)
            # NaN, not 0, while no event was evaluated (a restart on a quiet stream):
            # 0 drew every model as missing everything and fired LiverecHitRatioDrop.
            n_roll = _finite(roll.get("n")) or 0.0
            n_tot = _finite(tot.get("n")) or 0.0
            m.rolling_hr.labels(model=name).set(_figure(roll["hr"], n_roll))
            m.rolling_ndcg.labels(model=name).set(_figure(roll["ndcg"], n_roll))
            m.rolling_coverage.labels(model=name).set(_figure(roll["coverage"], n_roll))
            m.rolling_evaluated.labels(model=name).set(n_roll)
            m.hr_total.labels(model=name).set(_figure(tot["hr"], n_tot))
            m.ndcg_total.labels(model=name).set(_figure(tot["ndcg"], n_tot))
            wall = self.alarm_wall.get(name)
            m.drift_last_alarm_age.labels(model=name).set(
                time.time() - wall if wall is not None else -1.0)

    @staticmethod
    def clear_gauges(metrics: TrainerMetrics, models: Iterable[str]) -> None:
        """NaN in the accuracy gauges of a process that evaluates nothing (now): a
        scale-out trainer that does not fold (0 would read as a model that misses)."""
        nan = float("nan")
        for name in models:
            for gauge in (metrics.rolling_hr, metrics.rolling_ndcg, metrics.rolling_coverage,
                          metrics.hr_total, metrics.ndcg_total):
                gauge.labels(model=name).set(nan)
            metrics.rolling_evaluated.labels(model=name).set(0.0)

    def summary(self) -> dict[str, Any]:
        """Rolling and total figures per model, for a snapshot's metadata."""
        out: dict[str, Any] = {}
        for name in self.evaluator.models:
            try:
                roll = self.evaluator.rolling(name)
                tot = self.evaluator.totals(name)
            except Exception:
                continue
            out[name] = {
                "rolling": {k: _finite(roll.get(k)) for k in ("n", "hr", "ndcg", "coverage")},
                "total": {k: _finite(tot.get(k)) for k in ("n", "hr", "ndcg", "coverage")},
            }
        return out

    def hr_line(self) -> str:
        """``hr@10 over N [name=0.123 ...]``: the rolling HR@k and the evaluated events it
        rests on (the most of any model; ``-`` before any evidence)."""
        hr, n = [], 0
        for name in self.evaluator.models:
            try:
                roll = self.evaluator.rolling(name)
            except Exception:
                roll = {}
            v = _finite(roll.get("hr"))
            n = max(n, int(_finite(roll.get("n")) or 0))
            hr.append(f"{name}={v:.3f}" if v is not None else f"{name}=-")
        return f"hr@{self.settings.k} over {n} [{' '.join(hr)}]"


def eval_users(users: Sequence[str] | np.ndarray, share: float) -> np.ndarray:
    """Mask of the events whose user is in the evaluated ``share`` of users (by a CRC-32
    of the id: the same users everywhere, every time).

    >>> eval_users(["u1", "u2", "u3", "u1"], 1.0).tolist()
    [True, True, True, True]
    >>> m = eval_users([f"u{k}" for k in range(10_000)], 0.1)
    >>> bool(0.09 < m.mean() < 0.11)
    True
    """
    if share >= 1.0:
        return np.ones(len(users), bool)
    return stable_buckets(users, 1 << 32) < int(share * (1 << 32))
