"""Checkpoint and restore: the trainer's state in durable snapshots.

A checkpoint has two halves. :func:`online_models.snapshot.capture` copies the state
(models, user history, de-duplication window, offsets) on the learner's thread: that
copy is the only pause learning takes. Writing it (hash, fsync, publish ``LATEST``)
runs in a background thread; once it is durable the learner hands its offsets to the
consumer to commit. At most one write is in flight; a checkpoint that comes due while
one is still writing waits for the next period. Before partitions are revoked and on
shutdown the trainer writes synchronously, since the commit must follow at once.

``liverec_trainer_snapshot_age_seconds`` measures the age of the newest snapshot
actually written (a failed write does not reset it), so the stale-snapshot alert
fires while the snapshot directory is unwritable.

A failing write logs its traceback once per kind of failure, then one line a minute
with the count (a full disk made a 30-line traceback every second). A write that
fails because the disk is full removes the oldest kept versions down to the newest
:data:`ROOM_KEEP` (old versions are otherwise pruned only after a successful write,
so a full disk never frees itself), and the next period tries again.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

import orjson

from online_models.snapshot import (
    CapturedState,
    Snapshot,
    SnapshotInfo,
    SnapshotStore,
)
from stream.consumer import Partition
from trainer.metrics import TrainerMetrics

__all__ = ["Checkpointer", "SnapshotLocationBusy", "Written"]

log = logging.getLogger(__name__)

#: files a synchronous snapshot write (shutdown, revoke) writes at a time: the learner
#: waits for it, so its core is free
SYNC_WRITE_THREADS = 2
#: versions a write that found the disk full keeps (the newest; older ones go)
ROOM_KEEP = 2
#: seconds between two log lines about the same kind of write failure
FAILURE_LOG_S = 60.0


class SnapshotLocationBusy(RuntimeError):
    """Another live trainer writes the same snapshot location."""


_MARKER = "scale-out.json"


def _lock(root: Path, owner: dict[str, object]) -> IO[str]:
    """A single-process trainer's exclusive claim (see :func:`lock_location`)."""
    return lock_location(root, owner)


def lock_location(root: Path, owner: dict[str, object], *, shared: bool = False,
                  group: str | None = None, topic: str | None = None) -> IO[str]:
    """Hold a lock on ``root/.trainer.lock`` for the life of the process.

    A single-process trainer takes it exclusively: two of them writing one location
    would publish partial models in turn (each learns only its partitions) and
    delete each other's temporary directories. Scale-out trainers
    (:mod:`trainer.partitioned`, ``shared=True``) take it shared -- they write one
    model together -- and record their ``group``/``topic`` in ``root/scale-out.json``;
    a scale-out trainer of another group or topic is refused while any holds it.
    Either mode refuses to start beside the other. (``flock`` is per host: trainers
    on other machines sharing a network mount are not seen.)
    """
    root.mkdir(parents=True, exist_ok=True)
    fh = open(root / ".trainer.lock", "a+")  # noqa: SIM115 - held until exit
    mine = {"group": group, "topic": topic}
    marker = _read_marker(root)
    if shared and marker is not None and marker != mine:
        # Another group's marker: only a location nobody holds may change hands.
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise SnapshotLocationBusy(
                f"scale-out trainers of group {marker.get('group')!r} on topic "
                f"{marker.get('topic')!r} (or a single-process trainer) are writing "
                f"snapshots to {root}; this one is group {group!r} on topic {topic!r}. One "
                "location holds one model: use the same --group and --topic, or another "
                "--snapshots.") from None
    try:
        fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        if shared:
            msg = (f"a single-process trainer is writing snapshots to {root} ({holder}); "
                   "scale-out trainers cannot share a location with it. Stop it first, or "
                   "give the scale-out group its own --snapshots.")
        elif marker is not None:
            msg = (f"scale-out trainers (group {marker.get('group')!r}, topic "
                   f"{marker.get('topic')!r}) are writing snapshots to {root}; a "
                   "single-process trainer would overwrite their merged model. Run it "
                   "with --scale-out and the same --group, or give it its own --snapshots.")
        else:
            msg = (f"another trainer is writing snapshots to {root} ({holder}); two trainers "
                   "on one location would overwrite each other's partial models. Give this "
                   "one its own --snapshots, or stop the other first (or run all of them "
                   "with --scale-out).")
        raise SnapshotLocationBusy(msg) from None
    if shared:
        if marker != mine:
            (root / _MARKER).write_text(orjson.dumps(mine).decode() + "\n")
        return fh
    fh.seek(0)
    fh.truncate()
    fh.write(orjson.dumps(owner).decode() + "\n")
    fh.flush()
    return fh


def _read_marker(root: Path) -> dict[str, object] | None:
    try:
        data = orjson.loads((root / _MARKER).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True, slots=True)
class Written:
    """A snapshot that is durable now, with the offsets and event count it holds."""

    info: SnapshotInfo
    offsets: dict[Partition, int]
    events_total: int


class Checkpointer:
    """Restores the newest valid snapshot and writes new ones (see the module docstring)."""

    def __init__(self, store: SnapshotStore, metrics: TrainerMetrics) -> None:
        self._lock: IO[str] | None = None
        self.store = store
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="liverec-snapshot")
        self._pending: tuple[Future[SnapshotInfo], dict[Partition, int], int] | None = None
        #: wall-clock time of the newest snapshot actually written (0: none yet)
        self.last_written_wall = 0.0
        #: wall-clock time of the last attempt, successful or not (paces retries)
        self.last_attempt_wall = 0.0
        self.last: Written | None = None
        #: seconds the last snapshot write took (its background thread's wall time)
        self.last_write_s = 0.0
        #: the kind of the last failure, when it was last logged, and repeats since
        self._failure_kind: tuple[str, int | None] | None = None
        #: when the current run of failed writes began (None: the last one succeeded)
        self.failing_since: float | None = None
        self._failure_logged = 0.0
        self._failure_repeats = 0
        metrics.snapshot_age.set_function(
            lambda: time.time() - self.last_written_wall if self.last_written_wall else -1.0
        )

    def restore(self) -> Snapshot | None:
        """The newest snapshot that loads and verifies, refusing corrupt ones (the store's
        ``refusals`` and ``unknown_models`` say which it refused, and why)."""
        try:
            snap = self.store.load_latest_valid()
        finally:
            self.metrics.snapshots_refused.inc(len(self.store.refusals))
        if snap is not None:
            created = snap.manifest.get("created_at")
            self.last_written_wall = (datetime.fromisoformat(created).timestamp()
                                      if isinstance(created, str) else time.time())
            self.metrics.snapshot_version.set(snap.version)
            return snap
        return None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, cap: CapturedState, offsets: dict[Partition, int], events_total: int
               ) -> None:
        """Write ``cap`` in the background; :meth:`done` reports it once durable."""
        if self._pending is not None:
            raise RuntimeError("a snapshot write is already in flight")
        self.last_attempt_wall = time.time()
        self._pending = (self._pool.submit(self._timed_write, cap), offsets, events_total)

    def _timed_write(self, cap: CapturedState, threads: int = 1) -> SnapshotInfo:
        t0 = time.perf_counter()
        try:
            return self.store.write_captured(cap, threads)
        finally:
            self.last_write_s = time.perf_counter() - t0

    def done(self, wait: bool = False) -> Written | None:
        """The background write if it finished (durable), else None (also on failure)."""
        if self._pending is None:
            return None
        fut, offsets, events_total = self._pending
        if not wait and not fut.done():
            return None
        self._pending = None
        try:
            info = fut.result()
        except Exception as exc:
            self._failed(exc)
            return None
        return self._written(info, offsets, events_total)

    def write(self, cap: CapturedState, offsets: dict[Partition, int], events_total: int
              ) -> Written | None:
        """Write synchronously (after any write in flight), two files at a time since
        the learner waits for it; None when it failed."""
        self.done(wait=True)
        self.last_attempt_wall = time.time()
        try:
            info = self._timed_write(cap, threads=SYNC_WRITE_THREADS)
        except Exception as exc:
            self._failed(exc)
            return None
        return self._written(info, offsets, events_total)

    def acquire(self, **owner: object) -> None:
        """Claim the snapshot location for this process (raises :class:`SnapshotLocationBusy`)."""
        self._lock = _lock(self.store.root, {
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now().isoformat(timespec="seconds"), **owner})

    def probe(self, **owner: object) -> None:
        """Raise :class:`SnapshotLocationBusy` now if another trainer holds the location
        (a restore before :meth:`acquire` may take a while: a second trainer said so only
        after it)."""
        self.acquire(**owner)
        self._release()

    def close(self) -> None:
        """Finish the write in flight and release the snapshot location."""
        self.done(wait=True)
        self._pool.shutdown(wait=True)
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None

    def _failed(self, exc: Exception) -> None:
        self.metrics.snapshot_errors.inc()
        self.metrics.loop_errors.labels(stage="snapshot").inc()
        kind = (type(exc).__name__, getattr(exc, "errno", None))
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        new_kind = kind != self._failure_kind
        loud = new_kind or now - self._failure_logged >= FAILURE_LOG_S
        if loud:
            age = (time.time() - self.last_written_wall if self.last_written_wall
                   else float("nan"))
            more = (f"; {self._failure_repeats} more like it since the last line"
                    if self._failure_repeats and not new_kind else "")
            # The traceback once per kind of failure; the repeats in one line a minute.
            log.error("snapshot failed; offsets not committed (the last good snapshot is "
                      "%.0f s old)%s: %s", age, more, exc, exc_info=exc if new_kind else None)
            self._failure_kind, self._failure_logged, self._failure_repeats = kind, now, 0
        else:
            self._failure_repeats += 1
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            self._make_room(loud)

    def failing(self) -> str:
        """What the status line adds while writes fail: for how long, and the error's
        kind (empty while they succeed)."""
        if self.failing_since is None or self._failure_kind is None:
            return ""
        name, err = self._failure_kind
        what = name + (f" {errno.errorcode.get(err, err)}" if err is not None else "")
        return (f" (writes failing for {time.monotonic() - self.failing_since:.0f} s: "
                f"{what})")

    def _make_room(self, loud: bool) -> None:
        """The disk is full: remove the oldest versions down to :data:`ROOM_KEEP`
        (``loud``: say so when there is nothing left to remove)."""
        old = self.store.remove_oldest(ROOM_KEEP)
        if not old:
            if loud:
                log.error("the disk under %s is full and only %d snapshot version(s) are "
                          "left: free space there", self.store.root,
                          len(self.store.versions()))
            return
        log.warning("the disk under %s is full: removed snapshot versions %s to make room "
                    "for the next one (the newest %d kept); free space, or lower "
                    "--keep-snapshots: a write needs room for one version more than "
                    "it keeps", self.store.root, ", ".join(map(str, old)), ROOM_KEEP)

    def _written(self, info: SnapshotInfo, offsets: dict[Partition, int], events_total: int
                 ) -> Written:
        if self._failure_kind is not None:  # failing until now: say that it is over
            log.warning("snapshot %d written: snapshot writes succeed again (%.0f s after "
                        "the last good one); offsets are committed again", info.version,
                        time.time() - self.last_written_wall if self.last_written_wall
                        else float("nan"))
            self._failure_kind, self._failure_repeats = None, 0
        self.failing_since = None
        self.last_written_wall = time.time()
        m = self.metrics
        m.snapshot_duration.observe(info.seconds)
        m.snapshot_size.set(info.bytes)
        m.snapshot_version.set(info.version)
        m.snapshot_timestamp.set(self.last_written_wall)
        log.debug("snapshot %d: %d bytes in %.3f s", info.version, info.bytes, info.seconds)
        self.last = Written(info, offsets, events_total)
        return self.last
