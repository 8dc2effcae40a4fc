"""Logging for the long-running commands (``train``, ``serve``): text or JSON lines.

``LIVEREC_LOG_FORMAT=json`` (or ``--log-format json``) writes one JSON object per line
to stderr, for a log pipeline that parses rather than greps::

    {"ts": "2026-12-06T23:10:02.114Z", "level": "INFO", "logger": "liverec.train",
     "message": "snapshot v12 written", "pid": 4711}

with ``exc`` (the formatted traceback) when the record carries one, and any ``extra``
fields the call passed whose values JSON can hold (others as their ``repr``). Text is
the default: ``<time> <LEVEL> <logger>: <message>``. uvicorn's own records go through
the same handler (``serve`` passes it no logging config of its own). A line written
while the server answers a request ends in `` request_id=<id>`` (the ``X-Request-ID`` it
answers), as the JSON line has a ``request_id`` field.

``httpx`` and ``httpcore`` log at WARNING and above only, unless the level is DEBUG:
``serve --trainer-metrics-url`` scrapes the trainer for the dashboard every 2 s, and
httpx logs each request at INFO (43,000 lines a day per replica).
"""

from __future__ import annotations

import logging
import os
from typing import Literal

from stream.logformat import (
    LOG_FORMATS,
    LOG_LEVELS,
    JsonFormatter,
    log_format_name,
    log_level_name,
)

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "QUIET_LOGGERS", "JsonFormatter", "LogFormat",
           "TextFormatter", "configure_logging", "log_format_name", "log_level_name"]

LogFormat = Literal["text", "json"]
#: libraries whose INFO records are routine noise (one line per HTTP request): they log
#: at WARNING and above unless the level is DEBUG
QUIET_LOGGERS: tuple[str, ...] = ("httpx", "httpcore")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, with `` request_id=<id>`` at the end of the first line of a
    record logged while a request was answered (a traceback stays below it).

    >>> rec = logging.LogRecord("liverec.serve", logging.INFO, __file__, 1, "ranked", None, None)
    >>> rec.request_id = "shop-42"
    >>> TextFormatter().format(rec).endswith("INFO liverec.serve: ranked request_id=shop-42")
    True
    """

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid is None:
            return line
        first, nl, rest = line.partition("\n")
        return f"{first} request_id={rid}{nl}{rest}"


def configure_logging(level: str, fmt: str = "text") -> None:
    """The root logger at ``level`` with one stderr handler in ``fmt`` (``text`` or
    ``json``), unless the root already has a handler (a test runner's: nothing is
    changed then, as with :func:`logging.basicConfig`); raises ValueError for another
    level or format (commands check both first, with :func:`log_level_name` and
    :func:`log_format_name`, to name the option). ``LIVEREC_LOG_FORMAT`` is set to
    ``fmt`` for the child processes (the trainer's reader logs in the same format).
    The :data:`QUIET_LOGGERS` are held at WARNING unless ``level`` is DEBUG."""
    name = log_level_name(level)
    fmt = log_format_name(fmt)
    os.environ["LIVEREC_LOG_FORMAT"] = fmt
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=name.upper(), handlers=[handler])
    for quiet in QUIET_LOGGERS:
        logging.getLogger(quiet).setLevel(logging.NOTSET if name == "debug" else logging.WARNING)
