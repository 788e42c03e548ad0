"""KeypointIndex: every parent's local descriptors in one faiss index, and a vote with the ratio test across parents."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossscale import ConfigurationError
from crossscale.errors import VectorError
from crossscale.index import KeypointIndex


def _descriptors(rng: np.random.Generator, n: int, dim: int = 128) -> np.ndarray:
    return rng.integers(0, 256, size=(n, dim), dtype=np.uint8)


def _noisy(rows: np.ndarray, rng: np.random.Generator, spread: int = 6) -> np.ndarray:
    noise = rng.integers(-spread, spread + 1, size=rows.shape)
    return np.clip(rows.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def _filled(rng: np.random.Generator, parents: int, per_parent: int, **kw: object) -> KeypointIndex:
    """A KeypointIndex (``kw``: its arguments) holding ``parents`` parents ``p0``, ``p1``, ... of random
    descriptors."""
    index = KeypointIndex(**kw)  # type: ignore[arg-type]
    for i in range(parents):
        index.add(f"p{i}", _descriptors(rng, per_parent))
    return index


def test_the_parent_holding_the_query_descriptors_gets_the_votes() -> None:
    rng = np.random.default_rng(0)
    index = KeypointIndex()
    parents = {f"p{i}": _descriptors(rng, 300) for i in range(20)}
    for pid, rows in parents.items():
        index.add(pid, rows)
    query = _noisy(parents["p7"][:40], rng)
    votes = index.vote(query, 3)
    assert votes[0] == ("p7", 40)
    assert all(n < 40 for _, n in votes[1:])
    assert len(index) == 20 and index.descriptor_count == 6000 and index.nbytes == 6000 * (64 + 8)  # 4-bit codes


def test_a_descriptor_two_parents_share_votes_for_neither() -> None:
    rng = np.random.default_rng(1)
    shared = _descriptors(rng, 30)
    index = KeypointIndex()
    index.add("a", np.concatenate([shared, _descriptors(rng, 100)]))
    index.add("b", np.concatenate([shared, _descriptors(rng, 100)]))
    own = index.vote(np.concatenate([shared, index_rows := _descriptors(rng, 5)]), 5)
    assert own == []  # the shared ones fail the ratio test; the random ones are far from everything...
    index.add("c", index_rows)
    assert index.vote(index_rows, 5) == [("c", 5)]  # ...until a parent holds them


def test_removed_and_replaced_parents() -> None:
    rng = np.random.default_rng(2)
    rows = {pid: _descriptors(rng, 200) for pid in "abc"}
    index = KeypointIndex()
    for pid, r in rows.items():
        index.add(pid, r)
    assert index.vote(rows["b"][:20], 1) == [("b", 20)]
    assert index.remove("b") and not index.remove("b") and "b" not in index
    assert all(pid != "b" for pid, _ in index.vote(rows["b"][:20], 3))
    index.add("a", rows["b"])  # replaces a's descriptors
    assert index.vote(rows["b"][:20], 1) == [("a", 20)]
    assert all(n <= 2 for _, n in index.vote(rows["a"][:20], 3))  # a's old descriptors are gone: chance votes only
    assert index.descriptor_count == 400 and list(index.parent_ids()) == ["c", "a"]


def test_it_is_trained_again_as_it_grows_and_still_finds_every_parent() -> None:
    rng = np.random.default_rng(3)
    index = KeypointIndex(nprobe=4)
    centres = _descriptors(rng, 16)  # clustered, as real descriptors are
    rows: dict[str, np.ndarray] = {}

    def grow(count: int) -> None:
        for _ in range(count):
            pid = f"p{len(rows)}"
            picks = centres[rng.integers(0, len(centres), 200)]
            rows[pid] = _noisy(picks, rng, spread=40)
            index.add(pid, rows[pid])

    grow(4)
    assert index.vote(_noisy(rows["p1"][:30], rng, 2), 1)[0][0] == "p1"
    lists_before = index._index.nlist
    grow(60)  # 16x the descriptors the lists were trained on
    assert index.vote(_noisy(rows["p50"][:30], rng, 2), 1)[0][0] == "p50"
    assert index._index.nlist > lists_before
    for pid in ("p0", "p3", "p20", "p63"):
        assert index.vote(_noisy(rows[pid][:30], rng, 2), 1)[0][0] == pid


def test_bad_input_is_named() -> None:
    index = KeypointIndex()
    with pytest.raises(VectorError, match=r"parent 'x'.*\(n, 128\) uint8"):
        index.add("x", np.zeros((3, 128), np.float32))
    with pytest.raises(VectorError, match=r"parent 'x'"):
        index.add("x", np.zeros((3, 64), np.uint8))
    with pytest.raises(VectorError, match="non-empty string"):
        index.add("", np.zeros((3, 128), np.uint8))
    with pytest.raises(VectorError, match="query descriptors"):
        index.vote(np.zeros(128, np.uint8), 1)
    with pytest.raises(ConfigurationError, match="top_n"):
        index.vote(np.zeros((1, 128), np.uint8), 0)
    with pytest.raises(ConfigurationError, match="ratio"):
        KeypointIndex(ratio=1.5)
    assert index.vote(np.zeros((1, 128), np.uint8), 1) == []  # empty: no parent to vote for
    index.train()  # nothing to train on: nothing happens
    index.add("none", np.zeros((0, 128), np.uint8))  # a parent with no keypoints is held, and never voted for
    index.train()
    assert "none" in index and index.vote(np.zeros((2, 128), np.uint8), 1) == []
    index.add("one", np.ones((3, 128), np.uint8))
    assert index.vote(np.ones((2, 128), np.uint8), 2) == [("one", 2)]
    index.remove("one")
    assert index.vote(np.ones((2, 128), np.uint8), 2) == [] and index.descriptor_count == 0


@settings(max_examples=25, deadline=None)
@given(
    parents=st.integers(1, 6),
    per_parent=st.integers(0, 40),
    queries=st.integers(0, 30),
    seed=st.integers(0, 2**16),
)
def test_votes_are_bounded_by_the_query_descriptors(parents: int, per_parent: int, queries: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    index = KeypointIndex(dim=8)
    for i in range(parents):
        index.add(f"p{i}", _descriptors(rng, per_parent, 8))
    votes = index.vote(_descriptors(rng, queries, 8), parents)
    assert sum(n for _, n in votes) <= queries
    assert all(n > 0 for _, n in votes) and len({p for p, _ in votes}) == len(votes)
    assert [n for _, n in votes] == sorted((n for _, n in votes), reverse=True)


def test_saved_and_loaded_it_votes_the_same(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    index = KeypointIndex(nprobe=4, seed=3)
    parents = {f"p{i}": _descriptors(rng, 150) for i in range(12)}
    for pid, rows in parents.items():
        index.add(pid, rows)
    index.remove("p3")  # a slot left empty
    index.train()
    late = _descriptors(rng, 40)
    index.add("late", late)  # added to the trained lists
    path = tmp_path / "k.index"
    index.save(path, {"generation": 7})
    loaded, meta = KeypointIndex.load(path)
    assert meta == {"generation": 7} and KeypointIndex.check_file(path) == {"generation": 7}
    assert (loaded.dim, loaded.nprobe, loaded.seed, loaded.ratio) == (128, 4, 3, 0.8)
    assert list(loaded.parent_ids()) == list(index.parent_ids()) and "p3" not in loaded
    assert loaded.descriptor_count == index.descriptor_count == 11 * 150 + 40 and loaded.count("late") == 40
    assert loaded.check() == []
    for query in (_noisy(parents["p0"][:20], rng), _noisy(parents["p7"][:20], rng), _noisy(late[:10], rng)):
        assert loaded.vote(query, 3) == index.vote(query, 3) and loaded.vote(query, 3)[0][1] >= 8
    assert all(pid != "p3" for pid, _ in loaded.vote(parents["p3"][:20], 3))
    new = _descriptors(rng, 30)
    loaded.add("new", new)  # it goes on like the one saved
    assert loaded.vote(new, 1) == [("new", 30)] and loaded.count("new") == 30


def test_an_empty_index_saves_and_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "k.index"
    KeypointIndex(64).save(path)
    loaded, meta = KeypointIndex.load(path)
    assert (len(loaded), loaded.dim, meta) == (0, 64, {})
    assert loaded.vote(np.zeros((3, 64), np.uint8), 2) == []


def test_a_damaged_file_is_refused_by_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from crossscale.errors import WorkspaceFormatError

    rng = np.random.default_rng(6)
    index = _filled(rng, 4, 300)
    path = tmp_path / "k.index"
    index.save(path)
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.index"
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(WorkspaceFormatError, match=r"flipped\.index"):
        KeypointIndex.check_file(flipped)
    cut = tmp_path / "cut.index"
    cut.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(WorkspaceFormatError, match=r"cut\.index"):
        KeypointIndex.load(cut)
    bare = tmp_path / "bare.index"  # the faiss data whole, the checksum after it gone
    bare.write_bytes(path.read_bytes()[:-16])
    for read in (KeypointIndex.load, KeypointIndex.check_file):
        with pytest.raises(WorkspaceFormatError, match=r"bare\.index: truncated \(no checksum\)"):
            read(bare)
    other = tmp_path / "other.index"
    other.write_bytes(b"x" * 40)
    with pytest.raises(WorkspaceFormatError, match="not a crossscale keypoint index"):
        KeypointIndex.load(other)


def test_check_finds_descriptors_of_no_parent_and_wrong_counts() -> None:
    rng = np.random.default_rng(7)
    index = _filled(rng, 3, 400)
    index.train()
    assert index.check() == []
    index._counts["p1"] = 399  # what a damaged file's header would say
    index._index.add_with_ids(_descriptors(rng, 2).astype(np.float32), np.array([99 << 24, 99 << 24], np.int64))
    problems = index.check()
    assert any("2 descriptor(s) belong to no parent" in p for p in problems)
    assert any("1 parent(s) hold other descriptor counts" in p and "'p1'" in p for p in problems)


def test_4_bit_codes_the_default_take_half_the_bytes_and_vote_alike(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(8)
    small, full = KeypointIndex(), KeypointIndex(codec="sq8")
    parents = {f"p{i}": _descriptors(rng, 200) for i in range(12)}
    for pid, rows in parents.items():
        small.add(pid, rows)
        full.add(pid, rows)
    assert small.nbytes == 2400 * (64 + 8) and full.nbytes == 2400 * 136
    for pid in ("p0", "p5", "p11"):
        query = _noisy(parents[pid][:30], rng)
        assert small.vote(query, 1)[0][0] == full.vote(query, 1)[0][0] == pid
    for i in range(12, 60):  # grown fourfold: trained again from the 4-bit lists, decoded
        small.add(f"p{i}", parents.setdefault(f"p{i}", _descriptors(rng, 200)))
    small.train()
    assert small.check() == [] and small.descriptor_count == 60 * 200
    query = _noisy(parents["p3"][:30], rng)
    assert small.vote(query, 1)[0][0] == "p3"
    small.save(tmp_path / "k.index")
    loaded, _ = KeypointIndex.load(tmp_path / "k.index")
    assert loaded.codec == "sq4" and loaded.vote(query, 3) == small.vote(query, 3)
    assert (tmp_path / "k.index").stat().st_size < 0.6 * 60 * 200 * 136
    with pytest.raises(ConfigurationError, match="codec must be one of"):
        KeypointIndex(codec="pq")


def test_a_file_whose_header_names_another_codec_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A file of 4-bit codes whose header says 8 bits (as a file from before codecs would, read as "sq8")."""
    import json
    import struct

    from crossscale.errors import WorkspaceFormatError

    rng = np.random.default_rng(9)
    index = _filled(rng, 3, 400)
    path = tmp_path / "k.index"
    index.save(path)
    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[16 : 16 + hlen])
    del header["codec"]
    new = json.dumps(header).encode()
    path.write_bytes(data[:8] + struct.pack("<Q", len(new)) + new + data[16 + hlen :])
    with pytest.raises(WorkspaceFormatError, match="disagrees with its faiss data"):
        KeypointIndex.load(path)
