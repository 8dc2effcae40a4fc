"""AUC of a click model on a sample of the stream, over the events HR@K evaluates.

:func:`sampled_auc` scores a model with a click-probability head (``click_proba``,
:class:`ClickModel`: the re-ranker ``ranked``) on a stretch of events, each evaluable
positive against sampled negatives, and says in :class:`SampledAUC` how many
positives and pairs the figure rests on and what it left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from online_models.base import Batch, UserHistory
from online_models.evaluation import EXCLUSIONS, PrequentialEvaluator

__all__ = ["AUC_EVERY", "AUC_POSITIVES", "BatchAUC", "ClickModel", "SampledAUC", "sampled_auc"]

#: :class:`BatchAUC`'s defaults: every 20th batch, its first 64 evaluable events
AUC_EVERY, AUC_POSITIVES = 20, 64


@runtime_checkable
class ClickModel(Protocol):
    """A model with a click-probability head (e.g. the embedding model's MLP re-ranker)."""

    def click_proba(
        self, user: str, items: Sequence[str], history: Sequence[str] = ()
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class SampledAUC:
    """What :func:`sampled_auc` measured, with the counts it rests on.

    ``positives`` is the number of evaluable positives scored (each against at least
    one negative), ``negatives`` the number of (positive, negative) pairs and
    ``correct`` the pairs ordered right (ties counting one half); ``excluded`` counts
    the positives left out, by reason (:data:`EXCLUSIONS`, and ``no_negative`` where
    no negative could be drawn). Results of several calls pool with ``+`` (each pair
    weighs the same).

    >>> a = SampledAUC(positives=1, negatives=4, correct=3.0)
    >>> (a + SampledAUC(positives=1, negatives=4, correct=4.0)).auc
    0.875
    >>> import math; math.isnan(SampledAUC().auc)
    True
    """

    positives: int = 0
    negatives: int = 0
    correct: float = 0.0
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def auc(self) -> float:
        """Fraction of pairs ordered right (ties one half); ``nan`` without pairs."""
        return self.correct / self.negatives if self.negatives else float("nan")

    def __add__(self, other: SampledAUC) -> SampledAUC:
        excluded = dict(self.excluded)
        for why, n in other.excluded.items():
            excluded[why] = excluded.get(why, 0) + n
        return SampledAUC(self.positives + other.positives, self.negatives + other.negatives,
                          self.correct + other.correct, excluded)


def sampled_auc(
    model: object,
    users: Sequence[str],
    items: Sequence[str],
    *,
    history: UserHistory,
    n_negatives: int = 20,
    seed: int = 0,
    known: Callable[[str], bool] | None = None,
    max_positives: int | None = None,
) -> SampledAUC:
    """AUC of a click model: each evaluable positive ``(user, item)`` against sampled negatives.

    The positives are a stretch of the stream, in event order, that follows the state
    in ``history`` (the users' histories before the first of them) and ``known`` (whether
    an item was seen earlier in the stream; default: the model knows it). Only the
    events the HR@K protocol evaluates count (:class:`PrequentialEvaluator`): an event
    is left out when its item was never seen before (``unknown_item``, which
    ``click_proba`` would score 0.0), when it is its user's first event
    (``first_user_event``) or when its item is already in the user's history
    (``repeat_item``); earlier events of the stretch count as seen and as history,
    as they do for HR@K. ``max_positives`` stops after that many evaluable positives.

    Negatives are drawn uniformly from the model's known items, excluding the
    positive and the user's history at the event, which is also the query context of
    ``click_proba``. The AUC is the fraction of (positive, negative) pairs ordered
    correctly, ties counting one half; the result says how many positives and pairs
    it rests on and what was left out (:class:`SampledAUC`). Its ``auc`` is ``nan``
    when the model has no ``click_proba`` or no pair could be formed.

    >>> class Toy:
    ...     from online_models.base import IdIndex
    ...     items = IdIndex(["a", "b", "c"])
    ...     def click_proba(self, user, items, history=()):
    ...         return np.array([1.0 if i == "a" else 0.0 for i in items])
    >>> h = UserHistory()
    >>> h.append("u", "b")
    >>> r = sampled_auc(Toy(), ["u", "u", "v", "u"], ["a", "b", "a", "zz"], history=h,
    ...                 n_negatives=5)
    >>> r.auc, r.positives, r.excluded
    (1.0, 1, {'unknown_item': 1, 'first_user_event': 1, 'repeat_item': 1})
    """
    empty = SampledAUC(excluded=dict.fromkeys(EXCLUSIONS, 0))
    if not isinstance(model, ClickModel):
        return empty
    index = getattr(model, "items", None)
    if index is None:
        return empty
    ids = [i for i in index.ids if i is not None]
    if not ids:
        return empty
    is_known = known if known is not None else index.__contains__
    catalog = np.asarray(ids, dtype=object)
    rng = np.random.default_rng(seed)
    excluded = dict.fromkeys(EXCLUSIONS, 0)
    correct = 0.0
    pairs = positives = 0
    seen_here: set[str] = set()  # items of the stretch so far (known to the stream)
    hists: dict[str, dict[str, None]] = {}  # users' histories, moved event by event
    for user, pos in zip(users, items, strict=True):
        if max_positives is not None and positives >= max_positives:
            break
        hist = hists.get(user)
        if hist is None:
            hist = hists[user] = dict.fromkeys(history.get(user))
        item_known = pos in seen_here or is_known(pos)
        seen_here.add(pos)
        had = bool(hist)
        repeat = pos in hist
        before = list(hist)
        hist.pop(pos, None)
        hist[pos] = None
        if not item_known:
            excluded["unknown_item"] += 1
            continue
        if not had:
            excluded["first_user_event"] += 1
            continue
        if repeat:
            excluded["repeat_item"] += 1
            continue
        banned = {pos, *before}
        draw = catalog[rng.integers(0, len(catalog), size=n_negatives * 2)]
        negs = [str(x) for x in draw if x not in banned][:n_negatives]
        if not negs:
            excluded["no_negative"] = excluded.get("no_negative", 0) + 1
            continue
        p = np.asarray(model.click_proba(user, [pos, *negs], before), np.float64)
        correct += float((p[1:] < p[0]).sum() + 0.5 * (p[1:] == p[0]).sum())
        pairs += len(negs)
        positives += 1
    return SampledAUC(positives, pairs, correct, excluded)


class BatchAUC:
    """The sampled click AUC of a prequential run's click models: in every
    ``every``-th batch (0: none), its first ``positives`` evaluable events, each
    against sampled negatives (:func:`sampled_auc`); :attr:`totals` pools them.
    ``liverec evaluate`` and ``bench/bench_deep.py`` sample this way."""

    def __init__(self, models: Mapping[str, object], every: int = AUC_EVERY,
                 positives: int = AUC_POSITIVES) -> None:
        self.every, self.positives = every, positives
        self.models = {n: m for n, m in models.items()
                       if every > 0 and isinstance(m, ClickModel)}
        #: each click model's AUC so far
        self.totals = {n: SampledAUC() for n in self.models}
        self._batches = 0

    def sample(self, batch: Batch, evaluator: PrequentialEvaluator, seed: int) -> None:
        """Call for every batch before ``evaluator`` processes it and any model learns
        it: the stream's state before the batch decides what is evaluable."""
        n, self._batches = self._batches, self._batches + 1
        if not self.models or n % self.every != self.every - 1:
            return
        users, items = list(batch.users), list(batch.items)
        for name, model in self.models.items():
            self.totals[name] += sampled_auc(
                model, users, items, history=evaluator.history, known=evaluator.seen,
                seed=seed, max_positives=self.positives)
