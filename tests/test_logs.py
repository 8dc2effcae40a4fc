"""JSON log lines (``LIVEREC_LOG_FORMAT=json``): the formatter, and a real server's
whole log, uvicorn's records included."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import orjson
import pytest

from liverec.logs import JsonFormatter, configure_logging
from tests.faults.helpers import ServerProcess, write_snapshot


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("liverec.t", logging.ERROR, __file__, 7, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_a_record_is_one_json_line_with_its_extras_and_traceback() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        rec = _record("failed %s", "x", partition=2, path=Path("/s"), obj=object())
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line  # one line, the traceback's newlines escaped
    out = orjson.loads(line)
    assert out["level"] == "ERROR" and out["logger"] == "liverec.t"
    assert out["message"] == "failed x" and out["partition"] == 2
    assert out["path"] == "PosixPath('/s')" and out["obj"].startswith("<object")
    assert "RuntimeError: boom" in out["exc"] and "Traceback" in out["exc"]
    assert out["ts"].endswith("Z") and len(out["ts"]) == len("2026-12-06T23:10:02.114Z")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("INFO", "xml")


def test_a_server_logs_json_lines_only(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "snaps")
    server = ServerProcess(tmp_path / "snaps", tmp_path / "serve.log",
                           env={"LIVEREC_LOG_FORMAT": "json"})
    try:
        server.wait_listening()
    finally:
        server.stop()
    lines = [line for line in server.log_text().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]  # every line parses
    loggers = {r["logger"] for r in records}
    assert any(name.startswith("uvicorn") for name in loggers), loggers
    assert any(name.startswith("liverec") for name in loggers), loggers  # the no-Kafka warning
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert not any("\\u001b" in line for line in lines)  # no terminal colour codes



def test_the_trainers_reader_process_logs_in_its_parents_format(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader child inherits LIVEREC_LOG_FORMAT (configure_logging exports it); a
    broker address that refuses connections makes librdkafka log through it."""
    from stream.child_reader import ChildReader
    from stream.events import EVENT_WEIGHTS, Limits
    from stream.settings import KafkaSettings

    monkeypatch.setenv("LIVEREC_LOG_FORMAT", "json")
    reader = ChildReader(KafkaSettings(bootstrap="127.0.0.1:1", topic="t"), "g",
                         batch_size=8, max_wait_s=0.1, limits=Limits(),
                         weights=EVENT_WEIGHTS)
    err = ""
    try:
        # librdkafka's log of the refused connection is served while the child polls,
        # which it does once it has a partition to read.
        reader.assign(1, {0: None})
        deadline = time.monotonic() + 30
        while '"logger":"liverec.reader' not in err and time.monotonic() < deadline:
            time.sleep(0.2)
            err += capfd.readouterr().err
    finally:
        reader.stop()
        err += capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any('"logger":"liverec.reader' in line for line in lines), err[-2000:]
    for line in lines:
        assert orjson.loads(line)["level"], line  # every line the child wrote is JSON


def test_no_extra_field_loses_the_line() -> None:
    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    rec = _record("m", big=2**70, tupled={(1, 2): "x"}, bad=BadRepr(), level="shadow")
    out = orjson.loads(JsonFormatter().format(rec))
    assert out["level"] == "ERROR" and out["extra.level"] == "shadow"
    assert out["big"] == str(2**70) and "(1, 2)" in out["tupled"]
    assert out["bad"] == "<BadRepr: repr failed>"


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("LIVEREC_LOG_FORMAT", "text")  # configure_logging sets it
    names = ("", "httpx", "httpcore")
    levels = {n: logging.getLogger(n).level for n in names}
    yield None
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_httpx_request_lines_are_quiet_unless_debug() -> None:
    # The dashboard scrapes the trainer every 2 s: one INFO line each from httpx.
    logging.getLogger().setLevel(logging.DEBUG)  # whatever the root lets through
    configure_logging("INFO", "text")
    for name in ("httpx", "httpcore"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    configure_logging("debug", "text")
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)


def test_an_unknown_level_is_refused_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="debug, info, warning, error, critical"):
        configure_logging("verbose", "text")

