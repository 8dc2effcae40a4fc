"""Logging for the long-running commands (``train``, ``serve``): text or JSON lines.

``LIVEREC_LOG_FORMAT=json`` (or ``--log-format json``) writes one JSON object per line
to stderr, for a log pipeline that parses rather than greps::

    {"ts": "2026-12-06T23:10:02.114Z", "level": "INFO", "logger": "liverec.train",
     "message": "snapshot v12 written", "pid": 4711}

with ``exc`` (the formatted traceback) when the record carries one, and any ``extra``
fields the call passed whose values JSON can hold (others as their ``repr``). Text is
the default: ``<time> <LEVEL> <logger>: <message>``. uvicorn's own records go through
the same handler (``serve`` passes it no logging config of its own).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

__all__ = ["LOG_FORMATS", "JsonFormatter", "LogFormat", "configure_logging"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: attributes every LogRecord has; anything else on a record came from ``extra``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
    "color_message"}  # uvicorn's copy of the message with terminal colour codes


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring).

    >>> rec = logging.LogRecord("liverec.x", logging.WARNING, __file__, 1, "lag %d", (5,),
    ...                         None)
    >>> rec.partition = 3
    >>> rec.created = 0.0
    >>> line = orjson.loads(JsonFormatter().format(rec))
    >>> line["ts"], line["level"], line["logger"], line["message"], line["partition"]
    ('1970-01-01T00:00:00.000Z', 'WARNING', 'liverec.x', 'lag 5', 3)
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        return orjson.dumps(out, default=repr,
                            option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(level: str, fmt: str = "text") -> None:
    """The root logger at ``level`` with one stderr handler in ``fmt`` (``text`` or
    ``json``); raises ValueError for another format."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
