"""What a long-running server asks of glibc's allocator, so that one large request's memory goes back to the OS.

glibc serves allocations below its mmap threshold from its heap and keeps what is freed there, and it raises
that threshold (up to 32 MiB) each time a larger mmapped block is freed. In a server that means a large request
leaves tens of MB resident after it and the next one stacks on top (measured: a 64 MiB body grown in 64 KiB
pieces peaked at +84 MB instead of +64). Both helpers are glibc's own calls; elsewhere they do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def pin_mmap_threshold(size: int) -> bool:
    """Serve allocations of ``size`` bytes and more with mmap, always (freed: unmapped, back to the OS at once;
    grown: remapped, not copied). Setting it stops glibc's dynamic threshold. Whether it was set."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, size))


def return_freed_memory() -> None:
    """glibc's ``malloc_trim(0)``: hand the free pages inside the heap back to the OS."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None
