"""SharedSetting: a process-wide setting applied by the first user in and undone by the last one out."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from crossscale.index._shared_setting import SharedSetting


def _logged(log: list[str], name: str) -> Callable[[], Callable[[], None]]:
    """A setting's ``apply`` that logs applying and undoing ``name``."""

    def apply() -> Callable[[], None]:
        log.append(f"apply {name}")
        return lambda: log.append(f"undo {name}")

    return apply


@pytest.mark.parametrize("first_out", [True, False], ids=["the first in leaves first", "the second in leaves first"])
def test_the_first_user_applies_and_the_last_undoes_in_either_order(first_out: bool) -> None:
    log: list[str] = []
    setting = SharedSetting()
    apply = functools.partial(_logged, log)

    a, b = setting(apply("a")), setting(apply("b"))
    a.__enter__()
    b.__enter__()  # another user in while "a" holds it: b's is not applied
    (a if first_out else b).__exit__(None, None, None)
    assert log == ["apply a"]  # one user still in
    (b if first_out else a).__exit__(None, None, None)
    assert log == ["apply a", "undo a"]
    with setting(apply("c")):  # free again: the next user applies its own
        pass
    assert log[2:] == ["apply c", "undo c"]


def test_nothing_to_undo() -> None:
    setting = SharedSetting()
    with setting(lambda: None), setting(lambda: None):
        pass
    with setting(lambda: None):  # and usable again
        pass
