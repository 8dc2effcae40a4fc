"""Durable, verifiable snapshots of the trainer's state (models + user history + extras).

A snapshot is a directory ``root/<version:012d>/`` holding

* ``manifest.json`` -- format version, version, ``created_at``, ``events_total``,
  Kafka ``offsets`` (``{topic: {partition: next_offset}}``), event-time ``watermark``,
  per-model class / hyperparameters / sizes, latest ``metrics``, the SHA-256 of every
  tensor file (``files``) and a SHA-256 of the manifest itself (``manifest_sha256``);
* ``model-<name>.safetensors`` -- one file per model (its :class:`ModelState` arrays);
* ``state.safetensors`` -- the :class:`UserHistory` and any ``extra_arrays``.

Writes go to a hidden temporary directory, every file is fsynced, the directory is
renamed into place, and only then is ``root/LATEST`` replaced (write + fsync +
``os.replace``). A crash at any point leaves either the old or the new snapshot
visible, never half of one. Loading verifies the format version and every checksum;
a corrupt, truncated or hand-edited snapshot raises :class:`SnapshotError`, and
:meth:`SnapshotStore.load_latest_valid` falls back to the previous good version.
The checksums have no key: they catch damage, not a writer of the volume, who can
recompute them. What such a writer can do is bounded all the same: files are read
only from their version's own directory (plain names, regular files, no links
followed; a version that is a link is neither listed nor loaded), and nothing here
can execute code on load: tensors are safetensors, metadata is JSON.

This module holds :class:`SnapshotStore` and what it returns (:class:`Snapshot`,
:class:`SnapshotInfo`, :class:`SnapshotError`) and re-exports the parts, which live
beside it: :mod:`online_models.snapshot_capture` (:func:`capture`,
:class:`CapturedState`) and :mod:`online_models.snapshot_files` (writing the files
durably, their checksums).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import safetensors.numpy as stn

from online_models import registry
from online_models.base import ModelState, OnlineModel, UserHistory
from online_models.snapshot_capture import (
    _EXTRA_PREFIX,
    _HISTORY_PREFIX,
    CapturedState,
    Offsets,
    _json_default,
    capture,
)
from online_models.snapshot_files import (
    _fsync_dir,
    _manifest_digest,
    _sha256,
    _write_durable,
    _write_files,
)

__all__ = [
    "FORMAT_VERSION",
    "CapturedState",
    "Offsets",
    "Snapshot",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotStore",
    "capture",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_VERSION_DIGITS = 12
_LATEST = "LATEST"
_PUBLISH_LOCK = ".LATEST.lock"
_MANIFEST = "manifest.json"
_STATE_FILE = "state.safetensors"


class SnapshotError(Exception):
    """A snapshot is missing, corrupt, truncated, tampered with or of an unknown format."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What :meth:`SnapshotStore.write` produced."""

    version: int
    path: Path
    bytes: int
    seconds: float


@dataclass(slots=True)
class Snapshot:
    """A loaded, verified snapshot."""

    version: int
    path: Path
    manifest: dict[str, Any]
    models: dict[str, OnlineModel]
    history: UserHistory
    extra_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extra_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def events_total(self) -> int:
        return int(self.manifest["events_total"])

    @property
    def watermark(self) -> float | None:
        w = self.manifest.get("watermark")
        return None if w is None else float(w)

    @property
    def offsets(self) -> dict[str, dict[int, int]]:
        """``{topic: {partition: next_offset}}`` with int partitions (JSON keys are str)."""
        return {
            t: {int(p): int(o) for p, o in parts.items()}
            for t, parts in self.manifest.get("offsets", {}).items()
        }


def _check_package(version: int, name: str, meta: Mapping[str, Any]) -> str | None:
    """Warn when the plugin that wrote model ``name``'s state is not the release
    installed here (it may read that state differently); returns that warning."""
    written = meta.get("package")
    here = registry.package_of(str(meta.get("class", "")))
    if written is None or written == here:
        return None
    note = (f"model {name!r} was written by plugin {written}, this process has "
            f"{here or 'no such plugin'}")
    log.warning("snapshot %d: %s: install the same release everywhere the snapshots are "
                "read", version, note)
    return note


def _plain_name(name: str) -> bool:
    """Whether a manifest's file name stays in its version directory.

    >>> [_plain_name(n) for n in ("model-itemknn.safetensors", "../x", "/dev/zero", "..")]
    [True, False, False, False]
    """
    return (bool(name) and "/" not in name and "\\" not in name and "\0" not in name
            and not name.startswith("."))


def _read_no_link(path: Path) -> bytes:
    """``path``'s bytes if it is a regular file: a symbolic link (``OSError`` ELOOP)
    is not followed, and a FIFO or device is refused, not read (a FIFO blocked the
    loader for ever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


class SnapshotStore:
    """Versioned snapshot directory with atomic publish, retention and verified loads.

    Parameters
    ----------
    root
        Directory holding one sub-directory per version plus the ``LATEST`` pointer.
    keep
        How many most recent versions to keep; older ones are deleted after a write.
    create
        Create ``root`` (and its parents) now: what a writer (a trainer) wants, so a
        path it cannot write fails at its start. A reader (the server, a trainer
        following another's root) passes False: it never creates anything, so a
        read-only mount or a mistyped path is not turned into an empty directory;
        until ``root`` appears it simply holds no versions.

    Examples
    --------
    >>> import tempfile
    >>> store = SnapshotStore(tempfile.mkdtemp(), keep=2)
    >>> h = UserHistory()
    >>> h.append("u1", "i1")
    >>> info = store.write({}, history=h, offsets={"clicks": {0: 5}}, events_total=5,
    ...                    watermark=1.0e9, metrics={})
    >>> info.version, store.latest_version()
    (1, 1)
    >>> snap = store.load()
    >>> snap.events_total, snap.offsets, snap.history.get("u1")
    (5, {'clicks': {0: 5}}, ['i1'])
    """

    #: a temporary directory untouched this long is a crashed write's (removed); a
    #: younger one may be another process's write in progress (left alone)
    STALE_TMP_S = 3600.0

    def __init__(self, root: str | os.PathLike[str], keep: int = 5, *,
                 create: bool = True) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.root = Path(root)
        self.keep = keep
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        #: per model, the state object last written, its file, digest and size (see
        #: _link_unchanged); weak, so a captured state is not kept alive for it
        self._written: dict[str, tuple[weakref.ref[ModelState], Path, str, int]] = {}
        #: versions the last :meth:`load_latest_valid` refused, with why, and the models
        #: they named that this process cannot build (a plugin not installed here)
        self.refusals: dict[int, str] = {}
        self.unknown_models: set[str] = set()

    # ------------------------------------------------------------------ listing

    def versions(self) -> list[int]:
        """Published versions on disk, oldest first (whether valid or not); none while
        ``root`` does not exist (a reader's root before its writer's first snapshot)."""
        out = []
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return []
        for p in entries:
            if (len(p.name) == _VERSION_DIGITS and p.name.isdigit() and p.is_dir()
                    and not p.is_symlink()):  # a version is the store's own directory
                out.append(int(p.name))
        return sorted(out)

    def latest_version(self) -> int | None:
        """The version ``LATEST`` points to (or the newest directory if it is unreadable)."""
        try:
            text = (self.root / _LATEST).read_text().strip()
            v = int(text)
            if (self.path_of(v) / _MANIFEST).exists():
                return v
        except (OSError, ValueError):
            pass
        vs = self.versions()
        return vs[-1] if vs else None

    def path_of(self, version: int) -> Path:
        return self.root / f"{version:0{_VERSION_DIGITS}d}"

    def fingerprint(self, version: int) -> tuple[tuple[str, int, int], ...]:
        """Name, size and modification time (ns) of each file of ``version``'s directory,
        sorted: cheap (one listing and a ``stat`` per file, nothing read) and different
        once any of its files is written, replaced, added or removed -- how a reader
        tells that a version it refused (a half-copied file) may be worth loading
        again. Empty when the directory is missing or unreadable.

        >>> import tempfile
        >>> store = SnapshotStore(tempfile.mkdtemp())
        >>> store.fingerprint(1)
        ()
        >>> v = store.write({}, history=UserHistory(), offsets={}, events_total=0,
        ...                 watermark=None).version
        >>> sorted(name for name, _, _ in store.fingerprint(v))
        ['manifest.json', 'state.safetensors']
        """
        out = []
        try:
            with os.scandir(self.path_of(version)) as it:
                for entry in it:
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    out.append((entry.name, st.st_size, st.st_mtime_ns))
        except OSError:
            return ()
        return tuple(sorted(out))

    # ------------------------------------------------------------------ write

    def write(
        self,
        models: Mapping[str, OnlineModel],
        *,
        history: UserHistory,
        offsets: Offsets,
        events_total: int,
        watermark: float | None,
        metrics: Mapping[str, Any] | None = None,
        extra_arrays: Mapping[str, np.ndarray] | None = None,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> SnapshotInfo:
        """Write and publish a new version; returns its number, path, size and duration."""
        return self.write_captured(capture(
            models, history=history, offsets=offsets, events_total=events_total,
            watermark=watermark, metrics=metrics, extra_arrays=extra_arrays,
            extra_meta=extra_meta,
        ))

    def write_captured(self, cap: CapturedState, threads: int = 1) -> SnapshotInfo:
        """Write and publish a :func:`capture` d state (safe in another thread: the
        captured arrays are copies the models no longer touch).

        ``threads`` > 1 writes that many files at a time (largest first): for a write
        someone waits on (a trainer's shutdown), where a background write keeps to one
        thread so as to leave the cores to learning. Page-cache copies and hashing
        release the GIL: two threads cut a 60 MB snapshot's write by about a third on
        two cores.
        """
        t0 = time.perf_counter()
        existing = self.versions()
        latest = self.latest_version() or 0
        version = max([latest, *existing]) + 1
        while True:
            # An empty directory reserves the number (mkdir is atomic): writers sharing
            # a location (scale-out trainers' merges) never pick the same version.
            try:
                self.path_of(version).mkdir()
                break
            except FileExistsError:
                version += 1
        tmp = self.root / f".tmp-{version:0{_VERSION_DIGITS}d}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            files: dict[str, str] = {}
            total = 0
            model_meta: dict[str, Any] = {}
            written: dict[str, tuple[weakref.ref[ModelState], str, str, int]] = {}
            fnames = {name: f"model-{name}.safetensors" for name in cap.models}
            done: dict[str, tuple[str, int]] = {}
            todo: dict[str, Mapping[str, np.ndarray]] = {_STATE_FILE: cap.state_arrays}
            for name, (state, _) in cap.models.items():
                linked = self._link_unchanged(name, state, tmp / fnames[name])
                if linked is None:
                    todo[fnames[name]] = state.arrays
                else:
                    done[fnames[name]] = linked
            done.update(_write_files(tmp, todo, threads))
            for name, (state, meta) in cap.models.items():
                fname = fnames[name]
                files[fname], size = done[fname]
                written[name] = (weakref.ref(state), fname, files[fname], size)
                total += size
                model_meta[name] = {**meta, "file": fname}
            files[_STATE_FILE], size = done[_STATE_FILE]
            total += size

            manifest: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "version": version,
                "created_at": datetime.now(UTC).isoformat(),
                **cap.manifest,
                "models": model_meta,
                "files": files,
            }
            manifest["manifest_sha256"] = _manifest_digest(
                orjson.loads(orjson.dumps(manifest, default=_json_default))
            )
            raw = orjson.dumps(
                manifest, default=_json_default, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
            )
            _write_durable(tmp / _MANIFEST, raw)
            total += len(raw)
            _fsync_dir(tmp)
            final = self.path_of(version)
            os.rename(tmp, final)  # replaces the empty reserving directory
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.path_of(version).rmdir()  # the reservation, if still empty
            raise
        self._publish(version)
        self._written = {n: (ref, final / fname, digest, size)
                         for n, (ref, fname, digest, size) in written.items()}
        self._prune()
        return SnapshotInfo(version, final, total, time.perf_counter() - t0)

    def _link_unchanged(self, name: str, state: ModelState, dest: Path
                        ) -> tuple[str, int] | None:
        """Hard-link the file this store last wrote for ``name`` when ``state`` is the
        very object written then (a followed model's copy, reused by every capture
        until its next version): (digest, size), or None to write it.

        Files are never changed once published, so versions may share one; a
        corrupted shared file is refused in each of them (the followed model's own
        root keeps its own copies)."""
        prev = self._written.get(name)
        if prev is None or prev[0]() is not state:
            return None
        try:
            os.link(prev[1], dest)
        except OSError:  # pruned meanwhile, or links not supported here: write it
            return None
        return prev[2], prev[3]

    def _publish(self, version: int) -> None:
        # Check and replace under an exclusive lock: several writers of one location
        # (scale-out trainers handing the merge over) must not move LATEST backwards,
        # which a check followed by a replace alone allows when two interleave.
        with open(self.root / _PUBLISH_LOCK, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (self.latest_version() or 0) > version:
                return  # another writer of this location published a newer one already
            tmp = self.root / f".{_LATEST}.{uuid.uuid4().hex[:8]}"
            _write_durable(tmp, f"{version}\n".encode())
            os.replace(tmp, self.root / _LATEST)
            _fsync_dir(self.root)

    def remove_oldest(self, keep: int) -> list[int]:
        """Remove all but the newest ``keep`` versions; returns those removed."""
        old = self.versions()[:-keep]
        for v in old:
            shutil.rmtree(self.path_of(v), ignore_errors=True)
        return old

    def _prune(self) -> None:
        self.remove_oldest(self.keep)
        now = time.time()
        for p in self.root.glob(".tmp-*"):
            # Left over by a crash mid-write (never published), unless it is young:
            # then another process may be writing it (scale-out trainers all write
            # merged snapshots into one location).
            try:
                if now - p.stat().st_mtime > self.STALE_TMP_S:
                    shutil.rmtree(p, ignore_errors=True)
            except FileNotFoundError:
                continue

    # ------------------------------------------------------------------ read

    def read_manifest(self, version: int | None = None) -> dict[str, Any]:
        """The verified manifest of ``version`` (default: latest), without loading tensors."""
        v = self._resolve(version)
        return self._manifest(self.path_of(v), v)

    def _resolve(self, version: int | None) -> int:
        v = self.latest_version() if version is None else version
        if v is None:
            raise SnapshotError(f"no snapshot in {self.root}")
        return v

    def _manifest(self, path: Path, version: int) -> dict[str, Any]:
        try:
            manifest = orjson.loads(_read_no_link(path / _MANIFEST))
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {version}: manifest missing") from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise SnapshotError(f"snapshot {version}: unreadable manifest ({exc})") from None
        if not isinstance(manifest, dict):
            raise SnapshotError(f"snapshot {version}: manifest is not an object")
        fmt = manifest.get("format_version")
        if fmt != FORMAT_VERSION:
            raise SnapshotError(
                f"snapshot {version}: format_version {fmt!r}, expected {FORMAT_VERSION}"
            )
        if manifest.get("manifest_sha256") != _manifest_digest(manifest):
            raise SnapshotError(f"snapshot {version}: manifest checksum mismatch")
        if manifest.get("version") != version:
            raise SnapshotError(
                f"snapshot {version}: manifest says version {manifest.get('version')!r}"
            )
        return manifest

    def _read_verified(self, path: Path, name: str, expected: str, version: int) -> bytes:
        if not _plain_name(name):
            # A manifest naming "../x" or "/dev/zero" would read outside the version.
            raise SnapshotError(f"snapshot {version}: file name {name[:80]!r} is not a "
                                "plain file name in its directory")
        try:
            data = _read_no_link(path / name)
        except OSError as exc:
            raise SnapshotError(f"snapshot {version}: cannot read {name} ({exc})") from None
        if _sha256(data) != expected:
            raise SnapshotError(f"snapshot {version}: checksum mismatch in {name}")
        return data

    def load(self, version: int | None = None) -> Snapshot:
        """Load and verify ``version`` (default: ``LATEST``); raises :class:`SnapshotError`."""
        v = self._resolve(version)
        path = self.path_of(v)
        if path.is_symlink():  # LATEST may name it; the store never writes one
            raise SnapshotError(f"snapshot {v}: its directory is a link, which this "
                                "store never writes")
        manifest = self._manifest(path, v)
        files: dict[str, str] = manifest.get("files", {})
        try:
            blobs = {
                name: self._read_verified(path, name, digest, v) for name, digest in files.items()
            }
            if _STATE_FILE not in blobs:
                raise SnapshotError(f"snapshot {v}: {_STATE_FILE} not listed")
            state_arrays = stn.load(blobs[_STATE_FILE])
            hmeta = manifest.get("history", {})
            history = UserHistory.from_arrays(
                state_arrays,
                _HISTORY_PREFIX,
                max_items=int(hmeta.get("max_items", 200)),
                max_users=hmeta.get("max_users"),
            )
            extra = {
                k[len(_EXTRA_PREFIX) :]: a
                for k, a in state_arrays.items()
                if k.startswith(_EXTRA_PREFIX)
            }
            models: dict[str, OnlineModel] = {}
            for name, meta in manifest.get("models", {}).items():
                fname = meta["file"]
                if fname not in blobs:
                    raise SnapshotError(f"snapshot {v}: model file {fname} not listed")
                state = ModelState(arrays=stn.load(blobs[fname]), meta=meta["state_meta"])
                note = _check_package(v, name, meta)
                try:
                    models[name] = registry.from_state(state)
                except Exception as exc:
                    if note is None:
                        raise
                    raise SnapshotError(f"snapshot {v}: cannot rebuild ({type(exc).__name__}: "
                                        f"{exc}); {note}") from exc
            models = registry.bind(models)  # a hybrid blends the snapshot's own models
        except SnapshotError:
            raise
        except Exception as exc:
            raise SnapshotError(
                f"snapshot {v}: cannot rebuild ({type(exc).__name__}: {exc})"
            ) from exc
        return Snapshot(
            version=v,
            path=path,
            manifest=manifest,
            models=models,
            history=history,
            extra_arrays=extra,
            extra_meta=dict(manifest.get("extra_meta", {})),
        )

    def load_latest_valid(self) -> Snapshot | None:
        """The newest snapshot that verifies, logging why newer ones were refused."""
        latest = self.latest_version()
        candidates = sorted(
            (v for v in self.versions() if latest is None or v <= latest), reverse=True
        )
        refusals: dict[int, str] = {}
        unknown: set[str] = set()
        try:
            for v in candidates:
                try:
                    snap = self.load(v)
                except SnapshotError as exc:
                    refusals[v] = str(exc)
                    if isinstance(exc.__cause__, registry.UnknownModelError):
                        unknown.add(exc.__cause__.model)
                    log.warning("refusing snapshot: %s; trying the previous one", exc)
                    continue
                if v != latest:
                    log.warning("fell back to snapshot %d (LATEST is %s)", v, latest)
                return snap
            return None
        finally:
            self.refusals, self.unknown_models = refusals, unknown
