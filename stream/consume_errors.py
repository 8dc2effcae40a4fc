"""The error messages among librdkafka's ``consume()`` results, read alike by every
consumer of them: the confluent client (:mod:`stream.kafka.confluent`) and the trainer's
reader process (:mod:`stream.reader_child`, which imports this module and little else,
so that it starts quickly).

A message whose ``error()`` is set is not a record. A transient error (a broker down,
a partition moving) is logged and reading goes on; a fatal one (the consumer fenced,
authentication refused) is raised, as ``fatal("consume: <reason>")``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["records_only"]


def records_only(msgs: Sequence[Any], log: logging.Logger,
                 fatal: Callable[[str], Exception]) -> list[Any]:
    """The records among ``msgs`` (``confluent_kafka.Message`` s), in order."""
    out = []
    for m in msgs:
        err = m.error()
        if err is None:
            out.append(m)
        elif err.fatal():
            raise fatal(f"consume: {err.str()}")
        else:
            log.warning("consume: %s", err.str())
    return out
