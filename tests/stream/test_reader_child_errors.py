"""The reader process's handling of error messages from ``consume()`` (librdkafka's own
message and error types, no broker): it reads past a transient error with a warning,
as the group consumer's client does, and stops on a fatal one."""

from __future__ import annotations

import logging

import confluent_kafka as ck
import pytest

from stream.reader_child import usable


def _error(fatal: bool) -> ck.Message:
    code = ck.KafkaError._FATAL if fatal else ck.KafkaError._TRANSPORT
    return ck.Message(error=ck.KafkaError(code, "broker down", fatal=fatal))


def test_transient_errors_are_logged_and_the_records_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    records = [ck.Message(topic="t", partition=0, offset=k, value=b"{}") for k in range(2)]
    with caplog.at_level(logging.WARNING, logger="liverec.reader"):
        kept = usable([records[0], _error(fatal=False), records[1]])
    assert [m.offset() for m in kept] == [0, 1]
    assert [r.getMessage() for r in caplog.records] == ["consume: broker down"]


def test_a_fatal_error_stops_the_reader() -> None:
    ok = ck.Message(topic="t", partition=0, offset=0, value=b"{}")
    with pytest.raises(RuntimeError, match="consume: broker down"):
        usable([ok, _error(fatal=True)])
