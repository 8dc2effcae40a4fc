"""Keep a Kafka reader alive across broker outages."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["run_with_backoff"]


def run_with_backoff(stop: threading.Event, step: Callable[[], None],
                     on_error: Callable[[Exception, float], None],
                     first_s: float = 0.5, max_s: float = 5.0) -> None:
    """Call ``step`` until ``stop`` is set. When it raises, call ``on_error(exc, wait)``,
    wait ``wait`` seconds (``first_s``, doubling up to ``max_s``; back to ``first_s``
    after a ``step`` that returns) or until ``stop``, and call it again.

    >>> stop, waits = threading.Event(), []
    >>> def step():
    ...     if len(waits) == 2:
    ...         stop.set()
    ...     raise OSError("down")
    >>> run_with_backoff(stop, step, lambda exc, wait: waits.append(wait), first_s=0.01)
    >>> waits
    [0.01, 0.02, 0.04]
    """
    backoff = first_s
    while not stop.is_set():
        try:
            step()
            backoff = first_s
        except Exception as exc:  # the reader must outlive broker hiccups
            on_error(exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, max_s)
