"""release_freed_memory: glibc's malloc_trim where there is one, a no-op elsewhere."""

from __future__ import annotations

import platform
import sys

import pytest

from crossscale import _memory


def test_freed_memory_is_released_on_glibc_linux() -> None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert _memory.release_freed_memory() is True


def test_without_malloc_trim_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "_malloc_trim", lambda: None)
    assert _memory.release_freed_memory() is False


def test_other_systems_have_no_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    _memory._malloc_trim.cache_clear()
    monkeypatch.setattr(_memory.sys, "platform", "darwin")
    try:
        assert _memory._malloc_trim() is None
    finally:
        monkeypatch.undo()
        _memory._malloc_trim.cache_clear()
