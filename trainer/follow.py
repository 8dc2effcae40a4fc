"""Models another trainer learns, followed from its snapshot root (``liverec train --follow``).

``seqnn`` learns a few thousand events a second, too slow for the main trainer's loop,
so it runs as a trainer of its own (own group, own snapshot root). With
``--follow seqnn=./snapshots-seqnn`` the main trainer takes that trainer's ``seqnn`` in
as one of its models: it scores it in its prequential evaluation, its hybrid and
re-ranker blend it, and its snapshots carry the copy they blended, so the server
serves exactly that. The main trainer never learns it. A version is swapped in only
once the main trainer has passed every offset it learned (its snapshot's offsets on
the same topic; else its event-time watermark): scored earlier, it would be tested on
events it had already learned, and the prequential figures would flatter it (the
followed trainer is ahead when the main one restarts from an old snapshot or catches
up a backlog).

:class:`Followed` checks the roots' ``LATEST`` every ``every_s`` seconds in a
background thread (verified loads through :class:`~online_models.roots.ExtraRoots`;
a refused version is logged and the one in use stays) and also copies a new
version's state for this trainer's snapshots there, so the learner only swaps models
in. A followed model does not change between versions, so that copy is reused by
every snapshot until the next version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from online_models.base import ModelState, OnlineModel, UserHistory
from online_models.roots import ExtraRoots
from online_models.snapshot import capture

__all__ = ["Followed", "FollowedModel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FollowedModel:
    """One version of a followed model, ready to swap in."""

    name: str
    model: OnlineModel
    root: Path
    version: int
    #: the version's creation time (seconds since the epoch; NaN when unknown)
    created: float
    #: the model's state as :func:`online_models.snapshot.capture` copies it
    captured: tuple[ModelState, dict[str, Any]]
    #: what its trainer had learned: ``{topic: {partition: next offset}}`` ...
    offsets: dict[str, dict[int, int]]
    #: ... and the newest event time
    watermark: float | None

    @classmethod
    def copy_of(cls, name: str, model: OnlineModel, root: Path, version: int, created: float,
                offsets: dict[str, dict[int, int]], watermark: float | None) -> FollowedModel:
        """The version, its state copied as a snapshot takes it (once per version)."""
        cap = capture({name: model}, history=UserHistory(), offsets={}, events_total=0,
                      watermark=None)
        return cls(name, model, root, version, created, cap.models[name], offsets, watermark)

    def learned_before(self, topic: str, offsets: Mapping[tuple[str, int], int],
                       watermark: float | None) -> bool:
        """Whether this version learned only events a trainer at ``offsets`` (of
        ``topic``; else at event time ``watermark``) has passed: only then may that
        trainer score it prequentially, or its figures would count events the
        followed model had already learned.

        >>> f = FollowedModel("m", None, Path("r"), 1, 0.0, None, {"clicks": {0: 50}}, 9.0)
        >>> f.learned_before("clicks", {("clicks", 0): 40}, None)
        False
        >>> f.learned_before("clicks", {("clicks", 0): 50}, None)
        True
        >>> f.learned_before("other", {}, 9.5)  # not the same topic: by event time
        True
        """
        theirs = self.offsets.get(topic)
        if theirs:
            return all(offsets.get((topic, p), 0) >= o for p, o in theirs.items())
        if self.watermark is None:
            return True
        return watermark is not None and watermark >= self.watermark


def _created(manifest: Mapping[str, Any]) -> float:
    stamp = manifest.get("created_at")
    try:
        return datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else float("nan")
    except ValueError:
        return float("nan")


class Followed:
    """The models of ``follow`` (name -> snapshot root), loaded off the learner's thread.

    >>> import tempfile
    >>> from online_models.popularity import Popularity
    >>> from online_models.base import Batch
    >>> from online_models.snapshot import SnapshotStore
    >>> root = Path(tempfile.mkdtemp())
    >>> other = Popularity()
    >>> other.learn(Batch.from_columns(["u"], ["i"], None, [1.0]))
    >>> _ = SnapshotStore(root).write({"popularity": other}, history=UserHistory(),
    ...                               offsets={}, events_total=1, watermark=1.0, metrics={})
    >>> f = Followed({"popularity": root}, every_s=5.0)
    >>> [(m.name, m.version, m.model.n_items) for m in f.load_now()]
    [('popularity', 1, 1)]
    >>> f.load_now()  # nothing new
    []
    >>> f.close()
    """

    def __init__(self, follow: Mapping[str, Path], every_s: float) -> None:
        self.follow = dict(follow)
        self.every_s = every_s
        self.roots = ExtraRoots(sorted(set(self.follow.values())))
        #: name -> the newest version handed over by :meth:`poll` / :meth:`load_now`
        self.current: dict[str, FollowedModel] = {}
        self._handed: dict[str, int] = {}  # name -> version handed over (by _check)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="liverec-follow")
        self._future: Future[list[FollowedModel]] | None = None
        self._next_check = 0.0

    def poll(self, now: float | None = None) -> list[FollowedModel]:
        """New versions loaded since the last call; never blocks (a check of the
        roots starts in the background every ``every_s`` seconds)."""
        now = time.monotonic() if now is None else now
        out: list[FollowedModel] = []
        if self._future is not None and self._future.done():
            fut, self._future = self._future, None
            try:
                out = fut.result()
            except Exception:
                log.exception("following %s failed; the models in use stay",
                              ", ".join(sorted(map(str, self.follow.values()))))
            self._note(out)
        if self._future is None and now >= self._next_check:
            self._next_check = now + self.every_s
            self._future = self._pool.submit(self._check)
        return out

    def load_now(self) -> list[FollowedModel]:
        """:meth:`poll`, waiting for the check (at start-up; in tests)."""
        out: list[FollowedModel] = []
        try:
            if self._future is not None:
                fut, self._future = self._future, None
                out = fut.result()
            out = [*out, *self._check()]
        except Exception:
            log.exception("following %s failed; the models in use stay",
                          ", ".join(sorted(map(str, self.follow.values()))))
        self._note(out)
        return out

    def _note(self, out: list[FollowedModel]) -> None:
        for f in out:
            self.current[f.name] = f
            log.debug("followed %s: loaded version %d of %s", f.name, f.version, f.root)

    def _check(self) -> list[FollowedModel]:
        """Load the roots whose ``LATEST`` moved; their followed models' new versions.

        Runs in one thread at a time (the pool's, or the caller's once the pool's
        check is done), so ``_handed`` needs no lock.
        """
        self.roots.poll()
        out: list[FollowedModel] = []
        for name, root in self.follow.items():
            snap = self.roots.loaded.get(Path(root))  # ExtraRoots keys: SnapshotStore.root
            if snap is None or self._handed.get(name) == snap.version:
                continue
            self._handed[name] = snap.version
            model = snap.models.get(name)
            if model is None:
                log.warning("snapshot %d of %s has no model %r (it has %s)",
                            snap.version, root, name, sorted(snap.models))
                continue
            out.append(FollowedModel.copy_of(name, model, root, snap.version,
                                             _created(snap.manifest), snap.offsets,
                                             snap.watermark))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
