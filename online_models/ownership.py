"""Partition ownership heartbeats of a scale-out snapshot location.

Scale-out trainers (:mod:`trainer.partitioned`) keep a heartbeat per owned input
partition in ``<snapshots>/partitions/<p>/OWNER`` (``{"instance", "at"}``, rewritten
at every checkpoint). A partition whose heartbeat is older than the threshold -- or
that the merged snapshot lists but nobody ever claimed -- has no live owner: its
users' events are not being learned. Only files: any serving replica that mounts
the snapshot location can tell (:mod:`serving.state` reports it in ``/readyz``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

__all__ = ["OWNER_FILE", "heartbeat_owner", "unowned_partitions", "write_heartbeat"]

OWNER_FILE = "OWNER"


def write_heartbeat(root: Path, partition: int, instance: str, now: float | None = None
                    ) -> None:
    """Say that ``instance`` owns ``partition`` now (atomic replace)."""
    d = root / "partitions" / f"{partition:05d}"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{OWNER_FILE}.{instance}.tmp"
    tmp.write_bytes(orjson.dumps({"instance": instance,
                                  "at": time.time() if now is None else now}))
    os.replace(tmp, d / OWNER_FILE)


def heartbeat_owner(partition_dir: Path) -> str | None:
    """The instance that last said it owns the partition of ``partition_dir``
    (``<snapshots>/partitions/<p>``); None when no heartbeat is readable."""
    owner = _read_beat(partition_dir).get("instance")
    return owner if isinstance(owner, str) else None


def _read_beat(partition_dir: Path) -> dict[str, Any]:
    """The heartbeat of ``partition_dir`` (empty when missing or unreadable)."""
    try:
        beat = orjson.loads((partition_dir / OWNER_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return beat if isinstance(beat, dict) else {}


def unowned_partitions(root: Path, threshold_s: float, known: Iterable[int] = (),
                       now: float | None = None) -> dict[int, float | None]:
    """``{partition: seconds since its last heartbeat (None: never owned)}`` of every
    partition without a heartbeat in the last ``threshold_s`` seconds.

    ``known`` adds partitions (e.g. from the merged snapshot's manifest) that may not
    have a directory yet. An empty dict when ``root`` is not a scale-out location.
    """
    base = root / "partitions"
    if not base.is_dir():
        return {}
    now = time.time() if now is None else now
    parts = set(known)
    for d in base.iterdir():
        if d.is_dir() and d.name.isdigit():
            parts.add(int(d.name))
    out: dict[int, float | None] = {}
    for p in sorted(parts):
        try:
            age: float | None = max(0.0, now - float(_read_beat(base / f"{p:05d}")["at"]))
        except (KeyError, TypeError, ValueError):
            age = None
        if age is None or age > threshold_s:
            out[p] = age
    return out
