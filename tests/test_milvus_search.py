"""A workspace whose chunk index is a Milvus Lite collection: same results as faiss Flat, derived from the store."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")

from crossscale import ConfigurationError, CrossScaleSearch, WorkspaceError
from crossscale.index import MilvusChunkIndex, parse_milvus_factory
from crossscale.rank import ParentRanker
from tests.copies import milvus_copy


def _hist(path: Path, **kw: object) -> CrossScaleSearch:
    kw.setdefault("encoder", "color-histogram")
    kw.setdefault("segmenter", "whole+tiles")
    kw.setdefault("verifier", False)
    kw.setdefault("refine", False)
    return CrossScaleSearch.open(path, progress=False, device="cpu", **kw)  # type: ignore[arg-type]


def _summary(matches: list) -> list[tuple[str, int]]:  # type: ignore[type-arg]
    return [(m.parent_id, m.chunk_id) for m in matches]


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Image.Image]):  # type: ignore[no-untyped-def]
    """The same photos in a faiss Flat workspace and in its Milvus copy."""
    root = tmp_path_factory.mktemp("twins")
    with _hist(root / "flat", index_factory="Flat") as cs:
        assert cs.index(list(photos.items())).ok
    milvus_copy(root / "flat", root / "milvus")
    with _hist(root / "flat") as flat, _hist(root / "milvus") as milvus:
        yield flat, milvus


@pytest.mark.parametrize("aggregator", ["max", "sum", "mean_top3"])
def test_parents_equal_faiss_flat_on_the_same_vectors(twins, photos: dict[str, Image.Image], aggregator: str) -> None:  # type: ignore[no-untyped-def]
    flat, milvus = twins
    assert isinstance(milvus.chunk_index, MilvusChunkIndex) and len(milvus.chunk_index) == len(flat.chunk_index)
    for cs in (flat, milvus):
        cs.ranker = ParentRanker(aggregator, box="best")
    queries = [photos[n].crop((20, 30, 220, 180)) for n in sorted(photos)]
    for top_k in (1, 5, 50):  # 50: more than there are parents, so every one comes back
        want, got = flat.search_batch(queries, top_k=top_k), milvus.search_batch(queries, top_k=top_k)
        for a, b in zip(want, got, strict=True):
            assert _summary(b) == _summary(a)
            np.testing.assert_allclose([m.score for m in b], [m.score for m in a], rtol=1e-5)
            assert [m.box for m in b] == [m.box for m in a]
        assert all(len(row) == min(top_k, len(photos)) for row in got)


def test_max_ranking_uses_one_grouped_search(
    twins, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    _, milvus = twins
    milvus.ranker = ParentRanker("max")
    index = milvus.chunk_index
    calls: list[str] = []
    for name in ("search", "search_grouped"):
        real = getattr(index, name)
        monkeypatch.setattr(index, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    queries = [photos[n].crop((0, 0, 300, 200)) for n in sorted(photos)[:6]]
    milvus.search_batch(queries, top_k=3)
    assert calls[0] == "search_grouped" and calls.count("search_grouped") == 1
    # a row for which Milvus found too few distinct parents gets a plain search, never fewer parents
    assert calls.count("search") <= len(queries)


def test_reopening_names_the_recorded_collection(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with _hist(tmp_path / "ws", index_factory="milvus") as cs:
        recorded = cs.info()["index_factory"]
        target = parse_milvus_factory(recorded)
        assert target.uri == "milvus.db" and target.collection and cs.info()["index_device"] == "milvus"
        assert cs.info()["search_settings"] == {"nprobe": None, "ef_search": None}  # an exact FLAT collection
        assert cs.workspace.config.format == 2
        cs.index([("c", photos["coffee"])])
    assert (tmp_path / "ws" / "milvus.db").exists() and not (tmp_path / "ws" / "chunks.index").exists()
    for same in ("milvus", recorded, f"milvus#{target.collection}"):
        with _hist(tmp_path / "ws", index_factory=same) as cs:
            assert len(cs) == 1 and cs.search(photos["coffee"], top_k=1)[0].parent_id == "c"
    for other in ("milvus#another", "Flat", "milvus:x.db"):
        with pytest.raises(ConfigurationError, match="only applies to new workspaces"):
            _hist(tmp_path / "ws", index_factory=other)


def test_two_workspaces_share_one_lite_file_in_their_own_collections(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    shared = tmp_path / "shared.db"
    with (
        _hist(tmp_path / "a", index_factory=f"milvus:{shared}") as a,
        _hist(tmp_path / "b", index_factory=f"milvus:{shared}") as b,
    ):
        a.index([("coffee", photos["coffee"])])
        b.index([("rocket", photos["rocket"]), ("chelsea", photos["chelsea"])])
        assert {m.parent_id for m in a.search(photos["rocket"], top_k=5)} == {"coffee"}
        assert {m.parent_id for m in b.search(photos["coffee"], top_k=5)} == {"rocket", "chelsea"}
        assert a.verify().ok and b.verify().ok


def test_delete_reopen_and_a_readers_refresh(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    names = sorted(photos)[:5]
    with _hist(tmp_path / "ws", index_factory="milvus") as cs:
        cs.index([(n, photos[n]) for n in names])
        with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False, device="cpu") as reader:
            before = len(reader.chunk_index)
            cs.delete(names[0])
            assert names[0] not in {m.parent_id for m in cs.search(photos[names[0]], top_k=5)}
            reader.refresh()  # the collection is shared: the reader's map and count follow the writer
            assert len(reader.chunk_index) == len(cs.chunk_index) < before
            assert {m.parent_id for m in reader.search(photos[names[0]], top_k=9)} == set(names[1:])
            assert reader.verify().ok
            with pytest.raises(WorkspaceError, match="read-only"):
                reader.delete(names[1])
    with _hist(tmp_path / "ws") as cs:
        assert len(cs) == 4 and len(cs.chunk_index) == cs.store.chunk_count()
        report = cs.verify()
        assert report.ok and not report.notes, report


def _drop_vectors(ws: Path, ids: list[int], generation: int | None = None) -> None:
    """Tamper with a closed workspace's collection behind its back."""
    config = json.loads((ws / "workspace.json").read_text())
    target = parse_milvus_factory(config["index_factory"])
    assert target.collection is not None
    index = MilvusChunkIndex(config["encoder"]["dim"], target.connect_uri(ws), target.collection)
    index.remove(ids)
    if generation is not None:
        index.commit(generation)
    index.close()


def test_a_collection_behind_the_store_is_caught_up_and_a_damaged_one_repaired(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    ws = tmp_path / "ws"
    with _hist(ws, index_factory="milvus") as cs:
        cs.index([("coffee", photos["coffee"])])
        first = cs.generation
        cs.index([("rocket", photos["rocket"])])
        rocket = list(cs.record("rocket").chunk_ids)
        cs.workspace.store.prune_log(first - 1)  # keep the log of the second batch
    # a writer killed between the store's commit and the collection's: the collection misses the second batch
    _drop_vectors(ws, rocket, generation=first)
    with _hist(ws, readonly=True) as reader:
        report = reader.verify()  # a reader never writes to the collection: it reports, a writer fixes
        assert any("behind" in n for n in report.notes) and any("not indexed" in n for n in report.notes)
    with _hist(ws) as cs:  # caught up from the log, not rebuilt
        assert cs.search(photos["rocket"], top_k=1)[0].parent_id == "rocket"
        assert cs.verify().ok and not cs.verify().notes
    # damage no log can explain: verify finds it, repair rebuilds the collection from the store
    _drop_vectors(ws, rocket[:3])
    with _hist(ws) as cs:  # the count disagreed on open: refilled
        assert cs.verify().ok and len(cs.chunk_index) == cs.store.chunk_count()
        cs.chunk_index.remove(rocket[:2])
        assert any("not indexed" in p for p in cs.verify().problems)
        cs.rebuild_index()
        assert cs.verify().ok and len(cs.chunk_index) == cs.store.chunk_count()


def test_an_interrupted_update_is_replayed_into_the_collection(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    with _hist(tmp_path / "ws", index_factory="milvus") as cs:
        cs.index([("coffee", photos["coffee"])])
        index = cs.chunk_index
        real_add = type(index).add

        def half_add(self, vectors, ids, *, groups=None):  # type: ignore[no-untyped-def]
            real_add(self, vectors[:3], ids[:3], groups=groups[:3])
            raise KeyboardInterrupt

        monkeypatch.setattr(type(index), "add", half_add)
        with pytest.raises(KeyboardInterrupt):
            cs.index([("rocket", photos["rocket"])])
        monkeypatch.undo()
        assert len(cs.chunk_index) < cs.store.chunk_count()  # half applied, marked dirty
        assert cs.search(photos["rocket"], top_k=1)[0].parent_id == "rocket"  # replayed before searching
        assert cs.verify().ok and len(cs.chunk_index) == cs.store.chunk_count()


def _open_elsewhere(path: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        CrossScaleSearch.open(path, readonly=True, progress=False, device="cpu").close()
        queue.put("opened")
    except WorkspaceError as exc:
        queue.put(f"refused: {exc}")


def test_a_lite_file_in_use_by_another_process_is_refused_clearly(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    with _hist(tmp_path / "ws", index_factory="milvus") as cs:
        cs.index([("coffee", photos["coffee"])])
        context = mp.get_context("spawn")
        queue: mp.Queue = context.Queue()  # type: ignore[type-arg]
        proc = context.Process(target=_open_elsewhere, args=(str(tmp_path / "ws"), queue))
        proc.start()
        proc.join(120)
        message = queue.get(timeout=5)
    assert message.startswith("refused: ") and "one process per file" in message and "server URI" in message, message


def test_vectors_are_stored_once_in_the_store_and_once_in_milvus(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    with _hist(tmp_path / "ws", index_factory="milvus") as cs:
        cs.index([("coffee", photos["coffee"])])
        ids = np.asarray(cs.record("coffee").chunk_ids)
        _, stored = cs.store.vectors(ids)
        scores, found = cs.chunk_index.search(stored, 1)
        assert (found[:, 0] == ids).all() and np.allclose(scores[:, 0], 1.0, atol=1e-3)


def test_a_new_workspace_never_takes_over_a_collection_that_holds_vectors(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    shared = tmp_path / "shared.db"
    with _hist(tmp_path / "a", index_factory=f"milvus:{shared}#chunks") as a:
        a.index([("coffee", photos["coffee"])])
    with pytest.raises(WorkspaceError, match="already holds vectors"):
        _hist(tmp_path / "b", index_factory=f"milvus:{shared}#chunks")
    assert not (tmp_path / "b" / "workspace.json").exists()  # nothing half-made: the same call can be retried
    with _hist(tmp_path / "b", index_factory=f"milvus:{shared}#other") as b:
        assert len(b) == 0
    with _hist(tmp_path / "a") as a:  # untouched
        assert len(a.chunk_index) == a.store.chunk_count() > 0 and a.verify().ok


def test_a_reader_never_creates_a_missing_collection(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with _hist(tmp_path / "ws", index_factory="milvus") as cs:
        cs.index([("coffee", photos["coffee"])])
        target = parse_milvus_factory(cs.info()["index_factory"])
    from pymilvus import MilvusClient

    client = MilvusClient(str(tmp_path / "ws" / "milvus.db"))
    client.drop_collection(target.collection)
    client.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(tmp_path / "ws" / "milvus.db"))
    with pytest.raises(WorkspaceError, match=r"does not exist.*open the workspace for writing"):
        _hist(tmp_path / "ws", readonly=True)
    with _hist(tmp_path / "ws") as cs:  # a writer rebuilds it from the store
        assert cs.verify().ok and cs.search(photos["coffee"], top_k=1)[0].parent_id == "coffee"


def test_measure_search_on_milvus_and_faiss_flat(twins, photos: dict[str, Image.Image]) -> None:  # type: ignore[no-untyped-def]
    """Both search exhaustively (faiss Flat, Milvus' FLAT): measure_search finds every exact parent on both, and
    the settings (which Milvus takes and ignores) change nothing."""
    from crossscale import SearchParams
    from crossscale.query import embed_queries

    flat, milvus = twins
    crops = [photos[n].crop((30, 20, 230, 170)) for n in sorted(photos)]
    vectors = np.stack([q.vector for q in embed_queries(flat.encoder, crops)])
    for cs in (flat, milvus):
        cs.ranker = ParentRanker("max")
        got = cs.measure_search(vectors, [None, SearchParams(nprobe=1)], top_k=3)
        assert [m.recall for m in got] == [1.0, 1.0]
