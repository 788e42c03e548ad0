"""Parent search at scale against the engines a user would pick instead, on the same vectors, in one run.

    python -m benchmarks.engines [--n 1000000] [--dim 256] [--per-parent 100] [--queries 100] [--skip-milvus]

The data is :func:`benchmarks.scale.make_data`'s: clustered region vectors, 100 alike regions per parent (the case
where fetching k chunks returns fewer than k parents). Every system is asked for the 10 best parents of each query,
ranked by their best region, and scored by parent recall@10 against exact search (numpy, all vectors). Rows:

- **crossscale, auto index**: :func:`crossscale.query.search_parents` (what the facade runs) over the
  :class:`~crossscale.index.ChunkIndex` that ``index_factory="auto"`` picks for N vectors within 4 GiB, with the
  :class:`~crossscale.index.ParentMap` and the default :class:`~crossscale.rank.ParentRanker` (``box="best"``).
- **crossscale, Flat**: the same over an exact Flat index.
- **..., FetchDepth**: the same with a :class:`~crossscale.query.FetchDepth` kept across the run's searches, as the
  facade keeps one: once queries have needed deeper searches, the first search goes that deep (same results);
  **..., no FetchDepth**: without it (every query starts at 80 chunks and doubles).
- **..., ranker overfetch N**: the same with ``ParentRanker(overfetch=N)``, N the chunks per parent rounded up to a
  power of two: the first search is deep enough for alike chunks (the tuning docs/scaling.md gives for such
  collections).
- **crossscale, Milvus Lite backend**: the same over :class:`~crossscale.index.MilvusChunkIndex` (grouped search).
- **Milvus Lite grouped search** (raw pymilvus): a FLAT IP collection with a parent field, ``search(...,
  group_by_field="parent", limit=10)``: the server returns 10 distinct parents.
- **seed: match, then aggregate**: docarray 0.21's ``match`` as the Jina 2 tutorial used it: exhaustive cosine
  distances of each query against every region with numpy, the ``limit=10`` nearest regions, then each parent
  scored by its nearest region (min distance). It returns the parents among those 10 regions: often fewer than 10.

Single-query latency is measured on each query alone; throughput on the whole batch at once. Results:
docs/benchmarks.md and docs/scaling.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scale import build_index, make_data
from crossscale.index import ParentMap, choose_index
from crossscale.protocols import VectorLookup
from crossscale.query import FetchDepth, search_parents
from crossscale.rank import ParentRanker
from crossscale.types import Box, Chunk, ChunkDetails, ChunkRecord, Query

logger = logging.getLogger(__name__)

K = 10
BOX = Box(0, 0, 8, 8)


@dataclass
class Row:
    system: str
    build_s: float
    p50_ms: float
    p95_ms: float
    qps: float
    recall: float
    returned: float  # mean parents returned per query


def exact_parents(x: np.ndarray, parent_of: np.ndarray, q: np.ndarray) -> list[list[int]]:
    """The 10 parents with the best regions, by brute force over every vector."""
    out = []
    n_parents = int(parent_of.max()) + 1
    for start in range(0, len(q), 16):
        scores = q[start : start + 16] @ x.T
        for row in scores:
            best = np.full(n_parents, -np.inf, np.float32)
            np.maximum.at(best, parent_of, row)
            out.append(np.argsort(-best, kind="stable")[:K].tolist())
    return out


Search = Callable[[np.ndarray], list[list[int]]]
"""Query vectors → the parents (as ints) of each, best first."""


def timed(search: Search, q: np.ndarray) -> tuple[float, float, float, list[list[int]]]:
    """p50 and p95 ms of one query at a time, batched queries per second, and the batch's parents."""
    search(q[:2])  # warm up
    single = []
    for row in q:
        t = time.perf_counter()
        search(row[None, :])
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    parents = search(q)
    qps = len(q) / (time.perf_counter() - t)
    return 1000 * float(np.median(single)), 1000 * float(np.percentile(single, 95)), qps, parents


def recall(got: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(g) & set(e)) / len(e) for g, e in zip(got, exact, strict=True)]))


def deep_overfetch(per_parent: int) -> int:
    """A ranker ``overfetch`` whose first search is deep enough for ``per_parent`` alike chunks: that many, up to a
    power of two (the setting docs/scaling.md gives for such collections)."""
    return 1 << (per_parent - 1).bit_length()


class RankedAlone:
    """``ranker`` without its ``rank_batch``: the query path then folds each query's hits alone, one ``rank`` call
    (and, re-scoring, one stored-vector lookup per depth) per query. That is what it did before 2026-12-06 for every
    query the first depth left unsettled (with alike chunks, most), so it is the "before" of the batch fold."""

    def __init__(self, ranker: ParentRanker) -> None:
        self._ranker = ranker
        self.overfetch = ranker.overfetch
        self.group_size = ranker.group_size

    def rank(self, fetch: Any, top_k: int, *, available: int) -> Any:
        return self._ranker.rank(fetch, top_k, available=available)


def parent_search(
    index: Any,
    parents: ParentMap,
    parent_name: Callable[[int], str],
    overfetch: int = 8,
    fetch_depth: FetchDepth | None = None,
    *,
    exact_vectors: VectorLookup | None = None,
    fold: bool = True,
) -> Search:
    """The facade's query path over ``index`` and ``parents`` (a workspace's parent map holds every chunk's box,
    kind and label, so no record is read: the batch is folded at once); a record lookup made from each chunk's
    parent's name is there for the queries the ranker takes alone. ``overfetch`` is the ranker's (8, its default:
    a first search of 80 chunks for 10 parents); ``fetch_depth`` learns how deep the first search goes, across
    the searches made with it, as the facade's does; ``exact_vectors`` re-scores the hits (as the facade does for
    an SQ8, PQ or projected index); ``fold=False`` ranks each query alone (:class:`RankedAlone`)."""
    ranker = ParentRanker(box="best", overfetch=overfetch)

    def records(ids: Any) -> dict[int, ChunkRecord]:
        return {int(i): ChunkRecord(int(i), parent_name(int(i)), BOX, "tile") for i in ids}

    def search(q: np.ndarray) -> list[list[int]]:
        queries = [Query(v, None) for v in q]
        found = search_parents(
            queries,
            K,
            index=index,
            records=records,
            ranker=ranker if fold else RankedAlone(ranker),
            parents=parents,
            details=parents.details,
            fetch_depth=fetch_depth,
            exact_vectors=exact_vectors,
        )
        return [[int(m.parent_id) for m in row] for row in found]

    return search


def crossscale_search(
    index: Any, parent_of: np.ndarray, overfetch: int = 8, fetch_depth: FetchDepth | None = None, **options: Any
) -> Search:
    """:func:`parent_search` with the parent map of ``parent_of`` (chunk id → parent number); ``options`` go to it."""
    n_parents = int(parent_of.max()) + 1
    starts = np.searchsorted(parent_of, np.arange(n_parents))
    stops = np.append(starts[1:], len(parent_of))
    parents = ParentMap.from_parents(
        (f"{p}", range(a, b), ChunkDetails.of([Chunk(BOX, None, "tile")] * (b - a)))
        for p, (a, b) in enumerate(zip(starts, stops, strict=True))
    )
    return parent_search(index, parents, lambda i: f"{parent_of[i]}", overfetch, fetch_depth, **options)


def seed_match_then_aggregate(x: np.ndarray, parent_of: np.ndarray) -> Search:
    """docarray 0.21 ``match(limit=10, metric="cosine")`` (numpy), then min distance per parent."""

    def search(q: np.ndarray) -> list[list[int]]:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)  # docarray normalises the stored embeddings per call
        dist = 1.0 - qn @ xn.T
        out = []
        for row in dist:
            top = np.argpartition(row, K)[:K]
            top = top[np.argsort(row[top], kind="stable")]
            best: dict[int, float] = {}
            for i in top:
                p = int(parent_of[i])
                best[p] = min(best.get(p, np.inf), float(row[i]))
            out.append(sorted(best, key=best.__getitem__))
        return out

    return search


def milvus_raw(client: Any, name: str) -> Search:
    def search(q: np.ndarray) -> list[list[int]]:
        res = client.search(
            name,
            data=list(q),
            limit=K,
            group_by_field="parent",
            output_fields=["parent"],
            search_params={"metric_type": "IP"},
        )
        return [[int(h["entity"]["parent"]) for h in hits] for hits in res]

    return search


def build_milvus_raw(path: str, x: np.ndarray, parent_of: np.ndarray) -> tuple[Any, str]:
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(path)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("parent", DataType.VARCHAR, max_length=64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=x.shape[1])
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    client.create_collection("raw", schema=schema, index_params=params, consistency_level="Strong")
    for s in range(0, len(x), 5000):
        rows = [{"id": i, "parent": str(int(parent_of[i])), "vector": x[i]} for i in range(s, min(len(x), s + 5000))]
        client.insert("raw", rows)
    client.flush("raw")
    return client, "raw"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engines", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--per-parent", type=int, default=100)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--skip-milvus", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = make_data(args.n, args.dim, args.per_parent, args.queries)
    x, parent_of, q = data["x"], data["parent_of"], data["q"]
    exact = exact_parents(x, parent_of, q)
    rows: list[Row] = []

    def run(system: str, build_s: float, search: Search) -> None:
        p50, p95, qps, got = timed(search, q)
        rows.append(Row(system, build_s, p50, p95, qps, recall(got, exact), float(np.mean([len(g) for g in got]))))
        logger.info("%s", rows[-1])

    plan = choose_index(len(x), x.shape[1], "4G")
    for factory, nprobe in ((plan.factory, plan.nprobe), ("Flat", None)):
        start = time.perf_counter()
        index = build_index(factory, nprobe, plan.train_size, x)
        built = time.perf_counter() - start
        name = f"crossscale, {factory}" + (f" nprobe {nprobe}" if nprobe else "")
        run(
            f"{name}, FetchDepth (the facade's default)",
            built,
            crossscale_search(index, parent_of, fetch_depth=FetchDepth()),
        )
        run(f"{name}, no FetchDepth", built, crossscale_search(index, parent_of))
        deep = deep_overfetch(args.per_parent)
        run(f"{name}, ranker overfetch {deep}", built, crossscale_search(index, parent_of, overfetch=deep))
        del index
    run("seed: match (numpy, limit 10), then min per parent", 0.0, seed_match_then_aggregate(x, parent_of))
    if not args.skip_milvus:
        from crossscale.index import MilvusChunkIndex

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            client, name = build_milvus_raw(str(Path(tmp) / "raw.db"), x, parent_of)
            built = time.perf_counter() - start
            run("Milvus Lite grouped search (raw pymilvus, FLAT)", built, milvus_raw(client, name))
            client.drop_collection(name)
            client.close()
            start = time.perf_counter()
            backend = MilvusChunkIndex(x.shape[1], str(Path(tmp) / "ours.db"), "chunks")
            for s in range(0, len(x), 100_000):
                stop = min(len(x), s + 100_000)
                backend.add(x[s:stop], np.arange(s, stop), groups=[str(int(p)) for p in parent_of[s:stop]])
            backend.commit(0)
            run("crossscale, Milvus Lite backend", time.perf_counter() - start, crossscale_search(backend, parent_of))
            backend.close()
    print(f"{len(x):,} vectors of dim {x.shape[1]}, {int(parent_of.max()) + 1:,} parents, {len(q)} queries, top {K}")
    print("| system | build s | single p50 / p95 ms | batched q/s | parent recall@10 | parents returned |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r.system} | {r.build_s:.1f} | {r.p50_ms:.2f} / {r.p95_ms:.2f} | {r.qps:,.0f} | {r.recall:.3f} "
            f"| {r.returned:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
