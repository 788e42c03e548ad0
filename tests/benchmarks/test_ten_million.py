"""Smoke test of benchmarks/ten_million.py at 20k vectors: the streamed data, the build and the search process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ten_million = pytest.importorskip("benchmarks.ten_million")


def test_streamed_slices_are_the_same_every_time_and_unit_length() -> None:
    first = list(ten_million.slices(250_000, 16, 100))
    again = list(ten_million.slices(250_000, 16, 100))
    assert [s for s, _ in first] == [0, 100_000, 200_000] and len(first[-1][1]) == 50_000
    for (_, a), (_, b) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="per_parent"):
        next(ten_million.slices(1200, 16, 300))  # 300 does not divide a slice of 100,000
    with pytest.raises(ValueError, match="per_parent"):
        next(ten_million.slices(1050, 16, 100))  # nor does 100 divide 1,050


@pytest.mark.slow
def test_a_small_run_builds_searches_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 10 MB cannot hold 20k float32 vectors of 256-d in IVF-Flat: the plan is IVF-SQ8, as at 10M in 4 GB
    argv = ["--n", "20000", "--queries", "8", "--max-memory", "10M", "--workdir", str(tmp_path), "--nprobe", "512"]
    argv += ["--batch", "8,300"]  # batched throughput with the list scan and without
    assert ten_million.main(argv) == 0
    build = json.loads((tmp_path / "build.json").read_text())
    found = json.loads((tmp_path / "search.json").read_text())
    assert build["factory"].endswith(",SQ8") and build["file_bytes"] <= 10 << 20
    assert [(r["nprobe"], r["overfetch"], r["fetch_depth"]) for r in found["results"]] == [
        (105, 8, True),  # the plan: enough of the 512 lists to scan MIN_CODES_SCANNED vectors
        (105, 8, False),
        (105, 128, False),
        (512, 8, True),
    ]
    assert found["results"][-1]["recall"] >= 0.9  # every list searched: only SQ8's rounding can differ from exact
    assert all(0.0 <= r["recall"] <= 1.0 and r["p50_ms"] > 0 for r in found["results"])
    assert found["peak_while_searching_mb"] >= found["rss_after_load_mb"] > found["base_rss_mb"] > 0
    assert found["peak_while_searching_mb"] > found["peak_anon_while_searching_mb"] > found["base_anon_mb"] > 0
    batches = found["batches"]
    ways = [way.name for way in ten_million.BATCH_WAYS]
    assert [(b["batch"], b["how"]) for b in batches] == [(size, how) for size in (8, 300) for how in ways]
    assert {b["recall"] for b in batches[3:]} == {found["results"][0]["recall"]}  # the 8 with exact parents
    assert all(b["qps"] > 0 for b in batches)
    out = capsys.readouterr().out
    assert "| 105 | 128 | no |" in out and "own memory (RssAnon)" in out and "| 300 | list scan, batch folded |" in out
