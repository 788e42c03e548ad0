from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

from crossscale.errors import ConfigurationError, ParentNotFoundError, WorkspaceError
from crossscale.index import RootStore
from crossscale.index.root_store import NewParent
from crossscale.types import Box, Chunk, ChunkDetails


def _parent(pid: str, n: int = 2, dim: int = 4, data: bytes = b"img") -> NewParent:
    chunks = [Chunk(Box(0, 0, 5 + i, 5 + i), None, "tile") for i in range(n)]
    vecs = np.eye(dim, dtype=np.float32)[np.arange(n) % dim]
    return NewParent(pid, data, "PNG", 10, 10, chunks, vecs, source=f"/x/{pid}.png", metadata={"k": pid})


def test_add_read_delete(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    ids = store.add_parents([_parent("a", 2), _parent("b", 3, data=b"bbb")])
    assert ids == [[0, 1], [2, 3, 4]] and len(store) == 2 and store.chunk_count() == 5
    assert "a" in store and "zz" not in store and store.image_bytes("b") == b"bbb"
    rec = store.parent("b")
    assert rec.chunk_ids == (2, 3, 4) and rec.metadata == {"k": "b"} and rec.source == "/x/b.png"
    assert store.chunk_records([1, 2, 99])[2].parent_id == "b" and 99 not in store.chunk_records([99])
    got_ids, vecs = store.vectors([4, 0, 77])
    assert list(got_ids) == [4, 0] and vecs.shape == (2, 4)
    all_found, again = store.vectors(np.array([4, 0]))  # every id stored: the ids asked, in their order
    assert all_found.dtype == np.int64 and list(all_found) == [4, 0] and np.array_equal(again, vecs)
    np.testing.assert_array_equal(vecs, np.eye(4, dtype=np.float32)[[2, 0]])  # chunk 4: b's third; chunk 0: a's first
    twice, rows = store.vectors(np.array([0, 4, 0, 77, 4]))  # an id asked twice is read twice (re-scoring asks so)
    assert list(twice) == [0, 4, 0, 4] and np.array_equal(rows, vecs[[1, 0, 1, 0]])
    assert store.delete_parent("a") == [0, 1]
    assert len(store) == 1 and store.chunk_count() == 3 and store.vectors([0])[0].size == 0
    with pytest.raises(ParentNotFoundError, match="'a'"):
        store.delete_parent("a")
    with pytest.raises(ParentNotFoundError):
        store.image_bytes("a")


def test_batch_is_all_or_nothing(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent("a")])
    with pytest.raises(ConfigurationError, match="already stored"):
        store.add_parents([_parent("new"), _parent("a")])
    assert "new" not in store and store.chunk_count() == 2 and store.generation == 1
    with pytest.raises(ConfigurationError, match="twice"):
        store.add_parents([_parent("x"), _parent("x")])
    with pytest.raises(ConfigurationError, match="float32"):
        store.add_parents(
            [NewParent("v", b"", "PNG", 1, 1, [Chunk(Box(0, 0, 1, 1), None, "tile")], np.ones((1, 3), np.float32))]
        )


@pytest.mark.parametrize("pid", ["", "a\nb", "x" * 300, 5])
def test_parent_ids_are_validated(tmp_path: Path, pid: object) -> None:
    with pytest.raises(ConfigurationError):
        RootStore(tmp_path / "s", dim=4).add_parents([_parent(pid)])  # type: ignore[arg-type]


def test_map_grows_instead_of_failing(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4, map_size=1 << 20)
    before = store._env.info()["map_size"]
    big = np.random.default_rng(0).bytes(3 << 20)
    for i in range(40):  # 120 MiB of image bytes into a 64 MiB initial map
        store.add_parents([_parent(f"p{i}", data=big)])
    assert len(store) == 40 and store._env.info()["map_size"] > before


def test_change_log_and_prune(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent("a", 2)])
    store.add_parents([_parent("b", 1)])
    store.delete_parent("a")
    assert store.generation == 3
    assert store.changes_since(0) == [(1, [0, 1], []), (2, [2], []), (3, [], [0, 1])]
    assert store.changes_since(2) == [(3, [], [0, 1])] and store.changes_since(3) == []
    store.prune_log(2)
    assert store.changes_since(0) is None and store.changes_since(2) == [(3, [], [0, 1])]


def test_stored_values_are_json_not_pickle(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent("a")])
    store.close()
    env = lmdb.open(str(tmp_path / "s"), max_dbs=8, readonly=True)
    with env.begin() as txn:
        for name in (b"parents", b"chunks", b"info", b"log"):
            for _, value in txn.cursor(db=env.open_db(name, txn=txn)):
                json.loads(bytes(value))  # every metadata value parses as JSON
                assert not bytes(value).startswith(b"\x80")  # no pickle protocol header
    env.close()


def test_readonly(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="read-only"):
        RootStore(tmp_path / "none", dim=4, readonly=True)
    RootStore(tmp_path / "s", dim=4).add_parents([_parent("a")])
    ro = RootStore(tmp_path / "s", dim=4, readonly=True)
    assert len(ro) == 1
    with pytest.raises(WorkspaceError, match="read-only"):
        ro.delete_parent("a")


def test_iter_vectors_in_batches(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent(f"p{i}", 3) for i in range(5)])
    batches = list(store.iter_vectors(batch_size=4))
    assert [len(i) for i, _ in batches] == [4, 4, 4, 3]
    assert list(np.concatenate([i for i, _ in batches])) == list(range(15))
    assert store.chunk_ids() == set(range(15)) and store.parent_count() == len(store) == 5


def test_check_finds_a_corrupt_chunk_box(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent("a", 1)])
    assert store.check() == []
    store._write(
        lambda txn: txn.put(
            (0).to_bytes(8, "big"), b'{"p": "a", "b": [5, 5, 1, 1], "k": "tile"}', db=store._db["chunks"]
        )
    )
    assert any("chunk 0: unreadable record" in p for p in store.check())


def test_the_0_1_chunk_tuples_still_work_with_a_deprecation_warning(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    with pytest.warns(DeprecationWarning, match="Chunk objects"):
        old = NewParent(
            "old", b"x", "PNG", 10, 10, [(Box(0, 0, 5, 5), "detection", "cat", 0.5)], np.eye(4, dtype=np.float32)[:1]
        )  # type: ignore[list-item]
    [[cid]] = store.add_parents([old])
    record = store.chunk_records([cid])[cid]
    assert (record.box, record.kind, record.label, record.confidence) == (Box(0, 0, 5, 5), "detection", "cat", 0.5)


def test_the_map_grows_only_when_no_other_thread_is_reading(tmp_path: Path) -> None:
    """LMDB remaps on a resize: a read transaction another thread holds must end first (ingest reads the store
    from its preparing thread while the writer grows the map)."""
    import threading
    import time

    store = RootStore(tmp_path / "s", dim=4, map_size=1 << 20)
    store.add_parents([_parent("first")])
    reading, events = threading.Event(), []

    def reader() -> None:
        with store.snapshot() as txn:
            reading.set()
            time.sleep(0.5)
            events.append(("read", store.parent("first", txn=txn).parent_id))  # the old mapping is still valid

    thread = threading.Thread(target=reader)
    thread.start()
    reading.wait()
    before = store._env.info()["map_size"]
    store.add_parents([_parent("big", data=b"x" * before)])  # outgrows the map: a resize
    events.append(("grown", store._env.info()["map_size"] > before))
    thread.join()
    assert events == [("read", "first"), ("grown", True)]
    before = store._env.info()["map_size"]
    with store.snapshot():  # a thread's own reader does not block its resize (LMDB allows it; no deadlock)
        store.add_parents([_parent("bigger", data=b"x" * before)])
    assert store._env.info()["map_size"] > before and "bigger" in store
    store.close()


def _labelled(pid: str) -> NewParent:
    chunks = [Chunk(Box(0, 0, 8, 8), None, "whole"), Chunk(Box(1, 2, 3, 4), None, "detection", "cat", 0.9)]
    return NewParent(pid, b"img", "PNG", 8, 8, chunks, np.eye(4, dtype=np.float32)[:2])


def test_each_parent_keeps_its_chunk_details_in_the_same_transaction(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_labelled("a"), _parent("b", 3)])
    got = {pid: (ids, details) for pid, ids, details in store.parent_details()}
    ids, details = got["a"]
    assert ids == [0, 1] and details.boxes.tolist() == [[0, 0, 8, 8], [1, 2, 3, 4]]
    assert [details.kind(i) for i in range(2)] == ["whole", "detection"]
    assert [details.label(i) for i in range(2)] == [None, "cat"]
    assert got["b"][1].known.all() and len(got["b"][1]) == 3
    store.delete_parent("a")
    with store.snapshot() as txn:
        assert txn.get(b"a", db=store._db["details"]) is None
    assert store.check() == []


def test_a_store_written_without_details_reads_them_from_the_chunk_records(tmp_path: Path) -> None:
    """Stores written before 0.2 have no details: each parent's come from its chunk records."""
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_labelled("a")])
    written = {pid: details for pid, _, details in store.parent_details()}["a"]
    store._write(lambda txn: txn.delete(b"a", db=store._db["details"]))
    rebuilt = {pid: details for pid, _, details in store.parent_details()}["a"]
    assert rebuilt.boxes.tolist() == written.boxes.tolist() and rebuilt.kinds.tolist() == written.kinds.tolist()
    assert [rebuilt.label(i) for i in range(2)] == [None, "cat"]
    assert store.check() == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"garbage", "unreadable chunk details"),
        (ChunkDetails.of([Chunk(Box(0, 0, 9, 9), None, "tile")] * 2).to_bytes(), "disagree with its chunk records"),
    ],
)
def test_check_finds_chunk_details_that_are_wrong(tmp_path: Path, value: bytes, problem: str) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_labelled("a")])
    store._write(lambda txn: txn.put(b"a", value, db=store._db["details"]))
    assert any(problem in p for p in store.check())
    if value == b"garbage":  # unreadable: the parent's details come from its records
        assert {pid: d for pid, _, d in store.parent_details()}["a"].boxes.tolist()[1] == [1, 2, 3, 4]


def test_check_finds_chunk_details_of_no_parent(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_labelled("a")])
    value = ChunkDetails.of([Chunk(Box(0, 0, 9, 9), None, "tile")]).to_bytes()
    store._write(lambda txn: txn.put(b"ghost", value, db=store._db["details"]))
    assert any("chunk details of 'ghost' have no parent record" in p for p in store.check())


def test_an_unreadable_chunk_record_leaves_its_parents_details_unknown_not_the_store_unopenable(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_labelled("a")])
    store._write(lambda txn: txn.delete(b"a", db=store._db["details"]))  # as written before 0.2
    bad = b'{"p": "a", "b": [0, 0, 8, 8], "k": "blob"}'
    store._write(lambda txn: txn.put((1).to_bytes(8, "big"), bad, db=store._db["chunks"]))
    details = {pid: d for pid, _, d in store.parent_details()}["a"]
    assert not details.known.any()
    assert any("chunk 1: unreadable record" in p for p in store.check())


def _key(cid: int) -> bytes:
    return cid.to_bytes(8, "big")


def _relist(store: RootStore, pid: str, chunk_ids: list[int]) -> None:
    def write(txn: Any) -> None:
        doc = json.loads(bytes(txn.get(pid.encode(), db=store._db["parents"])).decode())
        doc["c"] = chunk_ids
        txn.put(pid.encode(), json.dumps(doc).encode(), db=store._db["parents"])

    store._write(write)


_CORRUPTIONS: dict[str, tuple[Callable[[RootStore], None], str]] = {
    "image bytes gone": (
        lambda s: s._write(lambda t: t.delete(b"a", db=s._db["roots"])),
        "parent 'a': image bytes missing",
    ),
    "image bytes of no parent": (
        lambda s: s._write(lambda t: t.put(b"ghost", b"img", db=s._db["roots"])),
        "image bytes of 'ghost' have no parent record",
    ),
    "unreadable parent": (
        lambda s: s._write(lambda t: t.put(b"b", b"{not json", db=s._db["parents"])),
        "parent 'b': unreadable record",
    ),
    "a parent without chunks": (lambda s: _relist(s, "b", []), "parent 'b': has no chunks"),
    "a listed chunk record gone": (
        lambda s: s._write(lambda t: t.delete(_key(3), db=s._db["chunks"])),
        "1 chunk record(s) listed by parents are missing, e.g. 3",
    ),
    "a chunk record no parent lists": (lambda s: _relist(s, "b", [2, 4]), "chunk 3: orphan"),
    "a chunk listed by the wrong parent": (
        lambda s: _relist(s, "a", [0, 1, 3]),
        "chunk 3: listed by parent 'a', but its record names 'b'",
    ),
    "a vector gone": (
        lambda s: s._write(lambda t: t.delete(_key(4), db=s._db["vectors"])),
        "0 vector(s) without a record, 1 record(s) without a vector",
    ),
    "a vector of no chunk": (
        lambda s: s._write(lambda t: t.put(_key(9), np.eye(4, dtype=np.float16)[0].tobytes(), db=s._db["vectors"])),
        "1 vector(s) without a record, 0 record(s) without a vector",
    ),
    "a vector not of unit length": (
        lambda s: s._write(
            lambda t: t.put(_key(2), (2 * np.eye(4, dtype=np.float16)[0]).tobytes(), db=s._db["vectors"])
        ),
        "vector 2: not a finite unit vector of dim 4",
    ),
    "a NaN vector": (
        lambda s: s._write(lambda t: t.put(_key(0), np.full(4, np.nan, np.float16).tobytes(), db=s._db["vectors"])),
        "vector 0: not a finite unit vector of dim 4",
    ),
    "a vector of another dimension": (
        lambda s: s._write(lambda t: t.put(_key(1), np.eye(3, dtype=np.float16)[0].tobytes(), db=s._db["vectors"])),
        "vector 1: not a finite unit vector of dim 4",
    ),
    "the id counter behind": (
        lambda s: s._write(lambda t: t.put(b"next_chunk_id", b"3", db=s._db["info"])),
        "chunk id 4 is not below the id counter 3",
    ),
}


@pytest.mark.parametrize("name", sorted(_CORRUPTIONS))
def test_check_names_each_broken_invariant(tmp_path: Path, name: str) -> None:
    """Parents a (chunks 0, 1) and b (2, 3, 4), float16 vectors; one invariant broken at a time."""
    store = RootStore(tmp_path / "s", dim=4, vector_dtype="float16")
    store.add_parents([_parent("a", 2), _parent("b", 3)])
    assert store.check() == []
    corrupt, problem = _CORRUPTIONS[name]
    corrupt(store)
    found = store.check()
    assert any(problem in p for p in found), found


# ---------------------------------------------------------------------- a parent's chunks checked together
_RECORD_AT_1: dict[str, bytes | None] = {
    "as written": None,
    "a box of another size": b'{"p": "a", "b": [1, 2, 5, 6], "k": "detection", "l": "cat", "c": 0.5}',
    "another parent named": b'{"p": "b", "b": [1, 2, 3, 4], "k": "detection", "l": "cat"}',
    "a float coordinate": b'{"p": "a", "b": [1.0, 2, 3, 4], "k": "detection", "l": "cat"}',
    "true as a coordinate": b'{"p": "a", "b": [true, 2, 3, 4], "k": "detection", "l": "cat"}',
    "an empty box": b'{"p": "a", "b": [5, 5, 1, 1], "k": "detection", "l": "cat"}',
    "a negative coordinate": b'{"p": "a", "b": [-1, 2, 3, 4], "k": "detection", "l": "cat"}',
    "a box of three": b'{"p": "a", "b": [1, 2, 3], "k": "detection", "l": "cat"}',
    "a box of strings": b'{"p": "a", "b": ["1", "2", "3", "4"], "k": "detection", "l": "cat"}',
    "a huge coordinate": b'{"p": "a", "b": [1, 2, 1180591620717411303424, 4], "k": "detection", "l": "cat"}',
    "a coordinate beyond int32": b'{"p": "a", "b": [1, 2, 2147483648, 4], "k": "detection", "l": "cat"}',
    "a coordinate at int32's end": b'{"p": "a", "b": [1, 2, 2147483647, 4], "k": "detection", "l": "cat"}',
    "an unknown kind": b'{"p": "a", "b": [1, 2, 3, 4], "k": "blob", "l": "cat"}',
    "a label not a string": b'{"p": "a", "b": [1, 2, 3, 4], "k": "detection", "l": 5}',
    "another label": b'{"p": "a", "b": [1, 2, 3, 4], "k": "detection", "l": "dog"}',
    "no label": b'{"p": "a", "b": [1, 2, 3, 4], "k": "detection"}',
    "no parent": b'{"b": [1, 2, 3, 4], "k": "detection", "l": "cat"}',
    "a list, not an object": b"[1, 2, 3]",
    "two objects in one": b'{"p": "a", "b": [1, 2, 3, 4], "k": "tile"}, {"p": "a", "b": [1, 2, 3, 4], "k": "tile"}',
    "not JSON": b"{not json",
    "empty": b"",
    "invalid UTF-8": b'{"p": "a\xff", "b": [1, 2, 3, 4], "k": "detection", "l": "cat"}',
    "a lone surrogate": b'{"p": "a\xed\xa0\x80", "b": [1, 2, 3, 4], "k": "detection", "l": "cat"}',
}


@pytest.mark.parametrize("name", sorted(_RECORD_AT_1))
def test_a_parents_chunks_checked_together_find_what_one_at_a_time_finds(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check() reads a parent's chunk records together where they all parse, name it and hold valid boxes and
    kinds, else one at a time: whatever one record holds, the problems are those of the walk a record at a time,
    word for word; and the records as written take the fast way."""
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_labelled("a"), _parent("b", 2)])
    value = _RECORD_AT_1[name]
    if value is not None:
        store._write(lambda txn: txn.put(_key(1), value, db=store._db["chunks"]))
    together = RootStore._check_chunks_together
    taken: list[bool] = []

    def spy(self: RootStore, *args: Any) -> list[str] | None:
        got = together(self, *args)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(RootStore, "_check_chunks_together", spy)
    found = store.check()
    monkeypatch.setattr(RootStore, "_check_chunks_together", lambda self, *args: None)
    assert found == store.check()
    assert taken[1]  # parent b's records are as written
    fast = (
        "as written",
        "true as a coordinate",
        "a box of another size",
        "another label",
        "no label",
        "a label not a string",
    )
    assert taken[0] == (name in (*fast, "a coordinate at int32's end"))
    readable = ("as written", "true as a coordinate", "a float coordinate", "a box of strings")  # int(1.0), int("1")
    assert (found == []) == (name in readable)


@pytest.mark.parametrize("ids", [["x"], [-1], [True], [0, 1.5], [1 << 64]])
def test_check_reports_a_parent_record_whose_chunk_ids_are_not_keys(tmp_path: Path, ids: list[object]) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent("a", 2)])
    _relist(store, "a", ids)  # type: ignore[arg-type]
    found = store.check()
    assert any(f"parent 'a': unreadable record (chunk id {ids[-1]!r} is not an int" in p for p in found), found


@pytest.mark.parametrize("record", [b"{not json", b'{"c": ["x"]}', b'{"c": 5}', b"[]"])
def test_parents_listed_leave_out_one_whose_record_is_unreadable(
    tmp_path: Path, record: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """parent_chunks and parent_details (what the parent map and local search are built of) skip it with a warning,
    instead of raising; check() reports it."""
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent("a", 2), _parent("b", 2), _parent("c", 1)])
    store._write(lambda txn: txn.put(b"b", record, db=store._db["parents"]))
    with caplog.at_level("WARNING", logger="crossscale.index.root_store"):
        assert [(p, ids) for p, ids in store.parent_chunks()] == [("a", [0, 1]), ("c", [4])]
        assert [(p, ids) for p, ids, _ in store.parent_details()] == [("a", [0, 1]), ("c", [4])]
    assert caplog.text.count("parent 'b': unreadable record") == 2
    assert any("parent 'b': unreadable record" in p for p in store.check())


def test_delete_parents_deletes_the_stored_ones_in_one_logged_change(tmp_path: Path) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent("a", 2), _parent("b", 3), _parent("c", 1)])
    generation = store.generation
    assert store.delete_parents([]) == ([], []) and store.delete_parents(["zz", "", 5]) == ([], [])  # type: ignore[list-item]
    assert store.generation == generation  # nothing deleted: nothing committed
    assert store.delete_parents(["c", "zz", "a", "c"]) == (["c", "a"], [5, 0, 1])
    assert store.changes_since(generation) == [(generation + 1, [], [5, 0, 1])]
    assert [p for p, _ in store.parent_chunks()] == ["b"] and store.chunk_count() == 3 and store.check() == []
    assert store.image_bytes("b") == b"img" and store.local_features("a") is None


@pytest.mark.parametrize("record", [b"{not json", b'{"w": 8, "h": 8, "f": "PNG", "n": 1, "c": ["x"]}'])
def test_deleting_a_parent_whose_record_is_unreadable_deletes_nothing(tmp_path: Path, record: bytes) -> None:
    """Its chunks are unknown, so nothing can be deleted safely: a WorkspaceError naming it, and the batch's other
    parents stay (one transaction), where it raised a bare JSON or struct error."""
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent("a", 2), _parent("b", 2)])
    store._write(lambda txn: txn.put(b"b", record, db=store._db["parents"]))
    generation = store.generation
    with pytest.raises(WorkspaceError, match="parent 'b' has an unreadable record"):
        store.delete_parents(["a", "b"])
    with pytest.raises(WorkspaceError, match="parent 'b' has an unreadable record"):
        store.delete_parent("b")
    assert "a" in store and store.chunk_count() == 4 and store.generation == generation
    assert store.delete_parents(["a"]) == (["a"], [0, 1])


def test_preload_reads_the_used_pages_of_the_store_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent(f"p{i}", 3, data=bytes(range(256)) * 64) for i in range(40)])  # pages of images
    file = tmp_path / "s" / "data.mdb"
    used = (store._env.info()["last_pgno"] + 1) * store._env.stat()["psize"]
    read: list[int] = []
    real_open = open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        handle = real_open(path, *args, **kwargs)
        real_readinto = handle.readinto

        def readinto(buffer: Any) -> int:
            got = real_readinto(buffer)
            read.append(got)
            return int(got)

        monkeypatch.setattr(handle, "readinto", readinto, raising=False)
        return handle

    with monkeypatch.context() as patch:
        patch.setattr("builtins.open", counting_open)
        assert store.preload() == used
    assert 0 < used <= file.stat().st_size and sum(read) >= used
    reader = RootStore(tmp_path / "s", dim=4, readonly=True)  # a read-only store preloads the same
    assert reader.preload(progress=True) == used
    reader.close()


def test_preload_names_the_file_it_cannot_read_and_refuses_a_closed_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RootStore(tmp_path / "s", dim=4)
    store.add_parents([_parent("a")])

    def failing_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    with monkeypatch.context() as patch:
        patch.setattr("builtins.open", failing_open)
        with pytest.raises(WorkspaceError, match=r"data\.mdb: cannot read the store: .*Permission denied"):
            store.preload()
    store.close()
    with pytest.raises(WorkspaceError, match="closed"):
        store.preload()
