"""What replay reports when the dead-letter topic refuses records (a scripted
producer: no broker needed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import stream.replay as replay_mod
from stream.kafka import KafkaClientError


class DlqRefused:
    """A producer that takes every record except those for ``<topic>.dlq``, whose
    failures it reports as the real ones do: ``failed_total`` and ``on_delivery``."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.failed_total = 0
        self.last_error: KafkaClientError | None = None

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Any = None, on_delivery: Any = None) -> None:
        if topic.endswith(".dlq"):
            self.failed_total += 1
            self.last_error = KafkaClientError("unknown topic")
            if on_delivery is not None:
                on_delivery(self.last_error, None)
        else:
            self.sent.append(topic)

    def send_many(self, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
        for key, value in records:
            self.send(topic, value, key)

    def poll(self, timeout_s: float = 0) -> int:
        return 0

    def flush(self, timeout_s: float = 30) -> int:
        return 0

    def close(self, timeout_s: float = 30) -> None:
        pass


@pytest.mark.parametrize("paced", [False, True])
def test_failed_dead_letter_copies_do_not_come_off_the_events_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, paced: bool
) -> None:
    now = time.time()
    path = tmp_path / "clicks.csv"
    path.write_text("event_id,user_id,item_id,event_type,timestamp\n"
                    f"e1,u1,i1,click,{now - 100}\ne2,u2,i2,view,{now - 90}\n"
                    f"e3,u3,i3,bogus,{now - 80}\ne4,u4,i4,view,{now - 70}\n")
    producer = DlqRefused()
    monkeypatch.setattr(replay_mod, "make_producer", lambda *a, **k: producer)
    result = replay_mod.replay_file(str(path), "127.0.0.1:1", "clicks", progress=False,
                                    **({"rate": 1e6} if paced else {}))
    assert producer.sent == ["clicks"] * 3
    assert result.sent == 3 and result.n_rejected == 1
    assert (result.failed, result.dlq_failed) == (1, 1)
    assert "FAILED 1 (1 of them dead-letter copies)" in result.summary()
