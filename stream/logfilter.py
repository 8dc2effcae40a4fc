"""Keep a client library's log lines from flooding the log or leaking secrets.

While a broker is down, librdkafka logs every failed connection attempt of every
client (consumer, producers, admin, the reader process): tens of ERROR lines a second,
thousands a minute, all saying the same. :class:`RepeatFilter` lets each kind of
message through once per ``every_s`` and says how many like it it held back.
:class:`RedactSecrets` blanks the values of password settings in a logged
configuration (kafka-python's admin client logs its whole configuration at DEBUG).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import cast

__all__ = ["RedactSecrets", "RepeatFilter"]

_NUMBERS = re.compile(r"\d+")
#: a quoted setting whose name holds "password", and its quoted value
#: (a backslash escapes the next character: repr() writes 'a\'b' for a value with both
#: quote characters)
_SECRET = re.compile(r"""(['"][^'"]*password[^'"]*['"]\s*:\s*)(['"])(?:\\.|(?!\2)[^\\\n])*\2""")


class RepeatFilter(logging.Filter):
    """Pass a record unless one of the same kind -- its message with every number
    blanked (ports, retry counts, milliseconds) -- passed within ``every_s``; the next
    one that passes tells how many were held back.

    >>> t = [0.0]
    >>> f = RepeatFilter(every_s=60, clock=lambda: t[0])
    >>> def rec(msg):
    ...     return logging.LogRecord("rd", logging.ERROR, "", 0, msg, None, None)
    >>> [f.filter(rec(f"connect to :{p} failed after {p}ms")) for p in (1, 2, 3)]
    [True, False, False]
    >>> t[0] = 61.0
    >>> r = rec("connect to :4 failed after 4ms")
    >>> f.filter(r), r.getMessage()
    (True, 'connect to :4 failed after 4ms (2 more like it in the last 61 s not logged)')
    """

    def __init__(self, every_s: float = 60.0, max_kinds: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.max_kinds = max_kinds
        self._clock = clock
        #: kind -> (when one last passed, how many were held back since)
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        kind = _NUMBERS.sub("#", text)
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen[0] < self.every_s:
            self._seen[kind] = (seen[0], seen[1] + 1)
            return False
        if len(self._seen) >= self.max_kinds:
            self._seen.clear()
        self._seen[kind] = (now, 0)
        if seen is not None and seen[1]:
            record.msg = (f"{text} ({seen[1]} more like it in the last "
                          f"{now - seen[0]:.0f} s not logged)")
            record.args = None
        return True


class RedactSecrets(logging.Filter):
    """Blank the value of every quoted ``...password...`` setting in a record.

    >>> f = RedactSecrets()
    >>> r = logging.LogRecord("kafka", logging.DEBUG, "", 0, "config: %s", None, None)
    >>> r.args = ({"sasl_plain_username": "alice", "sasl_plain_password": "hunter2"},)
    >>> f.filter(r), r.getMessage()
    (True, "config: {'sasl_plain_username': 'alice', 'sasl_plain_password': '***'}")
    >>> r = logging.LogRecord("kafka", logging.DEBUG, "", 0, "%s", None, None)
    >>> both = "a'b" + '"cSECRET'  # both quote characters: repr() escapes one
    >>> r.args = (str({"ssl_password": both}),)  # already text: the pattern
    >>> f.filter(r), "SECRET" in r.getMessage()
    (True, False)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = cast("dict[str, object]", _redacted(record.args))
        text = record.getMessage()
        if "password" in text:
            record.msg, record.args = _SECRET.sub(r"\1'***'", text), None
        return True


def _redacted(value: object) -> object:
    """``value`` with every ``...password...`` key's value blanked, in nested mappings
    (what the text pattern cannot see reliably: a repr's escaped quotes).

    >>> _redacted({"a": {"sasl_plain_password": "hun'ter" + '"2'}, "b": 1})
    {'a': {'sasl_plain_password': '***'}, 'b': 1}
    """
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and "password" in k.lower() and v is not None
                else _redacted(v) for k, v in value.items()}
    return value
