"""Shared helpers of the trainer tests: events, the trainer subprocess, /metrics scraping."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from online_models.synthetic import generate_events
from stream.events import ClickEvent, validate_dict

REPO = Path(__file__).resolve().parents[2]

#: messages that must be rejected, with the reason each is counted under
BAD_MESSAGES: list[tuple[bytes, str]] = [
    (b"not json at all", "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"schema": 1, "event_id": "x1", "user_id": "u"}', "missing_field"),
    (
        b'{"schema": 1, "event_id": "x2", "user_id": "u", "item_id": "i", '
        b'"event_type": "teleport", "timestamp": 1704067200}',
        "bad_event_type",
    ),
    (b"\xff\xfe\xfd", "not_utf8"),
]


def synthetic_events(n: int, seed: int = 0, n_users: int = 2000, n_items: int = 1000
                     ) -> list[ClickEvent]:
    """``n`` valid synthetic events in event-time order."""
    out = []
    for row in generate_events(n, n_users, n_items, seed=seed):
        ev = validate_dict(row)
        assert isinstance(ev, ClickEvent), ev
        out.append(ev)
    return out


class TrainerProcess:
    """``liverec train`` as a subprocess, with its log in a file and its metrics port."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
                 ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "liverec.cli", "train", *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=full_env,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics_port(self, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.findall(r"metrics on http://[^:]+:(\d+)/metrics", self.log_text())
            if found:
                return int(found[-1])
            if self.proc.poll() is not None:
                raise AssertionError(f"trainer exited early:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no metrics port logged:\n{self.log_text()[-3000:]}")

    def terminate(self, timeout_s: float = 120.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self._log.close()

    def wait(self, timeout_s: float = 300.0) -> int:
        try:
            rc = self.proc.wait(timeout_s)
        finally:
            self._log.close()
        return rc


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """All samples of ``/metrics``, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5
) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # the server may not be up yet
            last = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
