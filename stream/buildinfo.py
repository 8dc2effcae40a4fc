"""``liverec_build_info``: which liverec (and Python) a process runs, for Prometheus.

Both the trainer and the server export it, so a dashboard or an alert can tell a
half-finished rollout (two versions answering) from a finished one. Beside it, the
standard ``process_*`` metrics (``process_start_time_seconds``: the restart alert;
resident memory, CPU seconds, open files), where the platform has them (Linux).

>>> from prometheus_client import CollectorRegistry
>>> r = CollectorRegistry()
>>> register_build_info(r, "serving")
>>> r.get_sample_value("liverec_build_info", {"version": liverec_version(),
...                    "python": platform.python_version()})
1.0
>>> r.get_sample_value("process_start_time_seconds") > 0
True
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Info, ProcessCollector

__all__ = ["liverec_version", "register_build_info"]


def liverec_version() -> str:
    """The installed liverec's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return version("liverec")
    except PackageNotFoundError:
        return "unknown"


def register_build_info(registry: CollectorRegistry, role: str) -> None:
    """Add ``liverec_build_info{version, python} 1`` and the ``process_*`` metrics to
    ``registry`` (``role``, e.g. ``trainer``, only words its help text)."""
    Info("liverec_build", f"The liverec version of this {role}, and its Python.",
         registry=registry).info({"version": liverec_version(),
                                  "python": platform.python_version()})
    ProcessCollector(registry=registry)
