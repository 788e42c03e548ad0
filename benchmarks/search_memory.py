"""What a serving process holds: a workspace opened read-only beside a loaded encoder, searched one query at a time
and in batches, its memory against issue #12's budget (peak RSS <= 1.2 x (index bytes + model bytes)).

    python -m benchmarks.search_memory --workspace WS [--encoder efficientnet-lite0] [--queries 300]
                                       [--batch 64,1000,10000] [--preload] [--setting nprobe=128,rescore=off] ...

Run it as its own process (this script is the serving process: its memory is counted from the interpreter's
start). It imports crossscale and torch, builds the encoder (``create_encoder(NAME, device="cpu")``; a ``.onnx``
file: an :class:`~crossscale.encode.OnnxEncoder` of it, with onnxruntime and without torch; ``none``: no model)
and encodes stored images with it (query images: up to 50 of the workspace's first parents, each encoded alone,
so that the model's working memory is in the figures), opens the workspace read-only with
``encoder=False``, optionally reads its store into the page cache (``cs.preload()``), then for each ``--setting``
(default: the workspace's own) searches a warm-up batch of up to 1,000 queries (the first search depth is
learned), ``--queries`` query vectors one at a time and one batch of each ``--batch`` size through
``cs.search_vectors``. Run one setting per process where the RSS matters: the store's pages that re-scoring has
read stay mapped (and counted) for the settings after it.

The query vectors are the encoded images where the encoder's dimension is the workspace's (a workspace the encoder
built) and they are enough for ``--queries`` and the largest batch (at most 50 are encoded). Otherwise (a synthetic
workspace such as :mod:`benchmarks.ten_million_workspace`'s, whose regions no model made) they are stored regions
drawn at random (``cs.sample_vectors``; the store's pages that drawing them mapped are unmapped again:
:func:`unmap`), and the model is only held beside the workspace, as a service holds it between queries.

Memory is read from ``/proc/self/status`` (Linux): ``VmRSS`` (the RSS: the process's own pages, its libraries'
pages and the pages of the LMDB store that re-scoring has read through its memory map, which the OS can drop and
other processes share) and ``RssAnon`` (the process's own memory), each phase's peak sampled every 10 ms. The
budget is 1.2 x (index bytes + model bytes): the index file's size and the encoder's parameters and buffers (an
ONNX file's size).
Results: docs/benchmarks.md ("What a serving process holds").
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import ten_million
from benchmarks.ten_million import MemoryPeaks

logger = logging.getLogger(__name__)

#: issue #12's budget: peak RSS during search at most this many times the index and model bytes
BUDGET = 1.2
#: what ``/proc/self/status`` fields are read (MiB)
FIELDS = ("VmRSS", "RssAnon", "RssFile")
#: at most this many query images are encoded (each alone): enough for the model's working memory to settle
ENCODED_IMAGES = 50
#: Linux' madvise advice that drops a range's page table entries
MADV_DONTNEED = 4


def memory_mb() -> dict[str, float]:
    """This process's :data:`FIELDS` in MiB (:func:`benchmarks.ten_million.memory_mb`, whose ``VmHWM`` is the peak
    of the process's whole life, not of a phase)."""
    found = ten_million.memory_mb()
    return {key: found[key] for key in FIELDS}


def parse_setting(spec: str) -> Any:
    """``"default"`` (``None``: the workspace's own setting) or ``key=value`` pairs of
    :class:`crossscale.types.SearchParams` separated by commas, e.g. ``nprobe=128,rescore=off,rescore_per_parent=2``
    (``rescore``: ``on`` / ``off``)."""
    from crossscale.types import SearchParams

    if spec == "default":
        return None
    fields: dict[str, Any] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("nprobe", "ef_search", "rescore", "rescore_per_parent"):
            raise ValueError(
                f"--setting {spec!r}: {part!r} is not nprobe=, ef_search=, rescore= or rescore_per_parent="
            )
        if key == "rescore":
            if value not in ("on", "off"):
                raise ValueError(f"--setting {spec!r}: rescore is on or off, not {value!r}")
            fields[key] = value == "on"
        elif value.isdigit():
            fields[key] = int(value)
        else:
            raise ValueError(f"--setting {spec!r}: {key} takes a whole number, not {value!r}")
    return SearchParams(**fields)


def unmap(path: Path) -> float:
    """Unmap the pages of ``path`` this process has mapped (``madvise(MADV_DONTNEED)`` on its mappings: the page
    cache keeps them) and return the MiB of RSS that gave back (Linux, as the rest of this script). Drawing the queries
    from the store maps its pages (reading one region maps up to 64 KB of cached pages around it), which no search
    made."""
    before = memory_mb()["VmRSS"]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            start, end = (int(a, 16) for a in line.split()[0].split("-"))
            if libc.madvise(start, end - start, MADV_DONTNEED) != 0:
                logger.warning("madvise(%s): errno %d", path, ctypes.get_errno())
    return before - memory_mb()["VmRSS"]


def model_bytes(encoder: Any) -> int:
    """The bytes of the parameters and buffers of every torch module the encoder holds (its attributes)."""
    import torch

    modules = [m for m in getattr(encoder, "__dict__", {}).values() if isinstance(m, torch.nn.Module)]
    tensors = {id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}  # shared ones once
    return sum(t.numel() * t.element_size() for t in tensors.values())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the module's docstring lists, in this process."""
    from crossscale import CrossScaleSearch

    out: dict[str, Any] = {"after_imports": memory_mb()}
    encoder, encoded, size = None, np.zeros((0, 0), np.float32), 0
    if args.encoder.endswith(".onnx"):  # served by ONNX Runtime: no torch in the process
        import onnxruntime  # type: ignore[import-untyped]

        from crossscale.encode import OnnxEncoder

        out["torch"] = f"none (onnxruntime {onnxruntime.__version__})"
        out["after_torch"] = memory_mb()
        encoder = OnnxEncoder(args.encoder, device="cpu")
        size = Path(args.encoder).stat().st_size  # the file is the model's weights and its graph
        out["after_model"] = memory_mb()
    elif args.encoder != "none":
        import torch

        from crossscale.encode import create_encoder

        out["torch"] = torch.__version__
        out["after_torch"] = memory_mb()
        encoder = create_encoder(args.encoder, device="cpu")
        size = model_bytes(encoder)
        out["after_model"] = memory_mb()
    t = time.perf_counter()
    cs = CrossScaleSearch.open(args.workspace, encoder=False, readonly=True, refine=False, progress=False, device="cpu")
    out["open_s"] = time.perf_counter() - t
    wanted = max([args.queries, *args.batch])
    try:
        if encoder is not None:
            images = [cs.image(p) for p in itertools.islice(cs.parent_ids(), min(wanted, ENCODED_IMAGES))]
            with MemoryPeaks(0.01, FIELDS) as encoding:
                encoded = np.concatenate([encoder.encode([image]) for image in images])
            out["encoding_peak"] = encoding.peak
        out["after_open"] = memory_mb()
        if args.preload:
            t = time.perf_counter()
            out["preload_bytes"] = cs.preload()
            out["preload_s"] = time.perf_counter() - t
        dim = int(cs.info()["dim"])
        if encoded.shape[1:] == (dim,) and len(encoded) >= wanted:
            queries, out["queries_are"] = encoded, "encoded images"
        else:
            queries, out["queries_are"] = cs.sample_vectors(wanted, seed=args.seed), "stored regions"
            out["unmapped_after_drawing_mb"] = unmap(Path(args.workspace) / "store" / "data.mdb")
        index_bytes = (Path(args.workspace) / "chunks.index").stat().st_size
        out.update(index_bytes=index_bytes, model_bytes=size, budget_mb=BUDGET * (index_bytes + size) / 2**20)
        out["settings"] = [_setting(cs, spec, queries, args) for spec in args.setting]
    finally:
        cs.close()
    return out


def _setting(cs: Any, spec: str, queries: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    params = parse_setting(spec)
    row: dict[str, Any] = {"setting": spec}
    latencies = []
    with MemoryPeaks(0.01, FIELDS) as single:
        cs.search_vectors(queries[:1_000], top_k=10, params=params)  # warm: the first search depth learned
        for q in queries[: args.queries]:
            t = time.perf_counter()
            cs.search_vectors(q[None], top_k=10, params=params)
            latencies.append(time.perf_counter() - t)
    row["single"] = {
        "queries": len(latencies),
        "p50_ms": 1000 * float(np.median(latencies)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "peak": single.peak,
    }
    row["batches"] = []
    for size in args.batch:
        rows = queries[:size]
        with MemoryPeaks(0.01, FIELDS) as batch:
            t = time.perf_counter()
            cs.search_vectors(rows, top_k=10, params=params)
            seconds = time.perf_counter() - t
        row["batches"].append({"batch": len(rows), "qps": len(rows) / seconds, "peak": batch.peak})
        logger.info("%s, batch of %d: %.0f q/s", spec, len(rows), len(rows) / seconds)
    return row


def report(out: dict[str, Any]) -> str:
    """The figures as a markdown table, each peak as a ratio of (index bytes + model bytes)."""
    base = (out["index_bytes"] + out["model_bytes"]) / 2**20
    lines = [
        f"torch {out.get('torch', '(none)')}; index {out['index_bytes'] / 2**20:,.0f} MiB, model "
        f"{out['model_bytes'] / 2**20:,.1f} MiB, budget {out['budget_mb']:,.0f} MiB; queries: {out['queries_are']}",
        f"after the imports: RSS {out['after_imports']['VmRSS']:,.0f} MiB"
        + (f", with torch {out['after_torch']['VmRSS']:,.0f}" if "after_torch" in out else "")
        + (f", with the model {out['after_model']['VmRSS']:,.0f}" if "after_model" in out else "")
        + f"; workspace open (and query images encoded): RSS {out['after_open']['VmRSS']:,.0f} MiB, own "
        f"{out['after_open']['RssAnon']:,.0f}",
        "",
        "| setting | search | q/s | one query p50 / p95 ms | peak RSS MiB (x) | peak own MiB (x) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in out["settings"]:
        single = row["single"]
        phases = [("one at a time", "", f"{single['p50_ms']:.2f} / {single['p95_ms']:.2f}", single["peak"])]
        phases += [(f"batch of {b['batch']:,}", f"{b['qps']:,.0f}", "", b["peak"]) for b in row["batches"]]
        for how, qps, latency, peak in phases:
            lines.append(
                f"| {row['setting']} | {how} | {qps} | {latency} | {peak['VmRSS']:,.0f} ({peak['VmRSS'] / base:.2f}x) "
                f"| {peak['RssAnon']:,.0f} ({peak['RssAnon'] / base:.2f}x) |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument(
        "--encoder",
        default="efficientnet-lite0",
        help="a registered encoder's name, an export_onnx file (.onnx), or none",
    )
    parser.add_argument("--queries", type=int, default=300, help="single queries per setting")
    parser.add_argument("--batch", default="64,1000,10000", help="batch sizes, comma-separated (may be empty)")
    parser.add_argument("--setting", action="append", help="default, or e.g. nprobe=128,rescore=off (repeatable)")
    parser.add_argument("--preload", action="store_true", help="read the store into the page cache first")
    parser.add_argument("--seed", type=int, default=0, help="for the stored regions drawn as queries")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    args.batch = [int(v) for v in args.batch.split(",") if v.strip()]
    args.setting = args.setting or ["default"]
    if args.queries < 1 or any(b < 1 for b in args.batch):
        parser.error("--queries and --batch sizes must be positive")
    try:
        for spec in args.setting:
            parse_setting(spec)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = measure(args)
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1))
    sys.stdout.write(report(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
