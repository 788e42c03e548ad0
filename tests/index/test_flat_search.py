"""FlatSearch: a flat index's hits scored pair by pair, so that a query scores the same alone and in any batch, copies
score the same, and the hits are still the best ones."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossscale.index import ChunkIndex
from crossscale.index._flat_search import FlatSearch, rounding_bound


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _flat(rng: np.random.Generator, n: int, dim: int, **kwargs: object) -> tuple[ChunkIndex, np.ndarray]:
    index = ChunkIndex(dim, "Flat", device="cpu", **kwargs)  # type: ignore[arg-type]
    x = _unit(rng, n, dim)
    if not index.is_trained:
        index.train(x)
    index.add(x, np.arange(n) * 7 + 3)  # ids that are not row numbers
    return index, x


def test_only_an_inner_product_flat_index_is_searched_this_way() -> None:
    assert FlatSearch.of(ChunkIndex(8, "Flat", device="cpu")._index) is not None
    assert FlatSearch.of(ChunkIndex(8, "Flat", device="cpu", reduce_dim=4)._index) is not None
    for factory in ("IVF4,Flat", "HNSW8", "SQ8"):
        assert FlatSearch.of(ChunkIndex(8, factory, device="cpu")._index) is None
    assert FlatSearch.of(faiss.IndexIDMap(faiss.IndexFlatL2(8))) is None  # scores would be distances
    assert FlatSearch.of(faiss.IndexIDMap(faiss.IndexFlatIP(8))) is not None  # as a user's own index may be


@pytest.mark.parametrize("dim", [8, 16, 64, 256])
def test_a_query_scores_the_same_alone_and_in_any_batch(rng: np.random.Generator, dim: int) -> None:
    """On an AMD EPYC faiss' BLAS search scored a query of 8-64 dimensions a last bit apart alone and in a batch
    of 7; this test failed there before the hits were scored pair by pair."""
    index, _ = _flat(rng, 1500, dim)
    q = _unit(rng, 37, dim)
    scores, ids = index.search(q, 25)
    for rows in ([0], [0, 1], list(range(7)), list(range(5, 37, 3))):
        s, i = index.search(q[rows], 25)
        np.testing.assert_array_equal(i, ids[rows])
        np.testing.assert_array_equal(s, scores[rows])


def test_copies_score_the_same_and_the_earliest_come_first(rng: np.random.Generator) -> None:
    """Copies anywhere in the index (on that EPYC, the last partial block of faiss' matrix product scored a copy
    a last bit apart) tie, and ties are ordered by id, at every depth."""
    groups = _unit(rng, 6, 16)
    x = groups[rng.integers(0, 6, 1100)]
    index = ChunkIndex(16, "Flat", device="cpu")
    index.add(x, np.arange(1100))
    deep_scores, deep_ids = index.search(groups, 1100)
    for g in range(6):
        copies = np.flatnonzero((x == groups[g]).all(axis=1))
        np.testing.assert_array_equal(deep_ids[g, : len(copies)], copies)  # all copies first, by id
        assert len(set(deep_scores[g, : len(copies)].tolist())) == 1
    for k in (1, 5, 40):
        scores, ids = index.search(groups, k)
        np.testing.assert_array_equal(ids, deep_ids[:, :k])
        np.testing.assert_array_equal(scores, deep_scores[:, :k])


@pytest.mark.parametrize("reduce_dim", [None, 8])
def test_the_hits_are_the_best_and_scored_as_faiss_scores_them(
    rng: np.random.Generator, reduce_dim: int | None
) -> None:
    index, x = _flat(rng, 2000, 32, reduce_dim=reduce_dim)
    q = _unit(rng, 50, 32)
    scores, ids = index.search(q, 30)
    want_scores, want_ids = index._index.search(q, 30)  # faiss' own, through BLAS
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=rounding_bound(reduce_dim or 32))
    close = np.abs(np.diff(want_scores, axis=1)) <= 2 * rounding_bound(reduce_dim or 32)
    clear = np.ones(want_ids.shape, dtype=bool)
    clear[:, 1:] &= ~close
    clear[:, :-1] &= ~close
    np.testing.assert_array_equal(ids[clear], want_ids[clear])
    if reduce_dim is None:  # the exact best: float64 scores over every vector
        exact = q.astype(np.float64) @ x.astype(np.float64).T
        best = np.sort(exact, axis=1)[:, ::-1][:, :30]
        np.testing.assert_allclose(scores, best, rtol=0, atol=rounding_bound(32))


def test_a_crowded_cut_is_searched_deeper(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores within the rounding bound of the k-th hit past what was fetched: the row is searched again deeper,
    until the k best by the pair scores are certain."""
    x = _unit(rng, 1, 16)
    many = np.repeat(x, 300, axis=0)
    index = ChunkIndex(16, "Flat", device="cpu")
    index.add(np.concatenate([many, _unit(rng, 200, 16)]), np.arange(500))
    searcher = index._flat_search()
    assert searcher is not None
    asked: list[int] = []
    flat = searcher._flat
    real = flat.search

    class Counting:
        def __getattr__(self, name: str) -> object:
            return getattr(flat, name)

        def search(self, q: np.ndarray, k: int) -> object:
            asked.append(k)
            return real(q, k)

    monkeypatch.setattr(searcher, "_flat", Counting())
    _, ids = index.search(x, 10)
    np.testing.assert_array_equal(ids[0], np.arange(10))  # the first 10 of the 300 copies
    assert asked[:2] == [19, 38] and max(asked) >= 300  # deeper until past all the copies (10 + 1 + 8 first)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 1200),
    dim=st.sampled_from([4, 8, 16, 48]),
    rows=st.integers(2, 40),
    k=st.integers(1, 60),
    copies=st.booleans(),
)
def test_any_query_scores_the_same_alone_as_in_its_batch(
    seed: int, n: int, dim: int, rows: int, k: int, copies: bool
) -> None:
    rng = np.random.default_rng(seed)
    x = _unit(rng, n, dim)
    if copies:
        x = x[rng.integers(0, max(1, n // 10), n)]
    index = ChunkIndex(dim, "Flat", device="cpu")
    index.add(x, np.arange(n))
    q = _unit(rng, rows, dim)
    scores, ids = index.search(q, k)
    for r in (0, rows - 1):
        s, i = index.search(q[r : r + 1], k)
        np.testing.assert_array_equal(i[0], ids[r])
        np.testing.assert_array_equal(s[0], scores[r])
