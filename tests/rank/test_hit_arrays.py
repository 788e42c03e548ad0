"""The ranker's numpy fold of HitArrays gives what its fold of Hit lists gives, reading fewer records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossscale.errors import ConfigurationError
from crossscale.index import ParentMap
from crossscale.rank import ParentRanker
from crossscale.types import ChunkRecord, Hit, HitArrays
from tests.strategies import hit, tied_hit_lists


class Records:
    """A record lookup over a dict that counts what it was asked for; ``gone`` ids are not found."""

    def __init__(self, hits: Sequence[Hit], gone: Iterable[int] = ()) -> None:
        self.table = {h.chunk_id: h.record for h in hits}
        for cid in gone:
            self.table.pop(cid, None)
        self.asked: list[int] = []

    def __call__(self, ids: Iterable[int]) -> Mapping[int, ChunkRecord]:
        ids = list(ids)
        self.asked += ids
        return {i: self.table[i] for i in ids if i in self.table}


def as_arrays(hits: Sequence[Hit], records: Records) -> HitArrays:
    parents = ParentMap()
    for name in sorted({h.parent_id for h in hits}):
        parents.add(name, [h.chunk_id for h in hits if h.parent_id == name])
    ids = np.array([h.chunk_id for h in hits], np.int64)
    return HitArrays(
        np.array([h.score for h in hits], np.float32), ids, parents.parent_codes(ids), parents.parent_id, records
    )


class Median:
    """A user's aggregator: no over_groups, so the numpy fold calls it once per parent."""

    name = "median"

    def __call__(self, scores: np.ndarray) -> float:
        return float(np.median(scores))


AGGREGATORS = st.sampled_from(["max", "sum", "mean_top3", "mean_top1", Median()])


@settings(max_examples=300, deadline=None)
@given(
    tied_hit_lists(),
    AGGREGATORS,
    st.sampled_from(["best", "fusion"]),
    st.sampled_from([None, -0.5, 0.0, 0.5]),
    st.one_of(st.none(), st.integers(1, 12)),
)
def test_array_fold_equals_hit_fold(
    hits: list[Hit], agg: object, box: str, min_score: float | None, top_k: int | None
) -> None:
    ranker = ParentRanker(agg, box=box, min_score=min_score, box_margin=0.2)  # type: ignore[arg-type]
    records = Records(hits)
    assert ranker.fold(as_arrays(hits, records), top_k) == ranker.fold(hits, top_k)


@settings(max_examples=200, deadline=None)
@given(tied_hit_lists(), AGGREGATORS, st.integers(1, 8), st.integers(1, 3))
def test_rank_with_refetch_equals(hits: list[Hit], agg: object, top_k: int, overfetch: int) -> None:
    ranker = ParentRanker(agg, overfetch=overfetch)  # type: ignore[arg-type]
    records = Records(hits)
    arrays = as_arrays(hits, records)

    def fetch_arrays(k: int) -> HitArrays:
        return HitArrays(arrays.scores[:k], arrays.chunk_ids[:k], arrays.parents[:k], arrays.parent_id, records)

    expected = ranker.rank(lambda k: hits[:k], top_k, available=len(hits))
    assert ranker.rank(fetch_arrays, top_k, available=len(hits)) == expected


def test_reads_records_of_returned_parents_only() -> None:
    hits = [hit(i, 1.0 - i / 100, f"p{i % 40}") for i in range(80)]
    records = Records(hits)
    matches = ParentRanker("max", box="fusion").fold(as_arrays(hits, records), 5)
    assert [m.parent_id for m in matches] == ["p0", "p1", "p2", "p3", "p4"]
    assert sorted(records.asked) == [0, 1, 2, 3, 4]  # the other 75 hits' records were never read


def test_a_parent_whose_record_is_gone_gives_way_to_the_next() -> None:
    """A reader's index may still hold chunks a writer deleted since: that parent is skipped, the list stays full."""
    hits = [hit(0, 0.9, "gone"), hit(1, 0.8, "a"), hit(2, 0.7, "b"), hit(3, 0.6, "c")]
    matches = ParentRanker("max").fold(as_arrays(hits, Records(hits, gone=[0])), 2)
    assert [m.parent_id for m in matches] == ["a", "b"]


def test_is_the_sequence_of_hits_a_user_ranker_expects() -> None:
    hits = [hit(5, 0.75, "a"), hit(3, 0.5, "b"), hit(4, 0.25, "a")]  # float32-exact scores
    arrays = as_arrays(hits, Records(hits, gone=[3]))
    assert arrays.fetched == 3
    assert list(arrays) == [hits[0], hits[2]]  # the hit whose record is gone is left out, as the list path does
    assert len(arrays) == 2 and arrays[1] == hits[2] and arrays[:1] == [hits[0]]
    assert "fetched=3" in repr(arrays)


def test_mismatched_arrays_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="one length"):
        HitArrays(np.zeros(3, np.float32), np.zeros(2, np.int64), np.zeros(3, np.int64), str, dict)  # type: ignore[arg-type]


def test_empty() -> None:
    arrays = as_arrays([], Records([]))
    assert ParentRanker().fold(arrays) == [] and list(arrays) == []
    assert ParentRanker().rank(lambda k: arrays, 3, available=10) == []
