"""Ten million regions through a real workspace: one ``index()`` call, the LMDB store, the "auto" index's
migrations as it grows, reopening, searching and verifying.

    python -m benchmarks.ten_million_workspace [--n 10000000] [--dim 256] [--per-parent 100] [--queries 200]
                                               [--max-memory 4G] [--batch-size 16] [--workdir DIR]
                                               [--batch 1000,4000]

:mod:`benchmarks.ten_million` measures the index alone; this runs the same data through
:class:`~crossscale.CrossScaleSearch` as a user's collection would go. ``n / per_parent`` parents are indexed in
**one** ``cs.index()`` call from a generator (never held whole): each parent is a small PNG whose colour is its
number, a plugged-in segmenter proposes ``per_parent`` boxes of it, and a plugged-in
:class:`~crossscale.protocols.RegionEncoder` returns that parent's rows of the streamed data set
(:class:`benchmarks.ten_million.SlicedData`) for them. So the store keeps every image, box and (float16) vector,
and the ``"auto"`` index migrates from Flat through IVF to IVF-SQ8 as the collection grows, within ``max_memory``.

Ingest (this process): parents and regions per second, each migration (structure, vectors, seconds), peak RSS,
bytes on disk. Search (a fresh process, read-only as a serving process would open it): open time, RSS, parent
recall@10 against exact search of the same vectors, single-query p50 / p95 and batched queries per second through
``cs.search_vectors``, and with ``--batch`` one batch of each size in each of
:data:`benchmarks.ten_million.BATCH_WAYS` (list-by-list scan or faiss' search; the batch folded together or each
query ranked alone: :func:`benchmarks.ten_million.batched_rows`) and with ``cs.rescore`` off, then ``verify()``.
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.engines import Search, recall, timed
from benchmarks.ten_million import (
    BATCH_WAYS,
    SLICE,
    BatchWay,
    K,
    MemoryPeaks,
    SlicedData,
    batched_rows,
    memory_mb,
    reset_peak,
    search_in_fresh_process,
    slices,
)

logger = logging.getLogger(__name__)

SIDE = 224  # each parent image is SIDE x SIDE
ENCODER_NAME = "ten-million-synthetic"


def grid_boxes(per_parent: int) -> list[Any]:
    """``per_parent`` 64-px boxes on a 16-px grid of a SIDE x SIDE image, 10 to a row."""
    from crossscale.types import Box

    return [
        Box(16 * (i % 10), 16 * (i // 10) % (SIDE - 64), 16 * (i % 10) + 64, 16 * (i // 10) % (SIDE - 64) + 64)
        for i in range(per_parent)
    ]


def parent_png(p: int) -> bytes:
    """A SIDE x SIDE PNG whose colour encodes the parent number ``p`` (lossless, so the encoder reads it back)."""
    out = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), ((p >> 16) & 255, (p >> 8) & 255, p & 255)).save(out, format="PNG")
    return out.getvalue()


def parent_of(image: Image.Image) -> int:
    r, g, b = image.convert("RGB").getpixel((0, 0))  # type: ignore[misc]
    return (int(r) << 16) | (int(g) << 8) | int(b)


class GridSegmenter:
    """Proposes the same ``per_parent`` boxes of every image (the pipeline crops nothing: the encoder pools)."""

    def __init__(self, per_parent: int) -> None:
        self.boxes = grid_boxes(per_parent)

    @property
    def name(self) -> str:
        return f"grid-{len(self.boxes)}"

    def segment(self, images: Sequence[Image.Image]) -> list[list[Any]]:
        from crossscale.types import Chunk

        return [[Chunk(box, None, "tile") for box in self.boxes] for _ in images]


class SlicedDataEncoder:
    """A :class:`~crossscale.protocols.RegionEncoder` whose region vectors are parent ``p``'s rows of the data set
    (``p`` read from the image's colour); a whole image's vector is the mean of its rows. One slice is cached:
    parents arrive in order, so each slice is made once."""

    def __init__(self, data: SlicedData) -> None:
        self.data = data
        self._start = -1
        self._rows = np.zeros((0, data.dim), np.float32)

    @property
    def name(self) -> str:
        return ENCODER_NAME

    @property
    def dim(self) -> int:
        return self.data.dim

    def _parent_rows(self, p: int) -> np.ndarray:
        first = p * self.data.per_parent
        start = first - first % SLICE
        if start != self._start:
            self._rows, self._start = self.data.slice(start), start
        return self._rows[first - start : first - start + self.data.per_parent]

    def encode_regions(self, image: Image.Image, boxes: Sequence[Any]) -> np.ndarray:
        rows = self._parent_rows(parent_of(image))
        if len(boxes) != len(rows):
            raise ValueError(f"expected {len(rows)} boxes, got {len(boxes)}")
        return rows.copy()

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = np.stack([self._parent_rows(parent_of(im)).mean(axis=0) for im in images])
        return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True), dtype=np.float32)


def queries_and_exact(data: SlicedData, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` queries (noisy copies of random regions, as :mod:`benchmarks.ten_million` makes them) and each
    one's exact top-K parents (every parent by its best region), in two streamed passes."""
    rng = np.random.default_rng(11)
    targets = np.sort(rng.choice(data.n, count, replace=False))
    picked = np.concatenate(
        [data.slice(s)[targets[(targets >= s) & (targets < s + SLICE)] - s] for s in range(0, data.n, SLICE)]
    )
    q = picked + 0.3 * np.asarray(rng.standard_normal(picked.shape), np.float32) / np.sqrt(data.dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    best = np.full((count, data.n // data.per_parent), -np.inf, np.float32)
    for start, x in slices(data.n, data.dim, data.per_parent, data.seed):
        p0 = start // data.per_parent
        best[:, p0 : p0 + len(x) // data.per_parent] = (q @ x.T).reshape(count, -1, data.per_parent).max(axis=2)
    return q, np.argsort(-best, axis=1, kind="stable")[:, :K]


class _Migrations(logging.Handler):
    """Collects the workspace's "migrated N vectors to F in S s" log records (``Workspace._grow_if_outgrown``'s
    wording: the smoke test fails if it changes)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("migrated ") and isinstance(record.args, tuple) and len(record.args) == 3:
            vectors, factory, seconds = record.args
            self.seen.append({"vectors": vectors, "factory": factory, "seconds": seconds})


def _bytes_under(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ingest(args: argparse.Namespace, ws: Path) -> dict[str, Any]:
    """Index every parent in one ``index()`` call; what it took."""
    from crossscale import CrossScaleSearch

    data = SlicedData(args.n, args.dim, args.per_parent)
    n_parents = args.n // args.per_parent
    migrations = _Migrations()
    workspace_log = logging.getLogger("crossscale.workspace")
    workspace_log.addHandler(migrations)
    level = workspace_log.level
    workspace_log.setLevel(logging.INFO)  # its migration lines, whatever the root logger lets through
    reset_peak()

    def parents() -> Iterator[tuple[str, bytes]]:
        t = time.perf_counter()
        for p in range(n_parents):
            if p and p % 10_000 == 0:
                logger.info("%d / %d parents (%.0f s)", p, n_parents, time.perf_counter() - t)
            yield f"p{p}", parent_png(p)

    try:
        with CrossScaleSearch.open(
            ws,
            encoder=SlicedDataEncoder(data),
            segmenter=GridSegmenter(args.per_parent),
            verifier=False,
            refine=False,
            max_memory=args.max_memory,
            batch_size=args.batch_size,
            progress=False,
            device="cpu",
        ) as cs:
            t = time.perf_counter()
            with MemoryPeaks() as anon:
                report = cs.index(parents())
            index_s = time.perf_counter() - t
            info = cs.info()
    finally:
        workspace_log.removeHandler(migrations)
        workspace_log.setLevel(level)
    peak = memory_mb()["VmHWM"]
    closed_s = time.perf_counter() - t  # with the final save at close
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} parents failed, e.g. {report.failed[0]}")
    return {
        "n": args.n,
        "dim": args.dim,
        "per_parent": args.per_parent,
        "parents": len(report.added),
        "regions": report.chunks_added,
        "index_s": index_s,
        "closed_s": closed_s,
        "migrations": migrations.seen,
        "structure": info["index_structure"],
        "peak_rss_mb": peak,
        "peak_anon_mb": anon.peak["RssAnon"],
        "store_bytes": _bytes_under(ws / "store"),
        "index_file_bytes": (ws / "chunks.index").stat().st_size,
    }


def search(args: argparse.Namespace, ws: Path) -> dict[str, Any]:
    """Open read-only in this (fresh) process, search, verify."""
    from crossscale import CrossScaleSearch

    data = SlicedData(args.n, args.dim, args.per_parent)
    t = time.perf_counter()
    q, exact = queries_and_exact(data, args.queries)
    exact_s = time.perf_counter() - t
    base = memory_mb()
    t = time.perf_counter()
    cs = CrossScaleSearch.open(
        ws, encoder=SlicedDataEncoder(data), readonly=True, refine=False, progress=False, device="cpu"
    )
    open_s = time.perf_counter() - t
    after_open = memory_mb()
    reset_peak()
    try:
        with MemoryPeaks() as searching:  # the warm-up's searches teach FetchDepth, as in service
            p50, p95, qps, got = timed(lambda rows: _parent_numbers(cs.search_vectors(rows, top_k=K)), q)
        peak = memory_mb()["VmHWM"]
        bare_p50, bare_p95, bare_qps, bare_got = timed(_without_rescoring(cs), q)
        sizes = [int(v) for v in args.batch.split(",") if v.strip()]
        ways = (*BATCH_WAYS, BatchWay("list scan, batch folded, not re-scored", True, True, rescore=False))
        tuned = None
        if args.tune is not None:  # the fastest setting reaching the recall, then timed beside the default
            t = time.perf_counter()
            tuning = cs.tune_search(q, min_recall=args.tune, top_k=K)
            tuned = {"tuning": tuning.to_dict(), "seconds": time.perf_counter() - t}
            if tuning.params is not None:
                ways = (*ways, BatchWay(f"tuned: {tuning.params.describe()}", True, True, params=tuning.params))
        batches = batched_rows(lambda way: _fresh_depth(cs, way), q, exact, data, sizes, ways)
        info = cs.info()
        t = time.perf_counter()
        with MemoryPeaks() as verifying:
            verified = cs.verify()
        verify_s = time.perf_counter() - t
    finally:
        cs.close()
    return {
        "batches": batches,
        "tuned": tuned,
        "exact_s": exact_s,
        "base_rss_mb": base["VmRSS"],
        "open_s": open_s,
        "rss_after_open_mb": after_open["VmRSS"],
        "anon_after_open_mb": after_open["RssAnon"],
        "file_after_open_mb": after_open["RssFile"],
        "peak_while_searching_mb": peak,
        "peak_anon_while_searching_mb": searching.peak["RssAnon"],
        "recall": recall(got, exact.tolist()),
        "p50_ms": p50,
        "p95_ms": p95,
        "qps_batch": qps,
        "structure": info["index_structure"],
        "verify_ok": verified.ok,
        "without_rescoring": {
            "p50_ms": bare_p50,
            "p95_ms": bare_p95,
            "qps_batch": bare_qps,
            "recall": recall(bare_got, exact.tolist()),
        },
        "verify_s": verify_s,
        "peak_anon_while_verifying_mb": verifying.peak["RssAnon"],
    }


def _parent_numbers(results: Sequence[Sequence[Any]]) -> list[list[int]]:
    """Parent ids ``p123`` as ints, per query."""
    return [[int(m.parent_id[1:]) for m in row] for row in results]


def _fresh_depth(cs: Any, way: BatchWay = BATCH_WAYS[0]) -> Search:
    """``cs.search_vectors`` (the default path: SQ8 hits re-scored with the stored vectors), its FetchDepth reset,
    searching the ``way`` asks: each query ranked alone (the facade's ranker wrapped in
    :class:`benchmarks.engines.RankedAlone` for the call) where it does not fold, with ``cs.rescore`` off where it
    does not re-score."""
    from benchmarks.engines import RankedAlone

    if cs.fetch_depth is not None:
        cs.fetch_depth.reset()
    ranker, rescore = cs.ranker, cs.rescore

    def run(rows: np.ndarray) -> list[list[int]]:
        cs.ranker, cs.rescore = (ranker if way.fold else RankedAlone(ranker)), way.rescore
        try:
            return _parent_numbers(cs.search_vectors(rows, top_k=K, params=way.params))
        finally:
            cs.ranker, cs.rescore = ranker, rescore

    return run


def _without_rescoring(cs: Any) -> Search:
    """The facade's query path over the same workspace with ``cs.rescore`` off: the index's own (SQ8) scores
    ranked, no stored vector read. What re-scoring costs, in the same run."""
    return _fresh_depth(cs, BatchWay("not re-scored", True, True, rescore=False))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ten_million_workspace", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--per-parent", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--max-memory", default="4G")
    parser.add_argument("--batch-size", type=int, default=16, help="the facade's default")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the workspace here (default: a temp folder)")
    parser.add_argument("--batch", default="", help="batch sizes for throughput, each in BATCH_WAYS")
    parser.add_argument(
        "--tune",
        type=float,
        metavar="R",
        help="also choose the fastest search setting reaching parent recall R on the queries (cs.tune_search) and "
        "time each --batch with it",
    )
    parser.add_argument("--search-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.n >= 1 << 24 or args.n % args.per_parent:
        parser.error("--n must be a multiple of --per-parent, with fewer than 2**24 parents (one colour each)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        ws = workdir / "ws"
        if args.search_only:
            (workdir / "search.json").write_text(json.dumps(search(args, ws)))
            return 0
        if ws.exists():
            parser.error(f"{ws} exists: give an empty --workdir")
        built = ingest(args, ws)
        (workdir / "ingest.json").write_text(json.dumps(built))
        logger.info("ingested: %s", built)
        options = ["--n", str(args.n), "--dim", str(args.dim), "--per-parent", str(args.per_parent)]
        found = search_in_fresh_process(
            "benchmarks.ten_million_workspace",
            workdir,
            [
                *options,
                "--queries",
                str(args.queries),
                "--batch",
                args.batch,
                *(["--tune", str(args.tune)] if args.tune is not None else []),
            ],
        )
    _report(built, found)
    return 0


def _report(built: dict[str, Any], found: dict[str, Any]) -> None:
    mib = 2**20
    print(
        f"{built['regions']:,} regions of dim {built['dim']} in {built['parents']:,} parents, one index() call: "
        f"{built['index_s']:.0f} s ({built['parents'] / built['index_s']:.0f} parents/s, "
        f"{built['regions'] / built['index_s']:,.0f} regions/s), {built['closed_s']:.0f} s with the final save; "
        f"peak RSS {built['peak_rss_mb']:,.0f} MiB, of it the process's own (RssAnon) {built['peak_anon_mb']:,.0f} "
        f"MiB; store {built['store_bytes'] / mib:,.0f} MiB ({built['store_bytes'] / built['regions']:.0f} B per "
        f"region), index file {built['index_file_bytes'] / mib:,.0f} MiB ({built['structure']})"
    )
    print("| migrated to | vectors | seconds |")
    print("| --- | ---: | ---: |")
    for m in built["migrations"]:
        print(f"| {m['factory']} | {m['vectors']:,} | {m['seconds']:.1f} |")
    print(
        f"read-only open {found['open_s']:.1f} s: RSS {found['base_rss_mb']:,.0f} -> {found['rss_after_open_mb']:,.0f}"
        f" MiB ({found['anon_after_open_mb']:,.0f} own, {found['file_after_open_mb']:,.0f} mapped file pages); peak "
        f"while searching {found['peak_while_searching_mb']:,.0f} MiB, own {found['peak_anon_while_searching_mb']:,.0f}"
        f"; parent recall@10 vs exact {found['recall']:.3f}; single p50 / p95 {found['p50_ms']:.2f} / "
        f"{found['p95_ms']:.2f} ms; batched {found['qps_batch']:.0f} q/s; verify() "
        f"{'ok' if found['verify_ok'] else 'FAILED'} in {found['verify_s']:.0f} s (own memory peak "
        f"{found['peak_anon_while_verifying_mb']:,.0f} MiB)"
    )
    if found.get("batches"):
        print("| batch | search | parent recall@10 (queries with exact parents) | batched q/s |")
        print("| ---: | --- | ---: | ---: |")
        for row in found["batches"]:
            print(f"| {row['batch']:,} | {row['how']} | {row['recall']:.3f} | {row['qps']:.0f} |")
    if found.get("tuned"):
        tuning = found["tuned"]["tuning"]
        print(f"tune_search(min_recall={tuning['min_recall']}) in {found['tuned']['seconds']:.0f} s:")
        print("| nprobe | ef_search | rescore | parent recall@10 | q/s (one batch of the queries) |")
        print("| --- | --- | --- | ---: | ---: |")
        for m in tuning["measurements"]:
            chosen = " (chosen)" if m == tuning["chosen"] else ""
            print(
                f"| {m['nprobe']} | {m['ef_search']} | {m['rescore']}{chosen} | {m['recall']:.4f} | "
                f"{m['queries_per_second']:.0f} |"
            )
    bare = found["without_rescoring"]
    print(
        f"the same queries, hits not re-scored with the stored vectors (same run): recall {bare['recall']:.3f}; "
        f"single p50 / p95 {bare['p50_ms']:.2f} / {bare['p95_ms']:.2f} ms; batched {bare['qps_batch']:.0f} q/s"
    )


if __name__ == "__main__":
    sys.exit(main())
