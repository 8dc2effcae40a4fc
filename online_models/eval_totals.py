"""What the prequential evaluator measures on a batch (:class:`BatchOutcome`, one
:class:`ModelOutcome` per model) and one model's totals and rolling windows of it
(:class:`RunningTotals`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["COLD_SEGMENTS", "BatchOutcome", "ModelOutcome", "RunningTotals", "empty_outcome"]

#: cold-start segments reported next to the totals (``hr_<segment>``, ``n_<segment>``):
#: events whose item, or whose user, had fewer than ``cold_threshold`` earlier events --
#: at least one: with none, an event is not evaluable (:data:`EXCLUSIONS`), so a
#: never-seen user's fallback or a never-clicked item is not measured here
COLD_SEGMENTS: tuple[str, ...] = ("cold_item", "cold_user")


@dataclass
class ModelOutcome:
    """One model's results on the evaluated events of a batch, in event order."""

    hits: np.ndarray  # int8, 1 when the true item is in the top K
    ranks: np.ndarray  # int64, 1-based rank of the true item
    ndcg: np.ndarray  # float64, 1/log2(rank+1) for hits, else 0
    rr: np.ndarray  # float64, 1/rank within the top K, else 0 (MRR@K)
    novelty: np.ndarray  # float64, mean self-information of the top-K list
    diversity: np.ndarray  # float64, intra-list diversity of the top-K list (nan if < 2 items)


@dataclass
class BatchOutcome:
    """What :meth:`~online_models.evaluation.PrequentialEvaluator.process` measured on one batch.

    ``positions`` are the indices (in the batch) of the evaluated events;
    ``models[name]`` holds that model's per-event arrays aligned with them, as do
    ``cold_item`` (the true item had fewer than ``cold_threshold`` earlier events)
    and ``cold_user`` (the user had fewer than ``cold_threshold`` earlier events).
    ``n_eligible`` counts the evaluable events of the batch, sampled or not.
    """

    n_events: int
    positions: np.ndarray
    models: dict[str, ModelOutcome] = field(default_factory=dict)
    n_eligible: int = 0
    cold_item: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    cold_user: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def n_evaluated(self) -> int:
        return len(self.positions)


def empty_outcome() -> ModelOutcome:
    return ModelOutcome(
        hits=np.zeros(0, np.int8),
        ranks=np.zeros(0, np.int64),
        ndcg=np.zeros(0),
        rr=np.zeros(0),
        novelty=np.zeros(0),
        diversity=np.zeros(0),
    )


class _Ring:
    """Fixed-size ring buffer of floats with a running sum (nan-aware counts)."""

    def __init__(self, size: int) -> None:
        self.buf = np.full(size, np.nan)
        self.pos = 0
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        size = len(self.buf)
        values = np.asarray(values, np.float64)[-size:]
        idx = (self.pos + np.arange(len(values))) % size
        self.buf[idx] = values
        self.pos = (self.pos + len(values)) % size
        self.n = min(size, self.n + len(values))

    def mean(self) -> float:
        if self.n == 0:
            return float("nan")
        vals = self.buf if self.n == len(self.buf) else self.buf[: self.n]
        ok = ~np.isnan(vals)
        return float(vals[ok].mean()) if ok.any() else float("nan")


class RunningTotals:
    """Totals and rolling windows of one model's metrics.

    Recommended lists arrive as a ``(m, k)`` matrix of catalogue rows padded with
    -1; coverage counts distinct rows over all lists (totals) and over the last
    ``window`` lists (rolling).
    """

    def __init__(self, k: int, window: int) -> None:
        self.k = k
        self.window = window
        self.n = 0
        self.sums = dict.fromkeys(("hr", "ndcg", "mrr"), 0.0)
        # List metrics are nan for an empty list (a model that knows nothing yet).
        self.list_sums = dict.fromkeys(("novelty", "diversity"), 0.0)
        self.list_n = dict.fromkeys(("novelty", "diversity"), 0)
        self.rings = {m: _Ring(window) for m in ("hr", "ndcg", "mrr", "novelty", "diversity")}
        # Cold-start segments: hits and evaluated events.
        self.cold = {seg: [0, 0] for seg in COLD_SEGMENTS}
        self.recommended = np.zeros(0, bool)  # catalogue rows ever recommended (totals)
        self.recent = np.full((window, k), -1, np.int64)  # ring of the last lists
        self.recent_pos = 0
        self.recent_counts = np.zeros(0, np.int64)  # occurrences in the ring per row

    def _grow(self, size: int) -> None:
        if len(self.recommended) < size:
            new = max(16, 2 * size)
            rec = np.zeros(new, bool)
            rec[: len(self.recommended)] = self.recommended
            cnt = np.zeros(new, np.int64)
            cnt[: len(self.recent_counts)] = self.recent_counts
            self.recommended, self.recent_counts = rec, cnt

    def add(
        self, out: ModelOutcome, lists: np.ndarray, cold: Mapping[str, np.ndarray]
    ) -> None:
        if len(out.hits) == 0:  # nothing scored (no lists either)
            return
        self.n += len(out.hits)
        self.sums["hr"] += float(out.hits.sum())
        self.sums["ndcg"] += float(out.ndcg.sum())
        self.sums["mrr"] += float(out.rr.sum())
        for seg, mask in cold.items():
            self.cold[seg][0] += int(out.hits[mask].sum())
            self.cold[seg][1] += int(mask.sum())
        for name, arr in (("novelty", out.novelty), ("diversity", out.diversity)):
            ok = ~np.isnan(arr)
            self.list_sums[name] += float(arr[ok].sum())
            self.list_n[name] += int(ok.sum())
        for name, arr in (("hr", out.hits), ("ndcg", out.ndcg), ("mrr", out.rr),
                          ("novelty", out.novelty), ("diversity", out.diversity)):
            self.rings[name].extend(arr)
        if len(lists) == 0:
            return
        self._grow(int(lists.max()) + 1)
        valid = lists[lists >= 0]
        self.recommended[valid] = True
        lists = lists[-self.window :]
        slots = (self.recent_pos + np.arange(len(lists))) % self.window
        old = self.recent[slots]
        np.subtract.at(self.recent_counts, old[old >= 0], 1)
        self.recent[slots] = lists
        np.add.at(self.recent_counts, lists[lists >= 0], 1)
        self.recent_pos = int((self.recent_pos + len(lists)) % self.window)

    def totals(self, n_known: int) -> dict[str, float]:
        n = self.n
        nan = float("nan")
        out = {
            "n": float(n),
            "hr": self.sums["hr"] / n if n else nan,
            "ndcg": self.sums["ndcg"] / n if n else nan,
            "mrr": self.sums["mrr"] / n if n else nan,
            "precision": self.sums["hr"] / n / self.k if n else nan,
            "coverage": int(self.recommended.sum()) / n_known if n_known else nan,
            **{
                m: self.list_sums[m] / self.list_n[m] if self.list_n[m] else nan
                for m in ("novelty", "diversity")
            },
        }
        for seg, (hits, cnt) in self.cold.items():
            out[f"hr_{seg}"] = hits / cnt if cnt else nan
            out[f"n_{seg}"] = float(cnt)
        return out

    def rolling(self, n_known: int) -> dict[str, float]:
        hr = self.rings["hr"].mean()
        return {
            "n": float(self.rings["hr"].n),
            "hr": hr,
            "ndcg": self.rings["ndcg"].mean(),
            "mrr": self.rings["mrr"].mean(),
            "precision": hr / self.k,
            "coverage": (
                int(np.count_nonzero(self.recent_counts)) / n_known if n_known else float("nan")
            ),
            "novelty": self.rings["novelty"].mean(),
            "diversity": self.rings["diversity"].mean(),
        }
