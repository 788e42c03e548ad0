"""The ranker's numpy fold of HitArrays gives what its fold of Hit lists gives, reading fewer records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crossscale.rank.ranker as ranker_module
from crossscale.errors import ConfigurationError
from crossscale.index import ParentMap
from crossscale.rank import ParentRanker
from crossscale.types import Box, ChunkDetails, ChunkRecord, Hit, HitArrays
from tests.strategies import chunk_records, hit, hit_rows, tied_hit_lists


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


# ---------------------------------------------------------------------- chunk details and whole batches
def mapped(records: Sequence[ChunkRecord], *, with_details: bool = True) -> ParentMap:
    """The parent map a workspace would hold of these records (with or without their details)."""
    parents = ParentMap()
    for name in sorted({r.parent_id for r in records}):
        mine = [r for r in records if r.parent_id == name]
        parents.add(name, [r.chunk_id for r in mine], ChunkDetails.of(mine) if with_details else None)
    return parents


def padded(rows: list[list[tuple[int, float]]], width: int, parents: ParentMap) -> tuple[np.ndarray, ...]:
    """The rows as one search's result: ``(scores, ids, codes)`` of shape ``(len(rows), width)``, -1 padded."""
    scores = np.full((len(rows), width), -np.inf, np.float32)
    ids = np.full((len(rows), width), -1, np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = [cid for cid, _ in row]
        scores[r, : len(row)] = [s for _, s in row]
    return scores, ids, parents.parent_codes(ids)


@settings(max_examples=300, deadline=None)
@given(
    chunk_records(),
    AGGREGATORS,
    st.sampled_from(["best", "fusion"]),
    st.sampled_from([None, -0.5, 0.0, 0.5]),
    st.integers(1, 6),
    st.integers(1, 3),
    st.data(),
)
def test_a_batch_ranks_each_query_as_rank_does(
    records: list[ChunkRecord],
    agg: object,
    box: str,
    min_score: float | None,
    top_k: int,
    overfetch: int,
    data: st.DataObject,
) -> None:
    """rank_batch, from the details alone, returns per query exactly what rank returns reading records, at its
    first depth and at the deeper ones rank asks for; and None exactly where rank would ask for more hits; also
    where it folds the rows a few at a time (FOLD_HITS)."""
    ranker = ParentRanker(agg, box=box, min_score=min_score, box_margin=0.2, overfetch=overfetch)  # type: ignore[arg-type]
    available = data.draw(st.integers(max(1, len(records)), max(1, len(records)) + 5))
    width = min(available, top_k * overfetch * 2 ** data.draw(st.integers(0, 3)))
    rows = data.draw(hit_rows(len(records), width))
    parents = mapped(records)
    scores, ids, codes = padded(rows, width, parents)
    lookup = Records([Hit(r, 0.0) for r in records])
    at_once = ranker_module.FOLD_HITS
    ranker_module.FOLD_HITS = data.draw(st.sampled_from([at_once, 1, width, 2 * width + 1]))  # rows per fold: 1, 2...
    try:
        got = ranker.rank_batch(
            scores,
            ids,
            codes,
            top_k,
            available=available,
            parent_id=parents.parent_id,
            details=parents.details,
            records=lookup,
        )
    finally:
        ranker_module.FOLD_HITS = at_once
    assert len(got) == len(rows)
    assert lookup.asked == []  # no record read
    for r in range(len(rows)):
        asked: list[int] = []

        def first(k: int, r: int = r, details: object = None, asked: list[int] = asked) -> HitArrays:
            """Query r's first k hits, as a search of k gives them."""
            asked.append(k)
            keep = codes[r, :k] >= 0
            return HitArrays(
                scores[r, :k][keep], ids[r, :k][keep], codes[r, :k][keep], parents.parent_id, lookup, details=details
            )  # type: ignore[arg-type]

        expected = ranker.rank(first, top_k, available=available)
        with_details = ranker.rank(lambda k, r=r: first(k, r, parents.details), top_k, available=available)
        assert with_details == expected
        if asked[-1] > width:
            assert got[r] is None  # rank asks for more than these hits
        elif asked[-1] == width:
            assert got[r] == expected
        # else rank settles the query with fewer hits: the query path never hands rank_batch this many


def test_a_query_whose_details_are_unknown_is_ranked_from_its_records() -> None:
    records = [ChunkRecord(i, f"p{i % 3}", Box(i, 0, i + 2, 2), "tile") for i in range(6)]
    parents = mapped(records, with_details=False)
    scores, ids, codes = padded([[(0, 0.9), (1, 0.8), (2, 0.7)]], 3, parents)
    lookup = Records([Hit(r, 0.0) for r in records])
    ranker = ParentRanker(overfetch=1)
    got = ranker.rank_batch(
        scores, ids, codes, 3, available=6, parent_id=parents.parent_id, details=parents.details, records=lookup
    )
    assert sorted(lookup.asked) == [0, 1, 2]  # the records of the three parents' best chunks
    arrays = HitArrays(scores[0], ids[0], codes[0], parents.parent_id, lookup)
    assert got == [ranker.rank(lambda k: arrays, 3, available=6)]
    assert [m.parent_id for m in got[0]] == ["p0", "p1", "p2"]  # type: ignore[union-attr]


@pytest.mark.parametrize("width", [2, 3, 5, 12])
def test_a_batch_of_a_width_rank_never_asks_for_is_refused(width: int) -> None:
    records = [ChunkRecord(i, f"p{i}", Box(0, 0, 2, 2), "tile") for i in range(20)]
    parents = mapped(records)
    scores, ids, codes = padded([[(0, 0.9), (1, 0.8)]], width, parents)
    ranker = ParentRanker(overfetch=2)  # asks for min(20, 2 * 2) = 4 hits, then 8, 16, 20
    with pytest.raises(ConfigurationError, match=f"got {width} hits per query"):
        ranker.rank_batch(
            scores, ids, codes, 2, available=20, parent_id=parents.parent_id, details=parents.details, records=dict
        )  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="three 2-D arrays of one shape"):
        ranker.rank_batch(
            scores[0],
            ids[0],
            codes[0],
            2,
            available=20,
            parent_id=parents.parent_id,
            details=parents.details,
            records=dict,
        )  # type: ignore[arg-type]
    for fine in (4, 8, 16, 20):
        scores, ids, codes = padded([[(0, 0.9), (1, 0.8)]], fine, parents)
        got = ranker.rank_batch(
            scores, ids, codes, 2, available=20, parent_id=parents.parent_id, details=parents.details, records=dict
        )  # type: ignore[arg-type]
        assert [m.parent_id for m in got[0]] == ["p0", "p1"]  # type: ignore[union-attr]


def test_details_round_trip_through_bytes() -> None:
    records = [
        ChunkRecord(0, "a", Box(1, 2, 3, 4), "detection", "cat", 0.5),
        ChunkRecord(1, "a", Box(0, 0, 9, 9), "tile"),
    ]
    back = ChunkDetails.from_bytes(ChunkDetails.of(records).to_bytes())
    assert back.boxes.tolist() == [[1, 2, 3, 4], [0, 0, 9, 9]]
    assert [back.kind(i) for i in range(2)] == ["detection", "tile"]
    assert [back.label(i) for i in range(2)] == ["cat", None]
    assert back.box(0) == Box(1, 2, 3, 4)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"D1", "shorter than their header"),
        (b"XX\x01\x00\x00\x00" + bytes(21) + b"[]", "start with"),
        (b"D1\x02\x00\x00\x00" + bytes(21) + b"[]", "need"),
        (b"D1\x01\x00\x00\x00" + bytes(16) + b"\x07" + bytes(4) + b"[]", "out of range"),
        (b"D1\x01\x00\x00\x00" + bytes(21) + b"{}", "not a list of strings"),
    ],
)
def test_malformed_details_are_refused(raw: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChunkDetails.from_bytes(raw)
