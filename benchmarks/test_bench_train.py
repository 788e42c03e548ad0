"""Training a large IVF index: faiss' flat k-means vs crossscale's two-level k-means (``ChunkIndex.train``).

Same vectors (clustered unit vectors: ``benchmarks.scale``'s kind, 64 alike regions per parent), same structure
(``IVF4096,Flat``, inner product), same faiss; only how the 4,096 centroids are found differs. Each test then
fills the index and searches it with 200 noisy copies of its vectors at ``nprobe`` 1, where recall shows the
clustering most: a training that clustered worse would find fewer of their exact 10 nearest neighbours
(``recall_at_10`` in ``extra_info``; both sides are checked against a floor, and compared in docs/benchmarks.md).

Run: ``python -m pytest benchmarks/test_bench_train.py --benchmark-enable``. Results: docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pytest

from benchmarks.scale import make_data
from crossscale.index import ChunkIndex

LISTS = 4096
DIM = 64
TRAIN = 64 * LISTS  # what choose_index trains such an index on
NPROBE = 1


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    d = make_data(TRAIN, DIM, 64, 200, seed=3)
    x = np.ascontiguousarray(d["x"] / np.linalg.norm(d["x"], axis=1, keepdims=True), dtype=np.float32)
    q = np.ascontiguousarray(d["q"] / np.linalg.norm(d["q"], axis=1, keepdims=True), dtype=np.float32)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    return {"x": x, "q": q, "exact": exact}


def _recall_at_10(index: Any, data: dict[str, np.ndarray]) -> float:
    """Share of the queries' exact 10 nearest vectors the filled index returns in its first 10."""
    _, ids = index.search(data["q"], 10)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, data["exact"], strict=True)]))


def _raw() -> Any:
    index = faiss.index_factory(DIM, f"IVF{LISTS},Flat", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).nprobe = NPROBE
    return index


@pytest.mark.benchmark(group="train-ivf4096")
def test_faiss_flat_kmeans(benchmark, data) -> None:  # type: ignore[no-untyped-def]
    x = data["x"]
    index = benchmark.pedantic(lambda: (i := _raw()).train(x) or i, rounds=2, iterations=1)
    index.add(x)
    recall = _recall_at_10(index, data)
    benchmark.extra_info["recall_at_10"] = recall
    assert recall > 0.9


@pytest.mark.benchmark(group="train-ivf4096")
def test_crossscale_two_level_kmeans(benchmark, data) -> None:  # type: ignore[no-untyped-def]
    x = data["x"]

    def train() -> ChunkIndex:
        index = ChunkIndex(DIM, f"IVF{LISTS},Flat", device="cpu")
        index.train(x)
        return index

    index = benchmark.pedantic(train, rounds=2, iterations=1)
    index.add(x, np.arange(len(x)))
    index.set_search_params(f"nprobe={NPROBE}")
    recall = _recall_at_10(index, data)
    benchmark.extra_info["recall_at_10"] = recall
    assert recall > 0.9
