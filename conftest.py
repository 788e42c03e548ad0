"""Offline, isolated test and benchmark runs: any network access fails at once."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

# Before anything imports transformers, huggingface_hub or ultralytics.
_YOLO_DIR = tempfile.mkdtemp(prefix="crossscale-yolo-cfg-")
atexit.register(shutil.rmtree, _YOLO_DIR, ignore_errors=True)  # one per run: not left behind in /tmp
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": _YOLO_DIR,
        "TQDM_DISABLE": "1",
    }
)

import pytest  # noqa: E402


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach the network."""


_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family == socket.AF_UNIX:
        return _real_connect(self, address)  # type: ignore[arg-type]
    raise NetworkAccessError(f"test tried to reach the network: {address!r}")


@pytest.fixture(autouse=True, scope="session")
def _no_network() -> Iterator[None]:
    """Any socket connection other than AF_UNIX fails at once instead of hanging."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect = _real_connect  # type: ignore[method-assign]
