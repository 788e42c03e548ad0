"""A process-wide setting held while any of several concurrent users needs it: the first user in applies it, the
last one out restores what was there. Used for what faiss and BLAS keep per process (their thread counts, faiss'
BLAS threshold), so that overlapping searches in threads never leave one another's value behind, as saving and
restoring it around each search alone could."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["SharedSetting"]


class SharedSetting:
    """``with setting(apply): ...``: ``apply()`` makes the setting and returns how to undo it (``None``: nothing
    to undo); it runs only where no other user holds the setting, and the undo runs when the last user leaves.
    A user that comes in while another holds it gets the setting that one made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._undo: Callable[[], None] | None = None

    @contextmanager
    def __call__(self, apply: Callable[[], Callable[[], None] | None]) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._undo = apply()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._undo is not None:
                    undo, self._undo = self._undo, None
                    undo()
