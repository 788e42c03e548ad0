"""The README's main command: the offline demo finds its query at rank 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossscale.cli import main


def test_demo_finds_the_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--workspace", str(tmp_path / "ws"), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "found the query in 'astronaut' at rank 1" in out
    first = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    # the box of a verified match is the query's projected outline: near exact
    assert "astronaut" in first and first.endswith("inliers") and float(first.split()[-3]) > 0.9
