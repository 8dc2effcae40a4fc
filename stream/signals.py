"""SIGTERM / SIGINT end a consumer loop gracefully (the mini-batch consumer and both
trainer modes)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["stop_on_signals"]

log = logging.getLogger(__name__)


def stop_on_signals(stop: threading.Event, then: str) -> Callable[[], None]:
    """Make SIGTERM and SIGINT set ``stop`` (logging what follows: ``then``); returns a
    function that puts the previous handlers back. Off the main thread (where Python
    cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %d: finishing the batch, then %s", signum, then)
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore
