"""Keep freed tensor memory in the process on Linux, instead of page-faulting it back in.

Why: glibc serves every allocation above its mmap threshold (32 MiB at most) with fresh pages
from the kernel and returns them on free. An activation of the paper-size model such as the
FFN hidden layer (64 x 64 x 2048 fp32, just over 32 MiB) then costs ~8,000 page faults each
time it is allocated, and a training step allocates dozens of such tensors. With mmap off and
trimming raised, freed blocks are reused instead: on the 2-core CPU the paper-size step went
from ~56,000 to ~9,000 page faults and from 14.0 to 16.5 samples/s, measured side by side
(see benchmarks/train_throughput.py). The process keeps its peak heap for its lifetime, as
PyTorch's caching allocator does on GPUs; the peak itself does not change.

Opt-in, since it changes the whole process: ``lrcn train`` calls `keep_freed_memory` only with
``train.keep_freed_memory: true`` (on the CPU), and benchmarks/train_throughput.py calls it
itself. Any process can instead be launched with glibc's own environment variables, read when
glibc starts (the aliases of its tunables glibc.malloc.mmap_max and .trim_threshold; checked on
glibc 2.36 by page faults, which stop for a freed and re-allocated 64 MiB block):

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 lrcn train ...
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647 lrcn train ...
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory rather than return it, for the rest of the process;
    False where not glibc (or where glibc refuses)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if not ok:
        log.debug("glibc mallopt refused the settings; allocations page-fault as before")
    return ok
