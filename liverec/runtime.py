"""Process-wide runtime settings applied once at start-up by the ``liverec`` command.

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB),
so after an id table or an embedding table is regrown, later multi-megabyte buffers come
from the heap, and the freed ones stay resident as holes between live allocations. In a
long-running trainer this shows up as resident memory well above the model's parameters
(``bench/bench_memory.py``: 1.58-1.60x at 1M items x 64 dims with the dynamic threshold).
Pinning the threshold makes every block above it a private mapping that goes back to the
OS when freed, while smaller arrays stay on the heap.

The threshold is 4 MiB. At 1 MiB (the first setting) every score matrix of the
trainer's sampled evaluation and many learning temporaries were fresh mappings, zeroed
by the kernel on first touch: the trainer with all default models spent 63 µs of system
time per event on that (4 MiB: 35 µs, 8 MiB: 19 µs, glibc's default: 6 µs), and growing
the 1M-item table took 67 s instead of 12-13 s. Memory at 1M items (two runs each):
1 MiB 1.47x, 4 MiB 1.47-1.48x, 8 MiB 1.46-1.50x, 16 MiB 1.52x -- 4 MiB is the largest
setting that stays clearly inside the 1.5x target.

Batch commands that allocate and free multi-megabyte arrays many times a second
(``liverec evaluate``'s score matrices) are not pinned (MovieLens, first 30,000 events:
6.5 s of system time pinned at 1 MiB, 1.7 s not). They pad the heap's top instead
(:func:`pad_malloc_top`, 256 MiB): with glibc's default, each freed score matrix at the
top of the heap is handed back to the kernel and the next one is faulted in again, page
by page; with the pad, up to 256 MiB of freed top stays resident and is reused (a
request that fits in the top is served from it, without a fresh mapping). Measured with
``/usr/bin/time`` on ``liverec evaluate`` of the first 30,000 MovieLens ratings, every
default model: 2.0 M minor page faults and 8.1 s of system time unpadded, 0.16 M and
0.9 s padded (user time unchanged, wall 47 -> 38 s); peak resident memory 776 -> 850
MB. A 64 MiB pad was too small there (the hybrid's per-component score tensor of a
256-event chunk is 80 MB on MovieLens), though enough for user-kNN alone (7.1 -> 0.5 s).

Pinned commands pad the top too, by :data:`PINNED_TOP_PAD` (8 MiB). Setting any of
glibc's thresholds turns its dynamic adjustment off, so pinning the mmap threshold also
left the trim threshold at its 128 KiB default: each freed block under 4 MiB at the top
of the heap went back to the kernel, and the next one was faulted in again. The default
trainer's hybrid tunes on score matrices of 2.5-5 MB per batch (32 events x 20,000
items). Learning the issue-9 stream in memory took 370-590k minor page faults and
0.6-1.0 s of system time (of 8.4 s). With an 8 MiB pad it took 12-44k faults (16 MiB:
2-26k), and the hybrid learned in 4.8 s instead of 5.4-5.7 s; `liverec train` learned
8.5% more events/s. The price is up to 8 MiB of freed heap kept resident: at 1M items x
64 dims (``bench/bench_memory.py``), RSS / parameter bytes was 1.53-1.54x, against
1.49-1.52x without the pad on the same day.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["DEFAULT_UMASK", "PINNED_TOP_PAD", "UNPINNED_COMMANDS", "configure_malloc",
           "configure_umask", "pad_malloc_top", "pin_malloc_mmap_threshold"]

log = logging.getLogger(__name__)

_M_TOP_PAD = -2  # from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
DEFAULT_MMAP_THRESHOLD = 4 << 20
DEFAULT_TOP_PAD = 256 << 20
#: the heap's top kept by the commands that pin the threshold
PINNED_TOP_PAD = 8 << 20
#: commands that pad the heap's top instead of pinning the threshold (short-lived,
#: allocation-heavy)
UNPINNED_COMMANDS = frozenset({"evaluate"})


#: permission bits every ``liverec`` command masks off the files and directories it
#: creates, on top of the caller's umask: none for others, no write for the group.
#: Snapshots, the local broker's logs and the demo's run directory hold users' click
#: histories; the trainer and the server share them as one user (or one group).
DEFAULT_UMASK = 0o027


def configure_umask(value: str | None = None) -> int:
    """Set the process umask: the caller's with :data:`DEFAULT_UMASK` added, or
    ``value`` (octal, ``LIVEREC_UMASK``) exactly; returns it.

    >>> old = os.umask(0o022); configure_umask() == 0o027
    True
    >>> configure_umask("007") == 0o007
    True
    >>> configure_umask("9")
    Traceback (most recent call last):
    ...
    ValueError: LIVEREC_UMASK must be an octal mask such as 027, not '9'
    >>> _ = os.umask(old)
    """
    if value is not None and value.strip():
        try:
            mask = int(value.strip(), 8)
        except ValueError:
            mask = -1
        if not 0 <= mask <= 0o777:
            raise ValueError(f"LIVEREC_UMASK must be an octal mask such as 027, not {value!r}")
    else:
        mask = os.umask(0) | DEFAULT_UMASK  # reading the umask means setting it
    os.umask(mask)
    return mask


def configure_malloc(command: str | None) -> None:
    """The allocator settings of ``liverec <command>`` (benchmarks that measure a
    command's code in process apply the same): the top padded for the unpinned
    commands, else the threshold pinned and the top padded by :data:`PINNED_TOP_PAD`."""
    if command in UNPINNED_COMMANDS:
        pad_malloc_top()
    else:
        pin_malloc_mmap_threshold()
        pad_malloc_top(PINNED_TOP_PAD)


def pin_malloc_mmap_threshold(nbytes: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``nbytes``; False (and nothing done) elsewhere."""
    return _mallopt(_M_MMAP_THRESHOLD, nbytes)


def pad_malloc_top(nbytes: int = DEFAULT_TOP_PAD) -> bool:
    """Keep ``nbytes`` of free heap top resident (glibc's ``M_TOP_PAD``); False (and
    nothing done) elsewhere."""
    return _mallopt(_M_TOP_PAD, nbytes)


def _mallopt(param: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The process's own symbols include libc's: no ``find_library`` (which runs
        # ``ldconfig`` in a subprocess) on every command's start-up.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(param, value))
    if not ok:
        log.debug("mallopt(%d, %d) refused", param, value)
    return ok
