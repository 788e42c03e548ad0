"""Parent search on alike chunks: crossscale (FAISS, Milvus Lite backend) vs raw Milvus Lite grouped search and the
seed's match-then-aggregate, same vectors (a small `benchmarks.engines`; the 1M run is in docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.engines import (
    Search,
    build_milvus_raw,
    crossscale_search,
    exact_parents,
    milvus_raw,
    recall,
    seed_match_then_aggregate,
)
from benchmarks.scale import make_data
from crossscale.index import ChunkIndex
from crossscale.query import FetchDepth

N, PER_PARENT, QUERIES = 20_000, 100, 20


@pytest.fixture(scope="module")
def alike() -> dict[str, Any]:
    data = make_data(N, 128, PER_PARENT, QUERIES)
    data["exact"] = exact_parents(data["x"], data["parent_of"], data["q"])
    return data


def _check(search: Search, data: dict[str, Any], floor: float) -> Any:
    got = search(data["q"])
    assert recall(got, data["exact"]) >= floor
    return got


@pytest.mark.benchmark(group="parents-of-alike-chunks")
def test_crossscale_flat(benchmark, alike) -> None:  # type: ignore[no-untyped-def]
    index = ChunkIndex(alike["x"].shape[1], "Flat", device="cpu")
    index.add(alike["x"], np.arange(N))
    search = crossscale_search(index, alike["parent_of"])
    benchmark(_check, search, alike, 1.0)


@pytest.mark.benchmark(group="parents-of-alike-chunks")
def test_crossscale_flat_fetch_depth(benchmark, alike) -> None:  # type: ignore[no-untyped-def]
    """The same with a FetchDepth across the rounds, as the facade keeps one: after the first round, one search
    as deep as these alike chunks need instead of doubling from 80 (same results)."""
    index = ChunkIndex(alike["x"].shape[1], "Flat", device="cpu")
    index.add(alike["x"], np.arange(N))
    depth = FetchDepth()
    search = crossscale_search(index, alike["parent_of"], fetch_depth=depth)
    plain = crossscale_search(index, alike["parent_of"])(alike["q"])
    assert search(alike["q"]) == plain and depth.factor > 1
    benchmark(_check, search, alike, 1.0)


@pytest.mark.benchmark(group="parents-of-alike-chunks")
def test_seed_match_then_aggregate(benchmark, alike) -> None:  # type: ignore[no-untyped-def]
    got = benchmark(_check, seed_match_then_aggregate(alike["x"], alike["parent_of"]), alike, 0.0)
    assert np.mean([len(g) for g in got]) < 10  # the seed's flaw, kept honest: fewer parents than asked


@pytest.fixture(scope="module")
def lite(alike: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")
    from crossscale.index import MilvusChunkIndex

    root: Path = tmp_path_factory.mktemp("lite")
    client, name = build_milvus_raw(str(root / "raw.db"), alike["x"], alike["parent_of"])
    ours = MilvusChunkIndex(alike["x"].shape[1], str(root / "ours.db"), "chunks")
    ours.add(alike["x"], np.arange(N), groups=[str(int(p)) for p in alike["parent_of"]])
    ours.commit(0)  # flushed, as a workspace's save leaves it (Lite searches unflushed rows several times slower)
    yield {"raw": milvus_raw(client, name), "ours": crossscale_search(ours, alike["parent_of"])}
    client.close()
    ours.close()


@pytest.mark.benchmark(group="parents-of-alike-chunks")
def test_raw_milvus_lite_grouped_search(benchmark, alike, lite) -> None:  # type: ignore[no-untyped-def]
    got = benchmark(_check, lite["raw"], alike, 0.0)
    assert np.mean([len(g) for g in got]) < 10  # Lite groups a fixed window: one parent fills it


@pytest.mark.benchmark(group="parents-of-alike-chunks")
def test_crossscale_milvus_lite_backend(benchmark, alike, lite) -> None:  # type: ignore[no-untyped-def]
    benchmark(_check, lite["ours"], alike, 1.0)


# ---------------------------------------------------------------------- a batch folded depth by depth
BATCH = 500


@pytest.fixture(scope="module")
def alike_batch() -> dict[str, Any]:
    """The same kind of data (20k alike regions of 128-d, 100 per parent), 500 queries, in an IVF-SQ8 index whose
    hits are re-scored against the stored (float16) vectors, as a workspace's are; the stored vectors are read
    from numpy here, not LMDB, so what a lookup costs is left out (it favours ranking each query alone)."""
    data: dict[str, Any] = dict(make_data(N, 128, PER_PARENT, BATCH, seed=2))
    data["exact"] = exact_parents(data["x"], data["parent_of"], data["q"])
    index = ChunkIndex(128, "IVF64,SQ8", device="cpu")
    index.train(data["x"])
    index.add(data["x"], np.arange(N))
    index.set_search_params("nprobe=16")
    stored = data["x"].astype(np.float16)
    data["index"] = index
    data["stored"] = lambda ids: (np.asarray(ids, np.int64), stored[np.asarray(ids, np.int64)].astype(np.float32))
    return data


@pytest.mark.benchmark(group="batch-fold")
@pytest.mark.parametrize("fold", [True, False], ids=["folded together", "each query alone"])
@pytest.mark.parametrize("rescore", [True, False], ids=["re-scored", "index scores"])
def test_batch_fold(benchmark, alike_batch, fold: bool, rescore: bool) -> None:  # type: ignore[no-untyped-def]
    """A batch of 500 queries over alike chunks (most need 160-320 hits before 10 parents show), ranked with the
    batch folded together depth by depth (one rank_batch and one stored-vector lookup per depth) or each query
    alone (one rank and one lookup per query and depth: the path before). The same parents either way."""
    options: dict[str, Any] = {"exact_vectors": alike_batch["stored"] if rescore else None}
    search = crossscale_search(alike_batch["index"], alike_batch["parent_of"], fold=fold, **options)
    other = crossscale_search(alike_batch["index"], alike_batch["parent_of"], fold=not fold, **options)
    got = benchmark(search, alike_batch["q"])
    assert got == other(alike_batch["q"])
    assert recall(got, alike_batch["exact"]) >= 0.9
