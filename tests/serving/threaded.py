"""An app served by a real uvicorn in a thread of the test process, on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["serve_in_thread"]


@contextmanager
def serve_in_thread(app: Any, port: int, **config: Any) -> Iterator[str]:
    """Serve ``app`` on ``127.0.0.1:port`` until the block ends; yields its base URL.

    ``log_config=None``: uvicorn leaves the logging setup alone (its own config stops
    ``uvicorn.error`` propagating, which later tests' ``caplog`` relies on).
    ``config``: more ``uvicorn.Config`` arguments (``http``: a protocol class).
    """
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", log_config=None,
                                           **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
