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
(``liverec evaluate``'s score matrices) keep glibc's default altogether (MovieLens,
first 30,000 events: 6.5 s of system time pinned at 1 MiB, 1.7 s not).
"""

from __future__ import annotations

import ctypes
import logging
import sys

__all__ = ["UNPINNED_COMMANDS", "pin_malloc_mmap_threshold"]

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
DEFAULT_MMAP_THRESHOLD = 4 << 20
#: commands that keep glibc's default threshold (short-lived, allocation-heavy)
UNPINNED_COMMANDS = frozenset({"evaluate"})


def pin_malloc_mmap_threshold(nbytes: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``nbytes``; False (and nothing done) elsewhere."""
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
    ok = bool(mallopt(_M_MMAP_THRESHOLD, nbytes))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) refused", nbytes)
    return ok
