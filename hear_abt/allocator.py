"""glibc malloc settings for a process that embeds many clips (``hear-abt embed``).

Each batch allocates and frees tens of MB of tensors. glibc's defaults hand large freed blocks back to
the kernel (its trim and mmap thresholds adapt to the largest block freed so far, and the model
threads' arenas shrink their heaps), so the next batch faults the same pages in again, zeroed by the
kernel: 300-400 page faults and about 0.6 ms of system CPU time per 5-s clip on a 2-core VM. With fixed
thresholds the freed blocks stay in the process for reuse (about 60 faults per clip); the price is up
to ``TRIM_THRESHOLD`` bytes of freed memory kept per heap instead of returned. Library calls (the HEAR
API, ``embed_files``) never change the process's allocator: only the command line does.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 32 << 20  # blocks up to 32 MiB come from the heap (glibc's largest dynamic value)
TRIM_THRESHOLD = 256 << 20  # freed memory a heap keeps before returning its top to the kernel
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
# The user's own settings win: glibc reads these from the environment at start-up.
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Fix glibc's trim and mmap thresholds (see the module doc); whether they were set.

    Does nothing off Linux, with another C library (musl has no ``mallopt``), or when the user set
    any of :data:`USER_SETTINGS`.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
