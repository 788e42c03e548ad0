"""crossscale vs raw FAISS/numpy on the same 100k x 512 chunk vectors (2,000 parents x 50 chunks).

Run: ``python -m pytest benchmarks --benchmark-enable -m "not slow"``. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import pytest

from benchmarks.conftest import CHUNKS_PER_PARENT, max_per_parent
from crossscale.index import ChunkIndex
from crossscale.query import search_parents
from crossscale.types import ParentMatch, Query, SearchParams

K_PARENTS = 10
K_CHUNKS = K_PARENTS * 8  # the ranker's default over-fetch


@contextlib.contextmanager
def fast_blas() -> Iterator[None]:
    """faiss' own ``distance_compute_blas_threshold`` (20) for the block: the fair raw baseline's setting (this
    wheel ships 128000, ~10x slower batched searches), restored after."""
    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 20
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def raw_flat(x: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def raw_parents(index: faiss.Index, parent_of: np.ndarray, q: np.ndarray) -> list[list[int]]:
    """The baseline: faiss search, then numpy max-per-parent, top K_PARENTS parents per query."""
    scores, ids = index.search(q, K_CHUNKS)
    return max_per_parent(scores, ids, parent_of, K_PARENTS)


# ------------------------------------------------------------------ chunk search, 64 queries, k=80
@pytest.mark.benchmark(group="chunk-search")
def test_raw_faiss_search_wheel_default(benchmark, corpus) -> None:  # type: ignore[no-untyped-def]
    index = raw_flat(corpus["x"])
    benchmark.extra_info["blas_threshold"] = faiss.cvar.distance_compute_blas_threshold
    _, ids = benchmark(index.search, corpus["q"], K_CHUNKS)
    assert (ids[:, 0] == corpus["targets"]).all()


@pytest.mark.benchmark(group="chunk-search")
def test_raw_faiss_search_threshold_20(benchmark, corpus) -> None:  # type: ignore[no-untyped-def]
    index = raw_flat(corpus["x"])
    with fast_blas():
        _, ids = benchmark(index.search, corpus["q"], K_CHUNKS)
    assert (ids[:, 0] == corpus["targets"]).all()


@pytest.mark.benchmark(group="chunk-search")
@pytest.mark.parametrize("scores", ["pair by pair", "BLAS only"])
def test_chunkindex_search(benchmark, corpus, monkeypatch, scores: str) -> None:  # type: ignore[no-untyped-def]
    """``ChunkIndex.search`` as it is (the hits faiss' BLAS search finds, scored again pair by pair so that a query
    scores the same in any batch: ``crossscale.index._flat_search``) and, beside it, with faiss' BLAS scores as
    they come (what it did before): what the pair scores cost."""
    index = ChunkIndex(corpus["x"].shape[1], device="cpu")
    index.add(corpus["x"], np.arange(len(corpus["x"])))
    if scores == "BLAS only":
        monkeypatch.setattr(index, "_flat_search", lambda: None)
    _, ids = benchmark(index.search, corpus["q"], K_CHUNKS)
    assert (ids[:, 0] == corpus["targets"]).all()


REDUCED = 128  # a projection to a quarter of the dimensions (ChunkIndex(reduce_dim=...))


@pytest.mark.benchmark(group="chunk-search")
def test_chunkindex_search_projected(benchmark, corpus) -> None:  # type: ignore[no-untyped-def]
    """The same search on an index that projects to REDUCED dimensions (speed only: these random vectors spread
    evenly over all dimensions, so the quality benchmark is where a projection's cost in recall is measured)."""
    index = ChunkIndex(corpus["x"].shape[1], reduce_dim=REDUCED, device="cpu")
    index.add(corpus["x"], np.arange(len(corpus["x"])))
    _, ids = benchmark(index.search, corpus["q"], K_CHUNKS)
    assert (ids[:, 0] == corpus["targets"]).mean() >= 0.9


@pytest.mark.benchmark(group="chunk-search")
def test_raw_faiss_search_projected(benchmark, corpus) -> None:  # type: ignore[no-untyped-def]
    """The floor for the projected search: a faiss IndexPreTransform (the same uncentred projection, from numpy's
    eigh, and a re-normalisation) over IndexFlatIP. The queries are projected by faiss too: a numpy matmul right
    before a faiss search makes OpenBLAS' and faiss' threads fight on 2 cores (medians 40-120 ms here)."""
    x = corpus["x"]
    axes = np.linalg.eigh((x.T @ x).astype(np.float64))[1][:, ::-1][:, :REDUCED]
    projection = faiss.LinearTransform(x.shape[1], REDUCED, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(axes.T, dtype=np.float32).ravel(), projection.A)
    projection.is_trained = True
    index = faiss.IndexPreTransform(faiss.IndexFlatIP(REDUCED))
    index.prepend_transform(faiss.NormalizationTransform(REDUCED, 2.0))
    index.prepend_transform(projection)
    index.add(x)
    with fast_blas():
        _, ids = benchmark(index.search, corpus["q"], K_CHUNKS)
    assert (ids[:, 0] == corpus["targets"]).mean() >= 0.9


# ------------------------------------------------------------------ parent search (chunks -> parents)
@pytest.mark.benchmark(group="parent-search")
def test_raw_faiss_numpy_parents(benchmark, corpus) -> None:  # type: ignore[no-untyped-def]
    with fast_blas():  # the fair baseline: the fast setting
        index = raw_flat(corpus["x"])
        result = benchmark(raw_parents, index, corpus["parent_of"], corpus["q"])
    expected = corpus["targets"] // CHUNKS_PER_PARENT
    assert [r[0] for r in result] == expected.tolist()


@pytest.mark.benchmark(group="parent-search")
def test_facade_search_batch(benchmark, corpus, facade) -> None:  # type: ignore[no-untyped-def]
    cs, queries = facade
    result = benchmark(cs.search_batch, queries, K_PARENTS)
    expected = [f"p{t // CHUNKS_PER_PARENT:05d}" for t in corpus["targets"]]
    assert [r[0].parent_id for r in result] == expected
    assert all(len(r) == K_PARENTS for r in result)


@pytest.mark.benchmark(group="parent-search")
def test_facade_search_vectors(benchmark, corpus, facade) -> None:  # type: ignore[no-untyped-def]
    """The facade from the query vectors, as the raw baselines start: what crossscale adds to faiss, without
    decoding query images (``search_batch`` above) or an encoder."""
    cs, _ = facade
    result = benchmark(cs.search_vectors, corpus["q"], K_PARENTS)
    expected = [f"p{t // CHUNKS_PER_PARENT:05d}" for t in corpus["targets"]]
    assert [r[0].parent_id for r in result] == expected
    assert all(len(r) == K_PARENTS for r in result)


@pytest.mark.benchmark(group="parent-search")
def test_raw_numpy_parents_on_the_facade_faiss_index(benchmark, corpus, facade) -> None:  # type: ignore[no-untyped-def]
    """The raw fold over the very faiss object the facade searches: the difference to the facade is crossscale's
    own work, without two 200 MB indexes' memory placement (±4% here) in the ratio."""
    cs, _ = facade
    with fast_blas():
        result = benchmark(raw_parents, cs.workspace.index._index, corpus["parent_of"], corpus["q"])
    assert [r[0] for r in result] == (corpus["targets"] // CHUNKS_PER_PARENT).tolist()


def query_path(cs: Any, vectors: np.ndarray, *, rescore: bool) -> list[list[ParentMatch]]:
    """The facade's query path on its own index, records and parent map, with or without re-scoring the hits
    against the stored vectors (what a projected, SQ8 or PQ index gets)."""
    ws = cs.workspace
    return search_parents(
        [Query(v, None) for v in vectors],
        K_PARENTS,
        index=ws.index,
        records=ws.records,
        parents=ws.parents,
        ranker=cs.ranker,
        exact_vectors=ws.store.vectors if rescore else None,
    )


@pytest.mark.benchmark(group="rescoring")
@pytest.mark.parametrize("rescore", [False, True], ids=["index-scores", "rescored"])
@pytest.mark.parametrize("batch", [1, 64])
def test_query_path_rescoring(benchmark, corpus, facade, rescore: bool, batch: int) -> None:  # type: ignore[no-untyped-def]
    cs, _ = facade
    result = benchmark(query_path, cs, corpus["q"][:batch], rescore=rescore)
    expected = [f"p{t // CHUNKS_PER_PARENT:05d}" for t in corpus["targets"][:batch]]
    assert [r[0].parent_id for r in result] == expected


@pytest.mark.benchmark(group="parent-search-single")
def test_raw_numpy_one_query_on_the_facade_faiss_index(benchmark, corpus, facade) -> None:  # type: ignore[no-untyped-def]
    cs, _ = facade
    result = benchmark(raw_parents, cs.workspace.index._index, corpus["parent_of"], corpus["q"][:1])
    assert result[0][0] == corpus["targets"][0] // CHUNKS_PER_PARENT


@pytest.mark.benchmark(group="parent-search-single")
def test_facade_search_one_query(benchmark, corpus, facade) -> None:  # type: ignore[no-untyped-def]
    cs, queries = facade
    result = benchmark(cs.search, queries[0], K_PARENTS)
    assert result[0].parent_id == f"p{corpus['targets'][0] // CHUNKS_PER_PARENT:05d}"


@pytest.mark.benchmark(group="parent-search-single")
def test_facade_search_vectors_one_query(benchmark, corpus, facade) -> None:  # type: ignore[no-untyped-def]
    cs, _ = facade
    result = benchmark(cs.search_vectors, corpus["q"][:1], K_PARENTS)
    assert result[0][0].parent_id == f"p{corpus['targets'][0] // CHUNKS_PER_PARENT:05d}"


@pytest.mark.benchmark(group="parent-search-single")
def test_raw_faiss_numpy_one_query(benchmark, corpus) -> None:  # type: ignore[no-untyped-def]
    index = raw_flat(corpus["x"])
    result = benchmark(raw_parents, index, corpus["parent_of"], corpus["q"][:1])
    assert result[0][0] == corpus["targets"][0] // CHUNKS_PER_PARENT


# ------------------------------------------------------------------ adding vectors
@pytest.mark.benchmark(group="add-100k")
def test_raw_faiss_add(benchmark, corpus) -> None:  # type: ignore[no-untyped-def]
    def run() -> int:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(corpus["x"].shape[1]))
        index.add_with_ids(corpus["x"], np.arange(len(corpus["x"])))
        return int(index.ntotal)

    assert benchmark.pedantic(run, rounds=5) == len(corpus["x"])


@pytest.mark.benchmark(group="add-100k")
def test_chunkindex_add(benchmark, corpus) -> None:  # type: ignore[no-untyped-def]
    def run() -> int:
        index = ChunkIndex(corpus["x"].shape[1], device="cpu")
        index.add(corpus["x"], np.arange(len(corpus["x"])))
        return len(index)

    assert benchmark.pedantic(run, rounds=5) == len(corpus["x"])


# ------------------------------------------------------------------ HNSW with removed vectors (tombstones)
HNSW_N = 50_000
HNSW_DIM = 64


@pytest.fixture(scope="module")
def hnsw_removed() -> dict[str, Any]:
    """An ``HNSW32`` ChunkIndex of 50k random 64-d vectors (efSearch 512), with every third vector removed (the
    structure keeps them as tombstones), and 64 queries near live vectors; the exact top 80 of the live vectors.
    (efSearch 512: random 64-d vectors are hard for a graph; at 128 both searches below find 0.83 of the top 80.)"""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((HNSW_N, HNSW_DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(HNSW_N, dtype=np.int64)
    index = ChunkIndex(HNSW_DIM, "HNSW32", device="cpu")
    index.add(x, ids)
    index.set_search_params("efSearch=512")
    gone = ids[::3]
    index.remove(gone)
    live = ids[ids % 3 != 0]
    targets = rng.choice(live, 64, replace=False)
    q = x[targets] + 0.3 * rng.standard_normal((64, HNSW_DIM)).astype(np.float32) / np.sqrt(HNSW_DIM)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = live[np.argsort(-(q @ x[live].T), axis=1)[:, :K_CHUNKS]]
    return {"index": index, "q": q, "gone": gone, "exact": exact}


@pytest.mark.benchmark(group="hnsw-with-removed-vectors")
@pytest.mark.parametrize("how", ["skipped", "filtered"], ids=["skipped in the graph (now)", "asked for and filtered"])
def test_hnsw_search_with_tombstones(benchmark, hnsw_removed, monkeypatch, how: str) -> None:  # type: ignore[no-untyped-def]
    """64 queries, k=80, on an HNSW index holding 16.7k removed vectors beside 33.3k live ones: the removed ones
    skipped by an ID selector inside the graph search, against the search before 2026-12-05 (night), which asked
    faiss for k + every removed vector + 1 hits and dropped the removed ones."""
    index = hnsw_removed["index"]
    if how == "filtered":
        monkeypatch.setattr(index, "_graph_view", lambda: None)  # the search as it was: no selector, the index's beam
    _, got = benchmark(index.search, hnsw_removed["q"], K_CHUNKS)
    assert not np.isin(got, hnsw_removed["gone"]).any() and (got >= 0).all()
    recall = np.mean([len(set(a) & set(b)) / K_CHUNKS for a, b in zip(got, hnsw_removed["exact"], strict=True)])
    benchmark.extra_info["recall_at_80"] = round(float(recall), 4)
    assert recall >= 0.95


# ------------------------------------------------------------------ batched IVF search, list by list
IVF_N = 200_000
IVF_DIM = 128


@pytest.fixture(scope="module", params=["IVF1024,Flat", "IVF1024,SQ8", "IVF1024,PQ64x4"])
def ivf_batch(request: pytest.FixtureRequest) -> dict[str, Any]:
    """200k clustered region vectors of 128-d (``benchmarks.scale``'s kind: 100 alike regions per parent), in a
    ChunkIndex of ``request.param`` searched at ``nprobe`` 32; 2,000 queries (noisy copies of regions)."""
    from benchmarks.scale import make_data

    data = make_data(IVF_N, IVF_DIM, 100, 2000, seed=3)
    index = ChunkIndex(IVF_DIM, request.param, device="cpu")
    index.train(data["x"][:: IVF_N // 50_000])
    index.add(data["x"], np.arange(IVF_N))
    index.set_search_params("nprobe=32")
    return {"index": index, "q": np.ascontiguousarray(data["q"], dtype=np.float32), "factory": request.param}


@pytest.mark.benchmark(group="ivf-batch-search")
@pytest.mark.parametrize("rows", [256, 2000])
@pytest.mark.parametrize("how", ["faiss", "ChunkIndex"], ids=["raw faiss", "ChunkIndex (list by list)"])
def test_ivf_batch_search(benchmark, ivf_batch, rows: int, how: str) -> None:  # type: ignore[no-untyped-def]
    """A batch of ``rows`` queries, k=80: faiss' own IVF search (each query scans its 32 lists) against
    ChunkIndex.search, which scans each probed list once for all of its queries (a batch of 2,000 reads each
    list for ~60 of them; one of 256 for ~8). Same index, same queries; the hits must be faiss' own."""
    index, q = ivf_batch["index"], ivf_batch["q"][:rows]
    with fast_blas():
        want_scores, want_ids = index._index.search(q, K_CHUNKS)
        if how == "faiss":
            scores, ids = benchmark(index._index.search, q, K_CHUNKS)
        else:
            scores, ids = benchmark(index.search, q, K_CHUNKS)
    benchmark.extra_info["factory"] = ivf_batch["factory"]
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert np.mean(ids == want_ids) > 0.99  # the same hits; near-equal scores may swap places


@pytest.mark.benchmark(group="ivf-one-query")
@pytest.mark.parametrize("nprobe", [32, 256])
@pytest.mark.parametrize(
    "how", ["faiss", "ChunkIndex, one core", "ChunkIndex"], ids=["raw faiss", "ChunkIndex, not split", "ChunkIndex"]
)
def test_ivf_one_query(benchmark, ivf_batch, monkeypatch, how: str, nprobe: int) -> None:  # type: ignore[no-untyped-def]
    """64 queries one at a time, k=80: faiss' IVF search runs one query on one core; ChunkIndex splits the lists a
    query probes over the cores where they are long enough to pay for it (crossscale.index._probe_split: at
    nprobe 256, not at 32), and "not split" is ChunkIndex without that. Same index, same (normalised) queries; the
    hits must be faiss' own, as ChunkIndex orders them (equal scores by id)."""
    index = ivf_batch["index"]
    rows = [index._prepare(row[None, :]) for row in ivf_batch["q"][:64]]
    index.set_search_params(f"nprobe={nprobe}")
    try:
        want = [index._index.search(row, K_CHUNKS) for row in rows]
        if how == "faiss":
            search = index._index.search
        else:
            if how == "ChunkIndex, one core":
                monkeypatch.setattr(index, "_probe_split", lambda: None)
            search = index.search

        def one_by_one() -> list[tuple[np.ndarray, np.ndarray]]:
            return [search(row, K_CHUNKS) for row in rows]

        got = benchmark(one_by_one)
    finally:
        index.set_search_params("nprobe=32")
    benchmark.extra_info["factory"] = ivf_batch["factory"]
    for (scores, ids), (want_scores, want_ids) in zip(got, want, strict=True):
        np.testing.assert_array_equal(scores, want_scores)  # the same scores, bit for bit
        mine, theirs = np.lexsort((ids[0], -scores[0])), np.lexsort((want_ids[0], -want_scores[0]))
        np.testing.assert_array_equal(ids[0][mine], want_ids[0][theirs])  # the same hits (ties in either order)


@pytest.mark.benchmark(group="per-call-nprobe")
@pytest.mark.parametrize("rows", [1, 2000], ids=["64 queries one at a time", "a batch of 2,000"])
@pytest.mark.parametrize(
    "how",
    ["faiss", "set", "params"],
    ids=["raw faiss, SearchParametersIVF", "ChunkIndex, set on the index", "ChunkIndex, params=SearchParams"],
)
def test_per_call_nprobe(benchmark, ivf_batch, how: str, rows: int) -> None:  # type: ignore[no-untyped-def]
    """nprobe 64 for the call (``params=SearchParams(nprobe=64)``, the index left at 32) against the index set to
    64 and raw faiss searching with ``SearchParametersIVF(nprobe=64)``: what a per-call setting costs. Same index and
    queries; ChunkIndex's two ways must give the same hits, bit for bit."""
    index = ivf_batch["index"]
    q = ivf_batch["q"][:rows] if rows > 1 else ivf_batch["q"][:64]
    q = np.ascontiguousarray(index._prepare(q))  # unit rows, as ChunkIndex searches them
    calls = [q] if rows > 1 else [row[None, :] for row in q]
    params = SearchParams(nprobe=64)
    faiss_params = faiss.SearchParametersIVF()  # type: ignore[attr-defined]
    faiss_params.nprobe = 64
    with fast_blas():
        index.set_search_params("nprobe=64")
        try:
            want = [index.search(c, K_CHUNKS) for c in calls]
        finally:
            index.set_search_params("nprobe=32")
        if how == "faiss":
            got = benchmark(lambda: [index._index.search(c, K_CHUNKS, params=faiss_params) for c in calls])
        elif how == "params":
            got = benchmark(lambda: [index.search(c, K_CHUNKS, params=params) for c in calls])
        else:
            index.set_search_params("nprobe=64")
            try:
                got = benchmark(lambda: [index.search(c, K_CHUNKS) for c in calls])
            finally:
                index.set_search_params("nprobe=32")
    benchmark.extra_info["factory"] = ivf_batch["factory"]
    for (scores, ids), (want_scores, want_ids) in zip(got, want, strict=True):
        if how == "faiss":  # faiss' own order among equal scores, and its batch's rounding: near-equal may swap
            np.testing.assert_allclose(scores, want_scores, atol=1e-5)
            assert np.mean(ids == want_ids) > 0.99
        else:
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_array_equal(scores, want_scores)


@pytest.fixture(scope="module")
def coarse_lists() -> dict[str, Any]:
    """The coarse step of the 10M plan at its size: an IVF index of 16,384 lists of 256-d behind an HNSW32
    quantizer with a beam of 512 (``IVF16384_HNSW32,SQ8`` at nprobe 256), its centroids 16,384 regions of
    ``benchmarks.scale``'s kind (no k-means: the step's cost is the same), and 2,000 queries. The lists hold a few
    vectors only: what is timed is finding each query's 256 lists (:meth:`ListScan._coarse`)."""
    from benchmarks.scale import make_data
    from crossscale.index._list_scan import ListScan

    data = make_data(20_500, 256, 100, 2000, seed=4)
    centroids, sample = data["x"][:16_384], data["x"][16_384:]
    quantizer = faiss.IndexHNSWFlat(256, 32, faiss.METRIC_INNER_PRODUCT)
    quantizer.add(centroids)
    quantizer.hnsw.efSearch = 512
    ivf = faiss.IndexIVFScalarQuantizer(
        quantizer, 256, 16_384, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    ivf.train(sample)  # the codes' ranges; the quantizer is trained already (it holds the 16,384 centroids)
    ivf.add(sample)
    ivf.nprobe = 256
    scan = ListScan.of(ivf)
    assert scan is not None
    q = np.ascontiguousarray(data["q"], dtype=np.float32)
    return {"ivf": ivf, "quantizer": quantizer, "scan": scan, "q": q / np.linalg.norm(q, axis=1, keepdims=True)}


@pytest.mark.benchmark(group="coarse-lists")
@pytest.mark.parametrize(
    "how", ["beam", "product"], ids=["HNSW beam of 512 (raw faiss)", "ListScan (the exact product)"]
)
def test_coarse_lists_of_a_batch(benchmark, coarse_lists, how: str) -> None:  # type: ignore[no-untyped-def]
    """2,000 queries' 256 nearest lists of 16,384: the quantizer's HNSW beam (faiss' search, what a batch's scan
    used before) against the exact product with every centroid that ListScan uses where the beam costs more
    (``exact_coarse_pays``: 16,384 < 512 x 64 neighbours). The product's lists are the nearest: the beam's must be
    nearly all of them."""
    q, quantizer, scan = coarse_lists["q"], coarse_lists["quantizer"], coarse_lists["scan"]
    with fast_blas():
        if how == "beam":
            _, lists = benchmark(quantizer.search, q, 256)
        else:
            _, lists = benchmark(scan._coarse, q, 256, None)
        exact = faiss.downcast_index(quantizer.storage).search(q, 256)[1]
    found = np.mean([len(np.intersect1d(a, b)) / 256 for a, b in zip(lists, exact, strict=True)])
    benchmark.extra_info["share of the nearest lists"] = float(found)
    assert found > (0.999 if how == "product" else 0.95)


@pytest.mark.benchmark(group="ivf-batch-few-lists")
@pytest.mark.parametrize("how", ["faiss", "scan", "rule"], ids=["raw faiss", "ChunkIndex, scanned", "ChunkIndex"])
def test_ivf_batch_at_few_lists(benchmark, ivf_batch, monkeypatch, how: str) -> None:  # type: ignore[no-untyped-def]
    """2,000 queries at nprobe 4 per call (the index left at 32), k=80: few lists, which for these clustered
    regions are larger than the average one, so whether the scan pays is decided by the lists the coarse search
    finds (``NEAR_LISTS``). Raw faiss, ChunkIndex with the scan forced, and ChunkIndex as it decides; the hits must
    be faiss' own."""
    from crossscale.index import _list_scan

    index, q = ivf_batch["index"], np.ascontiguousarray(ivf_batch["index"]._prepare(ivf_batch["q"]))
    faiss_params = faiss.SearchParametersIVF()  # type: ignore[attr-defined]
    faiss_params.nprobe = 4
    if how == "scan":
        monkeypatch.setattr(_list_scan, "pays", lambda *args: True)
    with fast_blas():
        want_scores, want_ids = index._index.search(q, K_CHUNKS, params=faiss_params)
        if how == "faiss":
            scores, ids = benchmark(index._index.search, q, K_CHUNKS, params=faiss_params)
        else:
            scores, ids = benchmark(index.search, q, K_CHUNKS, params=SearchParams(nprobe=4))
    benchmark.extra_info["factory"] = ivf_batch["factory"]
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert np.mean(ids == want_ids) > 0.99  # the same hits; near-equal scores may swap places


FOLD_QUERIES = 10_000
FOLD_WIDTH = 160  # the 10M workspace's batches fold 160 hits a query (two depths of 80)


@pytest.fixture(scope="module")
def fold_batch() -> dict[str, Any]:
    """A batch's hits as the ranker folds them: 10,000 queries x 160 hits among 2,000 parents of 100 chunks each,
    best first; a query's hits fall in the 25 parents around its own (so 10 distinct parents settle it)."""
    from crossscale.index import ParentMap
    from crossscale.types import ChunkDetails

    rng = np.random.default_rng(5)
    parents, per = 2000, 100
    corners = rng.integers(0, 400, (parents * per, 2))
    boxes = np.hstack([corners, corners + rng.integers(20, 200, corners.shape)]).astype(np.int64)

    def details(p: int) -> ChunkDetails:
        rows = slice(p * per, (p + 1) * per)
        return ChunkDetails(boxes[rows], np.zeros(per, np.uint8), np.full(per, -1, np.int32))

    pmap = ParentMap.from_parents((f"p{p}", range(p * per, (p + 1) * per), details(p)) for p in range(parents))
    home = rng.integers(0, parents, FOLD_QUERIES)
    near = (home[:, None] + rng.integers(-12, 13, (FOLD_QUERIES, FOLD_WIDTH))) % parents
    ids = near * per + rng.integers(0, per, near.shape)
    scores = np.sort(rng.random(ids.shape).astype(np.float32), axis=1)[:, ::-1].copy()
    return {"map": pmap, "scores": scores, "ids": ids.astype(np.int64), "codes": pmap.parent_codes(ids)}


@pytest.mark.benchmark(group="rank-batch-fold")
@pytest.mark.parametrize("at_once", ["all", "blocks"], ids=["every row at once (before)", "rows in blocks (now)"])
def test_rank_batch_fold(benchmark, fold_batch, monkeypatch, at_once: str) -> None:  # type: ignore[no-untyped-def]
    """ParentRanker.rank_batch of a batch of 10,000 queries x 160 hits: folded all at once (what it did) or in
    blocks of FOLD_HITS hits (what it does); the peak of numpy memory it allocates (tracemalloc) goes to
    extra_info. The same matches either way."""
    import tracemalloc

    import crossscale.rank.ranker as ranker_module
    from crossscale.rank import ParentRanker

    if at_once == "all":
        monkeypatch.setattr(ranker_module, "FOLD_HITS", FOLD_QUERIES * FOLD_WIDTH)
    data, pmap = fold_batch, fold_batch["map"]
    ranker = ParentRanker(overfetch=16)  # top_k 10 x 16 = 160: the width rank asks for first

    def fold() -> list[Any]:
        return ranker.rank_batch(
            data["scores"], data["ids"], data["codes"], 10, available=200_000,
            parent_id=pmap.parent_id, details=pmap.details, records=dict,
        )  # fmt: skip

    got = benchmark(fold)
    assert all(matches is not None and len(matches) == 10 for matches in got)  # every query settled: matches built
    tracemalloc.start()
    fold()
    benchmark.extra_info["peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    tracemalloc.stop()
    monkeypatch.setattr(ranker_module, "FOLD_HITS", FOLD_QUERIES * FOLD_WIDTH)
    assert got == fold()
