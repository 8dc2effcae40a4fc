"""One JSON object per log line: :class:`JsonFormatter`, shared by the ``liverec``
commands (:mod:`liverec.logs`) and the trainer's reader process, which logs in the
format its parent chose (``LIVEREC_LOG_FORMAT``); and the log levels every command
accepts (:func:`log_level_name`), shared with :class:`serving.settings.ServeSettings`."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JsonFormatter", "log_format_name", "log_level_name"]

#: the log levels ``LIVEREC_LOG_LEVEL`` (and ``liverec train --log-level``) take, in any
#: case; ``warn`` and ``fatal`` are taken as ``warning`` and ``critical``, as Python's
#: logging does. (uvicorn knows no others but ``trace``, which Python's logging does not.)
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
_SYNONYMS = {"warn": "warning", "fatal": "critical"}
#: the log line formats (``LIVEREC_LOG_FORMAT``, ``--log-format``)
LOG_FORMATS: tuple[str, ...] = ("text", "json")


def log_level_name(level: str, setting: str = "log level") -> str:
    """``level`` as one of :data:`LOG_LEVELS` (lower case), or a ValueError naming
    ``setting`` and the accepted levels.

    >>> log_level_name("WARN"), log_level_name(" Info ")
    ('warning', 'info')
    >>> log_level_name("loud", "LIVEREC_LOG_LEVEL")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: LIVEREC_LOG_LEVEL must be one of debug, info, ..., critical (any case), not 'loud'
    """
    name = str(level).strip().lower()
    name = _SYNONYMS.get(name, name)
    if name not in LOG_LEVELS:
        raise ValueError(f"{setting} must be one of {', '.join(LOG_LEVELS)} (any case), "
                         f"not {level!r}")
    return name


def log_format_name(fmt: str, setting: str = "log format") -> str:
    """``fmt`` if it is one of :data:`LOG_FORMATS`, else a ValueError naming ``setting``
    and the accepted formats.

    >>> log_format_name("xml", "--log-format")
    Traceback (most recent call last):
    ...
    ValueError: --log-format must be one of text, json, not 'xml'
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"{setting} must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    return fmt

#: attributes every LogRecord has; anything else on a record came from ``extra``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
    "color_message"}  # uvicorn's copy of the message with terminal colour codes


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``ts`` (UTC, milliseconds), ``level``,
    ``logger``, ``message``, ``pid``; ``exc`` with the traceback when there is one;
    and the fields a call passed as ``extra`` (a value JSON cannot hold as its repr; a
    name the line already uses as ``extra.<name>``).

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
        extras = {(f"extra.{k}" if k in out else k): v for k, v in vars(record).items()
                  if k not in _STANDARD}
        try:
            return orjson.dumps({**out, **extras}, default=_repr,
                                option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, ValueError):  # a value orjson refuses (a huge int, tuple keys)
            return orjson.dumps({**out, **{k: _jsonable(v) for k, v in extras.items()}},
                                default=_repr, option=orjson.OPT_NON_STR_KEYS).decode()


def _jsonable(value: object) -> object:
    """``value`` where orjson takes it, else its :func:`_repr`."""
    try:
        orjson.dumps(value, default=_repr, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, ValueError):
        return _repr(value)
    return value


def _repr(value: object) -> str:
    """``repr(value)``, or a placeholder when its ``__repr__`` fails (a log line must
    never be lost to a field)."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}: repr failed>"
