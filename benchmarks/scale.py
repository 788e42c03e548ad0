"""The "auto" index at scale: what choose_index picks for N region vectors, against exact search, in one run.

    python -m benchmarks.scale [--n 1000000] [--dim 256] [--per-parent 100] [--queries 200] [--max-memory 4G]

Data: N unit vectors in N / per-parent parents. Each parent has a centre; its regions are the centre plus noise,
so a parent's regions are alike (the case where fetching k chunks returns fewer than k parents), and parents
are spread over 64 clusters (so that IVF lists are uneven, as with real photos). Queries are noisy copies of
random regions. Both sides go through :class:`~crossscale.index.ChunkIndex` and the same max-per-parent fold; the
exact side is a Flat index of the same vectors. Prints build time, index bytes, parent recall@10 against exact,
single-query latency p50 / p95, and batched queries per second. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.conftest import max_per_parent
from crossscale.index import ChunkIndex, choose_index, search_params

logger = logging.getLogger(__name__)

K_PARENTS = 10
OVERFETCH = 8  # ParentRanker's default


def make_data(n: int, dim: int, per_parent: int, queries: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parents = max(1, n // per_parent)
    clusters = rng.standard_normal((64, dim)).astype(np.float32)
    centres = clusters[rng.integers(0, 64, parents)] + 0.6 * rng.standard_normal((parents, dim)).astype(np.float32)
    parent_of = np.repeat(np.arange(parents), per_parent)[:n]
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in slices: bounded temporary memory
        stop = min(n, start + 100_000)
        x[start:stop] = centres[parent_of[start:stop]] + 0.5 * rng.standard_normal((stop - start, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    targets = rng.choice(n, queries, replace=False)
    q = x[targets] + 0.3 * rng.standard_normal((queries, dim)).astype(np.float32) / np.sqrt(dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return {"x": x, "parent_of": parent_of, "q": q.astype(np.float32)}


def top_parents(index: ChunkIndex, parent_of: np.ndarray, q: np.ndarray) -> list[list[int]]:
    """Top K_PARENTS parents per query by their best chunk, from one search of K_PARENTS * OVERFETCH chunks."""
    scores, ids = index.search(q, K_PARENTS * OVERFETCH)
    return max_per_parent(scores, ids, parent_of, K_PARENTS)


@dataclass
class Run:
    factory: str
    build_s: float
    bytes: int
    p50_ms: float
    p95_ms: float
    qps_batched: float
    parents: list[list[int]]


def build_index(factory: str, nprobe: int | None, train_size: int, x: np.ndarray) -> ChunkIndex:
    """A CPU ChunkIndex of ``x`` (ids = row numbers): trained on a fixed sample of ``train_size`` rows if it needs
    training, filled in slices of 100k."""
    index = ChunkIndex(x.shape[1], factory, device="cpu")
    if nprobe is not None:
        index.set_search_params(search_params(factory, nprobe))
    if not index.is_trained:
        rows = np.random.default_rng(1).choice(len(x), min(len(x), train_size), replace=False)
        index.train(x[np.sort(rows)])
    for s in range(0, len(x), 100_000):
        index.add(x[s : s + 100_000], np.arange(s, min(len(x), s + 100_000)))
    return index


def measure(factory: str, nprobe: int | None, train_size: int, data: dict[str, np.ndarray]) -> Run:
    x, q = data["x"], data["q"]
    start = time.perf_counter()
    index = build_index(factory, nprobe, train_size, x)
    build = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:  # the serialised index: what faiss holds in RAM, give or take
        index.save(Path(tmp) / "index")
        size = (Path(tmp) / "index").stat().st_size
    single = []
    for row in q:
        t = time.perf_counter()
        index.search(row[None, :], K_PARENTS * OVERFETCH)
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    parents = top_parents(index, data["parent_of"], q)
    batched = len(q) / (time.perf_counter() - t)
    return Run(
        factory,
        build,
        size,
        1000 * float(np.median(single)),
        1000 * float(np.percentile(single, 95)),
        batched,
        parents,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--per-parent", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--max-memory", default="4G")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = make_data(args.n, args.dim, args.per_parent, args.queries)
    plan = choose_index(args.n, args.dim, args.max_memory)
    logger.info("auto plan: %s (%s), nprobe %s, train on %d", plan.factory, plan.reason, plan.nprobe, plan.train_size)
    exact = measure("Flat", None, 0, data)
    auto = measure(plan.factory, plan.nprobe, plan.train_size, data)
    recall = float(
        np.mean([len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(auto.parents, exact.parents, strict=True)])
    )
    print(f"{args.n:,} vectors of dim {args.dim}, {args.n // args.per_parent:,} parents, {args.queries} queries")
    print("| index | build s | bytes | parent recall@10 vs exact | single p50 / p95 ms | batched q/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r, rec in ((exact, 1.0), (auto, recall)):
        print(
            f"| {r.factory} | {r.build_s:.1f} | {r.bytes / 2**20:.0f} MiB | {rec:.3f} "
            f"| {r.p50_ms:.2f} / {r.p95_ms:.2f} | {r.qps_batched:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
