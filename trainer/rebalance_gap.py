"""The gap between a rebalance's revocation and its assignment.

With the range assignor (eager), a rebalance first revokes every partition a member
holds and assigns the new set once the group has re-formed -- usually in the same
poll, but not always: the group waits for every member to rejoin, and the others
first settle their transactions and write their partition snapshots. A scale-out
trainer that acted on the empty set in between would stop folding the update topic
(dropping its evaluation) only to start again when the last partition comes straight
back. :class:`RebalanceGap` tells its loop to wait for the assignment instead.

The assignment is told by the consumer's count of assignments received
(:attr:`stream.kafka.confluent.ConfluentConsumer.assignments`), which counts an empty
one too (``on_assign`` is called only with partitions). ``limit_s`` bounds the wait
should none come (the group's ``max.poll.interval.ms``, past which it drops a member
that has not rejoined).
"""

from __future__ import annotations

import time


class RebalanceGap:
    """Whether a rebalance that revoked this member's partitions awaits its assignment.

    >>> gap = RebalanceGap(limit_s=300.0)
    >>> gap.open(assignments=4, now=0.0)
    False
    >>> gap.revoked(assignments=4, now=10.0); gap.open(assignments=4, now=11.0)
    True
    >>> gap.open(assignments=5, now=11.0)  # the assignment came (perhaps empty)
    False
    >>> gap.revoked(assignments=5, now=20.0); gap.open(assignments=5, now=320.5)
    False
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._since: float | None = None
        self._assignments = 0

    def revoked(self, assignments: int, now: float | None = None) -> None:
        """A rebalance revoked partitions after ``assignments`` assignments: the next
        one follows."""
        self._since = time.monotonic() if now is None else now
        self._assignments = assignments

    def open(self, assignments: int, now: float | None = None) -> bool:
        """True while no assignment came since the revocation (at most ``limit_s``)."""
        if self._since is None:
            return False
        if assignments == self._assignments and \
                (time.monotonic() if now is None else now) - self._since < self.limit_s:
            return True
        self._since = None
        return False
