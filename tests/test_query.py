"""The query path: one batched search per doubling when parents' chunks are alike, grouped indexes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossscale.errors import CapabilityError, ConfigurationError
from crossscale.index import ChunkIndex, ParentMap
from crossscale.query import FetchDepth, _reach_depth, parent_match, search_parents, voted_matches
from crossscale.rank import ParentRanker
from crossscale.types import Box, ChunkDetails, ChunkRecord, Query, SearchParams

PARENTS, ALIKE, DIM = 30, 40, 16


class CountingIndex:
    """A ChunkIndex that records the shape of every search (and can pretend to group, badly)."""

    def __init__(self, index: ChunkIndex) -> None:
        self.index = index
        self.dim = index.dim
        self.searches: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.index)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.searches.append((len(vectors), k))
        return self.index.search(vectors, k)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add(vectors, ids)

    def remove(self, ids: Iterable[int]) -> int:
        return self.index.remove(ids)

    def ids(self) -> np.ndarray:
        return self.index.ids()


@pytest.fixture
def alike(rng: np.random.Generator) -> dict[str, Any]:
    """30 parents of 40 nearly identical chunks each: k chunks hold about k / 40 parents."""
    centres = rng.standard_normal((PARENTS, DIM)).astype(np.float32)
    x = np.repeat(centres, ALIKE, axis=0) + 0.01 * rng.standard_normal((PARENTS * ALIKE, DIM)).astype(np.float32)
    parent_of = np.repeat(np.arange(PARENTS), ALIKE)
    index = ChunkIndex(DIM, device="cpu")
    index.add(x, np.arange(len(x)))
    box = Box(0, 0, 4, 4)
    records = {i: ChunkRecord(i, f"p{parent_of[i]:02d}", box, "tile") for i in range(len(x))}
    parents = ParentMap.from_parents((f"p{p:02d}", range(p * ALIKE, (p + 1) * ALIKE)) for p in range(PARENTS))
    queries = [Query(v, None) for v in rng.standard_normal((25, DIM)).astype(np.float32)]
    return {"index": index, "records": records, "parents": parents, "queries": queries, "x": x}


def _lookup(records: dict[int, ChunkRecord]) -> Any:
    return lambda ids: {int(i): records[int(i)] for i in ids if int(i) in records}


def test_alike_chunks_grow_the_whole_batch_together(alike: dict[str, Any]) -> None:
    counting = CountingIndex(alike["index"])
    ranker = ParentRanker(box="best")
    common = {"records": _lookup(alike["records"]), "ranker": ranker}
    got = search_parents(alike["queries"], 5, index=counting, parents=alike["parents"], **common)
    # 40 chunks first (5 x overfetch 8: about one parent), then 80, 160, 320: one batched search per doubling
    assert counting.searches[0] == (25, 40)
    assert [k for _, k in counting.searches] == [40, 80, 160, 320]
    assert all(n > 1 for n, _ in counting.searches)  # never one query at a time
    assert all(len(row) == 5 for row in got)
    counting.searches.clear()
    want = search_parents(alike["queries"], 5, index=counting, **common)  # no parent map: the ranker grows each row
    assert sum(n == 1 for n, _ in counting.searches) >= 25
    for a, b in zip(want, got, strict=True):
        assert [m.parent_id for m in a] == [m.parent_id for m in b]
        np.testing.assert_allclose([m.score for m in a], [m.score for m in b], rtol=1e-6)
        assert [m.box for m in a] == [m.box for m in b]


def test_the_ranker_sees_each_depth_as_if_searched_for_it(alike: dict[str, Any]) -> None:
    """The ranker's first look holds the first search's hits, not a slice of a deeper search (ties stay put)."""
    counting = CountingIndex(alike["index"])
    seen: list[int] = []

    class Recording(ParentRanker):
        def rank(self, fetch, top_k, *, available):  # type: ignore[no-untyped-def]
            def recorded(k: int):  # type: ignore[no-untyped-def]
                hits = fetch(k)
                seen.append(len(hits))
                return hits

            return super().rank(recorded, top_k, available=available)

    search_parents(
        alike["queries"][:3],
        5,
        index=counting,
        records=_lookup(alike["records"]),
        ranker=Recording(box="best"),
        parents=alike["parents"],
    )
    assert seen[:4] == [40, 80, 160, 320] and len(counting.searches) == 4


def test_a_grouped_index_that_returns_too_few_parents_is_searched_plainly(alike: dict[str, Any]) -> None:
    class BadlyGrouped(CountingIndex):
        """Groups a window of the nearest chunks only, as Milvus Lite does."""

        def search_grouped(self, vectors: np.ndarray, groups: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
            self.searches.append((len(vectors), -1))
            return self.index.search(vectors, groups * group_size)

    grouped = BadlyGrouped(alike["index"])
    common = {"records": _lookup(alike["records"]), "ranker": ParentRanker(box="best"), "parents": alike["parents"]}
    got = search_parents(alike["queries"], 5, index=grouped, **common)
    want = search_parents(alike["queries"], 5, index=alike["index"], **common)
    assert grouped.searches[0] == (25, -1) and (25, 40) in grouped.searches
    assert [[m.parent_id for m in row] for row in got] == [[m.parent_id for m in row] for row in want]


class CodedIndex(CountingIndex):
    """An index whose scores are approximate: each is rounded to a coarse step, as SQ/PQ codes or a projection
    blur them, so that its order among near scores is arbitrary."""

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = super().search(vectors, k)
        noise = np.random.default_rng(len(self.searches)).normal(0, 0.05, scores.shape).astype(np.float32)
        return np.where(ids >= 0, np.round(scores + noise, 1), scores), ids


@pytest.mark.parametrize("with_details", [False, True], ids=["ranked-alone", "batch-fold"])
def test_approximate_scores_are_replaced_by_exact_ones(rng: np.random.Generator, with_details: bool) -> None:
    x = rng.standard_normal((400, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = ChunkIndex(DIM, device="cpu")
    index.add(x, np.arange(400) + 1000)
    records = {1000 + i: ChunkRecord(1000 + i, f"p{i // 4:03d}", Box(0, 0, 4, 4), "tile") for i in range(400)}
    parents = ParentMap.from_parents(
        (f"p{p:03d}", ids, ChunkDetails.of([records[i] for i in ids]) if with_details else None)
        for p, ids in ((p, range(1000 + 4 * p, 1004 + 4 * p)) for p in range(100))
    )
    queries = [Query(v / np.linalg.norm(v), None) for v in rng.standard_normal((12, DIM)).astype(np.float32)]
    gone = {1000 + 3, 1000 + 17}  # deleted since the index was built: no stored vector, no record

    def stored(ids: Any) -> tuple[np.ndarray, np.ndarray]:
        keep = np.asarray([i for i in ids if i not in gone], dtype=np.int64)
        return keep, x[keep - 1000].astype(np.float16)  # as a float16 store reads them back

    common = {
        "records": _lookup({k: v for k, v in records.items() if k not in gone}),
        "parents": parents,
        "details": parents.details if with_details else None,
    }
    exact = search_parents(queries, 5, index=index, ranker=ParentRanker(box="best"), **common)
    coded = CodedIndex(index)
    blurred = search_parents(queries, 5, index=coded, ranker=ParentRanker(box="best"), **common)
    rescored = search_parents(queries, 5, index=coded, ranker=ParentRanker(box="best"), exact_vectors=stored, **common)
    assert any([m.parent_id for m in a] != [m.parent_id for m in b] for a, b in zip(exact, blurred, strict=True))
    for a, b in zip(exact, rescored, strict=True):  # the same parents, order and (float16-close) scores as exact
        assert [m.parent_id for m in a] == [m.parent_id for m in b]
        np.testing.assert_allclose([m.score for m in a], [m.score for m in b], atol=2e-3)


def _with_details(alike: dict[str, Any]) -> ParentMap:
    """``alike``'s parent map, with every chunk's details (as a workspace's holds them)."""
    records = alike["records"]
    return ParentMap.from_parents(
        (name, ids, ChunkDetails.of([records[i] for i in ids]))
        for name, ids in ((f"p{p:02d}", range(p * ALIKE, (p + 1) * ALIKE)) for p in range(PARENTS))
    )


@pytest.mark.parametrize("with_details", [False, True], ids=["ranked-alone", "batch-fold"])
def test_a_deepened_query_reads_each_stored_vector_once(alike: dict[str, Any], with_details: bool) -> None:
    """Re-scoring reads a query's hits from the store once, however often the ranker deepens it (alike chunks:
    40, 80, 160, 320 hits; each search used to read all of its hits again), with the results it had."""
    index: ChunkIndex = alike["index"]
    reads: list[np.ndarray] = []
    stored = _recording_store(alike["x"], reads)

    parents = _with_details(alike) if with_details else alike["parents"]
    common = {
        "records": _lookup(alike["records"]),
        "ranker": ParentRanker(box="best"),
        "parents": parents,
        "details": parents.details if with_details else None,
    }
    for raw in alike["queries"][:6]:
        query = Query(raw.vector / np.linalg.norm(raw.vector), None)  # search_parents takes unit queries
        reads.clear()
        counting = CountingIndex(index)
        got = search_parents([query], 5, index=counting, exact_vectors=stored, **common)[0]
        want = search_parents([query], 5, index=index, **common)[0]
        assert len(counting.searches) >= 3  # deepened at least twice
        read = np.concatenate(reads)
        assert len(read) == len(np.unique(read)) <= max(k for _, k in counting.searches)
        assert [m.parent_id for m in got] == [m.parent_id for m in want]
        np.testing.assert_allclose([m.score for m in got], [m.score for m in want], atol=2e-3)


def _recording_store(x: np.ndarray, reads: list[np.ndarray]) -> Callable[[Any], tuple[np.ndarray, np.ndarray]]:
    """A stored-vector lookup over the rows of ``x`` (float16, as a store reads them back) that appends the ids of
    each call to ``reads``."""

    def stored(ids: Any) -> tuple[np.ndarray, np.ndarray]:
        keep = np.asarray(ids, dtype=np.int64)
        reads.append(keep)
        return keep, x[keep].astype(np.float16)

    return stored


def _batch_with_a_store(alike: dict[str, Any], lookups: list[np.ndarray]) -> tuple[list[Query], dict[str, Any], Any]:
    """``alike``'s queries (unit, as search_parents takes them), the search_parents arguments of its index, records
    and parent map (with details), and a stored-vector lookup (:func:`_recording_store`) that appends the ids each
    call asks for to ``lookups``."""
    stored = _recording_store(alike["x"], lookups)
    queries = [Query(q.vector / np.linalg.norm(q.vector), None) for q in alike["queries"]]
    parents = _with_details(alike)
    common = {"index": alike["index"], "records": _lookup(alike["records"]), "parents": parents}
    return queries, common, stored


def test_a_batch_fold_reads_the_stored_vectors_of_each_depth_in_one_lookup(alike: dict[str, Any]) -> None:
    """Folded together, the batch's hits are re-scored depth by depth, each depth's unread hits of all the queries
    in one lookup; the matches are those of each query ranked alone."""
    lookups: list[np.ndarray] = []
    queries, common, stored = _batch_with_a_store(alike, lookups)
    parents = common["parents"]
    ranker = ParentRanker(box="fusion")
    folds: list[int] = []
    batch = ranker.rank_batch

    def counted(*args: Any, **kwargs: Any) -> Any:
        folds.append(len(args[0]))
        return batch(*args, **kwargs)

    ranker.rank_batch = counted  # type: ignore[method-assign]
    got = search_parents(queries, 5, ranker=ranker, details=parents.details, exact_vectors=stored, **common)
    assert len(folds) == len(lookups) >= 3 and folds[0] == len(queries) > folds[-1]
    alone = search_parents(queries, 5, ranker=ParentRanker(box="fusion"), exact_vectors=stored, **common)
    assert len(lookups) > len(folds) + len(queries)  # ranked alone: a lookup per query and depth
    _assert_same_matches(got, alone, "batch fold vs alone")


def test_a_depth_too_big_for_one_lookup_is_read_in_blocks(
    alike: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A depth whose unread hits hold more than _READ_BYTES of vectors is read in several lookups, each at most that
    big, with the same matches."""
    import crossscale.query

    lookups: list[np.ndarray] = []
    queries, common, stored = _batch_with_a_store(alike, lookups)
    search = {"ranker": ParentRanker(box="fusion"), "details": common["parents"].details, "exact_vectors": stored}
    whole = search_parents(queries, 5, **common, **search)
    depths = len(lookups)
    lookups.clear()
    monkeypatch.setattr(crossscale.query, "_READ_BYTES", 4 * DIM * 100)  # 100 vectors
    got = search_parents(queries, 5, **common, **search)
    assert len(lookups) > 2 * depths
    assert max(len(ids) for ids in lookups) == 100
    _assert_same_matches(got, whole, "read in blocks")


def test_a_batch_reads_each_chunk_its_queries_hit_once_a_depth_in_id_order(
    alike: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queries that hit the same chunks (alike ones, or the same query twice) have them read once at each depth,
    and each depth's lookups ask for increasing ids, also from one lookup to the next: a store's B-tree is walked
    in order. The matches are those of each query searched alone."""
    import crossscale.query

    asked: list[np.ndarray] = []
    stored = _recording_store(alike["x"], asked)

    queries, common, _ = _batch_with_a_store(alike, [])
    queries = [*queries, *queries[:5]]  # five queries twice
    search = {"ranker": ParentRanker(box="fusion"), "details": common["parents"].details, "exact_vectors": stored}
    monkeypatch.setattr(crossscale.query, "_READ_BYTES", 4 * DIM * 150)  # a depth in a few lookups
    folds: list[int] = []
    ranker = search["ranker"]
    batch = ranker.rank_batch

    def counted(*args: Any, **kwargs: Any) -> Any:
        folds.append(len(asked))  # the lookups made before each fold: those of the depth it ranks
        return batch(*args, **kwargs)

    ranker.rank_batch = counted  # type: ignore[method-assign]
    got = search_parents(queries, 5, **common, **search)
    depths = [np.concatenate(asked[a:b]) for a, b in zip([0, *folds], folds, strict=False) if b > a]
    assert len(depths) >= 3 and sum(len(lookup) > 1 for lookup in asked) >= 3
    for read in depths:
        assert np.all(np.diff(read) > 0)  # increasing: each once, in id order
    alone = [search_parents([q], 5, **common, **{**search, "ranker": ParentRanker(box="fusion")})[0] for q in queries]
    _assert_same_matches(got, alone, "read once, in id order")
    assert got[-5:] == got[:5]


@pytest.mark.parametrize("order", ["reversed", "deduplicated", "some gone"])
def test_a_lookup_that_does_not_return_what_was_asked_in_order_scores_each_hit_by_its_id(
    alike: dict[str, Any], order: str
) -> None:
    """Re-scoring takes a query's vectors as one slice of what the lookup returned only when it returned every id
    asked, in the order asked (a workspace's store does). A plugged-in lookup may return them in another order,
    once each, or without those it no longer holds: each hit is then scored by its own vector, and a batch holding
    the same query twice (the same hits twice in one lookup) gets the matches of the one in order."""
    x = alike["x"]
    gone = set(range(0, len(x), 7))

    def in_order(ids: Any) -> tuple[np.ndarray, np.ndarray]:
        keep = np.asarray(ids, dtype=np.int64)
        if order == "some gone":
            keep = keep[~np.isin(keep, list(gone))]
        return keep, x[keep].astype(np.float16)

    def shuffled(ids: Any) -> tuple[np.ndarray, np.ndarray]:
        keep, rows = in_order(ids)
        if order == "reversed":
            return keep[::-1], rows[::-1]
        if order == "deduplicated":
            unique = np.unique(keep)[::-1]
            return unique, x[unique].astype(np.float16)
        return keep, rows  # already missing some: the ids returned are not those asked

    queries, common, _ = _batch_with_a_store(alike, [])
    queries = [*queries, *queries[:3]]  # three queries twice: their hits twice in one lookup
    parents = common["parents"]
    search = {"ranker": ParentRanker(box="fusion"), "details": parents.details}
    want = search_parents(queries, 5, exact_vectors=in_order, **common, **search)
    got = search_parents(queries, 5, exact_vectors=shuffled, **common, **search)
    _assert_same_matches(got, want, order)
    assert got[-3:] == got[:3]
    if order == "some gone":  # the hits whose vectors are gone are dropped, not scored as someone else's
        assert all(m.chunk_id not in gone for row in got for m in row)
    else:
        alone = [search_parents([q], 5, exact_vectors=in_order, **common, **search)[0] for q in queries]
        _assert_same_matches(got, alone, f"{order}, ranked alone")


def test_queries_a_batch_ranker_leaves_are_ranked_alone(alike: dict[str, Any]) -> None:
    """A batch ranker may leave a query (None) at every depth: once its searches reach no deeper, rank() ranks it
    from its first hits, and the matches are the same."""

    class Leaves(ParentRanker):
        def rank_batch(self, scores: np.ndarray, *args: Any, **kwargs: Any) -> list[Any]:
            return [None] * len(scores)

    parents = _with_details(alike)
    common = {"index": alike["index"], "records": _lookup(alike["records"]), "parents": parents}
    want = search_parents(alike["queries"], 5, ranker=ParentRanker(), details=parents.details, **common)
    assert search_parents(alike["queries"], 5, ranker=Leaves(), details=parents.details, **common) == want


class VerifiesSome:
    """A verifier that confirms the best match of the queries whose index is in ``confirm``."""

    name = "verifies-some"

    def __init__(self, confirm: set[int], queries: list[Query]) -> None:
        self.confirm = {id(queries[i]) for i in confirm}

    def extract(self, image: object) -> bytes:
        return b""

    def verify(self, query: Query, matches: Any, features: Any) -> list[Any]:
        if id(query) not in self.confirm or not matches:
            return list(matches)
        best = dataclasses.replace(matches[0], inliers=40, score=matches[0].score + 1.0)
        return [best, *matches[1:]]


class CountingRefiner:
    """Records the parents it is asked to refine; re-scores them in reverse order."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def refine(self, query: Query, matches: Any, load: Any) -> list[Any]:
        self.calls.append([m.parent_id for m in matches])
        return [dataclasses.replace(m, score=0.5 - 0.01 * i) for i, m in enumerate(reversed(matches))]


@pytest.mark.parametrize("refine_verified", [True, False])
def test_queries_settled_by_the_verifier_skip_the_refiner_unless_asked(
    alike: dict[str, Any], refine_verified: bool
) -> None:
    queries = alike["queries"][:6]
    refiner = CountingRefiner()
    results = search_parents(
        queries,
        4,
        index=alike["index"],
        records=_lookup(alike["records"]),
        parents=alike["parents"],
        ranker=ParentRanker(),
        verifier=VerifiesSome({1, 4}, queries),
        load_features=lambda parent_id: b"",
        refiner=refiner,
        load_parent=lambda parent_id: None,
        refine_verified=refine_verified,
    )
    assert len(refiner.calls) == (6 if refine_verified else 4)  # queries 1 and 4 have a verified best match
    for i, matches in enumerate(results):
        assert len(matches) == 4
        if i in (1, 4):  # the verified match first either way; the rest refined only when asked
            assert matches[0].inliers == 40 and all(m.inliers is None for m in matches[1:])
            assert all(m.score == 0.5 - 0.01 * j for j, m in enumerate(matches[1:])) is refine_verified
        else:  # refined: the refiner's order
            assert [m.score for m in matches] == [0.5 - 0.01 * j for j in range(4)]


def test_with_details_the_batch_is_ranked_at_once_and_no_record_is_read(alike: dict[str, Any]) -> None:
    """With details, the whole batch is folded together, depth by depth: the queries whose first hits hold enough
    parents in one rank_batch, those that need more in the next, twice as deep; none is ranked alone. The matches
    are those the records give, and no record is read."""
    records = alike["records"]
    parents = _with_details(alike)
    ranker = ParentRanker()
    calls: list[tuple[int, int, int]] = []  # per rank_batch: queries, hits each, queries settled
    batch = ranker.rank_batch

    def counted(*args: Any, **kwargs: Any) -> Any:
        out = batch(*args, **kwargs)
        calls.append((*args[0].shape, sum(row is not None for row in out)))
        return out

    def alone(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a query was ranked alone")

    def no_records(ids: Iterable[int]) -> dict[int, ChunkRecord]:
        raise AssertionError("a record was read")

    n = len(alike["queries"])
    for top_k in (1, 5):
        common = {"index": alike["index"], "ranker": ranker, "parents": parents}
        want = search_parents(alike["queries"], top_k, records=_lookup(records), **common)
        calls.clear()
        ranker.rank_batch, ranker.rank = counted, alone  # type: ignore[method-assign]
        try:
            got = search_parents(alike["queries"], top_k, records=no_records, details=parents.details, **common)
        finally:
            del ranker.rank_batch, ranker.rank
        assert got == want
        assert sum(settled for _, _, settled in calls) == n
        assert calls[0][:2] == (n, 8 * top_k)
        if top_k == 1:
            assert len(calls) == 1  # one parent: the first 8 hits always hold it
        else:  # five alike parents: most queries need deeper hits, folded together at 80, 160, 320
            assert [width for _, width, _ in calls] == [40, 80, 160, 320][: len(calls)] and len(calls) > 2
            assert all(
                queries == previous - settled
                for (queries, _, _), (previous, _, settled) in zip(calls[1:], calls[:-1], strict=True)
            )


def test_a_batch_is_first_ranked_from_its_search_s_own_arrays(alike: dict[str, Any]) -> None:
    """The batch's first rank_batch reads the index search's arrays themselves, as read-only views (no copy of the
    batch's hits), and ranks as each query ranked alone from its records."""
    parents = _with_details(alike)
    returned: list[tuple[np.ndarray, np.ndarray]] = []
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    class Kept(CountingIndex):
        def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            returned.append(super().search(vectors, k))
            return returned[-1]

    class Recording(ParentRanker):
        def rank_batch(self, scores: Any, chunk_ids: Any, codes: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append((scores, chunk_ids, codes))
            return super().rank_batch(scores, chunk_ids, codes, *args, **kwargs)

    lookup = _lookup(alike["records"])
    common = {"parents": parents, "records": lookup}
    got = search_parents(
        alike["queries"], 5, index=Kept(alike["index"]), ranker=Recording(), details=parents.details, **common
    )
    assert got == search_parents(alike["queries"], 5, index=alike["index"], ranker=ParentRanker(), **common)
    scores, ids, codes = seen[0]
    assert scores.shape == ids.shape == codes.shape == (len(alike["queries"]), 40)
    assert np.shares_memory(scores, returned[0][0]) and np.shares_memory(ids, returned[0][1])
    assert not (scores.flags.writeable or ids.flags.writeable or codes.flags.writeable)
    assert len(seen) > 1 and not np.shares_memory(seen[1][1], returned[0][1])  # deeper rows: their own search's


def test_the_queries_own_rows_are_searched_as_they_are(alike: dict[str, Any]) -> None:
    """``vectors=``: the array the queries' vectors are rows of is searched itself (no stacked copy), with the same
    result; one of another shape or type is refused, named."""
    rows = np.stack([q.vector for q in alike["queries"]])
    queries = [Query(v, None) for v in rows]
    searched: list[np.ndarray] = []

    class Kept(CountingIndex):
        def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            searched.append(vectors)
            return super().search(vectors, k)

    common = {"ranker": ParentRanker(), "records": _lookup(alike["records"])}
    got = search_parents(queries, 5, index=Kept(alike["index"]), vectors=rows, **common)
    assert searched[0] is rows
    assert got == search_parents(queries, 5, index=alike["index"], **common)
    for bad in (rows[:-1], rows.astype(np.float64), rows.ravel(), rows.tolist()):
        with pytest.raises(ConfigurationError, match=r"vectors must be a float32 array of one row per query \(25\)"):
            search_parents(queries, 5, index=alike["index"], vectors=bad, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"vectors must be 2-D"):
        search_parents(queries, 5, index=alike["index"], vectors=rows[:, :, None], **common)


def test_a_batch_ranker_that_loses_rows_is_named(alike: dict[str, Any]) -> None:
    class Lossy(ParentRanker):
        def rank_batch(self, *args: Any, **kwargs: Any) -> list[Any]:
            return []

    parents = ParentMap.from_parents((f"p{p:02d}", range(p * ALIKE, (p + 1) * ALIKE)) for p in range(PARENTS))
    with pytest.raises(ConfigurationError, match=r"Lossy.rank_batch returned 0 rows for 25 queries"):
        search_parents(
            alike["queries"],
            3,
            index=alike["index"],
            records=_lookup(alike["records"]),
            ranker=Lossy(),
            parents=parents,
            details=parents.details,
        )


def _tied_parents(rng: np.random.Generator, factory: str) -> dict[str, Any]:
    """Like ``alike`` (30 parents of 40 alike chunks), but parent 1 is an exact copy of parent 0, whose chunks are
    all one vector, and parent 3 of parent 2 (equal scores: ties), in a ChunkIndex built with ``factory``, with
    stored float16 vectors."""
    centres = rng.standard_normal((PARENTS, DIM)).astype(np.float32)
    x = np.repeat(centres, ALIKE, axis=0) + 0.05 * rng.standard_normal((PARENTS * ALIKE, DIM)).astype(np.float32)
    x[:ALIKE] = x[0]
    x[ALIKE : 2 * ALIKE] = x[:ALIKE]
    x[3 * ALIKE : 4 * ALIKE] = x[2 * ALIKE : 3 * ALIKE]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = ChunkIndex(DIM, factory, device="cpu")
    index.add(x, np.arange(len(x)))
    records = {
        i: ChunkRecord(i, f"p{i // ALIKE:02d}", Box(i % 7, i % 5, i % 7 + 4 + i % 3, i % 5 + 4), "tile")
        for i in range(len(x))
    }
    parents = ParentMap.from_parents(
        (name, ids, ChunkDetails.of([records[i] for i in ids]))
        for name, ids in ((f"p{p:02d}", range(p * ALIKE, (p + 1) * ALIKE)) for p in range(PARENTS))
    )
    queries = [
        Query(v / np.linalg.norm(v), None) for v in x[rng.choice(len(x), 12)] + 0.02 * rng.standard_normal((12, DIM))
    ]
    queries += [Query(x[5], None), Query(x[2 * ALIKE + 7], None)]  # exactly a duplicated chunk: tied best hits

    def stored(ids: Any) -> tuple[np.ndarray, np.ndarray]:
        keep = np.asarray(list(ids), dtype=np.int64)
        return keep, x[keep].astype(np.float16)

    return {"index": index, "records": records, "parents": parents, "queries": queries, "stored": stored}


def _assert_same_matches(got: list[list[Any]], want: list[list[Any]], case: object) -> None:
    """Equal matches; scores to float32 rounding: faiss' SQ scan scores a batch of one query a ulp apart from a
    bigger batch (a query the ranker deepens alone is searched in a batch of one), and a batch that ChunkIndex scans
    list by list is scored by matrix products. Absolutely too: a "sum" adds dozens of such cosines, some negative."""
    assert len(got) == len(want), case
    for a, b in zip(got, want, strict=True):
        assert [dataclasses.replace(m, score=0.0, chunk_score=0.0) for m in a] == [
            dataclasses.replace(m, score=0.0, chunk_score=0.0) for m in b
        ], case
        np.testing.assert_allclose([m.score for m in a], [m.score for m in b], rtol=1e-6, atol=1e-5, err_msg=str(case))
        np.testing.assert_allclose([m.chunk_score for m in a], [m.chunk_score for m in b], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "IVF4,SQ8"])
@pytest.mark.parametrize("aggregator", ["max", "sum", "mean_top3"])
def test_a_deeper_first_search_changes_no_result(rng: np.random.Generator, factory: str, aggregator: str) -> None:
    """Whatever FetchDepth makes the first search (1-16x deeper), every match is what the plain doubling gives:
    ties (duplicated parents) included, with the batch fold (details) and without, re-scored exactly or not."""
    data = _tied_parents(rng, factory)
    index: ChunkIndex = data["index"]
    assert index.prefix_stable
    if factory.startswith("IVF"):
        index.set_search_params("nprobe=2")  # an approximate search: some lists are not scanned
    for top_k, min_score in ((1, None), (5, None), (3, 0.5), (12, None)):
        ranker = ParentRanker(aggregator, box="fusion", min_score=min_score)
        first = top_k * ranker.overfetch
        for with_details, exact in ((True, False), (False, False), (True, True)):
            common: dict[str, Any] = {
                "index": index,
                "records": _lookup(data["records"]),
                "ranker": ranker,
                "parents": data["parents"],
                "details": data["parents"].details if with_details else None,
                "exact_vectors": data["stored"] if exact else None,
            }
            want = search_parents(data["queries"], top_k, **common)
            for factor in (2, 4, 16):
                depth = FetchDepth()
                depth.record([first * factor], first)
                assert depth.factor == factor
                counting = CountingIndex(index)
                got = search_parents(data["queries"], top_k, **{**common, "index": counting}, fetch_depth=depth)
                assert counting.searches[0] == (len(data["queries"]), min(len(index), first * factor))
                _assert_same_matches(got, want, (factory, aggregator, top_k, with_details, exact, factor))


@pytest.mark.parametrize("factory", ["IVF4,Flat", "IVF4,SQ8"])
def test_a_batch_scanned_list_by_list_finds_the_same_parents(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, factory: str
) -> None:
    """The query path over an index that scans its batches list by list (forced here: these lists are too small
    to pay) gives the matches faiss' own search gives, re-scored or not, with FetchDepth or not."""
    from crossscale.index import _list_scan

    data = _tied_parents(rng, factory)
    index: ChunkIndex = data["index"]
    index.set_search_params("nprobe=2")
    scanned: list[bool] = []
    real = _list_scan.ListScan.search

    def spy(self: Any, q: np.ndarray, k: int, **settings: Any) -> Any:
        found = real(self, q, k, **settings)
        scanned.append(found is not None)
        return found

    monkeypatch.setattr(_list_scan.ListScan, "search", spy)
    for exact, learned in ((False, False), (True, False), (False, True)):
        common: dict[str, Any] = {
            "index": index,
            "records": _lookup(data["records"]),
            "ranker": ParentRanker("max", box="fusion"),
            "parents": data["parents"],
            "details": data["parents"].details,
            "exact_vectors": data["stored"] if exact else None,
        }
        depth = FetchDepth() if learned else None
        monkeypatch.setattr(_list_scan, "pays", lambda *args: False)
        want = search_parents(data["queries"], 5, **common, fetch_depth=depth)
        monkeypatch.setattr(_list_scan, "pays", lambda *args: True)
        scanned.clear()
        got = search_parents(data["queries"], 5, **common, fetch_depth=depth)
        assert scanned and scanned[0]  # the batch's first search went list by list
        _assert_same_matches(got, want, (factory, exact, learned))


def test_fetch_depth_learns_to_search_alike_chunks_once(alike: dict[str, Any]) -> None:
    """Alike chunks take four searches at first (40, 80, 160, 320 chunks); once learned, one of 320."""
    depth = FetchDepth()
    counting = CountingIndex(alike["index"])
    common = {"records": _lookup(alike["records"]), "ranker": ParentRanker(box="best"), "parents": alike["parents"]}
    want = search_parents(alike["queries"], 5, index=counting, fetch_depth=depth, **common)
    assert [k for _, k in counting.searches] == [40, 80, 160, 320]
    assert depth.factor in (4, 8)  # 160 or 320 chunks held 5 parents for 90% of the queries
    counting.searches.clear()
    depth.record([320] * 256, 40)  # a window of queries that needed 320
    got = search_parents(alike["queries"], 5, index=counting, fetch_depth=depth, **common)
    assert [k for _, k in counting.searches] == [320]
    assert got == want


def test_fetch_depth_learns_from_the_sampled_rows_only(alike: dict[str, Any], rng: np.random.Generator) -> None:
    """The batch's first rows are its sample; the rows searched again are its deepest, and recording them too (as
    it did) made the next batches search 4x deeper than their rows needed. Here parents 0-4 share one cluster, so
    the first 8 queries (at its centre) find five parents in their first 40 chunks; the other 17 need ~200."""
    x = alike["x"].copy()
    shared = rng.standard_normal(DIM).astype(np.float32)
    x[: 5 * ALIKE] = shared + 0.01 * rng.standard_normal((5 * ALIKE, DIM)).astype(np.float32)
    index = ChunkIndex(DIM, device="cpu")
    index.add(x, np.arange(len(x)))
    queries = [Query(shared + 0.001 * rng.standard_normal(DIM).astype(np.float32), None) for _ in range(8)]
    queries += alike["queries"][:17]
    depth = FetchDepth()
    common = {"records": _lookup(alike["records"]), "ranker": ParentRanker(box="best"), "parents": alike["parents"]}
    counting = CountingIndex(index)
    search_parents(queries, 5, index=counting, fetch_depth=depth, **common)
    assert [k for _, k in counting.searches] == [40, 80, 160, 320]  # the other 17 went deeper
    assert list(depth._rounds) == [0] * 8  # the 8 sampled rows: 40 chunks were enough
    assert depth.factor == 1


def test_fetch_depth_remembers_a_window_and_a_quantile() -> None:
    depth = FetchDepth(window=10, quantile=0.5, max_factor=8)
    assert depth.factor == 1  # nothing learned: the ranker's own first depth
    depth.record([80, 81, 0, 500], 80)  # 1x, 2x (81 needs one doubling), never (not recorded), 8x (640 >= 500)
    assert list(depth._rounds) == [0, 1, 3]
    assert depth.factor == 2
    depth.record([80 * 64] * 10, 80)  # the window forgets the oldest; capped at max_factor
    assert depth.factor == 8
    depth.reset()
    assert depth.factor == 1
    for bad in ({"window": 0}, {"quantile": 0}, {"quantile": 1.5}, {"quantile": "high"}, {"max_factor": -1}):
        with pytest.raises(ConfigurationError):
            FetchDepth(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("width", [1, 6, 40])
def test_reach_depth_is_where_the_kth_parent_first_appears(rng: np.random.Generator, width: int) -> None:
    codes = rng.integers(-1, 6, (50, width))
    for top_k in (1, 3, 6):
        got = _reach_depth(codes, top_k)
        for row, need in zip(codes, got, strict=True):
            seen: list[int] = []
            want = 0
            for at, code in enumerate(row.tolist()):
                if code >= 0 and code not in seen:
                    seen.append(code)
                    if len(seen) == top_k:
                        want = at + 1
                        break
            assert need == want


class VerifiesParents:
    """A verifier that confirms the matches of the parents in ``confirm``, whatever the query."""

    name = "verifies-parents"

    def __init__(self, confirm: set[str]) -> None:
        self.confirm = confirm
        self.checked: list[str] = []

    def extract(self, image: object) -> bytes:
        return b""

    def verify(self, query: Query, matches: Any, features: Any) -> list[Any]:
        self.checked += [m.parent_id for m in matches]
        out = [dataclasses.replace(m, inliers=30, score=1.5) if m.parent_id in self.confirm else m for m in matches]
        return sorted(out, key=lambda m: (-m.score, m.parent_id))


def _exact(x: np.ndarray) -> Any:
    return lambda ids: (np.asarray(ids, np.int64), x[np.asarray(ids, np.int64)])


def test_candidates_join_only_when_verified_and_never_beyond_top_k(alike: dict[str, Any]) -> None:
    query = alike["queries"][0]
    ranker = ParentRanker(box="best")
    common = {"index": alike["index"], "records": _lookup(alike["records"]), "parents": alike["parents"]}
    plain = search_parents([query], 3, ranker=ranker, **common)[0]
    ranked = [m.parent_id for m in plain]
    far = next(f"p{p:02d}" for p in range(PARENTS) if f"p{p:02d}" not in ranked)
    other = next(f"p{p:02d}" for p in range(PARENTS) if f"p{p:02d}" not in [*ranked, far])
    seen: list[set[str]] = []

    def candidates(q: Query, already: Any) -> list[Any]:
        seen.append(set(already))
        p = int(far[1:]), int(other[1:])
        return [
            match
            for i in p
            if (
                match := parent_match(
                    q.vector,
                    range(i * ALIKE, (i + 1) * ALIKE),
                    vectors=_exact(alike["x"]),
                    records=_lookup(alike["records"]),
                    ranker=ranker,
                )
            )
            is not None
        ]

    verifier = VerifiesParents({far})
    got = search_parents(
        [query], 3, ranker=ranker, verifier=verifier, load_features=lambda p: b"", candidates=candidates, **common
    )[0]
    assert seen == [set(ranked)]  # told what the vector search returned
    assert [m.parent_id for m in got] == [far, *ranked[:2]]  # verified: first; the unverified candidate: dropped
    assert got[0].inliers == 30 and len(got) == 3
    assert verifier.checked == [*ranked, far, other]
    with pytest.raises(ConfigurationError, match="candidates need a verifier"):
        search_parents([query], 3, ranker=ranker, candidates=candidates, **common)


def test_parent_match_is_what_the_ranker_makes_of_all_the_parents_chunks(alike: dict[str, Any]) -> None:
    query = alike["queries"][3]
    ranker = ParentRanker(box="fusion")
    [[best]] = search_parents([query], 1, index=alike["index"], records=_lookup(alike["records"]), ranker=ranker)
    p = int(best.parent_id[1:])
    again = parent_match(
        query.vector,
        range(p * ALIKE, (p + 1) * ALIKE),
        vectors=_exact(alike["x"]),
        records=_lookup(alike["records"]),
        ranker=ranker,
    )
    assert again is not None and again.parent_id == best.parent_id and again.chunk_id == best.chunk_id
    assert again.score == pytest.approx(best.score, rel=1e-5) and again.box == best.box
    gone = parent_match(
        query.vector,
        [10**6],
        vectors=lambda ids: (np.zeros(0, np.int64), np.zeros((0, DIM))),
        records=_lookup({}),
        ranker=ranker,
    )
    assert gone is None


def test_voted_matches_keep_the_best_voted_parents_not_yet_ranked(alike: dict[str, Any]) -> None:
    query = alike["queries"][5]
    votes = [("p01", 9), ("p02", 7), ("p03", 5), ("p04", 2), ("p05", 8)]
    common = {"vectors": _exact(alike["x"]), "records": _lookup(alike["records"]), "ranker": ParentRanker()}

    def chunk_ids(pid: str) -> range | None:
        return None if pid == "p03" else range(int(pid[1:]) * ALIKE, (int(pid[1:]) + 1) * ALIKE)

    got = voted_matches(query, votes, {"p02"}, chunk_ids=chunk_ids, top_n=3, min_votes=3, **common)
    assert [m.parent_id for m in got] == ["p01", "p05"]  # p02 ranked already, p03 gone, p04 too few votes


class TunedIndex(CountingIndex):
    """A CountingIndex whose search takes per-call settings, as ChunkIndex's does, and records them."""

    def __init__(self, index: ChunkIndex) -> None:
        super().__init__(index)
        self.given: list[SearchParams | None] = []

    def search(  # type: ignore[override]
        self, vectors: np.ndarray, k: int, *, params: SearchParams | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        self.searches.append((len(vectors), k))
        self.given.append(params)
        return self.index.search(vectors, k, params=params)


@pytest.mark.parametrize("with_parents", [True, False])
def test_params_reach_every_search_of_the_call(alike: dict[str, Any], with_parents: bool) -> None:
    """The batch's first search, its doublings (with a parent map) and each query's own deeper searches (without)
    all get the call's settings."""
    tuned = TunedIndex(alike["index"])
    params = SearchParams(nprobe=3)
    common = {"records": _lookup(alike["records"]), "ranker": ParentRanker(box="best")}
    parents = {"parents": alike["parents"]} if with_parents else {}
    search_parents(alike["queries"], 5, index=tuned, **common, **parents, params=params)
    assert len(tuned.given) >= 4 and all(p is params for p in tuned.given)
    assert any(n == 1 for n, _ in tuned.searches) is not with_parents  # both kinds of deeper search were checked
    tuned.given.clear()
    search_parents(alike["queries"], 5, index=tuned, **common, **parents)
    assert tuned.given and all(p is None for p in tuned.given)


@pytest.mark.parametrize("factory", ["IVF4,Flat", "IVF4,SQ8"])
def test_params_give_what_the_index_set_to_them_gives(rng: np.random.Generator, factory: str) -> None:
    """nprobe for one call: the matches of the index set to it, re-scored or not; the index keeps its own."""
    data = _tied_parents(rng, factory)
    index: ChunkIndex = data["index"]
    index.set_search_params("nprobe=4")
    for exact in (False, True):
        common: dict[str, Any] = {
            "index": index,
            "records": _lookup(data["records"]),
            "ranker": ParentRanker(box="fusion"),
            "parents": data["parents"],
            "details": data["parents"].details,
            "exact_vectors": data["stored"] if exact else None,
        }
        every = search_parents(data["queries"], 5, **common)
        got = search_parents(data["queries"], 5, **common, params=SearchParams(nprobe=1))
        assert search_parents(data["queries"], 5, **common) == every  # nprobe 4 still
        index.set_search_params("nprobe=1")
        assert search_parents(data["queries"], 5, **common) == got
        index.set_search_params("nprobe=4")
        assert got != every  # one list of four misses some parents


def test_params_an_index_cannot_take_are_refused(alike: dict[str, Any]) -> None:
    common = {"records": _lookup(alike["records"]), "ranker": ParentRanker()}
    plain = CountingIndex(alike["index"])  # its search has no params
    with pytest.raises(CapabilityError, match="CountingIndex does not take per-call search parameters"):
        search_parents(alike["queries"], 5, index=plain, **common, params=SearchParams(nprobe=2))
    assert plain.searches == []  # refused before any search
    with pytest.raises(ConfigurationError, match=r"params must be a crossscale\.types\.SearchParams or None, got dict"):
        search_parents(alike["queries"], 5, index=alike["index"], **common, params={"nprobe": 2})  # type: ignore[arg-type]


@pytest.mark.parametrize("with_details", [False, True], ids=["ranked-alone", "batch-fold"])
@pytest.mark.parametrize("per_parent", [1, 3])
def test_rescoring_each_parents_first_hits_reads_those_only(
    alike: dict[str, Any], with_details: bool, per_parent: int
) -> None:
    """With rescore_per_parent, only each parent's first hits in a search are read (a query's 160-320 hits hold at
    most 30 parents), each match is its parent's best scored hit, scored exactly, and the parents are those that
    re-scoring every hit ranks (alike chunks: a parent's first hit is its best, give or take float16)."""
    index: ChunkIndex = alike["index"]
    x = alike["x"]
    reads: list[np.ndarray] = []
    stored = _recording_store(x, reads)

    parents = _with_details(alike) if with_details else alike["parents"]
    common = {
        "index": index,
        "records": _lookup(alike["records"]),
        "ranker": ParentRanker(box="best"),
        "parents": parents,
        "details": parents.details if with_details else None,
    }
    queries = [Query(q.vector / np.linalg.norm(q.vector), None) for q in alike["queries"][:8]]
    every = search_parents(queries, 5, exact_vectors=stored, **common)
    read_all = sum(map(len, reads))
    reads.clear()
    got = search_parents(queries, 5, exact_vectors=stored, rescore_per_parent=per_parent, **common)
    assert sum(map(len, reads)) <= len(queries) * PARENTS * per_parent < read_all
    _, order = index.search(np.stack([q.vector for q in queries]), len(x))
    for query, row, hits in zip(queries, got, order, strict=True):
        codes = parents.parent_codes(hits[None])[0]
        for match in row:
            mine = hits[codes == parents.parent_codes(np.array([[match.chunk_id]]))[0, 0]][:per_parent]
            assert match.chunk_id in mine  # its parent's best of the hits scored
            stored_row = x[match.chunk_id].astype(np.float16).astype(np.float32)
            exact = float(stored_row @ query.vector / np.linalg.norm(stored_row))
            assert match.score == pytest.approx(exact, abs=1e-6)
    for a, b in zip(every, got, strict=True):
        assert [m.parent_id for m in a] == [m.parent_id for m in b]


def test_hits_past_their_parents_first_keep_the_index_scores_capped_below_the_scored_ones(
    rng: np.random.Generator,
) -> None:
    """An index whose scores are far off (rounded to 0.1, noisy): with one hit per parent re-scored, every match's
    score is still its chunk's exact cosine (a later hit's index score, however high, is capped at its parent's
    scored one); the other hits still count: a "sum" adds them."""
    x = rng.standard_normal((400, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = ChunkIndex(DIM, device="cpu")
    index.add(x, np.arange(400))
    records = {i: ChunkRecord(i, f"p{i // 4:03d}", Box(0, 0, 4, 4), "tile") for i in range(400)}
    parents = ParentMap.from_parents((f"p{p:03d}", range(4 * p, 4 * p + 4)) for p in range(100))
    queries = [Query(v / np.linalg.norm(v), None) for v in rng.standard_normal((12, DIM)).astype(np.float32)]

    def stored(ids: Any) -> tuple[np.ndarray, np.ndarray]:
        keep = np.asarray(ids, dtype=np.int64)
        return keep, x[keep]

    common = {"records": _lookup(records), "parents": parents, "exact_vectors": stored, "rescore_per_parent": 1}
    got = search_parents(queries, 5, index=CodedIndex(index), ranker=ParentRanker(box="best"), **common)
    for query, row in zip(queries, got, strict=True):
        assert len(row) == 5
        for match in row:
            assert match.score == pytest.approx(float(x[match.chunk_id] @ query.vector), abs=1e-6)
    summed = search_parents(queries, 5, index=CodedIndex(index), ranker=ParentRanker("sum", box="best"), **common)
    best = search_parents(queries, 5, index=CodedIndex(index), ranker=ParentRanker(box="best"), **common)
    assert any(s.score > b.score + 0.05 for a, c in zip(summed, best, strict=True) for s, b in zip(a, c, strict=True))


def test_rescore_per_parent_needs_the_stored_vectors_and_the_parents(alike: dict[str, Any]) -> None:
    common = {"index": alike["index"], "records": _lookup(alike["records"]), "ranker": ParentRanker()}
    queries = alike["queries"][:2]

    def stored(ids: Any) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(ids), alike["x"][np.asarray(ids)]

    with pytest.raises(ConfigurationError, match="rescore_per_parent needs exact_vectors"):
        search_parents(queries, 5, parents=alike["parents"], rescore_per_parent=2, **common)
    with pytest.raises(ConfigurationError, match="rescore_per_parent needs exact_vectors"):
        search_parents(queries, 5, exact_vectors=stored, rescore_per_parent=2, **common)
    with pytest.raises(ConfigurationError, match="rescore_per_parent must be a positive int"):
        search_parents(queries, 5, parents=alike["parents"], exact_vectors=stored, rescore_per_parent=0, **common)


@given(st.lists(st.lists(st.integers(-1, 5), min_size=6, max_size=6), min_size=1, max_size=6), st.integers(0, 2**31))
def test_parent_runs_agree_with_counting_by_hand(rows: list[list[int]], seed: int) -> None:
    """Each hit's place among its parent's hits in its row, and the lowest value over them (NaN left out), as a
    plain loop finds them."""
    from crossscale.query import _ParentRuns

    codes = np.asarray(rows, dtype=np.int64)
    values = np.random.default_rng(seed).random(codes.shape).astype(np.float32)
    values[values < 0.3] = np.nan
    runs = _ParentRuns(codes)
    places, floors = runs.places(), runs.floor(values)
    for r, row in enumerate(rows):
        for j, code in enumerate(row):
            assert places[r, j] == row[:j].count(code)
            mine = [v for c, v in zip(row, values[r], strict=True) if c == code and not np.isnan(v)]
            assert (np.isnan(floors[r, j]) and not mine) or floors[r, j] == min(mine)
