"""Process-wide memory settings for long CPU training jobs.

PyTorch has no caching allocator on the CPU: every tensor comes from the C library's ``malloc``. glibc serves
blocks above a threshold (at most 32 MB) with ``mmap`` and gives them back to the kernel when freed, and trims the
top of its heap when enough is free there; the next step's tensors of the same sizes then fault their pages in
again, one 4 KB page at a time, each fault zeroing the page. Online RL alternates generation, reward scoring and a
training step whose shapes change every step, so it re-faults hundreds of MB a step: measured here on the default
model (PPO, batch 8), 110–290 k page faults a step after warm-up, ~4 µs each (0.5–1.1 s of an 8 s step);
keeping freed memory in the heap brings that to ~0 (the GPU's caching allocator does the same for device memory).

:func:`retain_freed_memory` asks glibc to do so (``mallopt``: no ``mmap`` for large blocks, no trimming). The
price is that the process keeps its peak heap size until it exits, which a training process reaches anyway.
It does nothing off glibc, or when ``PREFTUNE_RETAIN_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def retain_freed_memory() -> bool:
    """Keep freed memory for reuse instead of returning it to the OS (glibc only). Returns whether it applies."""
    global _applied
    if _applied:
        return True
    if os.environ.get("PREFTUNE_RETAIN_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # M_MMAP_MAX 0: large blocks come from the heap too; M_TRIM_THRESHOLD -1 (as size_t: no limit): never trim
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    return _applied
