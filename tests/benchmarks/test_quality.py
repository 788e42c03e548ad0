"""Smoke test of the quality benchmark (benchmarks/quality.py): small, fast, and its data deterministic."""

from __future__ import annotations

import math

import numpy as np
import pytest

quality = pytest.importorskip("benchmarks.quality")
if not (quality.SHARED / "openimages-packt").is_dir():
    pytest.skip("the quality benchmark needs ../shared/photos", allow_module_level=True)


@pytest.fixture(scope="module")
def dataset():  # type: ignore[no-untyped-def]
    return quality.build_dataset(seed=3, scenes=3)


def test_data_is_deterministic_and_consistent(dataset) -> None:  # type: ignore[no-untyped-def]
    again = quality.build_dataset(seed=3, scenes=3)
    assert [p.box for p in again.placements] == [p.box for p in dataset.placements]
    assert np.array_equal(np.asarray(again.parents["scene-01"]), np.asarray(dataset.parents["scene-01"]))
    assert len(dataset.placements) >= 6
    for p in dataset.placements:
        scene = dataset.parents[p.parent_id]
        assert 0 <= p.box.x0 < p.box.x1 <= scene.width and 0 <= p.box.y0 < p.box.y1 <= scene.height
        assert p.area_fraction == pytest.approx(p.box.area / (scene.width * scene.height))
    for a, b in zip(dataset.placements, dataset.placements[1:], strict=False):
        if a.parent_id == b.parent_id:
            assert a.box.intersection_area(b.box) == 0  # pasted objects do not overlap
    splits = {q.split for q in dataset.queries}
    assert splits == {"easy", "transformed", "hard", "absent"}
    assert all(q.parent_id is None for q in dataset.queries if q.split == "absent")
    assert all(q.parent_id in dataset.parents for q in dataset.queries if q.split != "absent")


def test_evaluate_histogram_configs(dataset) -> None:  # type: ignore[no-untyped-def]
    from crossscale.encode import ColorHistogramEncoder
    from crossscale.segment import WholeSegmenter

    cache = quality.VectorCache()
    encoders = {"hist": ColorHistogramEncoder()}
    whole = quality.evaluate(dataset, quality.Config("whole", "hist", WholeSegmenter), encoders, cache)
    assert whole.chunks_per_parent == 1.0
    configs = [c for c in quality.default_configs() if c.encoder == "hist" and "tiles" in c.name]
    tiled = quality.evaluate(dataset, configs[0], encoders, cache)
    assert tiled.chunks_per_parent > 10
    for result in (whole, tiled):
        for split in ("easy", "transformed", "hard"):
            m = result.metrics[split]
            assert 0.0 <= m["r@1"] <= m["r@5"] <= m["r@10"] <= 1.0 and 0.0 <= m["mrr"] <= 1.0
        assert math.isnan(result.metrics["absent"]["auc"]) or 0.0 <= result.metrics["absent"]["auc"] <= 1.0
    # pixel-identical regions: a histogram per chunk finds most of them
    assert tiled.metrics["easy"]["r@1"] >= 0.5
    assert "| configuration |" in quality.table([whole, tiled])
    points = quality.operating_points(tiled, thresholds=(0.0, 0.5, 0.99))
    rows = [line.split("|")[2:5] for line in points.splitlines() if line.startswith("| 0.")]
    kept = [[float(c) for c in row] for row in rows]
    assert len(kept) == 3 and all(a >= b for a, b in zip(kept[0], kept[1], strict=True))  # higher bar, fewer kept
    assert kept[0][2] == 1.0  # every absent query is answered at min_score 0
