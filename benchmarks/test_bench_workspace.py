"""Opening a workspace: the parent map read from its file (``ws/parents.map``) vs built from every parent's record
in the store; and deleting many parents at once vs one at a time; on the benchmark workspace (100k chunks of 2,000
parents). Results: docs/benchmarks.md.

Run: ``python -m pytest benchmarks/test_bench_workspace.py --benchmark-enable``.
"""

from __future__ import annotations

import shutil

import pytest

import crossscale.workspace as workspace_module
from crossscale import CrossScaleSearch
from crossscale.index import ParentMap


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
