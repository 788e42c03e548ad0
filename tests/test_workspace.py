"""The workspace: one decoder for indexed and stored pixels, workspaces of earlier releases, the typed config, what
verify() reports."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from crossscale import Box, Chunk, CrossScaleSearch

DATA = Path(__file__).parent / "data"


def _png(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _parents() -> dict[str, bytes]:
    """Image files in the modes whose conversion to RGB is not obvious, as bytes."""
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :16, 3] = 0  # left half fully transparent red
    rgba[:, 16:, 3] = 128
    la = np.zeros((24, 32, 2), np.uint8)
    la[..., 0] = 40
    la[:12, :, 1] = 0
    la[12:, :, 1] = 255
    palette = Image.new("P", (32, 24), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.paste(0, (0, 0, 10, 24))
    sixteen = Image.fromarray(np.full((24, 32), 30000, np.uint16))
    cmyk = io.BytesIO()
    Image.new("CMYK", (32, 24), (0, 255, 0, 40)).save(cmyk, format="JPEG")
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))).convert("RGB").save(
        rotated, format="JPEG", exif=exif.tobytes()
    )
    return {
        "rgba": _png(Image.fromarray(rgba, "RGBA")),
        "la": _png(Image.fromarray(la, "LA")),
        "p-transparency": _png(palette, transparency=0),
        "sixteen-bit": _png(sixteen),
        "cmyk": cmyk.getvalue(),
        "exif-rotated": rotated.getvalue(),
    }


class RecordingSegmenter:
    """The whole image as one chunk, remembering the pixels it was given: the pixels that were indexed."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def segment(self, images: Sequence[Image.Image]) -> list[list[Chunk]]:
        self.seen += [np.asarray(im).copy() for im in images]
        return [[Chunk(Box(0, 0, im.width, im.height), im, "whole")] for im in images]


def test_image_gives_back_exactly_the_pixels_that_were_indexed(tmp_path: Path) -> None:
    """Failed on crossscale 0.1: ``image()`` decoded stored bytes another way than indexing did."""
    segmenter = RecordingSegmenter()
    parents = _parents()
    with CrossScaleSearch.open(
        tmp_path / "ws", encoder="color-histogram", segmenter=segmenter, progress=False, device="cpu", batch_size=1
    ) as cs:
        report = cs.index(list(parents.items()))
        assert report.added == tuple(parents)
        for pid, indexed in zip(parents, segmenter.seen, strict=True):
            stored = np.asarray(cs.image(pid))
            assert stored.shape == indexed.shape and np.array_equal(stored, indexed), pid
        [match] = cs.search(Image.fromarray(segmenter.seen[0]), top_k=1)
        assert np.array_equal(np.asarray(match.image()), segmenter.seen[0])
    assert segmenter.seen[0][0, 0].tolist() == [255, 255, 255]  # transparent: on white
    assert segmenter.seen[3][0, 0].tolist() == [117] * 3  # 30000 of 65535, not clipped to 255
    assert segmenter.seen[5].shape[:2] == (32, 24)  # EXIF orientation applied


# ---------------------------------------------------------------------- workspaces of earlier releases
@pytest.fixture
def v0_1(tmp_path: Path) -> Path:
    """A copy of the workspace crossscale 0.1.0 wrote (tests/data/make_workspace_v0_1.py); never opened in place."""
    target = tmp_path / "ws"
    shutil.copytree(DATA / "workspace-v0.1", target)
    return target


def test_a_workspace_written_by_0_1_opens_searches_and_verifies(v0_1: Path) -> None:
    expected = json.loads((DATA / "workspace-v0.1.expected.json").read_text())
    queries = {name: Image.open(DATA / f"workspace-v0.1.query-{name}.png").convert("RGB") for name in expected}
    with CrossScaleSearch.open(v0_1, readonly=True, progress=False, device="cpu", refine=False) as reader:
        assert reader.verify().ok, reader.verify().problems
        assert sorted(reader.parent_ids()) == ["gradient-jpeg", "rgba-memory", "sixteen-bit"]
        assert reader.record("rgba-memory").metadata == {"made_by": "crossscale 0.1.0"}
        for name, query in queries.items():
            got = [m.to_dict() for m in reader.search(query, top_k=3)]
            assert [g["parent_id"] for g in got] == [e["parent_id"] for e in expected[name]]
            scores, ids = reader.chunk_index.search(reader.encoder.encode([query]), len(reader.chunk_index))
            score_of = dict(zip(ids[0].tolist(), scores[0].tolist(), strict=True))
            for g, e in zip(got, expected[name], strict=True):
                # since 0.2 the first-indexed of equally scored chunks is the match (0.1 took faiss' pick)
                tied = score_of[g["chunk_id"]] == score_of[e["chunk_id"]] and g["chunk_id"] < e["chunk_id"]
                assert g["box"] == e["box"] or tied, (name, g, e)
            np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected[name]], rtol=1e-5)
        assert reader.image("sixteen-bit").size == (64, 64)


def test_a_workspace_written_by_0_1_takes_new_parents_and_deletions(v0_1: Path, photos: dict[str, Image.Image]) -> None:
    with CrossScaleSearch.open(v0_1, progress=False, device="cpu") as cs:  # the recorded encoder and segmenter
        assert cs.config.encoder_name == "color-histogram(8)" and cs.config.format == 1
        report = cs.index([("coffee", photos["coffee"])])
        assert report.added == ("coffee",)
        cs.delete("gradient-jpeg")
        assert cs.search(photos["coffee"], top_k=1)[0].parent_id == "coffee"
    with CrossScaleSearch.open(v0_1, readonly=True, progress=False, device="cpu") as reader:
        assert reader.verify().ok and sorted(reader.parent_ids()) == ["coffee", "rgba-memory", "sixteen-bit"]


# ---------------------------------------------------------------------- config and files
def test_the_config_is_typed_and_round_trips(tmp_path: Path) -> None:
    from crossscale.workspace import WorkspaceConfig

    doc = json.loads((DATA / "workspace-v0.1" / "workspace.json").read_text())
    config = WorkspaceConfig.from_json(doc)
    assert config.dim == 512 and config.encoder_spec is not None and config.encoder_spec.name == "color-histogram"
    assert config.segmenter_spec is not None and config.segmenter_spec.kwargs == {"tiles": {"scales": [0.5]}}
    assert config.to_json() == doc  # what 0.1 wrote is what this version writes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("encoder"), "malformed.*encoder"),
        (lambda d: d["encoder"].update(dim="512"), "encoder.dim"),
        (lambda d: d["encoder"].update(dim=0), "encoder.dim must be positive"),
        (lambda d: d.update(index_factory=None), "index_factory"),
        (lambda d: d["segmenter"].update(spec={"name": "tiles"}), "malformed"),
        (lambda d: d.update(format=99), "newer"),
        (lambda d: d.clear(), "not a crossscale workspace config"),
    ],
)
def test_a_malformed_config_is_refused_naming_the_field(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    from crossscale import WorkspaceFormatError

    target = tmp_path / "ws"
    shutil.copytree(DATA / "workspace-v0.1", target)
    doc = json.loads((target / "workspace.json").read_text())
    change(doc)
    (target / "workspace.json").write_text(json.dumps(doc))
    with pytest.raises(WorkspaceFormatError, match=message):
        CrossScaleSearch.open(target, progress=False, device="cpu")


def test_workspace_files_are_readable_by_others_as_the_umask_allows(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with CrossScaleSearch.open(tmp_path / "ws", encoder="color-histogram", segmenter="whole", progress=False) as cs:
            cs.index([("x", Image.new("RGB", (8, 8)))])
    finally:
        os.umask(old)
    for name in ("workspace.json", "chunks.index"):
        assert (tmp_path / "ws" / name).stat().st_mode & 0o777 == 0o644, name


def test_atomic_write_leaves_no_temporary_file_when_it_fails(tmp_path: Path) -> None:
    from crossscale._files import atomic_write

    def parts():  # type: ignore[no-untyped-def]
        yield b"half"
        raise OSError(28, "No space left on device")

    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(OSError, match="No space"):
        atomic_write(tmp_path / "f", parts())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"] and (tmp_path / "f").read_bytes() == b"old"


def test_a_save_is_due_when_it_costs_a_small_share_of_the_ingest_since_the_last_or_is_quick(tmp_path: Path) -> None:
    from crossscale._files import ASSUMED_WRITE_BYTES_PER_SECOND, SaveSchedule

    quick = SaveSchedule(last_write_seconds=0.05)
    assert quick.due(0.0) and quick.due(0.0)  # a small file: after every call
    slow = SaveSchedule(last_write_seconds=2.0)  # share 0.1: due after 20 s of ingest
    assert not slow.due(1.0) and not slow.due(-5.0) and not slow.due(18.0)  # 19 s counted (no negative time)
    assert slow.work_seconds == pytest.approx(19.0)
    assert slow.due(1.0)
    slow.wrote(3.0)  # that write took 3 s: due again after 30 s more
    assert slow.work_seconds == 0.0 and not slow.due(29.0) and slow.due(1.0)
    file = tmp_path / "index"
    assert SaveSchedule.for_file(file).last_write_seconds == 0.0  # none yet: the first write is due
    with open(file, "wb") as f:
        f.truncate(3 * 10**8)  # sparse: 300 MB of size, no disk
    assert SaveSchedule.for_file(file).last_write_seconds == pytest.approx(3e8 / ASSUMED_WRITE_BYTES_PER_SECOND)


def test_the_lock_is_released_on_close_and_when_opening_fails(tmp_path: Path) -> None:
    from crossscale import ConfigurationError

    with pytest.raises(ConfigurationError):
        CrossScaleSearch.open(tmp_path / "ws", encoder="no-such-encoder", progress=False)
    cs = CrossScaleSearch.open(tmp_path / "ws", encoder="color-histogram", segmenter="whole", progress=False)
    cs.close()
    cs.close()  # idempotent
    CrossScaleSearch.open(tmp_path / "ws", progress=False).close()


def _three_noise_images(path: Path, seed: int) -> CrossScaleSearch:
    """A workspace holding three noise images, one chunk each, open for writing."""
    rng = np.random.default_rng(seed)
    cs = CrossScaleSearch.open(
        path, encoder="color-histogram", segmenter="whole", verifier=False, refine=False, progress=False
    )
    cs.index([rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)])
    return cs


def test_verify_reports_an_index_file_that_fails_its_checksum(tmp_path: Path) -> None:
    _three_noise_images(tmp_path / "ws", 3).close()
    file = tmp_path / "ws" / "chunks.index"
    raw = bytearray(file.read_bytes())
    raw[len(raw) - 40] ^= 0x01
    file.write_bytes(bytes(raw))
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as cs:
        report = cs.verify()  # this reader rebuilt its index from the store; the file is still the bad one
    assert not report.ok and any("fails its checksum" in p for p in report.problems), report


def test_verify_reports_chunks_indexed_twice_and_chunks_not_indexed(tmp_path: Path) -> None:
    with _three_noise_images(tmp_path / "ws", 4) as cs:
        assert cs.verify().ok
        index = cs.chunk_index
        ids = index.ids()
        x = np.eye(index.dim, dtype=np.float32)[:1]
        index.add(x, ids[:1])  # the first chunk a second time
        problems = cs.verify().problems
        assert any("holds 1 chunk(s) more than once" in p for p in problems), problems
        index.remove(ids[1:2])  # removes every copy of the second chunk's id
        problems = cs.verify().problems
        assert any("0 vector(s) of no stored chunk, 1 stored chunk(s) not indexed" in p for p in problems), problems


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (b"{not json", "unreadable record (Expecting property name"),
        (b'{"w": 128, "h": 96, "f": "PNG", "n": 1, "c": ["x"]}', "unreadable record (chunk id 'x' is not an int"),
        (b'{"w": 128, "h": 96, "f": "PNG", "n": 1, "c": [-1]}', "unreadable record (chunk id -1 is not an int"),
    ],
)
def test_a_corrupt_parent_record_is_reported_and_left_out(tmp_path: Path, record: bytes, problem: str) -> None:
    """verify() reports an unreadable parent record (it raised from the parent map's check, or from packing a
    chunk id that is not one); opening without the parent map file leaves the parent out, with a warning."""
    with _three_noise_images(tmp_path / "ws", 5) as cs:
        victim = sorted(cs.parent_ids())[1]
        store = cs.workspace.store
        store._write(lambda txn: txn.put(victim.encode(), record, db=store._db["parents"]))
        report = cs.verify()
    assert not report.ok and any(f"parent {victim!r}: {problem}" in p for p in report.problems), report
    (tmp_path / "ws" / "parents.map").unlink()
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as cs:
        assert victim not in {m.parent_id for r in cs.search_vectors(np.eye(cs.config.dim)[:3], top_k=3) for m in r}
        assert not cs.verify().ok


def test_chunk_details_are_worked_out_once_per_new_parent(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossscale.types import ChunkDetails

    calls: list[int] = []
    of = ChunkDetails.of
    monkeypatch.setattr(ChunkDetails, "of", staticmethod(lambda chunks: calls.append(len(chunks)) or of(chunks)))
    with CrossScaleSearch.open(
        tmp_path / "ws", encoder="color-histogram", segmenter="whole+tiles", verifier=False, progress=False
    ) as cs:
        cs.index([("a", photos["coffee"]), ("b", photos["rocket"])])
        chunks = [len(cs.record(p).chunk_ids) for p in ("a", "b")]
        assert calls == chunks  # one for the store and the parent map together, per parent
        assert cs.verify().ok
        stored = {pid: details for pid, _, details in cs.store.parent_details()}
        in_map = cs.workspace.parents.details(np.asarray(cs.record("a").chunk_ids))
        np.testing.assert_array_equal(in_map.boxes, stored["a"].boxes)  # the map holds what the store holds


# ---------------------------------------------------------------------- the parent map file
def _noise(seed: int, n: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(f"s{seed}-{i}", rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)) for i in range(n)]


def _writer(path: Path) -> CrossScaleSearch:
    return CrossScaleSearch.open(
        path, encoder="color-histogram", segmenter="whole", verifier=False, refine=False, progress=False
    )


def _no_store_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make reading every parent's details from the store fail: what opening did before the map had a file."""
    from crossscale.index.root_store import RootStore

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("read every parent's record from the store")

    monkeypatch.setattr(RootStore, "parent_details", refuse)


def _top(cs: CrossScaleSearch, image: np.ndarray) -> tuple[str, Box, int]:
    """The best match's parent, box and chunk id: what the parent map answers."""
    match = cs.search(image, top_k=1)[0]
    return match.parent_id, match.box, match.chunk_id


def test_opening_reads_the_parent_map_file_instead_of_every_parent_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _noise(1, 4)
    with _writer(tmp_path / "ws") as cs:
        cs.index(images)
        before = [_top(cs, im) for _, im in images]
    assert (tmp_path / "ws" / "parents.map").exists()
    _no_store_scan(monkeypatch)
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        assert [_top(reader, im) for _, im in images] == before
        assert [top[0] for top in before] == [p for p, _ in images]
    monkeypatch.undo()
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        assert reader.verify().ok and not any("parent map" in n for n in reader.verify().notes)


def test_a_parent_map_file_behind_the_store_is_caught_up_from_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that has not saved yet (or was killed before it could): a reader loads the older file and replays
    the store's log, additions and deletions, without reading every parent."""
    from crossscale.workspace import Workspace

    first, second = _noise(2, 3), _noise(3, 2)
    with _writer(tmp_path / "ws") as cs:
        cs.index(first)
    writer = _writer(tmp_path / "ws")
    monkeypatch.setattr(Workspace, "_write_index", lambda self: None)  # nothing saved from now on
    writer.index(second)
    writer.delete(first[0][0])
    _no_store_scan(monkeypatch)
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        assert reader.workspace.parents.chunk_count == 4
        assert _top(reader, second[1][1])[0] == second[1][0]
        assert first[0][0] not in reader.workspace.parents and second[0][0] in reader.workspace.parents
    monkeypatch.undo()
    writer.close()
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        report = reader.verify()
    assert report.ok and report.parents == 4, report


def test_a_writer_that_changed_nothing_closes_without_rewriting_its_files(tmp_path: Path) -> None:
    with _writer(tmp_path / "ws") as cs:
        cs.index(_noise(4, 3))
    files = [tmp_path / "ws" / name for name in ("chunks.index", "parents.map")]

    def stamps() -> list[tuple[int, int]]:
        return [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]

    written = stamps()
    with _writer(tmp_path / "ws") as cs:
        cs.search(_noise(4, 1)[0][1])
        cs.save()
    assert stamps() == written  # each save replaces the file: a new inode
    with _writer(tmp_path / "ws") as cs:
        cs.index(_noise(5, 1))
    changed = stamps()
    assert all(a[0] != b[0] for a, b in zip(changed, written, strict=True))
    with _writer(tmp_path / "ws") as cs:
        cs.delete("s5-0")
    assert all(a[0] != b[0] for a, b in zip(stamps(), changed, strict=True))


def test_a_missing_or_unreadable_parent_map_file_is_rebuilt_from_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = _noise(6, 3)
    with _writer(tmp_path / "ws") as cs:
        cs.index(images)
    file = tmp_path / "ws" / "parents.map"
    raw = bytearray(file.read_bytes())
    raw[-20] ^= 0x01
    file.write_bytes(bytes(raw))
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        report = reader.verify()
        assert _top(reader, images[2][1])[0] == images[2][0]  # opened all the same, from the store
    assert not report.ok and any("parent map file is unreadable" in p for p in report.problems), report
    assert "rebuilding the parent map from the store" in caplog.text
    with _writer(tmp_path / "ws") as cs:  # a writer rewrites it when it opens
        assert cs.verify().ok
    file.unlink()
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        report = reader.verify()
        assert _top(reader, images[0][1])[0] == images[0][0]
    assert report.ok and any("no parent map file" in n for n in report.notes), report
    with _writer(tmp_path / "ws"):
        pass
    assert file.exists()


def test_a_parent_map_file_that_cannot_be_written_fails_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    from crossscale.index import ParentMap

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ParentMap, "save", full)
    images = _noise(7, 3)
    with _writer(tmp_path / "ws") as cs:
        cs.index(images)
    assert "cannot save the parent map (No space left on device)" in caplog.text
    assert (tmp_path / "ws" / "chunks.index").exists() and not (tmp_path / "ws" / "parents.map").exists()
    monkeypatch.undo()
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        assert _top(reader, images[1][1])[0] == images[1][0] and reader.verify().ok


def test_a_kill_between_the_parent_map_file_and_the_index_file_leaves_files_that_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The map's file is written first, the index's second, the log pruned last: interrupted between the two, the
    map is ahead of the index, and both open at the store's generation."""
    from crossscale.index import ChunkIndex

    first, second = _noise(8, 2), _noise(9, 2)
    with _writer(tmp_path / "ws") as cs:
        cs.index(first)

    def killed(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    cs = _writer(tmp_path / "ws")
    monkeypatch.setattr(ChunkIndex, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        cs.index(second)
    monkeypatch.undo()
    cs.workspace.store.close()  # as a killed process leaves it: nothing else written
    cs.workspace._lock.release()  # type: ignore[union-attr]
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        notes = reader.verify().notes
        assert reader.verify().ok and len(reader) == 4
        assert any("index file is 1 change(s) behind" in n for n in notes), notes
        assert not any("parent map file" in n for n in notes), notes
        assert _top(reader, second[0][1])[0] == second[0][0]


def test_a_new_workspace_has_both_files_from_the_start(tmp_path: Path) -> None:
    """Created and closed with nothing added, a workspace still has both files, at generation 0, and verifies
    without notes about them (nothing is skipped as "unchanged" that was never written)."""
    with _writer(tmp_path / "ws") as cs:
        assert len(cs) == 0
    assert {p.name for p in (tmp_path / "ws").iterdir()} >= {"chunks.index", "parents.map"}
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        report = reader.verify()
    assert report.ok and not report.notes, report


def test_a_parent_map_that_cannot_be_caught_up_is_rebuilt_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A chunk record added since the map's file was written is unreadable: catching the map up from it fails, so
    the map is built from the store (each parent's stored details), the workspace opens and searches, and verify
    names the record."""
    import struct

    from crossscale.workspace import Workspace

    first, second = _noise(10, 2), _noise(11, 2)
    with _writer(tmp_path / "ws") as cs:
        cs.index(first)
    earlier = CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False)  # a reader from before
    writer = _writer(tmp_path / "ws")
    monkeypatch.setattr(Workspace, "_write_index", lambda self: None)  # the files stay as they were
    writer.index(second)
    bad = writer.record(second[1][0]).chunk_ids[0]
    store = writer.workspace.store
    store._write(lambda txn: txn.put(struct.pack(">Q", bad), b"{not json", db=store._db["chunks"]))
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        assert "cannot be caught up" in caplog.text
        assert _top(reader, second[1][1])[0] == second[1][0]
        problems = reader.verify().problems
    assert any(f"chunk {bad}: unreadable record" in p for p in problems), problems
    with earlier:  # refresh() replays the same log: it reloads from the store instead of failing half-way
        earlier.refresh()
        assert "cannot catch up" in caplog.text and len(earlier.workspace.parents) == 4
        assert _top(earlier, second[1][1])[0] == second[1][0]
    monkeypatch.undo()
    writer.workspace.store.close()
    writer.workspace._lock.release()  # type: ignore[union-attr]


def _reference_map_check(parents: object, stored: list[tuple[str, list[int], object]]) -> tuple[int, int, int, int]:
    """The parent map check a parent at a time, as it was written before it compared many parents at once."""
    unmapped = misplaced = known = wrong = 0
    for parent_id, chunk_ids, details in stored:
        known += parent_id in parents  # type: ignore[operator]
        ids = np.asarray(chunk_ids, np.int64)
        codes = parents.parent_codes(ids)  # type: ignore[attr-defined]
        if (codes < 0).any():
            unmapped += 1
        elif any(parents.parent_id(int(code)) != parent_id for code in np.unique(codes)):  # type: ignore[attr-defined]
            misplaced += 1
        else:
            mapped = parents.details(ids)  # type: ignore[attr-defined]
            if not (
                np.array_equal(mapped.kinds, details.kinds)  # type: ignore[attr-defined]
                and np.array_equal(mapped.boxes[details.known], details.boxes[details.known])  # type: ignore[attr-defined]
                and [mapped.label(i) for i in range(len(ids))] == [details.label(i) for i in range(len(ids))]  # type: ignore[attr-defined]
            ):
                wrong += 1
    return unmapped, misplaced, len(parents) - known, wrong  # type: ignore[arg-type]


@settings(max_examples=120, deadline=None)
@given(
    plan=st.lists(
        st.tuples(
            st.integers(0, 4), st.sampled_from(["same", "gone", "box", "kind", "label", "unknown", "moved", "short"])
        ),
        min_size=1,
        max_size=14,
    ),
    batch_chunks=st.integers(1, 40),
    data=st.data(),
)
def test_the_parent_map_check_counts_what_a_parent_at_a_time_counts(
    plan: list[tuple[int, str]], batch_chunks: int, data: st.DataObject
) -> None:
    """Parents of 0-4 chunks, each mapped as stored or changed one way (left out, another box, kind or label,
    details unknown, a chunk mapped to the next parent, a chunk not mapped), in batches of any size: the counts
    of the check that compares many parents at once are those of the one a parent at a time."""
    import crossscale.workspace as workspace_module
    from crossscale.index import ParentMap
    from crossscale.types import ChunkDetails

    stored, mapped, next_id = [], [], 0
    for p, (size, change) in enumerate(plan):
        ids = list(range(next_id, next_id + size))
        next_id += size
        labels = [data.draw(st.sampled_from([None, "cat", "dog"])) for _ in ids]
        chunks = [Chunk(Box(p, 0, p + 1 + i, 2), None, "detection", label) for i, label in enumerate(labels)]
        details = ChunkDetails.of(chunks)
        stored.append((f"p{p}", ids, details))
        if change == "gone":
            continue
        if size and change in ("box", "kind", "label"):
            chunks[-1] = Chunk(
                Box(p, 0, p + 9, 9) if change == "box" else chunks[-1].box,
                None,
                "tile" if change == "kind" else "detection",
                "kite" if change == "label" else chunks[-1].label,
            )
        mine = ids[:-1] if size and change in ("moved", "short") else ids
        shown = ChunkDetails.unknown(len(mine)) if change == "unknown" else ChunkDetails.of(chunks[: len(mine)])
        mapped.append((f"p{p}", mine, shown))
        if size and change == "moved":
            mapped.append((f"x{p}", ids[-1:], ChunkDetails.of(chunks[-1:])))  # its last chunk under another parent
    mapped.append(("not-stored", [next_id + 5], ChunkDetails.of([Chunk(Box(0, 0, 1, 1), None, "tile")])))
    parents = ParentMap.from_parents(mapped)

    class Store:
        def parent_details(self, txn: object) -> list[tuple[str, list[int], ChunkDetails]]:
            return stored

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workspace_module, "_MAP_CHECK_CHUNKS", batch_chunks)
        found = workspace_module._check_parent_map(parents, Store(), None)  # type: ignore[arg-type]
    unmapped, misplaced, gone, wrong = _reference_map_check(parents, stored)  # type: ignore[arg-type]
    assert gone >= 1  # "not-stored"
    assert found == [
        f"parent map disagrees with the store: {unmapped} parent(s) with unmapped chunks, {misplaced} with chunks "
        f"mapped to another parent, {gone} mapped parent(s) no longer stored, {wrong} with other chunk details"
    ]
