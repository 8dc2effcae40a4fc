"""The default learning weight of each event type (in a module of its own, so that
:mod:`stream.events` and the reader process need not import pydantic)."""

from __future__ import annotations

__all__ = ["DEFAULT_EVENT_WEIGHTS"]

#: Learning weight of each event type (stronger intent weighs more).
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 3.0,
    "purchase": 5.0,
}
