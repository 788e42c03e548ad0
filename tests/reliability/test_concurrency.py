"""One writer, many readers: readers never see half a parent; a second writer is refused at once."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from crossscale import CrossScaleSearch, ParentNotFoundError, WorkspaceLockedError
from tests.reliability.conftest import make_images, run_worker, start_worker


def _reader(ws: Path) -> CrossScaleSearch:
    return CrossScaleSearch.open(ws, readonly=True, progress=False, device="cpu")


def check_reader(reader: CrossScaleSearch, query: Image.Image, deleted_ids: set[str]) -> bool:
    """What a reader returns is consistent; returns True when the strict snapshot check could run.

    - Every search result is a complete parent (record, bytes, every chunk), looked at in one snapshot;
      one that is gone must be one the writer deletes (it was deleted after the search returned it).
    - When no writer committed since the reader's refresh, its index holds exactly the stored chunks.
    """
    matches = reader.search(query, top_k=5)
    with reader.store.snapshot() as txn:
        for match in matches:
            try:
                record = reader.store.parent(match.parent_id, txn=txn)
            except ParentNotFoundError:
                assert match.parent_id in deleted_ids, f"{match.parent_id} vanished but was never deleted"
                continue
            assert reader.store.image_bytes(match.parent_id, txn=txn)
            assert len(reader.store.chunk_records(record.chunk_ids, txn=txn)) == len(record.chunk_ids)
        if reader.store.generation_at(txn) != reader.generation:
            return False  # the writer moved on since refresh(): nothing to compare exactly
        stored = reader.store.chunk_ids(txn)
    assert set(reader.chunk_index.ids().tolist()) == stored
    return True


def test_readers_search_while_a_writer_adds(tmp_path: Path) -> None:
    images = tmp_path / "images"
    paths = make_images(images, 120, size=(320, 240))
    first = images.parent / "first"
    first.mkdir()
    (first / paths[0].name).write_bytes(paths[0].read_bytes())
    run_worker(tmp_path / "ws", first, "--map-size", str(1 << 20))  # the workspace exists, small map
    writer = start_worker(tmp_path / "ws", images, "--map-size", str(1 << 20))
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    query = Image.open(paths[0]).convert("RGB")
    deleted_ids = {hashlib.sha256(p.read_bytes()).hexdigest()[:32] for p in paths if "-del" in p.name}
    rounds = strict = 0
    generations = set()
    with _reader(tmp_path / "ws") as reader:
        while writer.poll() is None:
            generations.add(reader.refresh())
            strict += check_reader(reader, query, deleted_ids)
            rounds += 1
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        reader.refresh()
        assert check_reader(reader, query, deleted_ids)
        assert len(reader) == 96  # 120 minus the 24 "-del" ones
        assert reader.verify().ok
    assert json.loads(out.splitlines()[0])["added"] == 119  # "ready" was read above
    assert len(generations) >= 3, "the reader should have seen the writer's progress"
    assert strict >= 1 and rounds >= 3
    with CrossScaleSearch.open(tmp_path / "ws", progress=False) as cs:
        assert cs.store._env.info()["map_size"] > 1 << 20  # the map grew while readers read


def test_second_writer_fails_at_once(tmp_path: Path) -> None:
    with CrossScaleSearch.open(tmp_path / "ws", encoder="color-histogram", segmenter="whole", progress=False):
        start = time.perf_counter()
        with pytest.raises(WorkspaceLockedError, match="readonly=True"):
            CrossScaleSearch.open(tmp_path / "ws", progress=False)
        assert time.perf_counter() - start < 5  # refused, not waited for
        with _reader(tmp_path / "ws") as reader:  # readers are welcome meanwhile
            assert len(reader) == 0
