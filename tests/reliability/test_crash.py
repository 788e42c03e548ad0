"""Kill an ingesting process at random points; the workspace must stay consistent and resumable."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossscale import CrossScaleSearch, RootStore, WorkspaceError
from tests.reliability.conftest import make_images, run_worker, start_worker

logger = logging.getLogger(__name__)


def _open(ws: Path, **kw: object) -> CrossScaleSearch:
    return CrossScaleSearch.open(ws, progress=False, device="cpu", **kw)  # type: ignore[arg-type]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def assert_consistent(ws: Path) -> int:
    """Every parent fully there (bytes, chunk records, vectors, indexed) or absent. Returns the parent count.

    Also: opening never needs the rebuild fallback; catching the index file up from the log is exact.
    """
    if not (ws / "workspace.json").exists():
        return 0  # killed before the workspace existed
    records = _Records()
    logging.getLogger("crossscale").addHandler(records)
    try:
        count = _check(ws)
    finally:
        logging.getLogger("crossscale").removeHandler(records)
    assert not [m for m in records.messages if "rebuild" in m], records.messages
    return count


def _check(ws: Path) -> int:
    with _open(ws, readonly=True) as reader:  # the state on disk, before any writer touches it
        report = reader.verify()
        assert report.ok, report.problems
    with _open(ws) as cs:  # a writer: catches the index file up and saves it
        report = cs.verify()
        assert report.ok, report.problems
        assert len(cs.chunk_index) == cs.store.chunk_count()
        # with a verifier: every parent's local features, none left over; without one: none at all
        assert cs.store.local_count() == (len(cs) if cs.verifier is not None else 0)
        for pid in cs.parent_ids():
            assert set(cs.record(pid).chunk_ids) <= set(cs.chunk_index.ids().tolist())
        return len(cs)


def expected_final(images: Path) -> int:
    return sum("-del" not in p.name for p in images.glob("*.png"))


def kill_randomly(
    ws: Path, images: Path, kills: int, seed: int, per_cycle: int = 10, extra: Sequence[str] = ()
) -> dict[str, int]:
    """Kill ingest runs at random moments until ``kills`` kills have landed.

    Work goes in cycles: a fresh workspace takes up to ``per_cycle`` kills (the work left shrinks as
    killed runs commit batches), then an uninterrupted run must finish it: all parents, none twice.
    """
    rng = random.Random(seed)
    probe = start_worker(ws / "probe", images, *extra)  # how long the real work takes, from "ready" to the end
    assert probe.stdout is not None and probe.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    probe.communicate(timeout=120)
    work = time.perf_counter() - start
    stats = {"kills": 0, "sigint": 0, "finished_first": 0, "cycles": 0, "work_ms": round(work * 1000)}
    while stats["kills"] + stats["sigint"] < kills:
        target = ws / f"cycle{stats['cycles']}"
        for _ in range(per_cycle):
            sig = signal.SIGINT if rng.random() < 0.15 else signal.SIGKILL
            proc = start_worker(target, images, *extra)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0, work))
            if proc.poll() is None:
                proc.send_signal(sig)
                stats["sigint" if sig == signal.SIGINT else "kills"] += 1
            else:
                stats["finished_first"] += 1
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # show where it hangs (the worker runs with -X faulthandler)
                proc.send_signal(signal.SIGABRT)
                _, err = proc.communicate(timeout=30)
                pytest.fail(f"a worker did not end within 60 s of {sig!r}:\n{err[-6000:]}")
            assert_consistent(target)
        run_worker(target, images, *extra)  # finishing the work after those crashes
        assert assert_consistent(target) == expected_final(images)  # no parent lost or half-done
        with _open(target) as cs:
            sources = [cs.record(pid).source for pid in cs.parent_ids()]
            assert len(sources) == len(set(sources)), "an image was indexed twice"
        stats["cycles"] += 1
    return stats


def test_random_kills_quick(tmp_path: Path, images: Path) -> None:
    stats = kill_randomly(tmp_path, images, kills=6, seed=1, per_cycle=6)
    assert stats["kills"] + stats["sigint"] >= 6


def test_random_kills_while_the_index_migrates(tmp_path: Path) -> None:
    """Bigger images, more chunks, and an "auto" index that leaves Flat at 50 vectors and learns a projection to 16
    dimensions at 128: most saves rebuild it."""
    images = tmp_path / "images"
    make_images(images, 24, size=(320, 240))
    extra = ("--scales", "0.5,0.25", "--flat-max", "50", "--reduce-dim", "16")
    stats = kill_randomly(tmp_path, images, kills=6, seed=3, per_cycle=6, extra=extra)
    assert stats["kills"] + stats["sigint"] >= 6
    with _open(tmp_path / "cycle0") as cs:
        info = cs.info()
        assert info["index_structure"].startswith("IVF") and info["index_reduce_dim"] == 16  # it did migrate


def test_random_kills_with_a_milvus_index(tmp_path: Path, images: Path) -> None:
    """The chunk index in a Milvus Lite collection: a kill between the store's commit and the collection's update,
    or inside Milvus Lite's own writes, leaves a workspace that opens, catches the collection up and verifies."""
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")
    stats = kill_randomly(tmp_path, images, kills=6, seed=4, per_cycle=6, extra=("--index", "milvus"))
    assert stats["kills"] + stats["sigint"] >= 6
    with _open(tmp_path / "cycle0") as cs:
        assert cs.info()["index_device"] == "milvus"


def test_random_kills_with_local_search(tmp_path: Path, images: Path) -> None:
    """With the keypoint index kept in keypoints.index (written after each ingest and at close): a kill while it is
    written, or between the store's commit and its save, leaves a workspace that opens, verifies (its file checked
    against the stored features) and catches the keypoint index up without rebuilding it."""
    stats = kill_randomly(tmp_path, images, kills=6, seed=5, per_cycle=6, extra=("--local-search",))
    assert stats["kills"] + stats["sigint"] >= 6
    records = _Records()
    logging.getLogger("crossscale").addHandler(records)
    try:
        with _open(tmp_path / "cycle0", local_search=True) as cs:
            assert (tmp_path / "cycle0" / "keypoints.index").exists()
            index = cs.local.update() if cs.local is not None else None
            # parents whose images gave no keypoints are looked at, not held
            assert index is not None and len(index) > 0 and set(index.parent_ids()) <= set(cs.parent_ids())
    finally:
        logging.getLogger("crossscale").removeHandler(records)
    assert not [m for m in records.messages if "unreadable" in m or "rebuild" in m], records.messages
    with _open(tmp_path / "cycle0", readonly=True) as reader:  # saved at close: it reflects every parent
        report = reader.verify()
        assert report.ok and not [n for n in report.notes if "keypoint" in n], report.notes


def test_random_kills_with_index_files_left_for_later(tmp_path: Path, images: Path) -> None:
    """Index files never due after ``index()`` (as in a large workspace: written at close only): a kill anywhere
    leaves both files behind the store, and opening catches them up from it exactly, without a rebuild."""
    stats = kill_randomly(tmp_path, images, kills=6, seed=6, per_cycle=6, extra=("--defer-saves", "--local-search"))
    assert stats["kills"] + stats["sigint"] >= 6
    with _open(tmp_path / "cycle0", readonly=True) as reader:  # the finishing run closed: both files current
        report = reader.verify()
        assert report.ok and not [n for n in report.notes if "keypoint" in n], report.notes


@pytest.mark.slow
def test_random_kills_many(tmp_path: Path, images: Path) -> None:
    stats = kill_randomly(tmp_path, images, kills=110, seed=2)
    logger.info("crash stats: %s", stats)  # -o log_cli=true --log-cli-level=INFO shows them
    assert stats["kills"] + stats["sigint"] >= 100


def test_interrupt_during_index_save_keeps_the_old_index_and_catches_up(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted(images.glob("*.png"))
    with _open(tmp_path / "ws", encoder="color-histogram", segmenter="whole") as cs:
        cs.index(files[:4])
    old_index = (tmp_path / "ws" / "chunks.index").read_bytes()
    import crossscale.index.chunk_index as ci

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # between writing the temp file and os.replace

    cs = _open(tmp_path / "ws")
    monkeypatch.setattr(ci.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cs.index(files[4:8])  # the store commits, the index save is interrupted
    monkeypatch.undo()
    assert (tmp_path / "ws" / "chunks.index").read_bytes() == old_index  # never half-written
    assert not list((tmp_path / "ws").glob("*.tmp"))  # an interrupt cleans its temp file up
    cs.close()
    with _open(tmp_path / "ws") as again:
        assert len(again) == 8 and again.verify().ok


def test_interrupt_during_keypoint_save_keeps_the_old_file_and_catches_up(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crossscale._files as crossscale_files

    files = sorted(images.glob("*.png"))
    ws = tmp_path / "ws"
    kw = {"encoder": "color-histogram", "segmenter": "whole", "verifier": "sift", "local_search": True}
    with _open(ws, verifier_kwargs={"max_keypoints": 200}, **kw) as cs:
        cs.index(files[:4])
    old = (ws / "keypoints.index").read_bytes()
    replace = crossscale_files.os.replace

    def interrupted(src: str, dst: str) -> None:
        if str(dst).endswith("keypoints.index"):
            raise KeyboardInterrupt  # between writing the temp file and os.replace
        replace(src, dst)

    cs = _open(ws, local_search=True)
    monkeypatch.setattr(crossscale_files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cs.index(files[4:8])  # the store commits and the chunk index is saved; the keypoint save is interrupted
    monkeypatch.undo()
    assert (ws / "keypoints.index").read_bytes() == old and not list(ws.glob("*.tmp"))
    with _open(ws, readonly=True) as reader:  # the old file: behind, not broken
        report = reader.verify()
        assert report.ok and "4 parent change(s) behind" in " ".join(report.notes)
    cs.close()  # writes the keypoint index it holds
    with _open(ws, readonly=True) as reader:
        report = reader.verify()
        assert report.ok and not [n for n in report.notes if "keypoint" in n]


def test_leftover_temp_file_of_a_killed_save_is_ignored_then_removed(tmp_path: Path, images: Path) -> None:
    with _open(tmp_path / "ws", encoder="color-histogram", segmenter="whole") as cs:
        cs.index(sorted(images.glob("*.png"))[:3])
    leftover = tmp_path / "ws" / "chunks.index.x1y2.tmp"
    leftover.write_bytes(b"half a faiss index")  # what SIGKILL during a save leaves behind
    with _open(tmp_path / "ws", readonly=True) as reader:
        report = reader.verify()
        assert report.ok and any("leftover" in n for n in report.notes)
    with _open(tmp_path / "ws") as cs:
        assert not leftover.exists() and cs.verify().ok and len(cs) == 3


def test_keyboard_interrupt_mid_batch_in_process(tmp_path: Path, images: Path) -> None:
    from crossscale.segment import TileSegmenter

    class InterruptOnThirdCall(TileSegmenter):
        calls = 0

        def segment(self, imgs):  # type: ignore[no-untyped-def]
            type(self).calls += 1
            if type(self).calls == 3:
                raise KeyboardInterrupt
            return super().segment(imgs)

    files = sorted(images.glob("*.png"))
    with (
        pytest.raises(KeyboardInterrupt),
        _open(
            tmp_path / "ws", encoder="color-histogram", segmenter=InterruptOnThirdCall(scales=(0.5,)), batch_size=4
        ) as cs,
    ):
        cs.index(files)
    with _open(tmp_path / "ws", segmenter="whole") as cs:
        assert len(cs) == 8 and cs.verify().ok  # two batches of 4 committed, the third not at all
        assert len(cs.index(files).added) == len(files) - 8


def test_creation_killed_before_the_config_was_written_can_be_resumed(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "lock").touch()
    (ws / "workspace.json.k2.tmp").write_text('{"form')  # what a kill mid-creation leaves
    RootStore(ws / "store", dim=3).close()  # the store comes before workspace.json, so it may be there too
    with _open(ws, encoder="color-histogram", segmenter="whole") as cs:
        assert len(cs) == 0 and cs.verify().ok and cs.store.dim == 512
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "lock").touch()
    (tmp_path / "other" / "notes.txt").touch()  # not ours: refused
    with pytest.raises(WorkspaceError, match="not empty"):
        _open(tmp_path / "other", encoder="color-histogram")


def test_a_batch_after_an_interrupted_one_is_added_to_a_rebuilt_index(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caught in a notebook, a KeyboardInterrupt mid-update leaves the index half-updated; indexing again must rebuild
    it from the store first, not add to it and call it clean."""
    from crossscale.index import ChunkIndex

    files = sorted(images.glob("*.png"))
    cs = _open(tmp_path / "ws", encoder="color-histogram", segmenter="whole", batch_size=4)
    cs.index(files[:4])
    real_add = ChunkIndex.add

    def add_then_interrupt(self: ChunkIndex, vectors: np.ndarray, ids: np.ndarray) -> None:
        real_add(self, vectors[:1], ids[:1])
        raise KeyboardInterrupt

    monkeypatch.setattr(ChunkIndex, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        cs.index(files[4:8])
    monkeypatch.undo()
    cs.index(files[8:10])  # no search in between
    assert len(cs) == 10 and len(cs.chunk_index) == 10
    assert cs.verify().ok
    assert cs.search(Image.open(files[5]).convert("RGB"), top_k=1)[0].score > 0.999
    cs.close()
    assert assert_consistent(tmp_path / "ws") == 10


def test_interrupt_while_the_index_is_updated_never_saves_half_a_batch(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossscale.index import ChunkIndex

    files = sorted(images.glob("*.png"))
    cs = _open(tmp_path / "ws", encoder="color-histogram", segmenter="whole", batch_size=4)
    cs.index(files[:4])
    real_add = ChunkIndex.add

    def add_then_interrupt(self: ChunkIndex, vectors: np.ndarray, ids: np.ndarray) -> None:
        half = len(ids) // 2
        real_add(self, vectors[:half], ids[:half])
        raise KeyboardInterrupt  # committed to the store, half applied to the index

    monkeypatch.setattr(ChunkIndex, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        cs.index(files[4:8])
    monkeypatch.undo()
    assert len(cs) == 8  # the store committed the batch
    assert cs.search(Image.open(files[7]).convert("RGB"), top_k=1)[0].score > 0.999  # rebuilt before searching
    assert cs.verify().ok
    cs.close()
    assert assert_consistent(tmp_path / "ws") == 8
