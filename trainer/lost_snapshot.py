"""A trainer that finds no snapshot checks that its consumer group has not moved on.

The group's committed offsets say how far the stream was learned; the snapshot holds
what was learned. With the snapshot directory lost (a new volume, a wrong path, every
version corrupt) and the commits still there, a fresh trainer would resume at the
commits with an empty model: it would never learn the earlier events again, and its
first snapshot would replace the mature model on every server. So a trainer that
restored nothing asks the group for its commits (in a thread, beside the group join)
and writes no snapshot and commits nothing until the answer clears it
(:meth:`LostSnapshotGuard.allows_write`). With commits found, ``on_missing_snapshot``
decides: ``"refuse"`` (the default) stops the trainer with :attr:`refusal`, which says
what to do; ``"resume"`` accepts the loss with a warning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from stream.kafka import KafkaClientError, committed_offsets
from stream.settings import KafkaSettings

__all__ = ["LostSnapshotGuard", "MissingSnapshotError"]

log = logging.getLogger(__name__)

Policy = Literal["refuse", "resume"]

#: seconds between tries while Kafka does not answer
RETRY_S = 2.0


class MissingSnapshotError(RuntimeError):
    """The group committed progress that no snapshot in the directory holds."""


class LostSnapshotGuard:
    """Whether a trainer that restored no snapshot may write one (see module doc)."""

    def __init__(self, kafka: KafkaSettings, group: str, root: Path, policy: Policy,
                 on_refuse: Callable[[], None] = lambda: None) -> None:
        self.kafka, self.group, self.root, self.policy = kafka, group, root, policy
        self._on_refuse = on_refuse
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
        while not self._stop.is_set():
            try:
                self.commits = committed_offsets(self.kafka, self.group, self.kafka.topic)
                break
            except KafkaClientError as exc:
                self._error = str(exc)
                log.warning("reading group %s's commits failed (%s): retrying", self.group,
                            exc)
                self._stop.wait(RETRY_S)
        else:
            return
        if self.commits:
            where = ", ".join(f"partition {p} at {o}" for p, o in sorted(self.commits.items()))
            if self.policy == "refuse":
                self.refusal = (
                    f"no valid snapshot in {self.root}, but consumer group {self.group!r} "
                    f"committed offsets on {self.kafka.topic!r} ({where}): the model "
                    "learned up to there is lost, and starting would resume there with "
                    "an empty model that replaces it on every server. Restore the "
                    "snapshot directory (or fix --snapshots); or re-learn the topic from "
                    "its start with a new group (--group); or accept the loss with "
                    "--on-missing-snapshot resume (LIVEREC_ON_MISSING_SNAPSHOT=resume)")
                log.error("%s", self.refusal)
                self._on_refuse()
            else:
                log.warning("no valid snapshot in %s: resuming group %r at its commits "
                            "(%s) with an empty model (--on-missing-snapshot resume); "
                            "the events before them are not learned", self.root,
                            self.group, where)
        self._done.set()
