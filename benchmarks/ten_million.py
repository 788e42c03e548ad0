"""Ten million regions on one machine: the "auto" index at 10M, its RAM, and parent search against exact search.

    python -m benchmarks.ten_million [--n 10000000] [--dim 256] [--per-parent 100] [--queries 200]
                                     [--max-memory 4G] [--workdir DIR] [--nprobe 32,64,128] [--batch 1000,4000]

The data is :func:`benchmarks.scale.make_data`'s kind (clustered region vectors, ``per_parent`` alike regions per
parent, queries are noisy copies of random regions), but streamed: 10M vectors of 256-d are 10 GB of float32, so
they are made slice by slice from a seed (twice: once for the training sample and the queries, once to fill the
index and score every parent exactly) and never held whole.

Build (this process): :func:`~crossscale.index.choose_index` picks the structure for ``n`` vectors within
``max_memory``; the :class:`~crossscale.index.ChunkIndex` is trained on the plan's sample, filled slice by slice and
saved. Exact parents: every query against every vector, each parent scored by its best region.

Search (a fresh process, so that its peak RSS is the search's, not the build's): the index is loaded as a workspace
loads it, with the default encoder (EfficientNet-Lite0) beside it, then :func:`crossscale.query.search_parents`
(what the facade runs, with the :class:`~crossscale.index.ParentMap` and the default ranker) answers each query
alone and the whole batch at once, at the plan's ``nprobe`` (with the ranker's default ``overfetch`` of 8, and with
one deep enough for alike chunks: ``per_parent`` up to a power of two) and at each ``--nprobe``. Prints build time,
index bytes, parent recall@10 against exact, single-query p50 / p95, batched queries per second and peak RSS against
``index bytes + model bytes``; then one batch of each ``--batch`` size in each of :data:`BATCH_WAYS`: with
``ChunkIndex``'s list-by-list scan or faiss' search, the batch folded together or each query ranked alone
(:func:`batched_rows`). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

K = 10
SLICE = 100_000


def _centres(n_parents: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0])
    clusters = rng.standard_normal((64, dim)).astype(np.float32)
    return clusters[rng.integers(0, 64, n_parents)] + 0.6 * rng.standard_normal((n_parents, dim)).astype(np.float32)


def slices(n: int, dim: int, per_parent: int, seed: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, unit vectors of rows start..start+SLICE)``: the same every time for the same arguments."""
    data = SlicedData(n, dim, per_parent, seed)
    for start in range(0, n, SLICE):
        yield start, data.slice(start)


class SlicedData:
    """The streamed data set: rows ``start..start+SLICE`` for any ``start`` (a multiple of :data:`SLICE`), made
    from the seed on demand, so that any slice can be made again without the ones before it."""

    def __init__(self, n: int, dim: int, per_parent: int, seed: int = 0) -> None:
        if SLICE % per_parent or n % per_parent:
            raise ValueError(f"per_parent must divide {SLICE} and n (slices hold whole parents), got {per_parent}")
        self.n, self.dim, self.per_parent, self.seed = n, dim, per_parent, seed
        self.centres = _centres(-(-n // per_parent), dim, seed)

    def slice(self, start: int) -> np.ndarray:
        stop = min(self.n, start + SLICE)
        rng = np.random.default_rng([self.seed, 1, start])
        noise = 0.5 * rng.standard_normal((stop - start, self.dim), np.float32)
        x: np.ndarray = self.centres[np.arange(start, stop) // self.per_parent] + noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def more_queries(data: SlicedData, n: int, seed: int, slices_used: int = 10) -> np.ndarray:
    """``n`` more queries of the build's kind (noisy copies of random regions) for throughput at large batches,
    without exact parents: drawn from ``slices_used`` random slices (parents' clusters are random, so these are
    spread as the build's are), made again from the seed."""
    rng = np.random.default_rng([seed, 2])
    starts = rng.choice(-(-data.n // SLICE), min(slices_used, -(-data.n // SLICE)), replace=False) * SLICE
    per = -(-n // len(starts))
    picked = np.concatenate([data.slice(int(s))[rng.choice(min(SLICE, data.n - int(s)), per)] for s in starts])[:n]
    q = picked + 0.3 * np.asarray(rng.standard_normal(picked.shape), np.float32) / np.sqrt(data.dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.asarray(q, dtype=np.float32)


def rss_mb() -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of this process in MiB (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def memory_mb() -> dict[str, float]:
    """This process's ``VmRSS``, ``VmHWM`` (peak RSS), ``RssAnon`` (its own memory) and ``RssFile`` (pages of mapped
    files: libraries, and an LMDB store's pages it has read, which the OS can drop) in MiB (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


class MemoryPeaks:
    """The peak of each of :func:`memory_mb`'s ``fields`` (MiB) while the ``with`` block runs, in :attr:`peak`,
    sampled every ``interval`` seconds in a thread (the kernel keeps a peak of the whole RSS only, ``VmHWM``, and of
    the process's whole life)."""

    def __init__(self, interval: float = 0.2, fields: Sequence[str] = ("VmRSS", "RssAnon", "RssFile")) -> None:
        self.interval = interval
        self._fields = tuple(fields)
        self.peak = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> dict[str, float]:
        found = memory_mb()
        return {key: found[key] for key in self._fields}

    def _sample(self) -> None:
        for key, value in self._now().items():
            self.peak[key] = max(self.peak[key], value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemoryPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (``/proc/self/clear_refs``); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def build(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Pass 1: the training sample and the queries; pass 2: fill the index and score every parent exactly."""
    from crossscale.index import ChunkIndex, choose_index

    n, dim, per_parent = args.n, args.dim, args.per_parent
    plan = choose_index(n, dim, args.max_memory)
    logger.info(
        "plan for %d x %d within %s: %s (%s), nprobe %s",
        n,
        dim,
        args.max_memory,
        plan.factory,
        plan.reason,
        plan.nprobe,
    )
    rng = np.random.default_rng(7)
    train_rows = np.sort(rng.choice(n, plan.train_size, replace=False)) if plan.train_size else np.zeros(0, np.int64)
    targets = np.sort(rng.choice(n, args.queries, replace=False))
    sample = np.empty((len(train_rows), dim), np.float32)
    picked = np.empty((len(targets), dim), np.float32)
    made = time.perf_counter()
    for start, x in slices(n, dim, per_parent):
        for rows, out in ((train_rows, sample), (targets, picked)):
            lo, hi = np.searchsorted(rows, [start, start + len(x)])
            out[lo:hi] = x[rows[lo:hi] - start]
    made = time.perf_counter() - made
    q = picked + 0.3 * np.asarray(rng.standard_normal(picked.shape), np.float32) / np.sqrt(dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    index = ChunkIndex(dim, plan.factory, device="cpu")
    if plan.search_params is not None:
        index.set_search_params(plan.search_params)
    t = time.perf_counter()
    index.train(sample)
    train_s = time.perf_counter() - t
    del sample
    logger.info("trained on %d vectors in %.1f s (data made in %.1f s)", len(train_rows), train_s, made)
    n_parents = -(-n // per_parent)
    best = np.full((len(q), n_parents), -np.inf, np.float32)
    add_s = 0.0
    for start, x in slices(n, dim, per_parent):
        t = time.perf_counter()
        index.add(x, np.arange(start, start + len(x)))
        add_s += time.perf_counter() - t
        scores = q @ x.T  # exact: each parent by its best region (a slice holds whole parents)
        p0 = start // per_parent
        best[:, p0 : p0 + len(x) // per_parent] = scores.reshape(len(q), -1, per_parent).max(axis=2)
        if start % 1_000_000 == 0:
            logger.info("added %d / %d (%.0f s so far)", start + len(x), n, add_s)
    exact = np.argsort(-best, axis=1, kind="stable")[:, :K]
    t = time.perf_counter()
    index.save(workdir / "index")
    save_s = time.perf_counter() - t
    np.savez(workdir / "queries.npz", q=q, exact=exact)
    info = {
        "n": n,
        "dim": dim,
        "per_parent": per_parent,
        "factory": plan.factory,
        "nprobe": plan.nprobe,
        "plan_bytes": plan.bytes,
        "train_size": len(train_rows),
        "train_s": train_s,
        "add_s": add_s,
        "save_s": save_s,
        "file_bytes": (workdir / "index").stat().st_size,
    }
    (workdir / "build.json").write_text(json.dumps(info))
    return info


def search(workdir: Path, nprobes: Sequence[int], batch_sizes: Sequence[int] = ()) -> dict[str, Any]:
    """Load the index and the default encoder, then time search_parents; peak RSS from after the imports."""
    import torch

    from benchmarks.engines import deep_overfetch, parent_search, recall, timed
    from crossscale.encode import create_encoder
    from crossscale.index import ChunkIndex, ParentMap, search_params
    from crossscale.query import FetchDepth
    from crossscale.types import Box, Chunk, ChunkDetails

    info = json.loads((workdir / "build.json").read_text())
    data = np.load(workdir / "queries.npz")
    q, exact = data["q"], data["exact"]
    base_rss, _ = rss_mb()
    base = memory_mb()
    encoder = create_encoder("efficientnet-lite0", device="cpu")
    model = getattr(encoder, "model", None)
    model_bytes = (
        sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        if isinstance(model, torch.nn.Module)
        else 0
    )
    t = time.perf_counter()
    index, _ = ChunkIndex.load(workdir / "index", device="cpu")
    load_s = time.perf_counter() - t
    after_load, load_peak = rss_mb()
    n, per_parent = info["n"], info["per_parent"]
    # every region's box, kind and label, as a workspace's map holds them (the same for every parent here)
    details = ChunkDetails.of(
        [
            Chunk(Box(16 * (i % 10), 16 * (i // 10), 16 * (i % 10) + 64, 16 * (i // 10) + 64), None, "tile")
            for i in range(per_parent)
        ]
    )
    parents = ParentMap.from_parents(
        (str(p), range(p * per_parent, min(n, (p + 1) * per_parent)), details) for p in range(-(-n // per_parent))
    )
    peak_reset = reset_peak()
    results = []
    plan_nprobe = info["nprobe"]
    sweep = [(plan_nprobe, 8, True), (plan_nprobe, 8, False), (plan_nprobe, deep_overfetch(per_parent), False)]
    sweep += [(p, 8, True) for p in nprobes if p != plan_nprobe]
    # the process's own memory (RssAnon) while searching: the RSS less the mapped files' pages
    with MemoryPeaks() as own:
        for nprobe, overfetch, learned in sweep:
            if nprobe is not None:
                index.set_search_params(search_params(info["factory"], nprobe))
            depth = FetchDepth() if learned else None  # the facade keeps one: what the first queries teach it
            search = parent_search(index, parents, lambda i: str(i // per_parent), overfetch, depth)
            p50, p95, qps, got = timed(search, q)
            t = time.perf_counter()
            for s in range(0, len(q), 64):
                search(q[s : s + 64])
            qps64 = len(q) / (time.perf_counter() - t)
            results.append(
                {
                    "nprobe": nprobe,
                    "overfetch": overfetch,
                    "fetch_depth": learned,
                    "recall": recall(got, exact.tolist()),
                    "p50_ms": p50,
                    "p95_ms": p95,
                    "qps_batch": qps,
                    "qps_64": qps64,
                }
            )
            logger.info("%s", results[-1])
    _, peak = rss_mb()
    # after the peak: making the extra queries holds the data set's parent centres and slices for a while
    batches = _large_batches(index, parents, info, q, exact, plan_nprobe, batch_sizes)
    return {
        "batches": batches,
        "base_rss_mb": base_rss,
        "base_anon_mb": base["RssAnon"],
        "base_file_mb": base["RssFile"],
        "peak_anon_while_searching_mb": own.peak["RssAnon"],
        "model_bytes": model_bytes,
        "load_s": load_s,
        "rss_after_load_mb": after_load,
        "peak_while_loading_mb": load_peak,
        "peak_reset": peak_reset,
        "peak_while_searching_mb": peak,
        "parent_map_bytes": parents.nbytes,
        "results": results,
    }


def _large_batches(
    index: Any,
    parents: Any,
    info: dict[str, Any],
    q: np.ndarray,
    exact: np.ndarray,
    nprobe: int,
    sizes: Sequence[int],
) -> list[dict[str, Any]]:
    """:func:`batched_rows` for the index loaded here, through the query path with the facade's FetchDepth."""
    from benchmarks.engines import parent_search
    from crossscale.index import search_params
    from crossscale.query import FetchDepth

    index.set_search_params(search_params(info["factory"], nprobe))
    data = SlicedData(info["n"], info["dim"], info["per_parent"])
    per_parent = info["per_parent"]
    return batched_rows(
        lambda way: parent_search(index, parents, lambda i: str(i // per_parent), 8, FetchDepth(), fold=way.fold),
        q,
        exact,
        data,
        sizes,
    )


@dataclass(frozen=True)
class BatchWay:
    """A way :func:`batched_rows` searches a batch: ``ChunkIndex``'s list-by-list scan or faiss' search (``scan``),
    the batch's hits folded together or each query's ranked alone (``fold``), re-scored against a store's vectors
    or not (``rescore``: only through a workspace), under a call's ``params`` (a ``crossscale.SearchParams``: only
    through a workspace; ``None``: the index's own)."""

    name: str
    scan: bool
    fold: bool
    rescore: bool = True
    params: Any = None


#: the ways :func:`batched_rows` searches a batch, now first
BATCH_WAYS = (
    BatchWay("list scan, batch folded", True, True),  # now
    BatchWay("list scan, each query alone", True, False),  # 2026-12-05, late
    BatchWay("faiss, each query alone", False, False),  # before
)


def batched_rows(
    make_search: Callable[[BatchWay], Callable[[np.ndarray], list[list[int]]]],
    q: np.ndarray,
    exact: np.ndarray,
    data: SlicedData,
    sizes: Sequence[int],
    ways: Sequence[BatchWay] = BATCH_WAYS,
) -> list[dict[str, Any]]:
    """Queries per second of one batch of each size, in each of ``ways`` (:data:`BATCH_WAYS`): with
    ``ChunkIndex``'s list-by-list scan or faiss' search, and with the search ``make_search(way)`` makes (the batch's
    hits folded together depth by depth, or each query's ranked alone through a ranker without ``rank_batch``),
    one after the other, each through a fresh ``make_search`` that first learns from 200 queries (as a FetchDepth
    would from a user's earlier queries). Each batch is searched once, untimed, before the ways are timed, so that
    every way finds the pages of a workspace's store that the batch reads in the page cache (at 10M regions the
    store is 8.5 GB: the way timed first read it from disk, and looked slower). A batch starts with the queries that
    have exact parents (its recall) and goes on with :func:`more_queries`."""
    from benchmarks.engines import recall
    from crossscale.index import _list_scan

    if not sizes:
        return []
    pool = np.concatenate([q, more_queries(data, max(0, max(sizes) - len(q)), seed=5)])
    rows = []
    real = _list_scan.pays
    for size in sizes:
        make_search(ways[0])(pool[:size])  # warms the page cache for every way
        for way in ways:
            _list_scan.pays = real if way.scan else (lambda *args: False)  # type: ignore[assignment]
            try:
                search = make_search(way)
                search(pool[:200])
                t = time.perf_counter()
                got = search(pool[:size])
                qps = size / (time.perf_counter() - t)
            finally:
                _list_scan.pays = real
            known = min(size, len(q))
            rows.append(
                {"batch": size, "how": way.name, "qps": qps, "recall": recall(got[:known], exact[:known].tolist())}
            )
            logger.info("%s", rows[-1])
    return rows


def search_in_fresh_process(module: str, workdir: Path, options: Sequence[str]) -> dict[str, Any]:
    """Run ``python -m module --search-only --workdir workdir *options`` (a fresh process: as a serving process
    opens the index, and its memory counted from nothing) and return the ``search.json`` it writes there."""
    cmd = [sys.executable, "-m", module, "--search-only", "--workdir", str(workdir), *options]
    subprocess.run(cmd, check=True, env=os.environ.copy())
    found: dict[str, Any] = json.loads((workdir / "search.json").read_text())
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ten_million", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--per-parent", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--max-memory", default="4G")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the index here (default: a temp folder)")
    parser.add_argument("--nprobe", default="", help="more nprobe values to search with, e.g. 32,64")
    parser.add_argument("--batch", default="1000,4000", help="batch sizes for batched throughput, each in BATCH_WAYS")
    parser.add_argument("--search-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    nprobes = [int(v) for v in args.nprobe.split(",") if v.strip()]
    batch_sizes = [int(v) for v in args.batch.split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.search_only:
            (workdir / "search.json").write_text(json.dumps(search(workdir, nprobes, batch_sizes)))
            return 0
        t = time.perf_counter()
        info = build(args, workdir)
        logger.info("built in %.0f s: %s", time.perf_counter() - t, info)
        found = search_in_fresh_process(
            "benchmarks.ten_million", workdir, ["--nprobe", args.nprobe, "--batch", args.batch]
        )
    _report(info, found)
    return 0


def _report(info: dict[str, Any], found: dict[str, Any]) -> None:
    mib = 2**20
    index_mb = info["file_bytes"] / mib
    model_mb = found["model_bytes"] / mib
    print(
        f"{info['n']:,} vectors of dim {info['dim']}, {info['n'] // info['per_parent']:,} parents; "
        f"{info['factory']} (plan {info['plan_bytes'] / mib:.0f} MiB, file {index_mb:.0f} MiB); "
        f"trained on {info['train_size']:,} in {info['train_s']:.0f} s, added in {info['add_s']:.0f} s, "
        f"saved in {info['save_s']:.1f} s, loaded in {found['load_s']:.1f} s"
    )
    print(
        "| nprobe | ranker overfetch | FetchDepth | parent recall@10 vs exact | single p50 / p95 ms "
        "| batched q/s (all) | batches of 64 q/s |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in found["results"]:
        print(
            f"| {r['nprobe']} | {r['overfetch']} | {'yes' if r['fetch_depth'] else 'no'} | {r['recall']:.3f} "
            f"| {r['p50_ms']:.2f} / {r['p95_ms']:.2f} | {r['qps_batch']:.0f} | {r['qps_64']:.0f} |"
        )
    print(
        f"RSS: {found['base_rss_mb']:.0f} MiB after the imports; {found['rss_after_load_mb']:.0f} MiB with the "
        f"encoder ({model_mb:.0f} MiB of weights) and the index loaded (peak while loading "
        f"{found['peak_while_loading_mb']:.0f}); peak while searching {found['peak_while_searching_mb']:.0f} MiB"
        f"{'' if found['peak_reset'] else ' (the peak could not be reset: it includes loading)'}; "
        f"index + model = {index_mb + model_mb:.0f} MiB; parent map {found['parent_map_bytes'] / mib:.1f} MiB"
    )
    if found.get("batches"):
        print("| batch | search | parent recall@10 (queries with exact parents) | batched q/s |")
        print("| ---: | --- | ---: | ---: |")
        for row in found["batches"]:
            print(f"| {row['batch']:,} | {row['how']} | {row['recall']:.3f} | {row['qps']:.0f} |")
    if "peak_anon_while_searching_mb" in found:
        own = found["peak_anon_while_searching_mb"]
        print(
            f"own memory (RssAnon): {found['base_anon_mb']:.0f} MiB after the imports (and {found['base_file_mb']:.0f} "
            f"MiB of mapped library pages); peak while searching {own:.0f} MiB = "
            f"{own / (index_mb + model_mb):.2f}x index + model; peak RSS = "
            f"{found['peak_while_searching_mb'] / (index_mb + model_mb):.2f}x"
        )


if __name__ == "__main__":
    sys.exit(main())
