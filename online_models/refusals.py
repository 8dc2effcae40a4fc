"""Refused snapshot versions, and when a reader tries each one again.

A reader (the server, a trainer following another's root) refuses a version that
does not verify and keeps using the one it has. A refusal is not final: the version
may have been caught half-copied (an operator's ``cp``, a slow network file system)
and be complete a moment later, and on a quiet stream no newer version may come for
a long time. :class:`Refusals` says when a refused version is due again: after a
delay that doubles with each attempt (``first_s`` up to ``max_s``), and at once when
its files change (their :meth:`~online_models.snapshot.SnapshotStore.fingerprint`),
as soon as they have stopped changing between two looks (a copy in progress is not
loaded over and over). A version that is never fixed is thus tried a bounded number
of times an hour, not every tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Fingerprint", "Refusal", "Refusals"]

K = TypeVar("K", bound=Hashable)

#: what :meth:`SnapshotStore.fingerprint` returns
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class Refusal:
    """Why a version was refused, how often, and when it is tried again."""

    reason: str
    #: attempts refused so far (1 after the first)
    attempts: int
    #: the version's files when last refused
    fingerprint: Fingerprint
    #: clock time of the next try, files unchanged
    retry_at: float
    #: the files as last looked at, when they differ from ``fingerprint``
    seen: Fingerprint | None = None


class Refusals(Mapping[K, str], Generic[K]):
    """Refused versions (key -> reason) with their retry schedule.

    Parameters
    ----------
    first_s, max_s
        Delay before the first retry, doubled after each refused retry up to ``max_s``.
    clock
        Monotonic seconds (injectable for tests).

    Examples
    --------
    >>> now = [0.0]
    >>> r = Refusals(first_s=5, max_s=20, clock=lambda: now[0])
    >>> r.refuse(36, "checksum mismatch", (("a", 1, 1),)).retry_at
    5.0
    >>> r.due(36, (("a", 1, 1),)), 36 in r, r[36]
    (False, True, 'checksum mismatch')
    >>> now[0] = 5.0
    >>> r.due(36, (("a", 1, 1),))
    True
    >>> r.refuse(36, "checksum mismatch", (("a", 1, 1),)).retry_at  # 5 s later, twice the delay
    15.0
    >>> r.due(36, (("a", 2, 2),)), r.due(36, (("a", 2, 2),))  # changed; then settled
    (False, True)
    >>> r.forget(36); 36 in r
    False
    """

    def __init__(self, first_s: float = 5.0, max_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError("need 0 < first_s <= max_s")
        self.first_s = first_s
        self.max_s = max_s
        self.clock = clock
        self._by_key: dict[K, Refusal] = {}

    # Mapping: key -> reason (what /v1/model lists as refused versions)
    def __getitem__(self, key: K) -> str:
        return self._by_key[key].reason

    def __iter__(self) -> Iterator[K]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def reasons(self) -> dict[K, str]:
        """A copy of key -> reason (safe while another thread refuses or forgets)."""
        return {k: r.reason for k, r in list(self._by_key.items())}

    def refusal(self, key: K) -> Refusal | None:
        """The refusal of ``key`` with its schedule, or None when it is not refused."""
        return self._by_key.get(key)

    def refuse(self, key: K, reason: str, fingerprint: Fingerprint) -> Refusal:
        """Record a refused attempt at ``key`` (its files as they were) and schedule the
        next: ``first_s`` after the first refusal, twice the last delay after each
        further one, at most ``max_s``."""
        prev = self._by_key.get(key)
        attempts = 1 if prev is None else prev.attempts + 1
        # The exponent is capped: 2.0 ** 1024 overflows (attempt 1025, 85 hours in at
        # the 5-minute cap), and the delay is at the cap long before.
        delay = min(self.max_s, self.first_s * 2.0 ** min(attempts - 1, 60))
        r = Refusal(reason, attempts, fingerprint, self.clock() + delay)
        self._by_key[key] = r
        return r

    def due(self, key: K, fingerprint: Fingerprint) -> bool:
        """Whether to try ``key`` now: it was never refused, its retry time has come,
        or its files differ from when it was refused and are the same as at the last
        look (changed, and no longer changing)."""
        r = self._by_key.get(key)
        if r is None or self.clock() >= r.retry_at:
            return True
        if fingerprint == r.fingerprint:
            r.seen = None
            return False
        if fingerprint == r.seen:
            return True
        r.seen = fingerprint
        return False

    def retry_in(self, key: K) -> float | None:
        """Seconds until ``key``'s next try with its files unchanged (None: not refused)."""
        r = self._by_key.get(key)
        return None if r is None else max(0.0, r.retry_at - self.clock())

    def forget(self, key: K) -> None:
        """Drop ``key``'s refusal (it loaded, or no longer matters)."""
        self._by_key.pop(key, None)

    def forget_where(self, pred: Callable[[K], bool]) -> None:
        """Drop every refusal whose key satisfies ``pred``."""
        for key in [k for k in self._by_key if pred(k)]:
            del self._by_key[key]
