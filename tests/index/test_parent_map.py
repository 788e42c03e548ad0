from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossscale.index import ParentMap
from crossscale.types import Box, Chunk, ChunkDetails


def test_maps_runs_and_padding() -> None:
    parents = ParentMap.from_parents([("a", [0, 1, 2]), ("b", [3, 4]), ("c", [7, 9])])
    codes = parents.parent_codes(np.array([[0, 2, 3, 4], [5, 7, 8, 9], [-1, 10, 1, 100]]))
    names = [[parents.parent_id(c) if c >= 0 else None for c in row] for row in codes.tolist()]
    assert names == [["a", "a", "b", "b"], [None, "c", None, "c"], [None, None, "a", None]]
    assert codes.dtype == np.int32  # 4 bytes a hit
    assert len(parents) == 3 and "c" in parents and "d" not in parents


def test_remove_and_readd() -> None:
    parents = ParentMap.from_parents([("a", [0, 1]), ("b", [2, 3])])
    assert parents.remove("a") and not parents.remove("a")
    assert parents.parent_codes(np.array([0, 1, 2])).tolist()[:2] == [-1, -1]
    parents.add("a", [10, 11])  # re-added with new ids
    parents.add("b", [20])  # replaces what b had
    codes = parents.parent_codes(np.array([2, 3, 10, 11, 20]))
    assert [parents.parent_id(c) if c >= 0 else None for c in codes.tolist()] == [None, None, "a", "a", "b"]
    with pytest.raises(KeyError):
        parents.parent_id(0)  # a's old code
    with pytest.raises(KeyError):
        parents.parent_id(99)


def test_empty_map() -> None:
    parents = ParentMap()
    assert parents.parent_codes(np.array([0, 5])).tolist() == [-1, -1]
    assert parents.parent_codes(np.array([0, 5])).dtype == np.int32
    assert len(parents) == 0 and parents.nbytes == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=30), st.data())
def test_agrees_with_a_dict(sizes: list[int], data: st.DataObject) -> None:
    """Chunk ids assigned as a store does (one run per parent), some parents deleted: every lookup agrees."""
    owner: dict[int, str] = {}
    pairs = []
    next_id = 0
    for p, size in enumerate(sizes):
        ids = list(range(next_id, next_id + size))
        next_id += size + data.draw(st.integers(0, 2))  # gaps: ids of parents deleted before
        pairs.append((f"p{p}", ids))
        owner.update(dict.fromkeys(ids, f"p{p}"))
    parents = ParentMap.from_parents(pairs)
    for name, ids in data.draw(st.lists(st.sampled_from(pairs), max_size=5)) if pairs else []:
        parents.remove(name)
        for cid in ids:
            owner.pop(cid, None)
    probe = np.arange(-1, next_id + 2)
    got = [parents.parent_id(c) if c >= 0 else None for c in parents.parent_codes(probe).tolist()]
    assert got == [owner.get(int(i)) for i in probe]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sets(st.integers(0, 200), max_size=12), max_size=12), st.data())
def test_chunk_ids_at_positions_are_the_sorted_mapped_ids(groups: list[set[int]], data: st.DataObject) -> None:
    """Parents of ids in several runs each (not one run per parent, as a store would assign them), a parent
    re-added with other ids, some removed: position i holds the i-th smallest mapped id, in any shape asked."""
    owner: dict[int, str] = {}
    for p, ids in enumerate(groups):  # an id claimed by an earlier parent stays its
        owner.update({i: f"p{p}" for i in ids if i not in owner})
    mine: dict[str, list[int]] = {}
    for cid, name in owner.items():
        mine.setdefault(name, []).append(cid)
    parents = ParentMap.from_parents(sorted((name, sorted(ids)) for name, ids in mine.items()))
    for name in data.draw(st.lists(st.sampled_from(sorted(mine)), max_size=3)) if mine else []:
        parents.remove(name)
        for cid in mine[name]:
            owner.pop(cid, None)
    kept = sorted(set(owner.values()))
    if kept and data.draw(st.booleans()):  # one parent's chunks replaced by new ones
        name = data.draw(st.sampled_from(kept))
        owner = {cid: who for cid, who in owner.items() if who != name}
        fresh = data.draw(st.lists(st.integers(201, 260), min_size=1, max_size=8, unique=True))
        parents.add(name, sorted(fresh))
        owner.update(dict.fromkeys(fresh, name))
    want = sorted(owner)
    assert parents.chunk_count == len(want)
    assert parents.chunk_ids_at(np.arange(len(want))).tolist() == want
    if want:
        at = np.array([[len(want) - 1, 0], [0, len(want) // 2]])
        assert parents.chunk_ids_at(at).tolist() == [[want[-1], want[0]], [want[0], want[len(want) // 2]]]
    for bad in (-1, len(want)):
        with pytest.raises(IndexError, match="chunk positions must lie in"):
            parents.chunk_ids_at(np.array([0, bad]) if want else np.array([bad]))
    assert parents.chunk_ids_at(np.zeros(0, np.int64)).tolist() == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=30), st.data())
def test_remove_many_is_remove_of_each(sizes: list[int], data: st.DataObject) -> None:
    """Removing parents together leaves the map as removing them one by one does: codes, details, counts; ids
    given twice or not mapped are counted once or not at all."""
    pairs, next_id = [], 0
    for p, size in enumerate(sizes):
        pairs.append((f"p{p}", list(range(next_id, next_id + size)), details_of(*[(p, 0, p + 1, 1)] * size)))
        next_id += size
    names = [name for name, _, _ in pairs]
    gone = data.draw(st.lists(st.sampled_from([*names, "unknown"]), max_size=12))
    together, apart = ParentMap.from_parents(pairs), ParentMap.from_parents(pairs)
    assert together.remove_many(gone) == len(set(gone) - {"unknown"})
    for name in dict.fromkeys(gone):
        apart.remove(name)
    probe = np.arange(-1, next_id + 1)
    assert together.parent_codes(probe).tolist() == apart.parent_codes(probe).tolist()

    def known_boxes(m: ParentMap) -> list[list[int]]:
        got = m.details(probe)
        return [box if known else [] for box, known in zip(got.boxes.tolist(), got.known.tolist(), strict=True)]

    assert known_boxes(together) == known_boxes(apart)
    assert together.chunk_count == apart.chunk_count and len(together) == len(apart) == len(set(names) - set(gone))
    fresh = ParentMap.from_parents([p for p in pairs if p[0] not in gone])  # never held the removed ones

    def named(m: ParentMap) -> list[str | None]:
        return [m.parent_id(c) if c >= 0 else None for c in m.parent_codes(probe).tolist()]

    assert named(together) == named(fresh)
    assert known_boxes(together) == known_boxes(fresh)
    assert together.chunk_count == fresh.chunk_count
    assert together.remove_many([]) == 0


# ---------------------------------------------------------------------- chunk details
def details_of(*boxes: tuple[int, int, int, int], label: str | None = None) -> ChunkDetails:
    return ChunkDetails.of([Chunk(Box(*b), None, "detection" if label else "tile", label) for b in boxes])


def test_details_come_back_in_chunk_id_order_whatever_order_they_were_given() -> None:
    parents = ParentMap()
    parents.add("a", [12, 10, 11], details_of((2, 2, 3, 3), (0, 0, 1, 1), (1, 1, 2, 2)))
    parents.add("b", [20], details_of((5, 5, 9, 9), label="cat"))
    found = parents.details(np.array([10, 11, 12, 20]))
    assert found.boxes.tolist() == [[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3], [5, 5, 9, 9]]
    assert [found.kind(i) for i in range(4)] == ["tile", "tile", "tile", "detection"]
    assert [found.label(i) for i in range(4)] == [None, None, None, "cat"]
    assert found.known.all()


def test_details_of_unmapped_ids_or_parents_added_without_them_are_unknown() -> None:
    parents = ParentMap.from_parents([("a", [0, 1], details_of((0, 0, 1, 1), (0, 0, 2, 2))), ("b", [2, 3])])
    assert parents.details(np.array([0, 1, 2, 3, 4, -1])).known.tolist() == [True, True, False, False, False, False]
    assert not ParentMap().details(np.array([0])).known.any()


def test_labels_keep_their_names_across_parents_with_different_vocabularies() -> None:
    parents = ParentMap()
    two = [Chunk(Box(0, 0, 1, 1), None, "detection", "dog"), Chunk(Box(0, 0, 1, 1), None, "detection", "cat")]
    parents.add("a", [0, 1], ChunkDetails.of(two))
    parents.add("b", [2], details_of((0, 0, 1, 1), label="cat"))
    parents.add("c", [3], details_of((0, 0, 1, 1), label="bird"))  # a label no parent had before
    found = parents.details(np.array([0, 1, 2, 3]))
    assert [found.label(i) for i in range(4)] == ["dog", "cat", "cat", "bird"]


def test_boxes_beyond_16_bits_widen_the_column() -> None:
    parents = ParentMap.from_parents([("a", [0], details_of((0, 0, 60_000, 10)))])
    nbytes = parents.nbytes
    parents.add("b", [1], details_of((0, 0, 70_000, 10)))
    assert parents.details(np.array([0, 1])).boxes[:, 2].tolist() == [60_000, 70_000]
    assert parents.nbytes > nbytes + 8  # 16 bytes per box now, not 8


def test_the_label_column_is_as_narrow_as_the_vocabulary_allows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One byte a label while the vocabulary has at most 128 labels (10 bytes a chunk in all), then two, then four:
    each widening keeps every label already mapped, and a saved map loads back as narrow."""
    parents = ParentMap.from_parents([(f"p{p}", [p], details_of((0, 0, 1, 1), label=f"l{p}")) for p in range(128)])
    assert parents.nbytes - 32 * 128 == 10 * 128  # 32 bytes a run, then 8 + 1 + 1 a chunk
    parents.add("p128", [128], details_of((0, 0, 1, 1), label="l128"))  # 129 labels: a code of 128
    assert parents.nbytes - 32 * 129 == 11 * 129
    parents.save(tmp_path / "m")
    loaded, _ = ParentMap.load(tmp_path / "m")
    assert loaded.nbytes == parents.nbytes
    assert _lookups(loaded, np.arange(-1, 131)) == _lookups(parents, np.arange(-1, 131))
    parents.add_many((f"p{p}", [p], details_of((0, 0, 1, 1), label=f"l{p}")) for p in range(129, 32_769))
    assert parents.nbytes - 32 * 32_769 == 13 * 32_769  # a code of 32,768
    found = parents.details(np.arange(32_769))
    assert [found.label(i) for i in (0, 127, 128, 32_767, 32_768)] == ["l0", "l127", "l128", "l32767", "l32768"]
    assert found.labels.dtype == np.int32


def test_a_map_file_of_int32_labels_loads_narrowed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A file written before the label column was narrowed (int32 labels) loads, as a map of one-byte labels."""
    from crossscale.index import parent_map as module

    parents = ParentMap.from_parents(
        [("a", [0, 1], details_of((0, 0, 1, 1), (0, 0, 2, 2), label="cat")), ("b", [5], details_of((1, 1, 2, 2)))]
    )
    header, arrays = parents._file_content(None)
    assert arrays["labels"].dtype == np.int8
    module._FILE.write_arrays(tmp_path / "m", header, {**arrays, "labels": arrays["labels"].astype(np.int32)})
    loaded, _ = ParentMap.load(tmp_path / "m")
    probe = np.arange(-1, 8)
    assert _lookups(loaded, probe) == _lookups(parents, probe)
    assert loaded.nbytes == parents.nbytes


def test_removed_parents_rows_are_dropped_once_they_outnumber_the_live_ones() -> None:
    parents = ParentMap.from_parents(
        (f"p{p}", range(p * 600, (p + 1) * 600), details_of(*[(p, 0, p + 1, 1)] * 600)) for p in range(5)
    )
    for p in range(4):
        parents.remove(f"p{p}")
    assert parents.nbytes < 600 * 5 * 13  # compacted
    found = parents.details(np.arange(2400, 3000))
    assert found.known.all() and (found.boxes[:, 0] == 4).all()
    assert parents.details(np.array([0, 599])).known.tolist() == [False, False]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=30), st.data())
def test_details_agree_with_a_dict(sizes: list[int], data: st.DataObject) -> None:
    """Parents added with details and removed in any order: every chunk's details are its own."""
    truth: dict[int, tuple[int, int, int, int]] = {}
    pairs = []
    next_id = 0
    for p, size in enumerate(sizes):
        ids = list(range(next_id, next_id + size))
        next_id += size + data.draw(st.integers(0, 2))
        boxes = [(cid % 7, p, cid % 7 + 1 + p, p + 1) for cid in ids]
        pairs.append((f"p{p}", ids, details_of(*boxes)))
        truth.update(zip(ids, boxes, strict=True))
    parents = ParentMap()
    for name, ids, details in pairs:
        parents.add(name, ids, details)
        if data.draw(st.booleans()):
            parents.remove(name)
            for cid in ids:
                truth.pop(cid)
    probe = np.arange(-1, next_id + 2)
    found = parents.details(probe)
    got = {int(i): tuple(b) for i, b, k in zip(probe, found.boxes.tolist(), found.known, strict=True) if k}
    assert got == truth


def test_replacing_parents_in_one_call_keeps_every_other_parents_details() -> None:
    """Replaced parents' rows are dropped, and the columns compacted, in the middle of adding others."""
    parents = ParentMap.from_parents(
        (f"p{p}", range(p * 600, (p + 1) * 600), details_of(*[(p, 0, p + 1, 1)] * 600)) for p in range(4)
    )
    parents.add_many(
        [
            ("new", range(5000, 5300), details_of(*[(7, 0, 8, 1)] * 300)),
            ("p0", range(6000, 6300), details_of(*[(9, 0, 10, 1)] * 300)),  # replaces p0: its old rows are garbage
            ("p1", range(7000, 7300), details_of(*[(11, 0, 12, 1)] * 300)),
            ("p2", range(8000, 8300), details_of(*[(13, 0, 14, 1)] * 300)),  # now garbage outweighs: compacted
        ]
    )
    assert parents.nbytes < 2400 * 13  # 1,500 rows left, not 3,600
    probe = {"new": 5000, "p0": 6299, "p1": 7000, "p2": 8000, "p3": 1800}
    found = parents.details(np.array(list(probe.values())))
    assert found.known.all() and found.boxes[:, 0].tolist() == [7, 9, 11, 13, 3]
    codes = parents.parent_codes(np.array(list(probe.values())))
    assert [parents.parent_id(c) for c in codes.tolist()] == list(probe)
    assert not parents.details(np.array([0, 600, 1200])).known.any()


def test_a_parent_given_twice_in_one_call_keeps_its_last_chunks() -> None:
    parents = ParentMap()
    parents.add_many(
        [("a", [0, 1], details_of((0, 0, 1, 1), (0, 0, 2, 2))), ("b", [2]), ("a", [5], details_of((3, 3, 4, 4)))]
    )
    codes = parents.parent_codes(np.array([0, 1, 2, 5]))
    assert [parents.parent_id(c) if c >= 0 else None for c in codes.tolist()] == [None, None, "b", "a"]
    assert parents.details(np.array([5])).boxes.tolist() == [[3, 3, 4, 4]] and len(parents) == 2


# ---------------------------------------------------------------------- the file
def _lookups(parents: ParentMap, probe: np.ndarray) -> list[tuple[str | None, int, tuple[int, ...], str | None]]:
    """Every probed id's parent, and its kind (code), box and label where its details are known."""
    codes = parents.parent_codes(probe)
    found = parents.details(probe)
    return [
        (parents.parent_id(c) if c >= 0 else None, kind, tuple(b) if k else (), found.label(i) if k else None)
        for i, (c, kind, k, b) in enumerate(
            zip(codes.tolist(), found.kinds.tolist(), found.known, found.boxes.tolist(), strict=True)
        )
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=20), st.data())
def test_a_saved_map_loads_back_equal(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], data: st.DataObject
) -> None:
    """Any map (details or none, labels, wide boxes, parents removed so that rows are garbage or compacted) loads
    back mapping every id as before, and takes further changes as the original does."""
    parents = ParentMap()
    next_id = 0
    names: list[str] = []
    for p, size in enumerate(sizes):
        ids = list(range(next_id, next_id + size))
        next_id += size + data.draw(st.integers(0, 2))
        label = data.draw(st.sampled_from([None, "cat", "dog", "é"]))
        wide = data.draw(st.integers(1, 70_000))
        details = (
            details_of(*[(cid % 5, p, cid % 5 + wide, p + 1) for cid in ids], label=label)
            if data.draw(st.booleans())
            else None
        )
        name = data.draw(st.sampled_from([f"p{p}", f"фото {p}.jpg"]))
        parents.add(name, ids, details)
        names.append(name)
        if names and data.draw(st.booleans()):
            parents.remove(data.draw(st.sampled_from(names)))
    path = tmp_path_factory.mktemp("map") / "parents.map"
    parents.save(path, {"generation": 7})
    loaded, meta = ParentMap.load(path)
    probe = np.arange(-1, next_id + 2)
    assert meta == {"generation": 7}
    assert _lookups(loaded, probe) == _lookups(parents, probe)
    assert len(loaded) == len(parents) and loaded.chunk_count == parents.chunk_count
    assert ParentMap.check_file(path) == {"generation": 7}
    for m in (parents, loaded):  # both take the same changes after
        m.add("new", [next_id + 5, next_id + 6], details_of((1, 2, 3, 4), (5, 6, 7, 8), label="bird"))
        if names:
            m.remove(names[0])
    probe = np.arange(-1, next_id + 8)
    assert _lookups(loaded, probe) == _lookups(parents, probe)


def test_an_empty_map_saves_and_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ParentMap().save(tmp_path / "m")
    loaded, meta = ParentMap.load(tmp_path / "m")
    assert len(loaded) == 0 and meta == {} and loaded.parent_codes(np.array([0])).tolist() == [-1]


def test_a_corrupt_or_truncated_map_file_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from crossscale.errors import WorkspaceFormatError

    path = tmp_path / "m"
    ParentMap.from_parents([("a", range(100), details_of(*[(0, 0, 1, 1)] * 100))]).save(path)
    raw = path.read_bytes()
    flipped = bytearray(raw)
    flipped[-100] ^= 0x04
    for bad, message in (
        (bytes(flipped), "fails its checksum"),
        (raw[:-30], "truncated"),
        (raw[:-12], "unexpected bytes"),
        (b"CSIDX\x00\x01\n" + raw[8:], "not a crossscale parent map file"),
    ):
        path.write_bytes(bad)
        with pytest.raises(WorkspaceFormatError, match=message):
            ParentMap.load(path)
        with pytest.raises(WorkspaceFormatError):
            ParentMap.check_file(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(codes=a["codes"] + 5), "name no parent"),
        (lambda a: a.update(rows=a["rows"] + 1), "leave the columns"),
        (lambda a: a.update(starts=a["starts"][::-1].copy(), stops=a["stops"][::-1].copy()), "overlap"),
        (lambda a: a.update(labels=a["labels"][:-1]), "kind or label columns"),
        (lambda a: a.update(labels=a["labels"].astype(np.int64)), "kind or label columns"),
        (lambda a: a.update(codes=a["codes"][:-1]), "run arrays of other kinds or lengths"),
        (lambda a: a.update(boxes=a["boxes"].astype(np.float32)), "boxes of float32"),
        (lambda a: a.update(labels=a["labels"] + 3), "outside the vocabulary"),
        (lambda a: a.update(name_ends=a["name_ends"] - 1), "not laid end to end"),
        (lambda a: a.update(names=np.frombuffer(b"a\xff", np.uint8), name_ends=np.array([1, 2])), "UnicodeDecodeError"),
        (lambda a: a.pop("stops"), "stops"),
    ],
)
def test_a_map_file_whose_arrays_disagree_is_refused_naming_what(tmp_path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    """A file that passes its checksum but holds no map (written by something else, or a bug) is refused, never
    loaded into a map that answers wrongly."""
    from crossscale.errors import WorkspaceFormatError
    from crossscale.index import parent_map as module

    parents = ParentMap.from_parents(
        [
            ("a", [0, 1], details_of((0, 0, 1, 1), (0, 0, 2, 2), label="cat")),
            ("b", [5, 6], details_of((0, 0, 1, 1), (1, 1, 2, 2))),
        ]
    )
    header, arrays = parents._file_content(None)
    module._FILE.write_arrays(tmp_path / "m", header, arrays)
    assert len(ParentMap.load(tmp_path / "m")[0]) == 2  # as written, it loads
    change(arrays)
    module._FILE.write_arrays(tmp_path / "m", header, arrays)
    with pytest.raises(WorkspaceFormatError, match=message):
        ParentMap.load(tmp_path / "m")
