"""The test run is offline: any network access fails at once."""

import socket

import pytest


def test_network_access_fails_fast() -> None:
    with pytest.raises(RuntimeError, match="network"), socket.socket() as s:
        s.connect(("192.0.2.1", 80))


def test_ultralytics_does_not_write_to_home() -> None:
    import os
    from pathlib import Path

    assert Path(os.environ["YOLO_CONFIG_DIR"]).name.startswith("crossscale-yolo-cfg-")
