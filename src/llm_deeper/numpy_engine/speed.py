"""One allocator setting that doubles the NumPy engine's speed on Linux.

Every layer creates temporaries of a few hundred KB to a few MB. glibc serves blocks above
M_MMAP_THRESHOLD (128 KB by default, adjusted dynamically) with a fresh mmap and returns them
with munmap, so each temporary costs page faults on first touch. Raising the threshold keeps
such blocks in the heap, where they are reused. Measured on the baby config (2 cores): ~210 ms
-> ~85 ms per forward+backward. Set LLM_DEEPER_NO_MALLOPT=1 to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_done = False


def tune_malloc() -> bool:
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("LLM_DEEPER_NO_MALLOPT"):
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # the largest value glibc accepts
        libc.mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024)
        _done = True
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass
    return _done
