"""Next-item model: decayed item-to-next-item transitions over each user's last few items.

In click and purchase streams what a user touched last is the strongest signal. The
model counts directed transitions ``earlier -> later`` between an event and the
user's previous ``window`` items (closer predecessors weigh more), with forward
decay in event time, and scores candidates from the user's most recent items,
the most recent weighing most. It shares the sparse, vectorised, batch-boundary
independent engine of :mod:`online_models.itemknn`.
"""

from __future__ import annotations

from typing import ClassVar

from online_models.itemknn import CoOccurrenceModel

__all__ = ["SequenceModel"]


class SequenceModel(CoOccurrenceModel):
    """Decayed item-to-next-item transitions, scored from the user's latest items.

    Parameters
    ----------
    window
        Predecessors each event forms a transition from.
    half_life_seconds
        Event-time half-life of transition mass (``None``: no decay).
    gap_half_life_seconds
        Half-life on the time between the two items (``None``: off): transitions
        across long breaks count less.
    position_decay
        Factor per step between predecessor and successor.
    alpha
        Normalisation ``C_ij / (n_i**alpha n_j**(1-alpha))``; 1.0 is the transition
        probability ``P(j | i)``.
    query_items
        Most recent items of the user used as the query.
    recency_decay
        Weight factor per step back among the query items.
    popularity_tiebreak
        Weight of a tiny decayed-popularity term that breaks ties.
    weight_power
        Event weights enter as ``w**weight_power``: 0 counts every interaction
        alike (best for next-item accuracy on MovieLens, where the rating says
        little about what is rated next), 1 uses the event type's weight as is.

    Examples
    --------
    >>> from online_models.base import Batch
    >>> m = SequenceModel()
    >>> m.learn(Batch.from_columns(["a"] * 3 + ["b"] * 3, list("xyz") + list("xyz"),
    ...                            None, range(6)))
    >>> [i for i, _ in m.recommend("c", 1, history=["x", "y"], exclude=["x", "y"])]
    ['z']
    """

    name: ClassVar[str] = "sequence"
    symmetric: ClassVar[bool] = False

    def __init__(
        self,
        window: int = 10,
        half_life_seconds: float | None = 365 * 86_400.0,
        gap_half_life_seconds: float | None = None,
        position_decay: float = 0.8,
        alpha: float = 1.0,
        query_items: int = 10,
        recency_decay: float = 0.8,
        popularity_tiebreak: float = 1e-6,
        weight_power: float = 0.0,
    ) -> None:
        super().__init__(
            window=window,
            half_life_seconds=half_life_seconds,
            gap_half_life_seconds=gap_half_life_seconds,
            position_decay=position_decay,
            alpha=alpha,
            query_items=query_items,
            recency_decay=recency_decay,
            popularity_tiebreak=popularity_tiebreak,
            weight_power=weight_power,
        )
