"""The gap between a rebalance's revocation and its assignment.

With the range assignor (eager), a rebalance first revokes every partition a member
holds and assigns the new set once the group has re-formed -- usually in the same
poll, but not always. A scale-out trainer that acted on the empty set in between
would stop folding the update topic (dropping its evaluation) only to start again
when the last partition comes straight back. :class:`RebalanceGap` tells its loop
to wait for the assignment instead.

A member handed no partitions gets no assignment callback (the consumers call
``on_assign`` only with partitions), so the wait also ends after ``limit_s`` (the
group's session timeout: by then the group has re-formed or dropped the member).
"""

from __future__ import annotations

import time


class RebalanceGap:
    """Whether a rebalance that revoked this member's partitions awaits its assignment.

    >>> gap = RebalanceGap(limit_s=6.0)
    >>> gap.open(now=0.0)
    False
    >>> gap.revoked(now=10.0); gap.open(now=11.0)
    True
    >>> gap.assigned(); gap.open(now=11.0)
    False
    >>> gap.revoked(now=20.0); gap.open(now=26.5)
    False
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._since: float | None = None

    def revoked(self, now: float | None = None) -> None:
        """A rebalance revoked partitions: the assignment follows."""
        self._since = time.monotonic() if now is None else now

    def assigned(self) -> None:
        """The rebalance's assignment arrived."""
        self._since = None

    def open(self, now: float | None = None) -> bool:
        """True while the assignment is awaited (at most ``limit_s``)."""
        if self._since is None:
            return False
        if (time.monotonic() if now is None else now) - self._since < self.limit_s:
            return True
        self._since = None
        return False
