"""Give memory a dropped index held back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from collections.abc import Callable

__all__ = ["release_freed_memory"]

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only (musl has none)
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim``); False where there is no such call.

    A faiss index's lists are many heap blocks; once the index is dropped glibc keeps the freed pages in the
    process (its RSS stays at the peak) unless asked. Called after an index migration.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
