"""measure_search and the exhaustive search it compares with: exact parents by their best chunk, parent recall."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import crossscale.measure as measure
from crossscale import CrossScaleSearch, ParentRanker, SearchMeasurement, SearchParams
from crossscale.errors import CapabilityError, ConfigurationError, VectorError
from crossscale.measure import exact_parents, parent_recall
from crossscale.query import embed_queries


class _Codes:
    """A ChunkParents over an array: chunk id ``i`` belongs to parent code ``of[i]`` (``-1``: none)."""

    def __init__(self, of: np.ndarray) -> None:
        self.of = of

    def parent_codes(self, chunk_ids: np.ndarray) -> np.ndarray:
        return self.of[np.asarray(chunk_ids, dtype=np.int64)]

    def parent_id(self, code: int) -> str:
        return f"p{code}"


def _brute(q: np.ndarray, x: np.ndarray, of: np.ndarray, top_k: int) -> list[list[int]]:
    """Each query's top_k parent codes by best cosine, best first, equal scores by code: one parent at a time."""
    out = []
    for row in q:
        best: dict[int, float] = {}
        for vector, code in zip(x, of, strict=True):
            if code >= 0:
                score = float(np.float32(vector @ row) / np.float32(np.linalg.norm(vector)))
                best[int(code)] = max(best.get(int(code), -np.inf), score)
        out.append([c for c, _ in sorted(best.items(), key=lambda t: (-t[1], t[0]))[:top_k]])
    return out


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    parents=st.integers(1, 40),
    queries=st.integers(1, 12),
    top_k=st.integers(1, 15),
    batch=st.integers(1, 120),
    runs=st.booleans(),
    group=st.integers(1, 5),
    hint=st.integers(0, 50),
)
def test_exact_parents_are_the_best_chunks_parents(
    seed: int, n: int, parents: int, queries: int, top_k: int, batch: int, runs: bool, group: int, hint: int
) -> None:
    """Against a parent-by-parent count: batches of any size (a parent split between them), ids in runs per
    parent (as a store assigns them) or not, vectors of no parent, queries in groups (a small memory budget),
    fewer parents than asked, a parent count that is too low (codes past it) or too high."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32) * rng.uniform(0.5, 2, (n, 1)).astype(np.float32)
    of = np.sort(rng.integers(0, parents, n)) if runs else rng.integers(0, parents, n)
    of[rng.random(n) < 0.1] = -1  # deleted meanwhile
    q = rng.standard_normal((queries, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    def stored() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, n, batch):
            yield np.arange(start, min(n, start + batch)), x[start : start + batch]

    budget = measure.BEST_BYTES
    measure.BEST_BYTES = 4 * max(1, hint) * group  # `group` queries at a time
    try:
        got = exact_parents(q, top_k, stored, _Codes(of), parent_count=hint)
    finally:
        measure.BEST_BYTES = budget
    want = _brute(q, x, of, top_k)
    assert got.shape == (queries, top_k)
    for row, expected in zip(got, want, strict=True):
        assert [int(c) for c in row if c >= 0] == expected  # distinct random scores: one right order
        assert (row[len(expected) :] == -1).all()


def test_equal_best_scores_are_ordered_by_parent() -> None:
    x = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    of = np.array([2, 0, 1, 3])

    def stored() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield np.arange(4), x

    got = exact_parents(np.array([[1, 0]], dtype=np.float32), 4, stored, _Codes(of), parent_count=4)
    assert got.tolist() == [[0, 2, 3, 1]]


def test_parent_recall() -> None:
    assert parent_recall([["a", "b"], ["c"]], [["a", "x"], ["c"]]) == pytest.approx(0.75)
    assert parent_recall([["a"], []], [["a"], []]) == 1.0  # a query with no exact parent is left out
    assert parent_recall([[]], [[]]) == 1.0


# ------------------------------------------------------------------ through a workspace
def _workspace(path: Path, photos: dict[str, Image.Image]) -> tuple[CrossScaleSearch, np.ndarray]:
    """Every photo indexed by colour histogram over tiles, in an IVF index of 4 lists (searched by 1 to 4); query
    vectors of crops of them."""
    cs = CrossScaleSearch.open(
        path,
        encoder="color-histogram",
        segmenter="whole+tiles",
        index_factory="IVF4,Flat",
        verifier=False,
        refine=False,
        progress=False,
        device="cpu",
    )
    names = sorted(photos)
    report = cs.index([(n, photos[n]) for n in names])
    assert report.ok
    crops = [photos[n].crop((20 + 9 * i, 30, 220, 180)) for i, n in enumerate(names)]
    return cs, np.stack([q.vector for q in embed_queries(cs.encoder, crops)])


def test_measure_search_finds_all_exact_parents_when_it_searches_every_list(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    """Every list searched: a search returns the exact parents (recall 1); one list of four: fewer. Each figure
    is the recall of what search_vectors returns under that setting; the index keeps its own settings."""
    cs, vectors = _workspace(tmp_path / "ws", photos)
    with cs:
        before = cs.chunk_index.search_settings
        every, one = SearchParams(nprobe=4), SearchParams(nprobe=1)
        got = cs.measure_search(vectors, [every, one, None], top_k=3, repeats=2, singles=3)
        assert [m.params for m in got] == [every, one, None]
        assert all(len(m.single_ms) == 3 and all(t > 0 for t in m.single_ms) for m in got)
        assert all(m.single_p50_ms == pytest.approx(float(np.median(m.single_ms))) for m in got)
        assert got[0].to_dict()["single_p95_ms"] == got[0].single_p95_ms
        assert all(isinstance(m, SearchMeasurement) and m.queries == len(vectors) for m in got)
        assert all(m.seconds > 0 and m.queries_per_second == pytest.approx(len(vectors) / m.seconds) for m in got)
        assert got[0].recall == 1.0
        assert got[1].recall < 1.0  # one list misses some: the measure can tell
        exact = [[m.parent_id for m in r] for r in cs.search_vectors(vectors, top_k=3, params=every)]
        for measured in got[1:]:
            found = [[m.parent_id for m in r] for r in cs.search_vectors(vectors, top_k=3, params=measured.params)]
            assert measured.recall == pytest.approx(parent_recall(found, exact))
        assert cs.chunk_index.search_settings == before


def test_measure_search_refuses_bad_input(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    cs, vectors = _workspace(tmp_path / "ws", dict(list(sorted(photos.items()))[:3]))
    with cs:
        with pytest.raises(VectorError, match="dimension"):
            cs.measure_search(vectors[:, :5])
        with pytest.raises(VectorError, match="NaN or inf"):
            cs.measure_search(np.where(np.arange(vectors.shape[1]) == 0, np.nan, vectors))
        with pytest.raises(ConfigurationError, match="settings must be a non-empty sequence"):
            cs.measure_search(vectors, [])
        with pytest.raises(ConfigurationError, match="settings must be a non-empty sequence"):
            cs.measure_search(vectors, SearchParams(nprobe=2))  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=r"settings\[1\] must be a crossscale\.types\.SearchParams"):
            cs.measure_search(vectors, [None, {"nprobe": 2}])  # type: ignore[list-item]
        with pytest.raises(ConfigurationError, match="top_k"):
            cs.measure_search(vectors, top_k=0)
        with pytest.raises(ConfigurationError, match="repeats"):
            cs.measure_search(vectors, repeats=0)
        with pytest.raises(ConfigurationError, match="singles must be an int >= 0"):
            cs.measure_search(vectors, singles=-1)
        assert cs.measure_search(vectors)[0].single_p50_ms is None  # none asked for
        cs.ranker = ParentRanker(aggregator="sum")
        with pytest.raises(CapabilityError, match="best chunk"):
            cs.measure_search(vectors)
