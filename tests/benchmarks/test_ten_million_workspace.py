"""Smoke test of benchmarks/ten_million_workspace.py at 20k regions: the plugged-in stages, one index() call that
migrates the "auto" index as it grows, and the read-only search process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossscale.protocols import RegionEncoder, Segmenter

bench = pytest.importorskip("benchmarks.ten_million_workspace")
BATCH_WAYS = pytest.importorskip("benchmarks.ten_million").BATCH_WAYS


@pytest.mark.parametrize("p", [0, 1, 255, 256, 65_537, (1 << 24) - 1])
def test_a_parent_image_carries_its_number(p: int) -> None:
    image = Image.open(io.BytesIO(bench.parent_png(p)))
    assert image.size == (bench.SIDE, bench.SIDE) and bench.parent_of(image) == p


def test_the_stages_give_each_parent_its_rows_of_the_data_set() -> None:
    data = bench.SlicedData(300_000, 16, 100)
    encoder, segmenter = bench.SlicedDataEncoder(data), bench.GridSegmenter(100)
    assert isinstance(encoder, RegionEncoder) and isinstance(segmenter, Segmenter)
    image = Image.open(io.BytesIO(bench.parent_png(2_999)))  # the last parent: rows 299,900..
    boxes = [c.box for c in segmenter.segment([image])[0]]
    assert len(boxes) == 100 and all(0 <= b.x0 < b.x1 <= bench.SIDE and 0 <= b.y0 < b.y1 <= bench.SIDE for b in boxes)
    np.testing.assert_array_equal(encoder.encode_regions(image, boxes), data.slice(200_000)[99_900:100_000])
    whole = encoder.encode([image])
    assert whole.shape == (1, 16) and np.isclose(np.linalg.norm(whole), 1.0)
    with pytest.raises(ValueError, match="100 boxes"):
        encoder.encode_regions(image, boxes[:3])


def test_queries_have_their_exact_parents() -> None:
    data = bench.SlicedData(20_000, 16, 100)
    q, exact = bench.queries_and_exact(data, 5)
    best = (q @ data.slice(0).T).reshape(5, -1, 100).max(axis=2)
    np.testing.assert_array_equal(exact, np.argsort(-best, axis=1, kind="stable")[:, :10])


def test_a_small_run_ingests_migrates_searches_and_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 10 MB cannot hold 20k float32 vectors of 256-d: the index leaves Flat for IVF-SQ8 during the one call
    argv = ["--n", "20000", "--queries", "8", "--max-memory", "10M", "--workdir", str(tmp_path), "--batch", "300"]
    argv += ["--tune", "0.5"]
    assert bench.main(argv) == 0
    built = json.loads((tmp_path / "ingest.json").read_text())
    found = json.loads((tmp_path / "search.json").read_text())
    assert built["parents"] == 200 and built["regions"] == 20_000
    assert built["migrations"] and built["structure"].endswith(",SQ8")
    assert [m["vectors"] for m in built["migrations"]] == sorted(m["vectors"] for m in built["migrations"])
    assert built["index_file_bytes"] <= 10 << 20 and built["store_bytes"] > 20_000 * 2 * 256  # float16 vectors
    assert found["structure"] == built["structure"] and found["verify_ok"]
    # the plan searches 105 of 512 lists at this size (MIN_CODES_SCANNED): 1.000 here, where 16 lists found 0.59
    assert found["recall"] >= 0.9 and found["p50_ms"] > 0 and found["qps_batch"] > 0
    bare = found["without_rescoring"]
    assert bare["recall"] >= 0.9 and bare["p50_ms"] > 0 and "got" not in bare
    tuning = found["tuned"]["tuning"]  # tune_search's choice, timed as one more way
    chosen = tuning["chosen"]
    assert tuning["min_recall"] == 0.5 and chosen in tuning["measurements"] and chosen["recall"] >= 0.5
    ways = {(m["rescore"], m["rescore_per_parent"]) for m in tuning["measurements"]}
    assert len(tuning["measurements"]) > 1 and ways == {(None, None), (False, None), (True, 2)}
    batches = found["batches"]  # a batch of 300 through cs.search_vectors, with the list scan and without
    ways = [way.name for way in BATCH_WAYS] + ["list scan, batch folded, not re-scored"]
    assert [(b["batch"], b["how"]) for b in batches[:-1]] == [(300, how) for how in ways]
    assert batches[-1]["batch"] == 300 and batches[-1]["how"].startswith("tuned: ")
    assert {b["recall"] for b in batches[:-2]} == {found["recall"]} and all(b["qps"] > 0 for b in batches)
    assert batches[-2]["recall"] == bare["recall"]  # the index's own scores, as without_rescoring ranks them
    out = capsys.readouterr().out
    assert "one index() call" in out and f"| {built['structure']} |" in out and "not re-scored" in out
    assert "| 300 | list scan, batch folded |" in out and "tune_search(min_recall=0.5)" in out and "(chosen)" in out
