"""A SASL password never reaches the log, even at DEBUG (kafka-python's admin client
logs its whole configuration there). No broker needed: the client fails to connect."""

from __future__ import annotations

import contextlib
import logging

import pytest

from stream.kafka.admin import _kp_admin
from stream.settings import KafkaSettings


def test_the_admin_clients_debug_log_holds_no_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = KafkaSettings(bootstrap="127.0.0.1:1", client="kafka-python",
                      security_protocol="SASL_PLAINTEXT", sasl_username="alice",
                      sasl_password="hunter2-secret")
    # No broker: it fails; what matters is what it logged meanwhile.
    with contextlib.suppress(Exception):
        _kp_admin(s, request_timeout_ms=500).close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "configuration" in text  # the line that used to carry the password
    assert "hunter2-secret" not in text
