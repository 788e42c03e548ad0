"""Overlapped ingest: the prefetch thread vs the same batches one stage after another, and vs the sum of the
stage times measured alone (issue #12's target: throughput >= 0.9 x 1 / sum of stage times).

12 JPEG files (scikit-image photos at 1024x768, rotated to be distinct), the one-pass configuration where the
non-encoder stages weigh most: ``efficientnet-lite0-regions`` (pretrained, one forward pass per image),
``whole+tiles`` boxes, the SIFT verifier, batches of 4. Stage rows time each stage over the same images alone;
the ingest rows index them into a fresh workspace.

Also (``slow``): many small ``index()`` calls into a large workspace, each rewriting the whole chunk index file as
before 2026-12-05 (night) against the :class:`~crossscale._files.SaveSchedule` that writes it when due.

Run: ``python -m pytest benchmarks/test_bench_ingest.py --benchmark-enable [-m slow]``. Results:
docs/benchmarks.md.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from crossscale import CrossScaleSearch
from crossscale._files import SaveSchedule
from crossscale.encode import create_encoder
from crossscale.index.root_store import NewParent, RootStore
from crossscale.ingest import Loaded, encode_batch, extract_local, iter_inputs, load_batch, segment_batch
from crossscale.rank import GeometricVerifier
from crossscale.segment import create_segmenter
from crossscale.types import Box, Chunk

N_IMAGES = 12
BATCH = 4


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from skimage import data

    folder = tmp_path_factory.mktemp("ingest-photos")
    names = ("astronaut", "chelsea", "coffee", "rocket")
    base = [Image.fromarray(getattr(data, n)()).convert("RGB").resize((1024, 768)) for n in names]
    out = []
    for i, im in zip(range(N_IMAGES), itertools.cycle(base), strict=False):
        path = folder / f"{i:03d}.jpg"
        im.rotate(i * 5).save(path, quality=90)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def stages() -> dict[str, Any]:
    return {
        "encoder": create_encoder("efficientnet-lite0-regions", device="cpu"),
        "segmenter": create_segmenter("whole+tiles"),
        "verifier": GeometricVerifier(),
    }


def _batches(files: list[Path]) -> list[list[Path]]:
    return [files[i : i + BATCH] for i in range(0, len(files), BATCH)]


def _loaded(batch: list[Path]) -> list[Loaded]:
    return load_batch(list(iter_inputs(batch)), max_pixels=10**9, is_known=lambda _: False)[0]


@pytest.mark.benchmark(group="ingest-stages")
def test_stage_load(benchmark, files) -> None:  # type: ignore[no-untyped-def]
    def run() -> int:
        return sum(len(_loaded(batch)) for batch in _batches(files))

    assert benchmark.pedantic(run, rounds=3, iterations=1) == N_IMAGES


@pytest.mark.benchmark(group="ingest-stages")
def test_stage_segment_and_extract(benchmark, files, stages) -> None:  # type: ignore[no-untyped-def]
    loaded = [_loaded(batch) for batch in _batches(files)]

    def run() -> int:
        n = 0
        for batch in loaded:
            done, _ = segment_batch(stages["segmenter"], batch)
            n += sum(extract_local(stages["verifier"], s.loaded) is not None for s in done)
        return n

    assert benchmark.pedantic(run, rounds=3, iterations=1) == N_IMAGES


@pytest.mark.benchmark(group="ingest-stages")
def test_stage_encode(benchmark, files, stages) -> None:  # type: ignore[no-untyped-def]
    loaded = [_loaded(batch) for batch in _batches(files)]
    segmented = [segment_batch(stages["segmenter"], batch)[0] for batch in loaded]

    def run() -> int:
        return sum(len(encode_batch(stages["encoder"], batch)[0]) for batch in segmented)

    assert benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1) == N_IMAGES


def _ingest(files: list[Path], stages: dict[str, Any], root: Path, prefetch: int) -> int:
    shutil.rmtree(root, ignore_errors=True)
    with CrossScaleSearch.open(
        root,
        encoder=stages["encoder"],
        segmenter=stages["segmenter"],
        verifier=stages["verifier"],
        batch_size=BATCH,
        progress=False,
        device="cpu",
        refine=False,
        local_search=False,  # its keypoint index is no stage timed above (test_bench_local times it)
    ) as cs:
        return len(cs.index(files, prefetch=prefetch).added)


@pytest.mark.benchmark(group="ingest")
@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_ingest(benchmark, files, stages, tmp_path, prefetch) -> None:  # type: ignore[no-untyped-def]
    """Everything: the stages above plus the LMDB writes (one transaction per batch) and the index file."""
    added = benchmark.pedantic(
        _ingest, args=(files, stages, tmp_path / "ws", prefetch), rounds=3, iterations=1, warmup_rounds=1
    )
    assert added == N_IMAGES


# ------------------------------------------------------------------ small index() calls into a large workspace
LARGE_PARENTS = 2000
LARGE_CHUNKS = 141  # the default segmenter's boxes of a 4:3 photo
SMALL_CALLS = 20


@pytest.fixture(scope="module")
def large_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 parents x 141 random 512-d vectors (the colour histogram's dimension) written straight to the store:
    282k vectors, a 578 MB Flat chunk index file."""
    path = tmp_path_factory.mktemp("large") / "ws"
    CrossScaleSearch.open(
        path, encoder="color-histogram", segmenter="whole+tiles", progress=False, device="cpu", verifier=False
    ).close()
    rng = np.random.default_rng(0)
    store = RootStore(path / "store", dim=512)
    box = Box(0, 0, 8, 8)
    for start in range(0, LARGE_PARENTS, 200):
        batch = []
        for p in range(start, start + 200):
            x = rng.standard_normal((LARGE_CHUNKS, 512)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            batch.append(NewParent(f"p{p:05d}", b"\x89PNG", "PNG", 8, 8, [Chunk(box, None, "tile")] * LARGE_CHUNKS, x))
        store.add_parents(batch)
    store.close()
    CrossScaleSearch.open(path, progress=False, device="cpu").close()  # builds and writes the index file
    return path


def _small_calls(path: Path, files: list[Path], prefix: str, schedule: SaveSchedule | None) -> int:
    """SMALL_CALLS ``index()`` calls of one photo each, then ``save()``: everything is on disk at the end."""
    with CrossScaleSearch.open(path, progress=False, device="cpu", refine=False) as cs:
        if schedule is not None:
            cs.workspace.save_schedule = schedule
        added = 0
        for i in range(SMALL_CALLS):
            added += len(cs.index([(f"{prefix}-{i}", files[i % len(files)])]).added)
        cs.save()
        for i in range(SMALL_CALLS):
            cs.delete(f"{prefix}-{i}")  # the next round adds them again
        return added


@pytest.mark.slow
@pytest.mark.benchmark(group="small-index-calls-into-a-large-workspace")
@pytest.mark.parametrize("when", ["every-call", "when-due"], ids=["every call (before)", "when due (default)"])
def test_small_index_calls(benchmark, large_workspace, files, when: str) -> None:  # type: ignore[no-untyped-def]
    """The chunk index file written after every call (the schedule forced due) or when due (the default)."""

    def run() -> int:
        schedule = SaveSchedule(share=1e9) if when == "every-call" else None
        return _small_calls(large_workspace, files, when, schedule)

    assert benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0) == SMALL_CALLS
    benchmark.extra_info["index_file_bytes"] = (large_workspace / "chunks.index").stat().st_size
