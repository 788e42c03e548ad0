from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from crossscale._device import faiss_gpu_count
from crossscale.errors import ChunkIndexError, ConfigurationError, DeviceError, VectorError, WorkspaceFormatError
from crossscale.index import ChunkIndex
from crossscale.index import chunk_index as chunk_index_module
from crossscale.index.chunk_index import ADD_EF_SEARCH, GPU_MAX_K
from crossscale.types import SearchParams


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), ids[order]


def test_flat_search_matches_brute_force(rng: np.random.Generator) -> None:
    x, q = _unit(rng, 500, 32), _unit(rng, 7, 32)
    ids = rng.permutation(10_000)[:500].astype(np.int64) + 2**40  # 64-bit ids
    index = ChunkIndex(32, device="cpu")
    index.add(x * 3.0, ids)  # normalised on the way in
    scores, got = index.search(q * 0.5, 10)
    ref_s, ref_i = _brute(x, ids, q, 10)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    assert (got == ref_i).all()
    assert len(index) == 500 and set(index.ids()) == set(ids)


def test_padding_when_fewer_than_k(rng: np.random.Generator) -> None:
    index = ChunkIndex(8, device="cpu")
    s, i = index.search(_unit(rng, 2, 8), 3)
    assert (i == -1).all() and np.isneginf(s).all()
    index.add(_unit(rng, 2, 8), [5, 9])
    s, i = index.search(_unit(rng, 1, 8), 4)
    assert sorted(i[0, :2]) == [5, 9] and (i[0, 2:] == -1).all() and np.isneginf(s[0, 2:]).all()


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF4,Flat"])
def test_remove_then_search_never_returns_removed(factory: str, rng: np.random.Generator) -> None:
    x = _unit(rng, 400, 16)
    index = ChunkIndex(16, factory, device="cpu")
    index.add(x, np.arange(400))
    if factory.startswith("IVF"):
        index.set_search_params("nprobe=4")
    if factory.startswith("HNSW"):
        index.set_search_params("efSearch=400")
    gone = np.arange(0, 400, 3)
    assert index.remove(gone) == len(gone)
    assert index.remove([100000]) == 0
    assert len(index) == 400 - len(gone)
    _, got = index.search(x[:20], 50)
    assert not np.isin(got, gone).any()
    assert (got[:, 0] == np.where(np.isin(np.arange(20), gone), got[:, 0], np.arange(20))).all()
    assert set(index.ids()) == set(range(400)) - set(gone)


@pytest.mark.parametrize(
    ("factory", "reduce_dim"),
    [
        ("HNSW16", None),
        ("HNSW16", 8),  # crossscale's projection, outside the id map
        ("PCA8,HNSW16", None),  # a factory's transform: id map, transform, graph
        ("HNSW16,Refine(Flat)", None),  # id map, refinement, graph: the id map never sees the graph's parameters
        ("PCA8,HNSW16,RFlat", None),
        ("HNSW16,Refine(Flat)", 8),  # crossscale's projection, then the id map, refinement, graph
    ],
)
def test_hnsw_searches_skip_removed_vectors_inside_the_graph(
    factory: str,
    reduce_dim: int | None,
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HNSW cannot remove: its tombstones are skipped by an ID selector inside the graph search, so a search asks
    faiss for k hits (+1 for ties), not k plus every removed vector, and finds the live vectors as well; also for a
    graph behind an explicit factory's transform or refinement (which sit under an id map)."""
    x = _unit(rng, 2000, 16)
    ids = np.arange(2000, dtype=np.int64) + 10**9  # not the graph's positions: a selector must be translated
    index = ChunkIndex(16, factory, reduce_dim=reduce_dim, device="cpu")
    index.add(x, ids)
    index.set_search_params("efSearch=200")
    gone = ids[rng.permutation(2000)[:800]]
    index.remove(gone)
    assert index.tombstone_count == 800 and len(index) == 1200
    asked: list[int] = []
    raw = index._search_raw
    monkeypatch.setattr(index, "_search_raw", lambda q, ask, params: (asked.append(ask), raw(q, ask, params))[1])
    q = _unit(rng, 30, 16)
    _, got = index.search(q, 10)
    assert asked == [11]  # not 811
    assert not np.isin(got, gone).any() and (got >= 0).all()
    live = ~np.isin(ids, gone)
    if reduce_dim is None and not factory.startswith("PCA"):  # exact cosines: compare with brute force over the live
        _, ref = _brute(x[live], ids[live], q, 10)
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref, strict=True)]) >= 0.95
    made: list[Any] = []  # the graph's parameters (a refinement's wrap them, and faiss hands back their base type)
    make = chunk_index_module._hnsw_search_parameters
    monkeypatch.setattr(chunk_index_module, "_hnsw_search_parameters", lambda: (made.append(make()), made[-1])[1])

    def beam(ask: int) -> int:
        index._hnsw_params(ask)
        return int(made[-1].efSearch)

    assert beam(11) == 200  # the index's setting, not faiss' default 16
    index.set_search_params("efSearch=64")
    assert beam(11) == 64
    assert beam(100) == 167  # widened: 100 live among 2000 of which 800 removed
    _, again = index.search(q, 10, params=SearchParams(ef_search=300))  # a call's beam, removed ones still skipped
    assert asked[-1] == 11 and not np.isin(again, gone).any() and (again >= 0).all()
    index.save(tmp_path / "i.idx")
    loaded, _ = ChunkIndex.load(tmp_path / "i.idx", device="cpu")
    assert loaded.tombstone_count == 800
    np.testing.assert_array_equal(loaded.search(q, 10)[1], index.search(q, 10)[1])
    flat = ChunkIndex(16, device="cpu")
    flat.add(x, ids)
    flat.remove(gone)
    assert flat.tombstone_count == 0 and flat._hnsw_params(11) is None  # removed for real


@pytest.mark.parametrize("factory", ["HNSW16", "HNSW16,Refine(Flat)"])
def test_an_hnsw_index_refuses_ids_it_removed_and_is_left_as_it_was(factory: str, rng: np.random.Generator) -> None:
    """HNSW keeps removed vectors as tombstones: a vector added again under a removed id was taken, counted by
    len() and never found (the tombstone hid it). Such ids are now refused, named, and nothing changes; new ids are
    taken."""
    x = _unit(rng, 300, 16)
    index = ChunkIndex(16, factory, device="cpu")
    index.add(x, np.arange(300))
    index.set_search_params("efSearch=300")
    index.remove([7, 8])
    q = x[[7, 8, 9]]
    before, version = index.search(q, 5), index.version
    with pytest.raises(ConfigurationError, match=r"2 of the ids were removed .*: 7, 8;"):
        index.add(_unit(rng, 3, 16), [8, 7, 1000])
    assert index.version == version and len(index) == 298 and index.tombstone_count == 2
    for got, want in zip(index.search(q, 5), before, strict=True):
        np.testing.assert_array_equal(got, want)
    index.add(x[[7]], [1000])  # the same vector under a new id is found
    assert index.search(x[[7]], 1)[1][0, 0] == 1000 and len(index) == 299


def test_an_index_that_removes_for_real_takes_a_removed_id_again(rng: np.random.Generator) -> None:
    x = _unit(rng, 300, 16)
    index = ChunkIndex(16, "IVF4,Flat", device="cpu")
    index.add(x, np.arange(300))
    index.set_search_params("nprobe=4")
    index.remove([7])
    index.add(x[[7]], [7])
    assert index.tombstone_count == 0 and len(index) == 300 and index.search(x[[7]], 1)[1][0, 0] == 7


def test_a_refinement_that_finds_no_more_than_its_base_index_is_pointed_out(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, rng: np.random.Generator
) -> None:
    """faiss builds a factory's refinement with k_factor 1: it re-orders the base index's k hits and finds none the
    base missed. Building one says so, with the setting that fixes it; an index without one, or a saved one whose
    k_factor was set, says nothing."""
    with caplog.at_level(logging.WARNING, logger="crossscale.index.chunk_index"):
        refined = ChunkIndex(16, "IVF4,PQ4,RFlat", device="cpu")
    assert "'IVF4,PQ4,RFlat'" in caplog.text and "k_factor_rf" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crossscale.index.chunk_index"):
        ChunkIndex(16, "IVF4,PQ4", device="cpu")
        ChunkIndex(16, "HNSW16", device="cpu")
        refined.add(_unit(rng, 2000, 16), np.arange(2000))
        refined.set_search_params("k_factor_rf=4")
        refined.save(tmp_path / "r.idx")
        ChunkIndex.load(tmp_path / "r.idx", device="cpu")
    assert not caplog.records


def test_hnsw_rows_are_full_when_k_passes_the_beam_or_most_vectors_are_removed(rng: np.random.Generator) -> None:
    """A search returns k hits whenever k live vectors exist: the beam is widened past ``efSearch`` (16) to k,
    and, with 90% removed (a beam of 16 then holds ~2 live vectors), to hold k live ones."""
    x = _unit(rng, 3000, 16)
    index = ChunkIndex(16, "HNSW16", device="cpu")
    index.add(x, np.arange(3000))
    index.set_search_params("efSearch=16")
    _, got = index.search(x[:5], 1000)  # faiss alone: ~225 hits
    assert (got >= 0).all()
    _, everything = index.search(x[:2], 3000)
    assert all(sorted(row) == list(range(3000)) for row in everything)
    index.remove(np.arange(3000)[np.arange(3000) % 10 != 0])
    _, got = index.search(x[:20], 50)
    assert (got >= 0).all() and (got % 10 == 0).all()


def test_the_version_changes_with_what_the_index_holds_not_with_searches(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A workspace skips rewriting an index file whose version it wrote: every change must stamp a new one."""
    index = ChunkIndex(16, "IVF4,Flat", device="cpu")
    seen = [index.version]

    def changed() -> bool:
        seen.append(index.version)
        return seen[-1] not in seen[:-1]

    x = rng.standard_normal((200, 16)).astype(np.float32)
    index.train(x)
    assert changed()
    index.add(x, np.arange(200))
    assert changed()
    index.search(x[:3], 5)
    index.search(x[:3], 5, params=SearchParams(nprobe=2))
    assert not changed()
    index.remove([0, 1])
    assert changed()
    index.set_search_params("nprobe=3")
    assert changed()
    index.save(tmp_path / "i")
    loaded, _ = ChunkIndex.load(tmp_path / "i", device="cpu")
    assert loaded.version not in seen  # another object: unique in the process


def test_save_load_roundtrip_with_meta_and_tombstones(tmp_path: Path, rng: np.random.Generator) -> None:
    x = _unit(rng, 50, 8)
    index = ChunkIndex(8, "HNSW8", device="cpu")
    index.add(x, np.arange(50) * 7)
    index.remove([7, 14])
    index.save(tmp_path / "i.idx", {"generation": 12})
    loaded, meta = ChunkIndex.load(tmp_path / "i.idx", device="cpu")
    assert meta == {"generation": 12} and loaded.factory == "HNSW8" and len(loaded) == 48
    np.testing.assert_array_equal(loaded.search(x, 5)[1], index.search(x, 5)[1])
    assert not list(tmp_path.glob("*.tmp"))


def test_load_rejects_garbage_and_newer_formats(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"not an index")
    with pytest.raises(WorkspaceFormatError, match="not a crossscale"):
        ChunkIndex.load(tmp_path / "bad")
    ChunkIndex(4, device="cpu").save(tmp_path / "ok")
    raw = (tmp_path / "ok").read_bytes().replace(b'"format": 1', b'"format": 9')
    (tmp_path / "newer").write_bytes(raw)
    with pytest.raises(WorkspaceFormatError, match="format 9"):
        ChunkIndex.load(tmp_path / "newer")


def test_load_rejects_a_truncated_file_and_reads_the_one_a_whole_copy_wrote(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Index files are streamed in and out; one written by an earlier version (faiss.serialize_index after the
    header) reads the same, and a cut one is a clear error, not a crash."""
    import faiss

    x = _unit(rng, 300, 8)
    index = ChunkIndex(8, "IVF4,Flat", device="cpu")
    index.add(x, np.arange(300))
    index.save(tmp_path / "new")
    raw = (tmp_path / "new").read_bytes()
    header_end = 16 + int.from_bytes(raw[8:16], "little")  # 8 bytes of magic, the header's length, the header
    assert raw[header_end:-16] == faiss.serialize_index(index._index).tobytes()  # the same bytes, streamed
    (tmp_path / "cut").write_bytes(raw[: header_end + (len(raw) - header_end) // 2])
    with pytest.raises(WorkspaceFormatError, match="corrupt faiss data"):
        ChunkIndex.load(tmp_path / "cut")
    with pytest.raises(WorkspaceFormatError, match="corrupt faiss data"):
        ChunkIndex.check_file(tmp_path / "cut")  # no trailer where it should be: loaded, and faiss says so
    (tmp_path / "short-header").write_bytes(raw[: header_end - 5])
    with pytest.raises(WorkspaceFormatError, match="corrupt header"):
        ChunkIndex.load(tmp_path / "short-header")
    loaded, _ = ChunkIndex.load(tmp_path / "new", device="cpu")
    np.testing.assert_array_equal(loaded.search(x[:5], 3)[1], index.search(x[:5], 3)[1])


def test_ivf_trains_on_first_batch_or_says_why(rng: np.random.Generator) -> None:
    index = ChunkIndex(8, "IVF16,Flat", device="cpu")
    with pytest.raises(ChunkIndexError, match="training"):
        index.add(_unit(rng, 3, 8), [0, 1, 2])
    index.add(_unit(rng, 800, 8), np.arange(800))
    assert index.is_trained and len(index) == 800


@pytest.mark.parametrize(
    ("vectors", "ids", "error"),
    [
        (np.ones((2, 5)), [0, 1], VectorError),
        (np.ones((2, 4)), [0], ConfigurationError),
        (np.ones((2, 4)), [1, 1], ConfigurationError),
        (np.ones((2, 4)), [-1, 2], ConfigurationError),
        (np.zeros((1, 4)), [0], VectorError),
        (np.full((1, 4), np.inf), [0], VectorError),
        (np.array([["a", "b", "c", "d"]]), [0], VectorError),
    ],
)
def test_add_validates(vectors: np.ndarray, ids: list[int], error: type[Exception]) -> None:
    with pytest.raises(error):
        ChunkIndex(4, device="cpu").add(vectors, ids)


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_search_validates_k(k: object) -> None:
    with pytest.raises(ConfigurationError):
        ChunkIndex(4, device="cpu").search(np.ones((1, 4)), k)  # type: ignore[arg-type]


def test_bad_factory_and_dim() -> None:
    with pytest.raises(ConfigurationError, match="factory"):
        ChunkIndex(4, "NotAnIndex")
    with pytest.raises(ConfigurationError):
        ChunkIndex(0)


def test_blas_threshold_is_restored(rng: np.random.Generator) -> None:
    before = faiss.cvar.distance_compute_blas_threshold
    index = ChunkIndex(8, device="cpu")
    index.add(_unit(rng, 10, 8), np.arange(10))
    index.search(_unit(rng, 30, 8), 3)
    assert faiss.cvar.distance_compute_blas_threshold == before


@pytest.mark.parametrize(("rows", "blas"), [(1, False), (7, False), (8, True), (500, True)])
def test_blas_only_from_the_index_s_query_count(rows: int, blas: bool) -> None:
    """faiss' threshold is set per search so that 8 queries or more go through BLAS and fewer never do, whether
    faiss compares it with the queries or with queries x dimensions (one IVF query was 1.8-2.8x slower through
    BLAS); and it is restored after."""
    before = faiss.cvar.distance_compute_blas_threshold
    with chunk_index_module._blas_threshold(chunk_index_module.DEFAULT_BLAS_THRESHOLD, rows):
        value = faiss.cvar.distance_compute_blas_threshold
    assert faiss.cvar.distance_compute_blas_threshold == before
    for dim in (1, 512, 4096):  # faiss uses BLAS where (queries, or queries x dimensions) >= the threshold
        assert (rows >= value) == blas and (rows * dim >= value) == blas


def test_overlapping_searches_leave_the_blas_threshold_as_it_was() -> None:
    """Searches that overlap (threads) share the first one's setting, and only the last one out restores faiss'
    own: a batch and a single query interleaved, in either order of leaving, never leave either's value behind."""
    before = faiss.cvar.distance_compute_blas_threshold
    threshold = chunk_index_module._blas_threshold
    for first_out in ("batch", "single"):
        batch = threshold(chunk_index_module.DEFAULT_BLAS_THRESHOLD, 500)
        single = threshold(chunk_index_module.DEFAULT_BLAS_THRESHOLD, 1)
        batch.__enter__()
        set_by_batch = faiss.cvar.distance_compute_blas_threshold
        single.__enter__()
        assert faiss.cvar.distance_compute_blas_threshold == set_by_batch != before  # the first one's, kept
        (batch if first_out == "batch" else single).__exit__(None, None, None)
        assert faiss.cvar.distance_compute_blas_threshold == set_by_batch  # one still searching
        (single if first_out == "batch" else batch).__exit__(None, None, None)
        assert faiss.cvar.distance_compute_blas_threshold == before


def test_concurrent_searches_leave_the_blas_threshold_as_it_was(rng: np.random.Generator) -> None:
    index = ChunkIndex(8, "IVF4,SQ8", device="cpu")
    index.add(_unit(rng, 400, 8), np.arange(400))
    before = faiss.cvar.distance_compute_blas_threshold
    queries = _unit(rng, 64, 8)

    def run(rows: int) -> None:
        for _ in range(40):
            index.search(queries[:rows], 5)

    threads = [threading.Thread(target=run, args=(rows,)) for rows in (1, 64, 2, 32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert faiss.cvar.distance_compute_blas_threshold == before


@pytest.mark.parametrize(("factory", "blas_from"), [("Flat", 1), ("IVF4,Flat", 8), ("IVF4,SQ8", 8), ("HNSW8", 1)])
def test_searches_use_blas_by_structure(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, factory: str, blas_from: int
) -> None:
    """An IVF index keeps its searches of fewer than 8 queries off BLAS; a flat (or HNSW) index sets BLAS for every
    search, so that a query scores the same alone and in a batch."""
    seen: list[tuple[int, int]] = []
    real = chunk_index_module._blas_threshold

    def spy(min_queries: int, rows: int) -> Any:
        seen.append((min_queries, rows))
        return real(min_queries, rows)

    monkeypatch.setattr(chunk_index_module, "_blas_threshold", spy)
    index = ChunkIndex(8, factory, device="cpu")
    index.add(_unit(rng, 400, 8), np.arange(400))
    index.search(_unit(rng, 3, 8), 5)
    assert seen and all(m == blas_from and r == 3 for m, r in seen)


def test_gpu_device_without_faiss_gpu_is_clear() -> None:
    if faiss_gpu_count():
        pytest.skip("faiss sees a GPU")
    with pytest.raises(DeviceError, match=r"crossscale\[gpu\]"):
        ChunkIndex(4, device="cuda")
    assert ChunkIndex(4, device="auto").device == "cpu"


def test_a_gpu_build_that_faiss_cpu_shadows_is_named_with_its_fix(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from crossscale import _device

    if faiss_gpu_count():
        pytest.skip("faiss sees a GPU")
    assert _device.faiss_gpu_distributions() == {}  # this environment has faiss-cpu alone
    monkeypatch.setattr(_device, "faiss_gpu_distributions", lambda: {"faiss-gpu": "1.15.1"})
    monkeypatch.setattr(_device, "_WARNED", set())
    with pytest.raises(DeviceError, match=r"faiss-gpu 1\.15\.1 is installed, but the faiss imported is a CPU build"):
        ChunkIndex(4, device="cuda")
    with pytest.raises(DeviceError, match=r"pip install --force-reinstall --no-deps faiss-gpu==1\.15\.1"):
        ChunkIndex(4, device="cuda:0")
    with caplog.at_level("WARNING", logger="crossscale._device"):
        assert ChunkIndex(4, device="auto").device == "cpu"
        assert ChunkIndex(4, device="auto").device == "cpu"
    assert caplog.text.count("the chunk index searches on the CPU: faiss-gpu 1.15.1 is installed") == 1  # once


def test_a_gpu_build_that_sees_no_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    if faiss_gpu_count():
        pytest.skip("faiss sees a GPU")
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    with pytest.raises(DeviceError, match="a GPU build but sees no GPU"):
        ChunkIndex(4, device="cuda")
    assert ChunkIndex(4, device="auto").device == "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("reduce_dim", [None, 16])
def test_gpu_search_matches_cpu(reduce_dim: int | None, rng: np.random.Generator) -> None:
    if not faiss_gpu_count():
        pytest.skip("faiss has no GPU")
    x, q = _unit(rng, 2000, 64), _unit(rng, 10, 64)
    cpu = ChunkIndex(64, reduce_dim=reduce_dim, device="cpu")
    gpu = ChunkIndex(64, reduce_dim=reduce_dim, device="cuda")
    for index in (cpu, gpu):
        index.add(x, np.arange(2000) + 10**12)
        index.remove([10**12 + 5])
    np.testing.assert_array_equal(cpu.search(q, 10)[1], gpu.search(q, 10)[1])


def _needs_faiss_gpu() -> None:
    if not faiss_gpu_count():
        pytest.skip("faiss has no GPU")


@pytest.mark.gpu
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,SQ8", "IVF16,PQ8"])
def test_gpu_structures_search_as_on_the_cpu(factory: str, rng: np.random.Generator) -> None:
    _needs_faiss_gpu()
    x = _unit(rng, 3000, 64)
    q = x[:20] + 0.05 * _unit(rng, 20, 64)
    ids = np.arange(3000, dtype=np.int64) * 3 + 2**33
    cpu = ChunkIndex(64, factory, device="cpu")
    gpu = ChunkIndex(64, factory, device="cuda")
    for index in (cpu, gpu):
        index.train(x)
        index.add(x, ids)
        if factory.startswith("IVF"):
            index.set_search_params("nprobe=16")  # every list
    (cs, ci), (gs, gi) = cpu.search(q, 10), gpu.search(q, 10)
    assert gpu.device == "cuda:0"  # served by the GPU mirror, not fallen back
    coded = "PQ" in factory or "SQ" in factory  # the GPU's code tables may round otherwise
    assert (gi[:, 0] == ci[:, 0]).mean() >= (0.9 if coded else 1.0) and (gi[:, 0] == ids[:20]).mean() >= 0.9
    np.testing.assert_allclose(gs, cs, atol=2e-2 if coded else 1e-4)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ci, gi, strict=True)]) >= (0.8 if coded else 0.95)


@pytest.mark.gpu
def test_gpu_search_deeper_than_the_gpu_k_limit_is_whole(rng: np.random.Generator) -> None:
    _needs_faiss_gpu()
    x, q = _unit(rng, GPU_MAX_K + 500, 32), _unit(rng, 3, 32)
    ids = np.arange(len(x), dtype=np.int64)
    index = ChunkIndex(32, device="cuda")
    index.add(x, ids)
    scores, got = index.search(q, GPU_MAX_K + 100)  # past faiss' GPU limit: the CPU copy answers
    ref_s, ref_i = _brute(x, ids, q, GPU_MAX_K + 100)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    assert (got[:, :50] == ref_i[:, :50]).all() and (got >= 0).all()
    assert index.device == "cuda:0"


@pytest.mark.gpu
def test_a_structure_faiss_cannot_put_on_the_gpu_is_searched_on_the_cpu(
    rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    _needs_faiss_gpu()
    x = _unit(rng, 500, 16)
    index = ChunkIndex(16, "HNSW16", device="cuda")
    index.add(x, np.arange(500))
    with caplog.at_level("WARNING", logger="crossscale.index.chunk_index"):
        _, got = index.search(x[:5], 3)
    assert (got[:, 0] == np.arange(5)).all()
    assert index.device == "cpu" and "searching on CPU" in caplog.text


@pytest.mark.gpu
def test_gpu_mirror_follows_adds_removals_and_a_reload(tmp_path: Path, rng: np.random.Generator) -> None:
    _needs_faiss_gpu()
    x = _unit(rng, 400, 16)
    index = ChunkIndex(16, device="cuda")
    index.add(x[:200], np.arange(200))
    assert index.search(x[300:301], 1)[1][0, 0] != 300
    index.add(x[200:], np.arange(200, 400))  # the mirror is rebuilt: the new vectors are found
    assert index.search(x[300:301], 1)[1][0, 0] == 300
    index.remove([300])
    assert 300 not in index.search(x[300:301], 5)[1]
    index.save(tmp_path / "index")
    loaded, _ = ChunkIndex.load(tmp_path / "index", device="cuda")
    assert loaded.device == "cuda:0" and 300 not in loaded.search(x[300:301], 5)[1]
    assert loaded.search(x[299:300], 1)[1][0, 0] == 299


# ------------------------------------------------------------------ projected vectors (reduce_dim)
def _near_a_subspace(rng: np.random.Generator, n: int, d: int, k: int) -> np.ndarray:
    """Unit vectors in a k-d subspace, all far from the origin's side: a large common mean plus spread (as CNN
    features, all positive, are). A centred PCA to k dimensions would change their cosines; the uncentred
    projection keeps them."""
    basis = np.linalg.qr(rng.standard_normal((d, k)))[0].astype(np.float32)
    coords = rng.standard_normal((n, k)).astype(np.float32) * 0.3
    coords[:, 0] += 3.0  # the common mean
    x = coords @ basis.T
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_a_projection_keeps_the_cosines_of_vectors_in_its_span(factory: str, rng: np.random.Generator) -> None:
    x = _near_a_subspace(rng, 400, 48, 12)
    ids = np.arange(400, dtype=np.int64) + 7
    index = ChunkIndex(48, factory, reduce_dim=12, device="cpu")
    assert not index.is_trained and index.reduce_dim == 12 and index.energy_kept is None
    index.add(x, ids)  # the projection is learned from the first batch
    assert index.is_trained and index.energy_kept == pytest.approx(1.0, abs=1e-5)
    if factory.startswith("IVF"):
        index.set_search_params("nprobe=4")  # every list: exact
    q = x[:5]
    scores, got = index.search(q, 10)
    ref_s, ref_i = _brute(x, ids, q, 10)
    np.testing.assert_allclose(scores, ref_s, atol=1e-4)  # the same cosines, not those of centred vectors
    assert (got[:, 0] == ids[:5]).all() and set(got.ravel()) <= set(ref_i.ravel()) | set(ids)
    assert "reduce_dim=12" in repr(index) and len(index.ids()) == 400


def test_a_projection_keeps_most_of_the_energy_of_wider_data(rng: np.random.Generator) -> None:
    x = _near_a_subspace(rng, 600, 64, 24) + 0.02 * _unit(rng, 600, 64)
    index = ChunkIndex(64, reduce_dim=16, device="cpu")
    index.train(x)
    assert 0.9 < index.energy_kept < 1.0  # type: ignore[operator]
    index.add(x, np.arange(600))
    _, got = index.search(x[:20], 1)
    assert (got[:, 0] == np.arange(20)).mean() >= 0.9


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,SQ8"])
def test_a_projected_index_removes_saves_and_loads(factory: str, tmp_path: Path, rng: np.random.Generator) -> None:
    x = _near_a_subspace(rng, 300, 32, 8)
    index = ChunkIndex(32, factory, reduce_dim=8, device="cpu")
    index.add(x, np.arange(300))
    assert index.remove([0, 1, 2, 999]) == 3 and len(index) == 297
    if factory.startswith("IVF"):
        index.set_search_params("nprobe=4")
    before = index.search(x[:10], 5)
    assert not np.isin(before[1], [0, 1, 2]).any()
    index.save(tmp_path / "i.index", {"generation": 3})
    loaded, meta = ChunkIndex.load(tmp_path / "i.index", device="cpu")
    assert meta == {"generation": 3} and loaded.reduce_dim == 8 and loaded.energy_kept == index.energy_kept
    after = loaded.search(x[:10], 5)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    loaded.add(_near_a_subspace(rng, 4, 32, 8), [1000, 1001, 1002, 1003])  # the learned projection, kept
    assert len(loaded) == 301 and loaded.energy_kept == index.energy_kept


def test_bad_projections_are_refused_clearly(rng: np.random.Generator) -> None:
    for bad in (0, -3, 1.5, "8"):
        with pytest.raises(ConfigurationError, match="reduce_dim"):
            ChunkIndex(16, reduce_dim=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="less than dim"):
        ChunkIndex(16, reduce_dim=16)
    index = ChunkIndex(16, reduce_dim=8, device="cpu")
    with pytest.raises(ChunkIndexError, match="needs at least 8 vectors, got 3"):
        index.add(_unit(rng, 3, 16), [0, 1, 2])
    assert len(index) == 0 and not index.is_trained  # nothing half-learned
    with pytest.raises(VectorError, match=r"shape \(n, 16\)"):
        index.search(_unit(rng, 1, 8), 1)  # queries come at the full dimension too
    index.add(_unit(rng, 8, 16), np.arange(8))
    assert len(index) == 8


@pytest.mark.parametrize(
    ("factory", "stable"),
    [
        ("Flat", True),
        ("SQ8", True),
        ("PQ4", True),
        ("IVF4,Flat", True),
        ("IVF4,SQ8", True),
        ("IVF4,PQ4", True),
        ("IVF4,PQ4x4fs", False),
        ("HNSW16", False),
        ("IVF4,Flat,Refine(Flat)", False),
        ("PCA4,IVF4,SQ8", True),  # an explicit factory's transform in front: the same scans
        ("PCA4,IVF4,PQ4x4fs", False),
    ],
)
def test_prefix_stable_names_the_exhaustive_scans(factory: str, stable: bool, rng: np.random.Generator) -> None:
    index = ChunkIndex(8, factory, device="cpu")
    index.add(rng.standard_normal((400, 8)).astype(np.float32), np.arange(400))
    assert index.prefix_stable is stable
    assert ChunkIndex(8, factory, device="cpu", reduce_dim=4).prefix_stable is stable


@pytest.mark.parametrize("reduce_dim", [None, 12])
def test_an_explicit_transform_before_an_ivf_keeps_the_ivf_paths(
    reduce_dim: int | None, tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``"PCA8,IVF16,SQ8"``: the IVF keeps the ids itself (no id map over the transform, no second copy of them),
    so the batched list scan, a query split over the cores and prefix-stable depths serve it as they serve
    crossscale's own projection; faiss trains the factory's PCA and ``reduce_dim`` stays crossscale's own. Its hits
    are faiss' own search's, and a save and load keep them."""
    from crossscale.index import _list_scan, _probe_split

    centres = rng.standard_normal((20, 16))
    x = (centres[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = ChunkIndex(16, "PCA8,IVF16,SQ8", reduce_dim=reduce_dim, device="cpu")
    index.add(x, np.arange(3000) * 2 + 1)
    layers = chunk_index_module._layers(index._index)
    assert not any(isinstance(layer, faiss.IndexIDMap) for layer in layers)
    assert isinstance(layers[-1], faiss.IndexIVFScalarQuantizer)
    assert index.reduce_dim == reduce_dim and (index.energy_kept is None) is (reduce_dim is None)
    assert index.prefix_stable and not index.scores_exact
    assert _list_scan.ListScan.of(index._index) is not None and _probe_split.ProbeSplit.of(index._index) is not None
    index.set_search_params("nprobe=4")
    q = x[:200] + np.float32(0.05) * rng.standard_normal((200, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    faiss_ids = index._index.search(q, 10)[1]
    scanned: list[int] = []
    real = _list_scan.ListScan.search
    monkeypatch.setattr(_list_scan, "pays", lambda *args: True)
    monkeypatch.setattr(_list_scan.ListScan, "search", lambda self, *a, **k: scanned.append(1) or real(self, *a, **k))
    ids = index.search(q, 10)[1]
    assert scanned  # the batch went list by list
    assert (ids == faiss_ids).mean() > 0.99  # the same hits (scores summed in another order: near ties may swap)
    index.save(tmp_path / "i.index")
    loaded, _ = ChunkIndex.load(tmp_path / "i.index")
    np.testing.assert_array_equal(loaded.search(q, 10)[1], ids)
    assert loaded.reduce_dim == reduce_dim and loaded.search_settings.nprobe == 4


def test_an_index_file_with_an_id_map_over_the_transform_still_loads_and_takes_settings(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files written before kept an explicit factory's transform and IVF under an id map: they load, search, and
    take a call's settings (those reach the IVF behind the map)."""
    monkeypatch.setattr(
        ChunkIndex,
        "_build",
        staticmethod(lambda dim, factory: faiss.index_factory(dim, "IDMap," + factory, faiss.METRIC_INNER_PRODUCT)),
    )
    x = _unit(rng, 2000, 16)
    old = ChunkIndex(16, "RR16,IVF16,SQ8", device="cpu")  # a random rotation: each vector still finds itself
    old.add(x, np.arange(2000) + 3)
    assert isinstance(faiss.downcast_index(old._index), faiss.IndexIDMap)
    old.save(tmp_path / "old.index")
    monkeypatch.undo()
    index, _ = ChunkIndex.load(tmp_path / "old.index")
    index.set_search_params("nprobe=16")
    exhaustive = index.search(x[:50], 5)
    assert (exhaustive[1][:, 0] == np.arange(50) + 3).mean() > 0.9
    np.testing.assert_array_equal(index.search(x[:50], 5, params=SearchParams(nprobe=16))[1], exhaustive[1])
    assert not np.array_equal(index.search(x[:50], 5, params=SearchParams(nprobe=1))[1], exhaustive[1])


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "IVF4,SQ8"])
def test_a_search_is_the_start_of_any_deeper_one_ties_included(factory: str, rng: np.random.Generator) -> None:
    """faiss lists equal scores in an order that depends on k; ChunkIndex orders them by id, so that a shallow
    search is exactly the first hits of a deep one (what the query path's FetchDepth relies on)."""
    groups = rng.standard_normal((12, 8)).astype(np.float32)
    x = groups[rng.integers(0, 12, 600)]  # exact duplicates: tied scores
    index = ChunkIndex(8, factory, device="cpu")
    index.add(x, np.arange(600) * 3 + 5)
    if factory.startswith("IVF"):
        index.set_search_params("nprobe=2")
    for queries in (x[:1], x[:30], groups):  # one query, and batches faiss scores with BLAS
        deep_scores, deep_ids = index.search(queries, 600)
        for k in (1, 7, 40, 130):
            scores, ids = index.search(queries, k)
            np.testing.assert_array_equal(ids, deep_ids[:, :k])
            np.testing.assert_array_equal(scores, deep_scores[:, :k])
        tied = deep_scores[:, 1:] == deep_scores[:, :-1]
        assert (
            tied.any()
            and (deep_ids[:, 1:][tied & (deep_ids[:, 1:] >= 0)] > deep_ids[:, :-1][tied & (deep_ids[:, 1:] >= 0)]).all()
        )


def test_a_search_deeper_than_a_gpu_returns_runs_on_the_cpu_copy(rng: np.random.Generator) -> None:
    """faiss' GPU indexes return at most GPU_MAX_K hits: a deeper search must not come back cut short."""
    index = ChunkIndex(8, device="cpu")
    index.add(rng.standard_normal((3000, 8)).astype(np.float32), np.arange(3000))

    class ShallowGpu:
        def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            if k > GPU_MAX_K:
                raise AssertionError(f"asked a GPU index for {k} hits")
            return index._index.search(q, k)

    index.device = "cuda:0"  # as if mirrored on a GPU
    index._searcher = lambda: ShallowGpu()  # type: ignore[method-assign]
    scores, ids = index.search(rng.standard_normal((2, 8)).astype(np.float32), 2500)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    assert not index.prefix_stable  # a GPU's selection among equal scores is its own
    assert (index.search(rng.standard_normal((1, 8)).astype(np.float32), 10)[1] >= 0).all()


def test_adding_assigns_lists_with_its_own_graph_beam_and_searching_keeps_the_wide_one(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search setting of an HNSW coarse quantizer (efSearch = 2 * nprobe) is not used to assign added vectors to
    their lists (it made adding 10M vectors ~20x slower: adds use ADD_EF_SEARCH), and is back for searches."""
    import faiss

    from crossscale.index import chunk_index

    index = ChunkIndex(8, "IVF16_HNSW32,Flat", device="cpu")
    index.set_search_params("nprobe=8,quantizer_efSearch=512")
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    index.train(x)
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index._index).quantizer)
    assert quantizer.hnsw.efSearch == 512
    with chunk_index._assigning(index._index):
        assert quantizer.hnsw.efSearch == ADD_EF_SEARCH
    assert quantizer.hnsw.efSearch == 512
    used: list[int] = []
    real = chunk_index._assigning
    monkeypatch.setattr(chunk_index, "_assigning", lambda idx: used.append(1) or real(idx))
    index.add(x, np.arange(2000))
    assert used == [1] and quantizer.hnsw.efSearch == 512  # add went through it; searches walk the wide graph
    assert (index.search(x[:3], 5)[1][:, 0] == np.arange(3)).all()
    with chunk_index._assigning(ChunkIndex(8, device="cpu")._index):  # no HNSW quantizer: nothing to change
        pass


@pytest.mark.parametrize("search_beam", [16, 512])
@pytest.mark.parametrize("refined", [False, True], ids=["ivf", "refined-ivf"])
def test_added_vectors_go_to_their_nearest_list_whatever_the_search_beam(
    rng: np.random.Generator, search_beam: int, refined: bool
) -> None:
    """A search probes each query's nearest lists, so a vector filed in another list is missed: at 10M regions
    faiss' default beam of 16 filed 8.4% of them elsewhere. Adds assign at ADD_EF_SEARCH, also when the search
    beam is narrower, and also for an explicit factory whose IVF is refined (kept behind an id map)."""
    import faiss

    lists, dim = 4096, 32
    centroids = rng.standard_normal((lists, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    index = ChunkIndex(dim, f"IVF{lists}_HNSW32,Flat" + (",RFlat" if refined else ""), device="cpu")
    ivf = faiss.extract_index_ivf(index._index)
    ivf.quantizer.add(centroids)  # trained: the centroids given, as ChunkIndex.train gives two-level ones
    ivf.is_trained = True
    index.set_search_params(f"nprobe=8,quantizer_efSearch={search_beam}")
    x = rng.standard_normal((5000, dim)).astype(np.float32)
    index.add(x, np.arange(len(x)))
    filed = np.full(len(x), -1, dtype=np.int64)
    for list_no in range(lists):
        size = ivf.invlists.list_size(list_no)
        if size:
            filed[faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), size)] = list_no
    nearest = ((x / np.linalg.norm(x, axis=1, keepdims=True)) @ centroids.T).argmax(axis=1)
    assert (filed == nearest).mean() >= 0.98
    assert faiss.downcast_index(ivf.quantizer).hnsw.efSearch == search_beam  # the search setting is back


def test_equal_scores_past_the_kth_hit_are_fetched_until_they_end_not_further(rng: np.random.Generator) -> None:
    """30 copies of one vector score equally: a search of 10 must see them all (to keep the 10 smallest ids) and
    stop there, not go on doubling through the 5,000 others."""
    x = rng.standard_normal((5000, 8)).astype(np.float32)
    x[100:130] = x[0]
    index = ChunkIndex(8, device="cpu")
    index.add(x, np.arange(5000))
    asked: list[int] = []
    real = index._search_raw
    index._search_raw = lambda q, ask, params: asked.append(ask) or real(q, ask, params)  # type: ignore[method-assign]
    scores, ids = index.search(x[:1], 10)
    assert asked == [11, 22, 44]  # 11: tied at the 10th; 22: still tied at the last; 44: the ties end inside
    assert ids[0].tolist() == [0, *range(100, 109)] and (scores[0] == scores[0, 0]).all()


def test_index_files_carry_a_checksum_that_finds_a_flipped_byte_without_loading(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A flipped bit inside the stored codes still parses as faiss data: only the CRC-32 after it notices.
    check_file streams the file through it (what verify() uses: no second copy of the index in memory)."""
    x = _unit(rng, 300, 8)
    index = ChunkIndex(8, "IVF4,SQ8", device="cpu")
    index.train(x)
    index.add(x, np.arange(300))
    index.save(tmp_path / "ok", {"generation": 5})
    raw = (tmp_path / "ok").read_bytes()
    assert raw[-16:-12] == b"CSIE"
    assert ChunkIndex.check_file(tmp_path / "ok") == {"generation": 5}
    flipped = bytearray(raw)
    flipped[len(raw) - 200] ^= 0x01  # a code byte near the end of the last list
    (tmp_path / "flipped").write_bytes(bytes(flipped))
    for read in (ChunkIndex.check_file, lambda f: ChunkIndex.load(f, device="cpu")):
        with pytest.raises(WorkspaceFormatError, match="fails its checksum"):
            read(tmp_path / "flipped")
    (tmp_path / "extra").write_bytes(raw + b"x")
    with pytest.raises(WorkspaceFormatError, match="unexpected bytes"):
        ChunkIndex.load(tmp_path / "extra", device="cpu")
    (tmp_path / "old").write_bytes(raw[:-16])  # as written before the checksum: read as before
    assert ChunkIndex.check_file(tmp_path / "old") == {"generation": 5}
    loaded, meta = ChunkIndex.load(tmp_path / "old", device="cpu")
    assert meta == {"generation": 5} and len(loaded) == 300
