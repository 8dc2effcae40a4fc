"""Snapshot roots of other trainers, followed by a server or by another trainer.

A model too slow for the main trainer's pace (``seqnn``) runs as a trainer of its own,
in its own consumer group, writing its own snapshot root. :class:`ExtraRoots` follows
each such root's ``LATEST`` (verified like the main root's; a refused version is
remembered and the loaded one keeps being used). The server
(``liverec serve --extra-snapshots``) adds their models to the main snapshot with
:meth:`ExtraRoots.compose`, so a request names them like any other model; the main
root's model wins a name clash; histories, offsets and watermark stay the main root's.
The main trainer (``liverec train --follow``, :mod:`trainer.follow`) takes them in as
models it evaluates and blends but does not learn.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from online_models.snapshot import Snapshot, SnapshotStore

__all__ = ["ExtraRoots"]

log = logging.getLogger(__name__)


class ExtraRoots:
    """The newest valid snapshot of each extra root (see the module docstring)."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.stores = [SnapshotStore(r) for r in roots]
        self.loaded: dict[Path, Snapshot] = {}
        #: (root, version) -> why it was refused (not retried)
        self.refused: dict[tuple[Path, int], str] = {}
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
            if latest is None or (have is not None and have.version == latest):
                continue
            if (root, latest) in self.refused:
                continue
            try:
                snap = store.load(latest) if have is not None else store.load_latest_valid()
            except Exception as exc:  # a half-written snapshot must not stop serving
                self.refused[(root, latest)] = f"{type(exc).__name__}: {exc}"
                log.warning("extra snapshot root %s: refused version %d: %s", root, latest, exc)
                continue
            if snap is None:  # no valid version at all yet
                continue
            self.loaded[root] = snap
            changed = True
            log.info("extra snapshot root %s: version %d (models %s)", root, snap.version,
                     sorted(snap.models))
        return changed

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
