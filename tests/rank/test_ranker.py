from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossscale.errors import ConfigurationError
from crossscale.rank import MeanTopNAggregator, ParentRanker, SumAggregator, create_aggregator
from crossscale.types import Box, Hit
from tests.strategies import boxes, hit, hit_lists


class Recorder:
    """A fetch function over a fixed, sorted hit list that records the k it was asked for."""

    def __init__(self, hits: list[Hit]) -> None:
        self.hits, self.asked = hits, []  # type: ignore[var-annotated]

    def __call__(self, k: int) -> list[Hit]:
        self.asked.append(k)
        return self.hits[:k]


@settings(max_examples=200, deadline=None)
@given(hit_lists(), st.integers(1, 15), st.sampled_from(["max", "sum", "mean_top3"]), st.integers(1, 4))
def test_returns_top_k_distinct_parents_whenever_they_exist(
    hits: list[Hit], top_k: int, agg: str, overfetch: int
) -> None:
    ranker = ParentRanker(agg, overfetch=overfetch)
    fetch = Recorder(hits)
    result = ranker.rank(fetch, top_k, available=len(hits))
    ids = [m.parent_id for m in result]
    assert len(ids) == len(set(ids)) == min(top_k, len({h.parent_id for h in hits}))
    assert [m.score for m in result] == sorted((m.score for m in result), reverse=True)
    assert all(k <= len(hits) for k in fetch.asked)


@settings(max_examples=200, deadline=None)
@given(hit_lists(), st.integers(1, 15))
def test_max_ranking_equals_brute_force(hits: list[Hit], top_k: int) -> None:
    best: dict[str, float] = {}
    for h in hits:
        best[h.parent_id] = max(best.get(h.parent_id, -np.inf), h.score)
    expected = sorted(best.values(), reverse=True)[:top_k]
    result = ParentRanker("max", overfetch=1).rank(Recorder(hits), top_k, available=len(hits))
    # ties may be broken either way at the cut; the scores, and each parent's own score, are exact
    assert [m.score for m in result] == pytest.approx(expected)
    assert all(m.score == pytest.approx(best[m.parent_id]) for m in result)
    for m in result:  # the match carries its best chunk
        best_hit = max((h for h in hits if h.parent_id == m.parent_id), key=lambda h: (h.score, -h.chunk_id))
        assert m.chunk_id == best_hit.chunk_id and m.chunk_score == best_hit.score and m.box == best_hit.box


@given(hit_lists(max_parents=4))
def test_aggregator_invariants(hits: list[Hit]) -> None:
    by_parent = ParentRanker("max").fold(hits)
    for agg in ("sum", "mean_top2"):
        for m in ParentRanker(agg).fold(hits):
            mx = next(b for b in by_parent if b.parent_id == m.parent_id)
            assert m.n_hits == mx.n_hits
            if agg.startswith("mean"):
                assert m.score <= mx.score + 1e-9  # a mean never exceeds the best chunk
            elif all(h.score >= 0 for h in hits):
                assert m.score >= mx.score - 1e-9  # a sum of non-negatives is at least the max


def test_fold_is_deterministic_on_ties() -> None:
    box = Box(0, 0, 1, 1)
    hits = [hit(2, 0.5, "b", box, "tile"), hit(1, 0.5, "a", box, "tile"), hit(3, 0.5, "a", box, "whole")]
    result = ParentRanker().fold(hits)
    assert [m.parent_id for m in result] == ["a", "b"] and result[0].chunk_id == 1


def test_overfetch_doubles_until_enough_parents() -> None:
    box = Box(0, 0, 1, 1)
    hits = [hit(i, 1.0 - i / 1000, "big" if i < 90 else f"p{i}", box, "tile") for i in range(100)]
    fetch = Recorder(hits)
    result = ParentRanker(overfetch=2).rank(fetch, 3, available=100)
    assert [m.parent_id for m in result] == ["big", "p90", "p91"]
    assert fetch.asked == [6, 12, 24, 48, 96]  # 96 chunks hold "big" and p90..p95


def test_min_score_stops_early_for_max() -> None:
    box = Box(0, 0, 1, 1)
    hits = [hit(i, 0.9 if i == 0 else 0.1, "a" if i < 50 else f"p{i}", box, "tile") for i in range(100)]
    fetch = Recorder(hits)
    result = ParentRanker(min_score=0.5, overfetch=1).rank(fetch, 3, available=100)
    assert [m.parent_id for m in result] == ["a"] and fetch.asked == [3]


def test_empty_index_and_bad_arguments() -> None:
    assert ParentRanker().rank(Recorder([]), 5, available=0) == []
    with pytest.raises(ConfigurationError):
        ParentRanker().rank(Recorder([]), 0, available=3)
    with pytest.raises(ConfigurationError):
        ParentRanker(overfetch=0)
    with pytest.raises(ConfigurationError, match="unknown aggregator"):
        ParentRanker("median")
    with pytest.raises(ConfigurationError):
        MeanTopNAggregator(0)


def test_aggregator_names() -> None:
    assert create_aggregator("mean_top5").name == "mean_top5"
    assert isinstance(create_aggregator("sum"), SumAggregator)
    custom = SumAggregator()
    assert create_aggregator(custom) is custom


@given(st.lists(st.tuples(boxes(max_side=500), st.floats(0.0, 1.0)), min_size=1, max_size=12))
def test_box_modes_stay_within_their_chunks(items: list[tuple[Box, float]]) -> None:
    items.sort(key=lambda bs: -bs[1])
    hits = [hit(i, s, "p", b, "tile") for i, (b, s) in enumerate(items)]
    best = ParentRanker(box="best").fold(hits)[0]
    fused = ParentRanker(box="fusion").fold(hits)[0]
    assert best.box == hits[0].box
    b = best.box
    near = [h.box for h in hits if h.score >= hits[0].score - 0.05 and h.box.intersection_area(b) > 0]
    assert min(n.x0 for n in near) <= fused.box.x0 and fused.box.x1 <= max(n.x1 for n in near) + 1
    assert min(n.y0 for n in near) <= fused.box.y0 and fused.box.y1 <= max(n.y1 for n in near) + 1
    assert best.score == fused.score  # boxes change, scores and ranking do not


def test_fusion_centres_on_the_agreeing_chunks() -> None:
    tiles = [Box(0, 0, 200, 200), Box(100, 0, 300, 200), Box(100, 100, 300, 300), Box(0, 100, 200, 300)]
    hits = [hit(i, 0.9, "p", b, "tile") for i, b in enumerate(tiles)] + [hit(9, 0.2, "p", Box(0, 0, 20, 20), "tile")]
    assert ParentRanker(box="fusion").fold(hits)[0].box == Box(50, 50, 250, 250)  # the low-scoring chunk is ignored


def test_bad_box_mode() -> None:
    with pytest.raises(ConfigurationError, match="box must be"):
        ParentRanker(box="median")


def test_repr_shows_every_setting() -> None:
    text = repr(ParentRanker("mean_top3", overfetch=4, min_score=0.5, box="best", box_margin=0.1))
    for part in ("mean_top3", "overfetch=4", "min_score=0.5", "box='best'", "box_margin=0.1"):
        assert part in text, (part, text)
