"""Drift adaptation: after a concept-drift alarm, forget faster for a while.

When a model's drift monitor alarms, the hyperparameters the model declares as
adaptable (:meth:`~online_models.base.OnlineModel.adaptable_params`) change for
``span_events`` learned events: half-lives are multiplied by ``half_life_factor``
(shorter memory), learning rates by ``lr_factor`` (faster steps). Then the original
values come back. The originals travel in the snapshot (:meth:`to_meta`), so a restart
in the middle of an adaptation still restores them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from online_models.base import OnlineModel

__all__ = ["DriftAdaptation"]

log = logging.getLogger(__name__)


class DriftAdaptation:
    """Temporary hyperparameter overrides per model, keyed by model name.

    Examples
    --------
    >>> from online_models import registry
    >>> models = {"popularity": registry.create("popularity", half_life_seconds=100.0)}
    >>> ad = DriftAdaptation(half_life_factor=0.5, lr_factor=2.0, span_events=10)
    >>> ad.start("popularity", models["popularity"], events_total=0)
    True
    >>> models["popularity"].get_params()["half_life_seconds"]
    50.0
    >>> ad.expire(models, events_total=10)
    ['popularity']
    >>> models["popularity"].get_params()["half_life_seconds"]
    100.0
    """

    def __init__(self, half_life_factor: float, lr_factor: float, span_events: int) -> None:
        self.factors = {"half_life": half_life_factor, "learning_rate": lr_factor}
        self.span_events = span_events
        #: model name -> {"until": events_total, "originals": {param: value}}
        self.active: dict[str, dict[str, Any]] = {}

    def start(self, name: str, model: OnlineModel, events_total: int) -> bool:
        """Adapt ``model`` (or extend an adaptation under way); True when it is adapting."""
        until = events_total + self.span_events
        if name in self.active:
            self.active[name]["until"] = until  # still drifting: extend the span
            return True
        params = model.get_params()
        originals: dict[str, float] = {}
        for param, kind in model.adaptable_params().items():
            value = params.get(param)
            factor = self.factors.get(kind)
            if factor is None or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if value > 0:
                originals[param] = float(value)
                model.set_param(param, type(value)(value * factor))
        if not originals:
            return False
        self.active[name] = {"until": until, "originals": originals}
        log.warning("drift adaptation on %s for %d events: %s", name, self.span_events,
                    {p: (v, model.get_params()[p]) for p, v in originals.items()})
        return True

    def expire(self, models: Mapping[str, OnlineModel], events_total: int) -> list[str]:
        """Restore the models whose span ended; returns their names."""
        done = [n for n, ad in self.active.items() if events_total >= ad["until"]]
        for name in done:
            ad = self.active.pop(name)
            model = models.get(name)
            if model is None:
                continue
            for param, value in ad["originals"].items():
                model.set_param(param, value)
            log.info("drift adaptation on %s ended: restored %s", name, ad["originals"])
        return done

    def to_meta(self) -> dict[str, dict[str, Any]]:
        return {n: dict(ad) for n, ad in self.active.items()}

    def load_meta(self, meta: Mapping[str, Any], models: Mapping[str, OnlineModel]) -> None:
        self.active = {n: dict(ad) for n, ad in meta.items() if n in models}
