"""ProbeSplit: one query's IVF lists searched over threads give faiss' own hits, and ChunkIndex uses it for fewer
queries than threads."""

from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Any

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossscale.index import ChunkIndex
from crossscale.index import _probe_split as probe_split
from crossscale.index._probe_split import ProbeSplit

DIM = 16
REAL_MIN_SCAN_NS = probe_split.MIN_SCAN_NS


def _clustered(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors around 8 centres: lists of uneven sizes, as real collections give."""
    centres = rng.standard_normal((8, dim))
    x = centres[rng.integers(0, 8, n)] + 0.7 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _index(rng: np.random.Generator, factory: str, n: int = 3000, nprobe: int = 8, **kwargs: Any) -> ChunkIndex:
    index = ChunkIndex(DIM, factory, device="cpu", **kwargs)
    index.add(_clustered(rng, n), np.arange(n) * 3)  # ids that are not row numbers
    index.set_search_params(f"nprobe={nprobe}")
    return index


def _pairs(scores: np.ndarray, ids: np.ndarray) -> list[tuple[float, int]]:
    """A result row as (score, id) pairs, best first, equal scores by id: comparable whatever order ties came in."""
    return sorted(zip((-scores).tolist(), ids.tolist(), strict=True))


@pytest.fixture(autouse=True)
def always_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """These small indexes are never worth splitting (the rule has its own test, with the real value): split
    anyway, so that what is checked is the split's result."""
    monkeypatch.setattr(probe_split, "MIN_SCAN_NS", 0.0)


@pytest.fixture
def two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split into two parts whatever this machine has, so that the split is what is tested."""
    monkeypatch.setattr(probe_split, "split_threads", lambda: 2)


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [("IVF16,Flat", {}), ("IVF16,SQ8", {}), ("IVF16,PQ4", {}), ("IVF16,SQ8", {"reduce_dim": 8})],
    ids=["ivf-flat", "sq8", "pq", "sq8-projected"],
)
@pytest.mark.parametrize("threads", [2, 3, 5])
def test_split_search_gives_faiss_hits(factory: str, kwargs: dict[str, Any], threads: int) -> None:
    rng = np.random.default_rng(1)
    index = _index(rng, factory, **kwargs)
    split = ProbeSplit.of(index._index)
    assert split is not None
    q = index._prepare(_clustered(rng, threads - 1))  # fewer queries than parts: split
    got = split.search(q, 40, threads=threads)
    assert got is not None
    want = index._index.search(q, 40)
    np.testing.assert_array_equal(got[0], want[0])  # the same scores, bit for bit, in the same places
    for row in range(len(q)):
        assert _pairs(got[0][row], got[1][row]) == _pairs(want[0][row], want[1][row])


def test_split_search_pads_like_faiss() -> None:
    """More hits asked for than the probed lists hold: padded with -1 at the end, as faiss does."""
    rng = np.random.default_rng(2)
    index = _index(rng, "IVF16,Flat", n=400, nprobe=2)
    split = ProbeSplit.of(index._index)
    assert split is not None
    q = index._prepare(_clustered(rng, 1))
    scores, ids = split.search(q, 400, threads=2) or (None, None)
    want_scores, want_ids = index._index.search(q, 400)
    assert ids is not None and scores is not None
    assert (ids == -1).any() and np.array_equal(ids == -1, want_ids == -1)
    np.testing.assert_array_equal(scores[ids >= 0], want_scores[want_ids >= 0])


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 60),
    nprobe=st.integers(2, 16),
    copies=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_chunk_index_search_is_the_same_split_or_not(k: int, nprobe: int, copies: int, seed: int) -> None:
    """ChunkIndex.search of one query gives the same scores and ids, in the same order, split or not, also where
    many hits tie (each vector stored ``copies`` times) and ties straddle the k-th hit."""
    rng = np.random.default_rng(seed)
    base = _clustered(rng, 600 // copies)
    x = np.repeat(base, copies, axis=0)
    index = ChunkIndex(DIM, "IVF8,SQ8", device="cpu")
    index.add(x, rng.permutation(len(x)) * 2)
    index.set_search_params(f"nprobe={nprobe}")
    q = base[rng.integers(0, len(base))] + 0.05 * _clustered(rng, 1)[0]
    original = probe_split.split_threads
    try:
        probe_split.split_threads = lambda: 2  # type: ignore[assignment]
        split = index.search(q, k)
        probe_split.split_threads = lambda: 1  # type: ignore[assignment]
        alone = index.search(q, k)
    finally:
        probe_split.split_threads = original  # type: ignore[assignment]
    np.testing.assert_array_equal(split[0], alone[0])
    np.testing.assert_array_equal(split[1], alone[1])


def test_chunk_index_splits_one_query(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    index = _index(rng, "IVF16,SQ8")
    calls: list[int] = []
    real = ProbeSplit.search

    def counted(self: ProbeSplit, q: np.ndarray, k: int, threads: int | None = None, **settings: Any) -> Any:
        out = real(self, q, k, threads, **settings)
        calls.append(0 if out is None else len(q))
        return out

    monkeypatch.setattr(ProbeSplit, "search", counted)
    q = _clustered(rng, 4)
    index.search(q[:1], 10)
    assert calls == [1]  # one query: split
    index.search(q, 10)
    assert calls == [1, 0]  # four queries on two threads: left to faiss


@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF16,PQ4x4fs"])
def test_structures_left_to_faiss(factory: str) -> None:
    rng = np.random.default_rng(4)
    index = ChunkIndex(DIM, factory, device="cpu")
    index.add(_clustered(rng, 2000), np.arange(2000))
    assert ProbeSplit.of(index._index) is None


def test_searches_left_to_faiss() -> None:
    """One part, as many queries as parts, one list probed, a max_codes cap: ``None`` (faiss searches)."""
    rng = np.random.default_rng(5)
    index = _index(rng, "IVF16,Flat")
    split = ProbeSplit.of(index._index)
    assert split is not None
    q = index._prepare(_clustered(rng, 2))
    assert split.search(q[:1], 5, threads=1) is None
    assert split.search(q, 5, threads=2) is None
    assert split.search(q[:1], 5, threads=2) is not None
    index.set_search_params("nprobe=1")
    assert split.search(q[:1], 5, threads=2) is None
    index.set_search_params("nprobe=8")
    faiss.extract_index_ivf(index._index).max_codes = 100
    assert split.search(q[:1], 5, threads=2) is None


def test_only_long_scans_are_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the real rule, a query of a few thousand vectors is left to faiss; one whose lists are long enough to
    pay for the threads is split."""
    monkeypatch.setattr(probe_split, "MIN_SCAN_NS", REAL_MIN_SCAN_NS)
    rng = np.random.default_rng(8)
    index = _index(rng, "IVF16,Flat")
    split = ProbeSplit.of(index._index)
    assert split is not None
    q = index._prepare(_clustered(rng, 1))
    assert split.search(q, 5, threads=2) is None  # 3,000 vectors of 16-d: ~0.6 us per list probed
    ivf = faiss.extract_index_ivf(index._index)
    assert probe_split._scan_ns(ivf, 8) < REAL_MIN_SCAN_NS
    monkeypatch.setattr(ivf, "ntotal", 2_000_000)  # as if its lists were long: only the rule reads ntotal here
    assert probe_split._scan_ns(ivf, 8) >= REAL_MIN_SCAN_NS
    assert split.search(q, 5, threads=2) is not None


def test_concurrent_single_searches_share_the_pool(two_threads: None) -> None:
    """Threads searching one query each at the same time get what each gets alone."""
    rng = np.random.default_rng(6)
    index = _index(rng, "IVF16,SQ8")
    queries = _clustered(rng, 40)
    want = [index.search(row, 20) for row in queries]
    got: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def worker(start: int) -> None:
        for i in range(start, len(queries), 8):
            got[i] = index.search(queries[i], 20)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == len(queries)
    for i, (scores, ids) in enumerate(want):
        np.testing.assert_array_equal(got[i][0], scores)
        np.testing.assert_array_equal(got[i][1], ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_split_search_in_a_forked_child(two_threads: None) -> None:
    """A child forked after a split search inherits the pool object but not its threads: its own split search
    must still finish (the pool is made again in the child)."""
    rng = np.random.default_rng(7)
    index = _index(rng, "IVF16,Flat")
    q = _clustered(rng, 1)
    want = index.search(q, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: fork of a process with threads
        pid = os.fork()
    if pid == 0:  # the child: exit at once, whatever happens
        try:
            scores, ids = index.search(q, 10)
            os._exit(0 if np.array_equal(ids, want[1]) and np.array_equal(scores, want[0]) else 1)
        except BaseException:  # noqa: BLE001 (a forked child must never return into pytest)
            os._exit(2)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's split search never finished")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
