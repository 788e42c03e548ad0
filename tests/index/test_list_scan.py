"""ListScan: a batch searched list by list gives faiss' own hits, and ChunkIndex uses it only where it pays."""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info

from crossscale.index import ChunkIndex, _list_scan
from crossscale.index._list_scan import (
    DECODE_NS,
    DECODE_PQ_NS,
    FAISS_CODES_NS,
    FAISS_FLAT_NS,
    FAISS_PQ_NS,
    ListScan,
    exact_coarse_pays,
    faiss_pair_ns,
    pays,
)

DIM = 16
REAL_PAYS = pays


@pytest.fixture(autouse=True)
def always_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """These small indexes never pay for a scan (the decision has its own tests, with the real rule): scan anyway,
    so that what is checked is the scan's result."""
    monkeypatch.setattr(_list_scan, "pays", lambda *args: True)


def _clustered(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors around 8 centres: lists of uneven sizes, as real collections give."""
    centres = rng.standard_normal((8, dim))
    x = centres[rng.integers(0, 8, n)] + 0.7 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _index(rng: np.random.Generator, factory: str, n: int = 3000, nprobe: int = 4, **kwargs: Any) -> ChunkIndex:
    index = ChunkIndex(DIM, factory, device="cpu", **kwargs)
    index.add(_clustered(rng, n), np.arange(n) * 3)  # ids that are not row numbers
    index.set_search_params(f"nprobe={nprobe}")
    return index


def _assert_same_hits(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    """The same hits in the same places, scores to float32 rounding; where two hits' scores are that close, their
    order may differ (the product sums in another order), so those places are left out of the id check. ``want``
    may hold one hit more per row than ``got`` (faiss asked for ``k + 1``): then a ``k``-th hit whose score is that
    close to the next one's is left out too (either may be cut)."""
    (d1, i1), (d0, i0) = got, want
    deeper = d0.shape[1] == d1.shape[1] + 1
    live_all = i0 >= 0
    gaps = np.abs(np.diff(np.where(live_all, d0, -10.0), axis=1)) > 1e-5
    clear = np.ones(d0.shape, dtype=bool)
    clear[:, 1:] &= gaps
    clear[:, :-1] &= gaps
    if deeper:
        d0, i0, clear = d0[:, :-1], i0[:, :-1], clear[:, :-1]
    assert d1.shape == d0.shape and i1.shape == i0.shape
    np.testing.assert_array_equal(i1 < 0, i0 < 0)  # the same padding: as many hits per row
    live = i0 >= 0
    np.testing.assert_allclose(d1[live], d0[live], rtol=0, atol=1e-5)
    assert clear[live].mean() > 0.5  # the check below checks something
    np.testing.assert_array_equal(i1[clear & live], i0[clear & live])


@pytest.mark.parametrize(
    ("factory", "reduce_dim"),
    [
        ("IVF16,Flat", None),
        ("IVF16,SQ8", None),
        ("IVF16,SQfp16", None),
        ("IVF16_HNSW32,SQ8", None),
        ("IVF16,SQ8", 8),  # behind the projection and the re-normalisation
        ("IVF16,Flat", 8),
        ("IVF16,PQ4", None),  # product-quantizer codes, decoded by faiss' decoder
        ("IVF16,PQ8x4", None),  # four bits a sub-quantizer
        ("IVF16_HNSW32,PQ4", None),
        ("IVF16,PQ4", 8),
        ("OPQ4,IVF16,PQ4", None),  # behind a factory's own rotation
    ],
)
@pytest.mark.parametrize("k", [10, 2500])  # 2,500: more than the probed lists hold, padded
def test_a_batch_gets_faiss_own_hits(rng: np.random.Generator, factory: str, reduce_dim: int | None, k: int) -> None:
    index = _index(rng, factory, reduce_dim=reduce_dim, nprobe=1 if k > 1000 else 4)
    scan = ListScan.of(index._index)
    assert scan is not None
    q = _clustered(rng, 300)
    got = scan.search(q, k)
    assert got is not None
    _assert_same_hits(got, index._index.search(q, k))


def test_eight_bit_uniform_codes(rng: np.random.Generator) -> None:
    """faiss' uniform SQ8 (one range for all dimensions; no factory string makes it) decodes with scalars."""
    quantizer = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFScalarQuantizer(
        quantizer, DIM, 16, faiss.ScalarQuantizer.QT_8bit_uniform, faiss.METRIC_INNER_PRODUCT
    )
    x = _clustered(rng, 3000)
    ivf.train(x)
    ivf.add(x)
    ivf.nprobe = 4
    q = _clustered(rng, 300)
    scan = ListScan.of(ivf)
    assert scan is not None
    got = scan.search(q, 20)
    assert got is not None
    _assert_same_hits(got, ivf.search(q, 20))


@pytest.mark.parametrize(
    "factory", ["Flat", "HNSW16", "IVF16,PQ4x4fs", "IVF16,SQ4", "IVF16,SQ8_direct", "IVF16,SQbf16"]
)
def test_structures_it_cannot_read_are_left_to_faiss(rng: np.random.Generator, factory: str) -> None:
    index = ChunkIndex(DIM, factory, device="cpu")
    index.add(_clustered(rng, 2000), np.arange(2000))
    assert ListScan.of(index._index) is None


def test_an_l2_index_or_a_codes_cap_is_left_to_faiss(rng: np.random.Generator) -> None:
    x = _clustered(rng, 2000)
    l2 = faiss.index_factory(DIM, "IVF16,Flat")  # L2: scores are distances, not inner products
    l2.train(x)
    assert ListScan.of(l2) is None
    capped = ChunkIndex(DIM, "IVF16,Flat", device="cpu")
    capped.add(x, np.arange(2000))
    scan = ListScan.of(capped._index)
    assert scan is not None and scan.search(x[:300], 5) is not None
    capped.set_search_params("max_codes=100")  # faiss stops scanning after 100 codes: not what a scan does
    assert scan.search(x[:300], 5) is None


def test_a_polysemous_filter_is_left_to_faiss(rng: np.random.Generator) -> None:
    """With a polysemous threshold faiss scores only the PQ codes near the query's in Hamming distance: a scan of
    every code would give other hits, so such searches are faiss'."""
    index = _index(rng, "IVF16,PQ4")
    scan = ListScan.of(index._index)
    q = _clustered(rng, 300)
    assert scan is not None and scan.search(q, 5) is not None
    index.set_search_params("ht=4")
    assert scan.search(q, 5) is None
    np.testing.assert_array_equal(index.search(q, 5)[1], index._index.search(q, 6)[1][:, :5])


def test_a_batch_whose_queries_share_few_lists_is_left_to_faiss(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left to faiss: not scanned, and either ``None`` (the caller asks faiss) or faiss' search of the lists
    found, bit for bit."""
    monkeypatch.setattr(_list_scan, "pays", REAL_PAYS)
    index = ChunkIndex(256, "IVF64,Flat", device="cpu")
    index.add(_clustered(rng, 20_000, 256), np.arange(20_000))
    index.set_search_params("nprobe=1")
    scan = ListScan.of(index._index)
    assert scan is not None
    assert scan.search(_clustered(rng, 1, 256), 5) is None  # one query: nothing to share
    real_part = ListScan._search_part
    monkeypatch.setattr(ListScan, "_search_part", lambda *args: pytest.fail("scanned"))
    q = _clustered(rng, 64, 256)
    got = scan.search(q, 5)  # ~1 query per probed list (64 lists, 1 probed each)
    if got is not None:
        want = index._index.search(q, 5)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    monkeypatch.setattr(ListScan, "_search_part", real_part)
    index.set_search_params("nprobe=64")
    assert scan.search(_clustered(rng, 1000, 256), 5) is not None  # every list read for all 1,000 queries


def _sq8(dim: int) -> tuple[float, float]:
    return dim * DECODE_NS, dim * FAISS_CODES_NS


def _flat(dim: int) -> tuple[float, float]:
    return 0.0, dim * FAISS_FLAT_NS


def _pq(dim: int, sub_quantizers: int) -> tuple[float, float]:
    return dim * DECODE_PQ_NS, sub_quantizers * FAISS_PQ_NS


def test_what_pays() -> None:
    """The rule against what was measured (docs/benchmarks.md): (lists visited, codes in them, pairs, costs)."""
    # 10M regions in 16,384 lists, 256-d SQ8: 256 queries (measured: the scan 0.86x faiss' speed), 1,000 (2.3x)
    assert not pays(16_113, 9_784_010, 256 * 156_110, *_sq8(256))
    assert pays(16_379, 9_988_636, 1000 * 156_258, *_sq8(256))
    # 1M in 4,096 IVF-Flat lists: 128 queries (0.79x), 256 (1.5x)
    assert not pays(4_096, 1_000_000, 128 * 30_758, *_flat(256))
    assert pays(4_096, 1_000_000, 256 * 30_578, *_flat(256))
    # 200k of 128-d in 1,024 lists, 2,000 queries: SQ8 (0.91x), IVF-Flat (1.68x)
    assert not pays(1_024, 200_000, 2000 * 6_240, *_sq8(128))
    assert pays(1_024, 200_000, 2000 * 6_240, *_flat(128))
    assert not pays(1, 10, 0, *_flat(256))
    # 1M in 4,096 lists, 256-d PQ (128 lists a query, 30.9k codes): 3,000 queries PQ64 (2.1x), PQ16 (0.81x);
    # PQ32 1,000 queries (0.75-0.86x), 10,000 (1.3-1.4x)
    assert pays(4_096, 1_000_000, 3000 * 30_894, *_pq(256, 64))
    assert not pays(4_096, 1_000_000, 3000 * 30_894, *_pq(256, 16))
    assert not pays(4_096, 1_000_000, 1000 * 30_894, *_pq(256, 32))
    assert pays(4_096, 1_000_000, 10_000 * 30_894, *_pq(256, 32))


def test_what_a_pair_costs_faiss(rng: np.random.Generator) -> None:
    """faiss' scan pays per dimension of a float32 row or a scalar code, per sub-quantizer of a PQ code."""
    x = _clustered(rng, 3000)
    costs = {}
    for factory in ("IVF16,Flat", "IVF16,SQ8", "IVF16,PQ4", "IVF16,PQ8x4"):
        index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        costs[factory] = faiss_pair_ns(faiss.downcast_index(index))
    assert costs == {
        "IVF16,Flat": DIM * FAISS_FLAT_NS,
        "IVF16,SQ8": DIM * FAISS_CODES_NS,
        "IVF16,PQ4": 4 * FAISS_PQ_NS,
        "IVF16,PQ8x4": 8 * FAISS_PQ_NS,
    }


def test_lists_the_quantizer_does_not_return_are_skipped(rng: np.random.Generator) -> None:
    """An HNSW quantizer whose beam is narrower than nprobe returns fewer lists (-1): faiss scans those it has."""
    index = _index(rng, "IVF256_HNSW32,Flat", n=10_000, nprobe=200)
    index.set_search_params("quantizer_efSearch=4")
    ivf: Any = faiss.extract_index_ivf(index._index)
    q = _clustered(rng, 300)
    assert (ivf.quantizer.search(q, 200)[1] < 0).any()  # the case under test
    scan = ListScan.of(index._index)
    assert scan is not None
    got = scan.search(q, 30)
    assert got is not None
    _assert_same_hits(got, index._index.search(q, 30))


def _beam_misses_lists(index: ChunkIndex, q: np.ndarray, nprobe: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
    """The HNSW quantizer's lists for ``q`` with a beam of ``ef``, and the exact nearest ones (its flat storage);
    checked to differ, so that a test can tell which the scan used."""
    ivf: Any = faiss.extract_index_ivf(index._index)
    params: Any = faiss.SearchParametersHNSW()
    params.efSearch = ef
    beam = ivf.quantizer.search(q, nprobe, params=params)[1]
    storage: Any = faiss.downcast_index(faiss.downcast_index(ivf.quantizer).storage)
    exact = storage.search(q, nprobe)[1]
    assert (np.sort(beam, axis=1) != np.sort(exact, axis=1)).any(axis=1).sum() >= 5  # the case under test
    return beam, exact


@pytest.mark.parametrize("per_call", [False, True])
def test_a_wide_hnsw_beam_gives_way_to_the_exact_lists(rng: np.random.Generator, per_call: bool) -> None:
    """A beam that visits more centroids than there are (20 x 16 neighbours > 256 lists) is replaced by a product
    with every centroid: each query probes its nearest lists, and its hits are faiss' search of exactly those."""
    index = _index(rng, "IVF256_HNSW8,SQ8", n=10_000, nprobe=16)
    if not per_call:
        index.set_search_params("quantizer_efSearch=20")
    ivf: Any = faiss.extract_index_ivf(index._index)
    assert faiss.downcast_index(ivf.quantizer).hnsw.nb_neighbors(0) == 16
    q = _clustered(rng, 300)
    _, exact = _beam_misses_lists(index, q, 16, 20)
    scan = ListScan.of(index._index)
    assert scan is not None
    got = scan.search(q, 30, nprobe=16, ef_search=20) if per_call else scan.search(q, 30)
    assert got is not None
    centroids = faiss.downcast_index(faiss.downcast_index(ivf.quantizer).storage).search(q, 16)[0]
    _assert_same_hits(got, ivf.search_preassigned(q, 30, exact, centroids))  # residual codes: the centroids' scores


def test_a_narrow_hnsw_beam_is_kept(rng: np.random.Generator) -> None:
    """A beam of 8 visits fewer centroids (8 x 16) than there are lists (256): the quantizer's own search, as
    faiss', is cheaper, and the batch probes what it finds."""
    index = _index(rng, "IVF256_HNSW8,SQ8", n=10_000, nprobe=16)
    index.set_search_params("quantizer_efSearch=8")
    q = _clustered(rng, 300)
    _beam_misses_lists(index, q, 16, 8)
    scan = ListScan.of(index._index)
    assert scan is not None
    got = scan.search(q, 30)
    assert got is not None
    _assert_same_hits(got, index._index.search(q, 30))


def test_when_the_exact_lists_pay() -> None:
    """The rule against what was measured at 10M regions (16,384 lists of 256-d, HNSW32: 64 neighbours on the
    lowest level; 10,000 queries): a beam of 512 took 1.6-2.2 s, 256 0.74-0.79 s, the product 0.86 s."""
    assert exact_coarse_pays(16_384, 512, 64)
    assert not exact_coarse_pays(16_384, 256, 64)
    assert not exact_coarse_pays(16_384, 128, 64)
    assert exact_coarse_pays(256, 20, 16)
    assert not exact_coarse_pays(256, 16, 16)


def test_a_large_batch_goes_in_parts(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    index = _index(rng, "IVF16,SQ8")
    scan = ListScan.of(index._index)
    assert scan is not None
    q = _clustered(rng, 300)
    whole = scan.search(q, 20)
    monkeypatch.setattr(_list_scan, "_HEAP_SLOTS", 20 * 70)  # parts of 70 rows
    parts = scan.search(q, 20)
    assert whole is not None and parts is not None
    np.testing.assert_array_equal(parts[1], whole[1])
    np.testing.assert_allclose(parts[0], whole[0], atol=1e-6)


@pytest.mark.parametrize("factory", ["IVF16,SQ8", "IVF16,Flat", "IVF16,PQ4", "IVF16_HNSW32,SQ8"])
def test_a_list_is_scored_in_slices_with_the_same_hits(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, factory: str
) -> None:
    """A list is decoded and scored a slice of its codes at a time (the last one shorter), each slice's hits with
    that slice's ids: the hits of scoring whole lists, and faiss' own."""
    index = _index(rng, factory)
    scan = ListScan.of(index._index)
    assert scan is not None
    q = _clustered(rng, 300)
    whole = scan.search(q, 20)
    decoded: list[int] = []
    decode = scan._decode
    monkeypatch.setattr(scan, "_decode", lambda codes: decoded.append(len(codes)) or decode(codes))
    monkeypatch.setattr(_list_scan, "_SCORE_SLOTS", 1)
    monkeypatch.setattr(_list_scan, "_MIN_SLICE", 7)
    sliced = scan.search(q, 20)
    assert whole is not None and sliced is not None
    assert max(decoded) == 7 and min(decoded) < 7  # slices of 7 codes, and shorter last ones
    np.testing.assert_array_equal(sliced[1], whole[1])
    np.testing.assert_allclose(sliced[0], whole[0], atol=1e-6)
    _assert_same_hits(sliced, index._index.search(q, 20))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_give_the_same_hits_and_leave_blas_as_it_was(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Each thread keeps its own heap (merged at the end); BLAS runs single-threaded during the scan and is given
    its threads back after, also when scans overlap."""
    index = _index(rng, "IVF16,SQ8")
    scan = ListScan.of(index._index)
    assert scan is not None
    q = _clustered(rng, 300)
    want = index._index.search(q, 25)
    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    monkeypatch.setattr(_list_scan, "_threads", lambda: threads)
    results: list[Any] = [None] * 4

    def run(slot: int) -> None:
        results[slot] = scan.search(q, 25)

    workers = [threading.Thread(target=run, args=(slot,)) for slot in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for got in results:
        assert got is not None
        _assert_same_hits(got, want)
    assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == before


def test_chunk_index_scans_large_batches_list_by_list(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch goes through the scan, a query alone through faiss, with the same hits; an HNSW index never."""
    index = _index(rng, "IVF16,SQ8")
    answered: list[bool] = []
    real = ListScan.search

    def spy(self: ListScan, q: np.ndarray, k: int, **settings: Any) -> Any:
        found = real(self, q, k, **settings)
        answered.append(found is not None)
        return found

    monkeypatch.setattr(ListScan, "search", spy)
    q = _clustered(rng, 200)
    batch = index.search(q, 15)
    assert answered == [True]
    alone = [index.search(row, 15) for row in q[:40]]
    assert answered == [True] + [False] * 40  # one query: nothing to share, faiss searches
    _assert_same_hits(
        (batch[0][:40], batch[1][:40]), (np.vstack([a[0] for a in alone]), np.vstack([a[1] for a in alone]))
    )
    answered.clear()
    hnsw = ChunkIndex(DIM, "HNSW16", device="cpu")
    hnsw.add(_clustered(rng, 500), np.arange(500))
    hnsw.search(q, 15)
    assert answered == []


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(50, 1500),
    nlist=st.sampled_from([2, 8, 32]),
    nprobe=st.integers(1, 40),
    rows=st.integers(2, 400),
    k=st.integers(1, 200),
    codes=st.sampled_from(["Flat", "SQ8"]),
)
@example(seed=11601, n=1010, nlist=2, nprobe=1, rows=355, k=82, codes="SQ8")  # the 82nd hit tied with the 83rd
def test_any_batch_the_scan_takes_gets_faiss_hits(
    seed: int, n: int, nlist: int, nprobe: int, rows: int, k: int, codes: str
) -> None:
    rng = np.random.default_rng(seed)
    index = _index(rng, f"IVF{nlist},{codes}", n=n, nprobe=nprobe)
    scan = ListScan.of(index._index)
    assert scan is not None
    q = _clustered(rng, rows)
    got = scan.search(q, k)
    if got is not None:  # faiss' k + 1: a k-th hit tied with the next within rounding may be either (seed 11601)
        _assert_same_hits(got, index._index.search(q, k + 1))


def test_a_loaded_index_scans_too(rng: np.random.Generator, tmp_path: Any) -> None:
    """The scanner is worked out from the loaded faiss index (SQ ranges included), not carried over."""
    index = _index(rng, "IVF16,SQ8", reduce_dim=8)
    q = _clustered(rng, 300)
    want = index.search(q, 20)
    index.save(tmp_path / "index")
    loaded, _ = ChunkIndex.load(tmp_path / "index", device="cpu")
    assert loaded._list_scan() is not None
    got = loaded.search(q, 20)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])  # the same path on the same data: the same bits


@pytest.mark.parametrize("actual", [True, False], ids=["the lists found pay", "they do not"])
def test_where_only_the_lists_found_can_tell_they_decide(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, actual: bool
) -> None:
    """A batch that would not pay at average list sizes but would at NEAR_LISTS times them is decided by the sizes
    of the lists the coarse search finds: scanned if they pay, else searched by faiss in those lists (one slice
    of queries per thread), with faiss' own hits bit for bit."""
    index = _index(rng, "IVF16,SQ8", nprobe=4)
    ivf: Any = faiss.extract_index_ivf(index._index)
    q = _clustered(rng, 300)
    calls: list[tuple[float, ...]] = []

    def rule(lists: float, codes: float, pairs: float, dim: int, decodes: bool) -> bool:
        calls.append((lists, codes, pairs))
        return [False, True, actual][len(calls) - 1]

    monkeypatch.setattr(_list_scan, "pays", rule)
    scanned: list[bool] = []
    real_part = ListScan._search_part

    def part(self: ListScan, *args: Any) -> Any:
        scanned.append(True)
        return real_part(self, *args)

    monkeypatch.setattr(ListScan, "_search_part", part)
    scan = ListScan.of(index._index)
    assert scan is not None
    got = scan.search(q, 20)
    assert got is not None and len(calls) == 3
    expected = 300 * 4 * 3000 / 16
    assert calls[0][2] == pytest.approx(expected) and calls[1][2] == pytest.approx(_list_scan.NEAR_LISTS * expected)
    lists = ivf.quantizer.search(q, 4)[1]
    sizes = np.array([ivf.invlists.list_size(i) for i in range(16)])
    assert calls[2] == (len(np.unique(lists)), sizes[np.unique(lists)].sum(), sizes[lists].sum())  # what was found
    want = ivf.search(q, 20)
    if actual:
        assert scanned
        _assert_same_hits(got, want)
    else:
        assert not scanned
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


def test_a_batch_that_would_not_pay_even_with_large_lists_is_left_to_faiss_at_once(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = _index(rng, "IVF16,SQ8", nprobe=4)
    calls: list[float] = []
    monkeypatch.setattr(_list_scan, "pays", lambda *args: bool(calls.append(args[2])))
    monkeypatch.setattr(ListScan, "_coarse", lambda *args: pytest.fail("no coarse search"))
    scan = ListScan.of(index._index)
    assert scan is not None
    assert scan.search(_clustered(rng, 300), 20) is None and len(calls) == 2


def test_list_sizes_follow_adds_and_removes_of_equal_count(rng: np.random.Generator) -> None:
    """The sizes the scan rule reads are the lists' own after the index changes, also when as many vectors were
    added as removed (the index's size alone would not show it)."""
    index = _index(rng, "IVF16,SQ8", nprobe=4)
    scan = index._list_scan()
    assert scan is not None
    ivf: Any = faiss.extract_index_ivf(index._index)

    def sizes() -> np.ndarray:
        return np.array([ivf.invlists.list_size(i) for i in range(16)])

    np.testing.assert_array_equal(scan._list_sizes(), sizes())
    before = sizes()
    fullest = int(np.argmax(before))
    ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(fullest), int(before[fullest])).copy()[:20]
    assert index.remove(ids) == 20
    emptiest = int(np.argmin(sizes()))
    centroid = ivf.quantizer.reconstruct(emptiest)
    near = centroid + 1e-3 * rng.standard_normal((20, len(centroid))).astype(np.float32)
    index.add(near / np.linalg.norm(near, axis=1, keepdims=True), np.arange(20) + 10**6)
    assert int(ivf.ntotal) == int(before.sum()) and not np.array_equal(sizes(), before)
    np.testing.assert_array_equal(scan._list_sizes(), sizes())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    parts=st.integers(1, 4),
    n=st.integers(1, 12),
    k=st.integers(1, 9),
    offered=st.integers(0, 12),
)
def test_heaps_merge_every_parts_hits_into_each_querys_best(
    seed: int, parts: int, n: int, k: int, offered: int
) -> None:
    """Each part's heaps see some of the hits of some queries; merged, each query holds its best k of all of them,
    best first, then padding (ids -1) where fewer were offered: as a sort of everything offered would give."""
    rng = np.random.default_rng(seed)
    heaps = _list_scan._Heaps(parts, n, k)
    offers: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    pool, next_id = iter(rng.permutation(10_000).astype(np.float32)), 0  # distinct scores: no ties
    for part in range(parts):
        for _ in range(int(rng.integers(0, 3))):  # lists: a few queries each, `offered` vectors
            rows = np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False))
            ids = np.arange(next_id, next_id + offered, dtype=np.int64)
            next_id += offered
            scores = np.array([next(pool) for _ in range(len(rows) * offered)], np.float32).reshape(len(rows), -1)
            heaps.add(part, rows, scores, ids)
            for row, line in zip(rows, scores, strict=True):
                offers[row] += list(zip(line.tolist(), ids.tolist(), strict=True))
    scores, ids = heaps.merged()
    assert scores.shape == ids.shape == (n, k)
    for row in range(n):
        best = sorted(offers[row], reverse=True)[:k]
        assert ids[row].tolist() == [i for _, i in best] + [-1] * (k - len(best))
        assert scores[row, : len(best)].tolist() == [s for s, _ in best]
