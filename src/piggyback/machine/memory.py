"""Keep the large blocks a CPU training step frees, for the next step to reuse.

glibc serves every allocation over 32 MiB with its own ``mmap`` and unmaps it again on
``free``. A Piggyback step allocates and frees the masked weights and their gradients
each time (about 550 MB apiece for VGG-16), so on the CPU every step page-faults that
memory back in and the kernel zeroes it: measured, half of a VGG-16 step. Telling the
allocator to serve large blocks from its heap and not to trim that heap makes the
freed blocks reusable; the numbers computed do not change.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM_BELOW = 2**31 - 1


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed large blocks; False where the C library is not glibc
    (macOS, musl), which is left as it is."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM_BELOW))
