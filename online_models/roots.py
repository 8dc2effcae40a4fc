"""Snapshot roots of other trainers, followed by a server or by another trainer.

A model too slow for the main trainer's pace (``seqnn``) runs as a trainer of its own,
in its own consumer group, writing its own snapshot root. :class:`ExtraRoots` follows
each such root's ``LATEST`` (verified like the main root's; a refused version is
remembered, the loaded one keeps being used, and the refused one is tried again with a
backoff or once its files change: :mod:`online_models.refusals`). A root is only read,
never created: until its trainer creates it, it holds no version. The server
(``liverec serve --extra-snapshots``) adds their models to the main snapshot with
:meth:`ExtraRoots.compose`, so a request names them like any other model; the main
root's model wins a name clash; histories, offsets and watermark stay the main root's.
The main trainer (``liverec train --follow``, :mod:`trainer.follow`) takes them in as
models it evaluates and blends but does not learn.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from online_models.refusals import Refusal, Refusals
from online_models.snapshot import Snapshot, SnapshotError, SnapshotStore

__all__ = ["ExtraRoots"]

log = logging.getLogger(__name__)


class ExtraRoots:
    """The newest valid snapshot of each extra root (see the module docstring).

    ``clock`` (monotonic seconds) times the retries of refused versions.
    """

    def __init__(self, roots: Sequence[Path],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stores = [SnapshotStore(r, create=False) for r in roots]
        self.loaded: dict[Path, Snapshot] = {}
        #: each root's ``LATEST`` at the last poll (absent: none yet)
        self.latest: dict[Path, int] = {}
        #: (root, version) -> why it was refused, and when it is tried again
        self.refused: Refusals[tuple[Path, int]] = Refusals(clock=clock)
        self._warned: set[str] = set()

    def poll(self) -> bool:
        """Load every root whose ``LATEST`` moved; True when any new version loaded.

        Never raises: an unreadable root or a refused version is logged, and the
        version loaded before (if any) keeps serving.
        """
        changed = False
        for store in self.stores:
            root = store.root
            try:
                latest = store.latest_version()
            except OSError as exc:
                log.warning("extra snapshot root %s: cannot read LATEST: %s", root, exc)
                continue
            have = self.loaded.get(root)
            if latest is None:
                self.latest.pop(root, None)
                continue
            self.latest[root] = latest
            if have is not None and have.version == latest:
                continue
            key = (root, latest)
            fingerprint = store.fingerprint(latest)
            if not self.refused.due(key, fingerprint):
                continue
            try:
                snap = store.load(latest) if have is not None else store.load_latest_valid()
                if snap is None:
                    raise SnapshotError(f"no valid version under {root}")
            except Exception as exc:  # a half-written snapshot must not stop serving
                r = self.refused.refuse(key, f"{type(exc).__name__}: {exc}", fingerprint)
                log.warning("extra snapshot root %s: refused version %d (attempt %d): %s; "
                            "trying it again in %.0f s, or once its files change",
                            root, latest, r.attempts, exc, self.refused.retry_in(key))
                continue
            self._forget_refused(root, snap.version)
            self.loaded[root] = snap
            changed = True
            log.info("extra snapshot root %s: version %d (models %s)", root, snap.version,
                     sorted(snap.models))
        return changed

    def _forget_refused(self, root: Path, loaded: int) -> None:
        """Drop ``root``'s refusals of versions up to ``loaded`` (superseded)."""
        self.refused.forget_where(lambda key: key[0] == root and key[1] <= loaded)

    def refused_latest(self) -> dict[Path, tuple[int, Refusal]]:
        """Roots whose ``LATEST`` names a version refused (and not loaded), with that
        version and its refusal (safe to call while another thread polls)."""
        out = {}
        for root, v in list(self.latest.items()):
            r = self.refused.refusal((root, v))
            have = self.loaded.get(root)
            if r is not None and (have is None or have.version != v):
                out[root] = (v, r)
        return out

    def compose(self, main: Snapshot) -> Snapshot:
        """``main`` with the extra roots' models added; ``main`` itself is not changed.

        The manifest's ``models`` gains their entries and ``extra_snapshots`` says,
        per root, its version, creation time, events and which models it added.
        """
        if not self.loaded:
            return main
        models = dict(main.models)
        metas: dict[str, Any] = dict(main.manifest.get("models", {}))
        sources: dict[str, Any] = {}
        for root, snap in self.loaded.items():
            added = []
            for name, model in snap.models.items():
                if name in models:
                    if name not in self._warned:
                        self._warned.add(name)
                        log.warning("model %r of extra snapshot root %s is not served: "
                                    "an earlier root has a model of that name", name, root)
                    continue
                models[name] = model
                metas[name] = snap.manifest.get("models", {}).get(name, {})
                added.append(name)
            sources[str(root)] = {
                "version": snap.version,
                "created_at": snap.manifest.get("created_at"),
                "events_total": snap.manifest.get("events_total"),
                "models": added,
            }
        manifest = {**main.manifest, "models": metas, "extra_snapshots": sources}
        return dataclasses.replace(main, models=models, manifest=manifest)
