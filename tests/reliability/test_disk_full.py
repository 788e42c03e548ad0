"""A full disk (simulated with RLIMIT_FSIZE on the writer): a clear error, and what was committed stays valid."""

from __future__ import annotations

import json
from pathlib import Path

from crossscale import CrossScaleSearch
from tests.reliability.conftest import make_images, run_worker


def test_disk_full_mid_ingest(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_images(images, 40, size=(400, 300))  # ~360 KiB of PNG each
    limit = 4 << 20  # no file may grow past 4 MiB: the store fills up after about ten images
    out = run_worker(tmp_path / "ws", images, "--fsize-limit", str(limit), "--map-size", str(1 << 20))
    report = json.loads(out.splitlines()[1])
    assert 0 < report["added"] < 40
    assert report["failed"], "some batches must have failed on the full disk"
    assert all("write failed, nothing was committed" in reason for reason in report["failed"])
    assert all("past 4 MiB (RLIMIT_FSIZE)" in reason for reason in report["failed"])  # says why
    with CrossScaleSearch.open(tmp_path / "ws", progress=False, device="cpu") as cs:
        assert cs.verify().ok
        kept = [src for src in report["added_sources"] if "-del" not in src]  # the worker deletes "-del" ones
        assert sorted(cs.record(p).source for p in cs.parent_ids()) == sorted(kept)
    run_worker(tmp_path / "ws", images)  # space again: the rest is indexed, nothing twice
    with CrossScaleSearch.open(tmp_path / "ws", progress=False, device="cpu") as cs:
        assert cs.verify().ok and len(cs) == 32
