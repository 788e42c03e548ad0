"""Opening a workspace: the parent map read from its file (``ws/parents.map``) vs built from every parent's record
in the store; and deleting many parents at once vs one at a time; on the benchmark workspace (100k chunks of 2,000
parents); and one-query searches over a store whose pages are out of the page cache, or preloaded into it.
Results: docs/benchmarks.md.

Run: ``python -m pytest benchmarks/test_bench_workspace.py --benchmark-enable``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import crossscale.workspace as workspace_module
from benchmarks.conftest import CHUNKS_PER_PARENT, DIM, PARENTS, LookupEncoder
from crossscale import CrossScaleSearch
from crossscale.index import ParentMap
from crossscale.index.root_store import NewParent, RootStore
from crossscale.types import Box, Chunk


@pytest.mark.benchmark(group="parent-map-load")
@pytest.mark.parametrize("source", ["file", "store"])
def test_parent_map_load(benchmark, facade, source: str) -> None:  # type: ignore[no-untyped-def]
    """The map alone: loaded from its file (checksum, consistency checks, caught up from the log) vs folded from
    each parent's record and chunk details in the store."""
    cs, _ = facade
    ws = cs.workspace
    assert (ws.path / workspace_module.PARENTS_FILE).exists()
    with ws.store.snapshot() as txn:
        generation = ws.store.generation_at(txn)

        def load() -> ParentMap:
            if source == "file":
                parents, from_file = workspace_module._load_parents(ws.path, ws.store, txn, generation)
                assert from_file  # never the fallback: that would time the other way
                return parents
            return ParentMap.from_parents(ws.store.parent_details(txn))

        parents = benchmark(load)
    assert len(parents) == len(ws.parents) and parents.chunk_count == ws.parents.chunk_count


@pytest.mark.benchmark(group="workspace-open")
@pytest.mark.parametrize("source", ["file", "store"])
def test_open_read_only(benchmark, facade, monkeypatch, source: str) -> None:  # type: ignore[no-untyped-def]
    """A whole read-only open for vector search (the Flat index file of 100k x 512 float32 included), with the
    parent map file, or with it out of sight (as before it existed)."""
    cs, _ = facade
    if source == "store":
        monkeypatch.setattr(workspace_module, "PARENTS_FILE", "no-such.map")

    def open_and_close() -> int:
        with CrossScaleSearch.open(cs.path, encoder=False, readonly=True, progress=False, device="cpu") as reader:
            return reader.workspace.parents.chunk_count

    assert benchmark(open_and_close) == cs.workspace.parents.chunk_count


@pytest.mark.benchmark(group="delete-many")
@pytest.mark.parametrize("way", ["delete each", "delete_many"])
def test_delete_parents(benchmark, facade, tmp_path, way: str) -> None:  # type: ignore[no-untyped-def]
    """100 of the benchmark workspace's 2,000 parents (100k chunks, a Flat index) deleted, each round from a fresh
    copy of it: ``cs.delete`` of each (a store commit, a logged change and an index removal apiece) vs one
    ``cs.delete_many`` (one of each for all)."""
    cs, _ = facade
    cs.save()
    victims = sorted(cs.parent_ids())[::20][:100]
    opened: list[CrossScaleSearch] = []

    def fresh_copy() -> tuple[tuple[()], dict[str, object]]:
        target = tmp_path / f"ws{len(opened)}"
        shutil.copytree(cs.path, target, ignore=shutil.ignore_patterns("lock"))
        opened.append(CrossScaleSearch.open(target, encoder=False, progress=False, device="cpu"))
        return (), {}

    def delete() -> None:
        if way == "delete each":
            for parent_id in victims:
                opened[-1].delete(parent_id)
        else:
            assert opened[-1].delete_many(victims) == []

    benchmark.pedantic(delete, setup=fresh_copy, rounds=3, iterations=1)
    last = opened[-1]
    assert len(last) == len(cs) - len(victims) and last.verify().ok
    for copy in opened:
        copy.close()


@pytest.fixture(scope="module")
def sq8_workspace(corpus: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark corpus (100k chunks of 512-d, float32) in a workspace whose index is ``IVF256,SQ8``: its hits
    are re-scored against the stored vectors, which a search reads through the store's memory map."""
    path: Path = tmp_path_factory.mktemp("cold") / "ws"
    CrossScaleSearch.open(
        path,
        encoder=LookupEncoder(),
        segmenter="whole",
        progress=False,
        device="cpu",
        index_factory="IVF256,SQ8",
        verifier=False,
        vector_dtype="float32",
    ).close()
    store = RootStore(path / "store", dim=DIM)
    box = Box(0, 0, 8, 8)
    chunks = [Chunk(box, None, "tile")] * CHUNKS_PER_PARENT
    for start in range(0, PARENTS, 200):
        batch = []
        for p in range(start, start + 200):
            rows = corpus["x"][p * CHUNKS_PER_PARENT : (p + 1) * CHUNKS_PER_PARENT]
            batch.append(NewParent(f"p{p:05d}", b"\x89PNG", "PNG", 8, 8, chunks, rows))
        store.add_parents(batch)
    store.close()
    CrossScaleSearch.open(path, encoder=False, progress=False, device="cpu").close()  # builds and saves the index
    return path


def _evict(file: Path) -> None:
    """Drop ``file``'s clean pages from the page cache (Linux; no privileges needed)."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="evicting a file's pages needs posix_fadvise")
@pytest.mark.benchmark(group="cold-store")
@pytest.mark.parametrize("store", ["evicted", "preloaded"])
def test_one_query_searches_over_a_cold_or_preloaded_store(  # type: ignore[no-untyped-def]
    benchmark, sq8_workspace, corpus, store: str
) -> None:
    """The corpus' 64 queries searched one at a time (hits re-scored from the store). Before each round, outside
    the time, the last round's workspace is closed (a page the store's memory map still maps cannot be dropped),
    the store file's pages are dropped from the page cache, the workspace is opened again, and for "preloaded"
    ``cs.preload()`` reads the file back in."""
    rows = corpus["q"]
    file = sq8_workspace / "store" / "data.mdb"
    opened: list[CrossScaleSearch] = []

    def setup() -> None:
        while opened:
            opened.pop().close()
        _evict(file)
        cs = CrossScaleSearch.open(sq8_workspace, encoder=False, readonly=True, progress=False, device="cpu")
        opened.append(cs)
        if store == "preloaded":
            assert cs.preload() > 0

    def one_at_a_time() -> list[str]:
        return [opened[0].search_vectors(row[None], top_k=10)[0][0].parent_id for row in rows]

    try:
        found = benchmark.pedantic(one_at_a_time, setup=setup, rounds=5, iterations=1)
    finally:
        while opened:
            opened.pop().close()
    targets = corpus["targets"] // CHUNKS_PER_PARENT
    assert np.mean([f == f"p{t:05d}" for f, t in zip(found, targets, strict=True)]) > 0.9


@pytest.mark.benchmark(group="rescore-reads")
@pytest.mark.parametrize("order", ["as hit", "distinct, id order"])
def test_store_reads_of_a_batchs_hits(benchmark, sq8_workspace, corpus, order: str) -> None:  # type: ignore[no-untyped-def]
    """The store's reads that re-scoring a batch makes: the first 160 hits of 2,000 queries (noisy copies of
    stored chunks) in the ``IVF256,SQ8`` index, read in lookups of at most 16 MiB of float32 vectors, either each
    query's hits after another's (the query path until 2026-12-07) or each distinct chunk once, in increasing id
    order (since: a store's B-tree is walked in order)."""
    from crossscale.query import _READ_BYTES

    rng = np.random.default_rng(3)
    x = corpus["x"]
    q = x[rng.choice(len(x), 2000, replace=False)] + 0.05 * rng.standard_normal((2000, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    cs = CrossScaleSearch.open(sq8_workspace, encoder=False, readonly=True, progress=False, device="cpu")
    try:
        _, hits = cs.chunk_index.search(q, 160)
        ids = hits[hits >= 0] if order == "as hit" else np.unique(hits[hits >= 0])
        block = _READ_BYTES // (4 * DIM)
        store = cs.workspace.store

        def read() -> int:
            return sum(len(store.vectors(ids[s : s + block])[0]) for s in range(0, len(ids), block))

        benchmark.extra_info["reads"] = len(ids)
        assert benchmark(read) == len(ids)
    finally:
        cs.close()
