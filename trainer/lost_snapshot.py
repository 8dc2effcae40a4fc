"""A trainer that finds no snapshot checks that its consumer group has not moved on.

The group's committed offsets say how far the stream was learned; the snapshot holds
what was learned. With the snapshot directory lost (a new volume, a wrong path) or every
version refused (damaged files, a release that cannot read them) and the commits still
there, a fresh trainer would resume at the
commits with an empty model: it would never learn the earlier events again, and its
first snapshot would replace the mature model on every server. So a trainer that
restored nothing asks the group for its commits (in a thread, beside the group join)
and writes no snapshot and commits nothing until the answer clears it
(:meth:`LostSnapshotGuard.allows_write`). With commits found, ``on_missing_snapshot``
decides: ``"refuse"`` (the default) stops the trainer with :attr:`refusal`, which says
what to do; ``"resume"`` accepts the loss with a warning.

A scale-out trainer (:mod:`trainer.partitioned`) keeps its user state per input
partition and knows the group's commits of the partitions it is assigned in the
assignment itself, so it decides per partition and at once with
:func:`check_partitions`: a partition the group committed whose directory holds no
valid state is lost (its state is written before anything of it is committed, see
:meth:`trainer.user_side.UserSide.take_over`), under the same policy and advice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from stream.kafka import KafkaClientError, committed_offsets
from stream.settings import KafkaSettings

__all__ = ["LostSnapshotGuard", "MissingSnapshotError", "check_partitions"]

log = logging.getLogger(__name__)

Policy = Literal["refuse", "resume"]

#: seconds between tries while Kafka does not answer
RETRY_S = 2.0
#: failed tries logged at INFO before the next ones are WARNINGs
QUIET_TRIES = 3


class MissingSnapshotError(RuntimeError):
    """The group committed progress that no snapshot in the directory holds."""


class LostSnapshotGuard:
    """Whether a trainer that restored no snapshot may write one (see module doc)."""

    def __init__(self, kafka: KafkaSettings, group: str, root: Path, policy: Policy,
                 on_refuse: Callable[[], None] = lambda: None,
                 refused: Mapping[int, str] | None = None) -> None:
        self.kafka, self.group, self.root, self.policy = kafka, group, root, policy
        self._on_refuse = on_refuse
        #: versions the restore found but refused, with why: then nothing is lost yet
        self.refused = dict(refused or {})
        self._done = threading.Event()
        self._stop = threading.Event()
        #: the commits found (partition -> next offset); None until known
        self.commits: dict[int, int] | None = None
        #: why the trainer must stop (set when commits were found under "refuse")
        self.refusal: str | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="liverec-lost-snapshot",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def allows_write(self, wait_s: float = 0.0) -> bool:
        """True once the group is known to hold no commits this trainer would skip,
        and always under ``"resume"``; False while unknown or refused."""
        if self.policy == "resume":
            return True
        if not self._done.wait(wait_s):
            if wait_s > 0:
                log.warning(
                    "no snapshot written: still cannot tell whether group %s committed "
                    "offsets on %s that a lost snapshot held (%s)", self.group,
                    self.kafka.topic, self._error or "no answer yet")
            return False
        return self.refusal is None

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        tries = 0
        while not self._stop.is_set():
            try:
                self.commits = committed_offsets(self.kafka, self.group, self.kafka.topic)
                break
            except KafkaClientError as exc:
                self._error = str(exc)
                tries += 1
                # A group coordinator that is still loading answers "not coordinator"
                # for the first seconds of a broker's life: a WARNING once it persists.
                log.log(logging.INFO if tries < QUIET_TRIES else logging.WARNING,
                        "reading group %s's commits failed (%s): retrying", self.group, exc)
                self._stop.wait(RETRY_S)
        else:
            return
        if self.commits:
            where = _where(self.commits)
            if self.policy == "refuse":
                self.refusal = self._refused_message(where) if self.refused else (
                    f"no valid snapshot in {self.root}, but consumer group {self.group!r} "
                    f"committed offsets on {self.kafka.topic!r} ({where}): the model "
                    "learned up to there is lost, and starting would resume there with "
                    "an empty model that replaces it on every server. " + _advice(
                        "re-learn the topic from its start with a new group (--group)")
                    + ". (Trying liverec out on the local broker with a new --snapshots "
                    "directory? `liverec broker start --fresh` starts that broker over, "
                    "with no topics and no groups.)")
                log.error("%s", self.refusal)
                self._on_refuse()
            else:
                log.warning("no valid snapshot in %s: resuming group %r at its commits "
                            "(%s) with an empty model (--on-missing-snapshot resume); "
                            "the events before them are not learned", self.root,
                            self.group, where)
        self._done.set()

    def _refused_message(self, where: str) -> str:
        """Why a trainer whose snapshots are all refused stops: they are not lost."""
        newest = max(self.refused)
        older = len(self.refused) - 1
        return (
            f"every snapshot in {self.root} was refused ({len(self.refused)} version(s); "
            f"the newest: {self.refused[newest]}"
            + (f"; the log says why for the {older} older one(s)" if older else "")
            + f"), and consumer group {self.group!r} committed offsets on "
            f"{self.kafka.topic!r} ({where}). Starting now would resume at the commits "
            "with an empty model that replaces theirs on every server. Where the refusal "
            "names something fixable (a liverec release that cannot read them, a copy "
            "still under way), fix it and start the trainer again: the snapshots are "
            "still there. Where the files are damaged for good, what was learned up to "
            "the commits is lost: " + _advice(
                "re-learn the topic from its start with a new group (--group)"))


def check_partitions(lost: Mapping[int, int], *, root: Path, group: str, topic: str,
                     updates: str, policy: Policy) -> str | None:
    """A scale-out trainer's check of the partitions it was assigned (see the module
    doc): ``lost`` maps each one that has no valid state under ``root`` to the
    group's commit. Returns why the trainer must stop (under ``"refuse"``, when any is
    lost); None when it may go on (a warning under ``"resume"``)."""
    if not lost:
        return None
    where = _where(lost)
    numbers = ", ".join(str(p) for p in sorted(lost))
    if policy == "refuse":
        refusal = (
            f"no valid state of partition(s) {numbers} in {root / 'partitions'}, but "
            f"consumer group {group!r} committed offsets on {topic!r} ({where}): what was "
            "learned up to there is lost, and starting would resume there with only what "
            "the topics still hold of it, whose merged snapshot replaces the model on "
            "every server. " + _advice(
                f"re-learn the topic from its start with a new group (--group), after "
                f"deleting the update topic {updates!r} (it holds the lost model's "
                "item-side learning, which a new group would fold in again)"))
        log.error("%s", refusal)
        return refusal
    log.warning("no valid state of partition(s) %s in %s: resuming group %r at its "
                "commits (%s) with what the topics still hold (--on-missing-snapshot "
                "resume); the events they no longer hold are not learned", numbers,
                root / "partitions", group, where)
    return None


def _where(commits: Mapping[int, int]) -> str:
    return ", ".join(f"partition {p} at {o}" for p, o in sorted(commits.items()))


def _advice(fresh_start: str) -> str:
    """What to do about a refusal (``fresh_start``: how to start over instead)."""
    return ("Restore the snapshot directory (or fix --snapshots); or " + fresh_start +
            "; or accept the loss with --on-missing-snapshot resume "
            "(LIVEREC_ON_MISSING_SNAPSHOT=resume)")
