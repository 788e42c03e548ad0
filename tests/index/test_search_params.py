"""Per-call search settings (``ChunkIndex.search(..., params=SearchParams(...))``): each equals the same setting made
on the index, on every search path, and leaves the index's own settings and other searches alone."""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np
import pytest

from crossscale.errors import ConfigurationError
from crossscale.index import ChunkIndex, _list_scan, search_params
from crossscale.index import _probe_split as probe_split
from crossscale.types import SearchParams

DIM = 16


def _clustered(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors around 8 centres: lists of uneven sizes, as real collections give."""
    centres = rng.standard_normal((8, dim))
    x = centres[rng.integers(0, 8, n)] + 0.7 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _index(
    factory: str, n: int = 4000, *, own: str | None = None, device: str = "cpu", **kwargs: Any
) -> tuple[ChunkIndex, np.ndarray]:
    rng = np.random.default_rng(7)
    index = ChunkIndex(DIM, factory, device=device, **kwargs)
    index.add(_clustered(rng, n), np.arange(n) * 3)
    if own is not None:
        index.set_search_params(own)
    return index, _clustered(rng, 64)


def _settings(index: ChunkIndex) -> tuple[int, ...]:
    """The index's own search settings, as faiss holds them."""
    found = _list_scan.ivf_of(index._index)
    if found is None:
        core = faiss.downcast_index(index._index)
        inner = faiss.downcast_index(core.index) if isinstance(core, faiss.IndexIDMap) else core
        return (int(inner.hnsw.efSearch),) if isinstance(inner, faiss.IndexHNSW) else ()
    ivf = found[0]
    quantizer = faiss.downcast_index(ivf.quantizer)
    ef = int(quantizer.hnsw.efSearch) if isinstance(quantizer, faiss.IndexHNSW) else -1
    return int(ivf.nprobe), ef


PATHS = ["list scan", "split", "faiss"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which of ChunkIndex's IVF search paths serves: the batched list scan, one query split over two threads, or
    faiss' own search (the decisions have their own tests; here each is forced so that each is checked)."""
    way: str = request.param
    monkeypatch.setattr(_list_scan, "pays", lambda *args: way == "list scan")
    monkeypatch.setattr(probe_split, "MIN_SCAN_NS", 0.0 if way == "split" else float("inf"))
    monkeypatch.setattr(probe_split, "split_threads", lambda: 2)
    return way


def _search(
    index: ChunkIndex, path: str, q: np.ndarray, k: int, params: SearchParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` of the batch ``q``, or of its first 8 rows one at a time where one query is split."""
    if path != "split":
        return index.search(q, k, params=params)
    found = [index.search(q[r : r + 1], k, params=params) for r in range(8)]
    return np.concatenate([d for d, _ in found]), np.concatenate([i for _, i in found])


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [("IVF32,SQ8", {}), ("IVF32,Flat", {}), ("IVF32_HNSW32,SQ8", {}), ("IVF32,SQ8", {"reduce_dim": 8})],
    ids=["sq8", "ivf-flat", "hnsw-quantizer", "projected"],
)
@pytest.mark.parametrize("nprobe", [1, 3, 32])
def test_a_call_nprobe_is_the_index_set_to_it(path: str, factory: str, kwargs: dict[str, Any], nprobe: int) -> None:
    """The hits of ``params=SearchParams(nprobe=n)`` are those of the index set to ``n`` as the "auto" plan sets it
    (``search_params``: an HNSW quantizer's beam too), bit for bit, and the index keeps its own settings."""
    index, q = _index(factory, own=search_params(factory, 8), **kwargs)
    own = _settings(index)
    before = _search(index, path, q, 25)
    got = _search(index, path, q, 25, SearchParams(nprobe=nprobe))
    assert _settings(index) == own
    np.testing.assert_array_equal(_search(index, path, q, 25)[1], before[1])  # its own settings still serve
    index.set_search_params(search_params(factory, nprobe))
    want = _search(index, path, q, 25)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    if nprobe != 8:  # the setting did something: another nprobe finds other hits for some query
        assert not np.array_equal(got[1], before[1])


def test_a_call_ef_search_sets_the_coarse_quantizer_beam(path: str) -> None:
    """``ef_search`` with an HNSW coarse quantizer: its beam, as ``quantizer_efSearch`` on the index."""
    factory = "IVF64_HNSW32,SQ8"
    index, q = _index(factory, n=6000, own="nprobe=16,quantizer_efSearch=32")
    got = _search(index, path, q, 20, SearchParams(nprobe=24, ef_search=24))
    assert _settings(index) == (16, 32)
    index.set_search_params("nprobe=24,quantizer_efSearch=24")
    np.testing.assert_array_equal(got[1], _search(index, path, q, 20)[1])


def test_a_call_ef_search_alone_keeps_the_index_nprobe(path: str) -> None:
    factory = "IVF64_HNSW32,SQ8"
    index, q = _index(factory, n=6000, own="nprobe=16,quantizer_efSearch=40")
    got = _search(index, path, q, 20, SearchParams(ef_search=16))
    assert _settings(index) == (16, 40)
    index.set_search_params("quantizer_efSearch=16")
    np.testing.assert_array_equal(got[1], _search(index, path, q, 20)[1])


@pytest.mark.parametrize("factory", ["HNSW16", "IVF32,SQ8"])
def test_a_call_with_removed_vectors(factory: str) -> None:
    """With tombstones (HNSW skips them in the walk; IVF asks for more and drops them), as the index set to it."""
    index, q = _index(factory, own="efSearch=16" if factory.startswith("HNSW") else "nprobe=8")
    index.remove(np.arange(0, 4000, 2) * 3)
    params = SearchParams(ef_search=200) if factory.startswith("HNSW") else SearchParams(nprobe=2)
    got = index.search(q, 10, params=params)
    assert (got[1] % 6 != 0).all()  # nothing removed comes back
    index.set_search_params("efSearch=200" if factory.startswith("HNSW") else "nprobe=2")
    np.testing.assert_array_equal(got[1], index.search(q, 10)[1])


def test_hnsw_ef_search() -> None:
    """An HNSW index's beam for one call: the same hits as the index set to it, and its own beam kept."""
    index, q = _index("HNSW8", own="efSearch=10")
    before = index.search(q, 10)
    got = index.search(q, 10, params=SearchParams(ef_search=400))
    assert _settings(index) == (10,)
    np.testing.assert_array_equal(index.search(q, 10)[1], before[1])
    index.set_search_params("efSearch=400")
    np.testing.assert_array_equal(got[1], index.search(q, 10)[1])
    assert not np.array_equal(got[1], before[1])  # a beam of 10 misses some of the hits a beam of 400 finds


@pytest.mark.parametrize(
    ("factory", "own", "want", "low", "high"),
    [
        ("OPQ4_16,IVF32,PQ4x4", "nprobe=8", SearchParams(nprobe=8), "nprobe=1", SearchParams(nprobe=32)),
        ("PCA8,IVF32,SQ8", "nprobe=8", SearchParams(nprobe=8), "nprobe=1", SearchParams(nprobe=32)),
        (
            "IVF32,SQ8,Refine(Flat)",
            "nprobe=8,k_factor_rf=4",
            SearchParams(nprobe=8),
            "nprobe=1",
            SearchParams(nprobe=32),
        ),
        (
            "IVF32_HNSW32,PQ8x4fs,RFlat",
            "nprobe=8,quantizer_efSearch=16",
            SearchParams(nprobe=8, ef_search=16),
            "nprobe=2,quantizer_efSearch=2",
            SearchParams(nprobe=32, ef_search=64),
        ),
        ("PCA8,HNSW16", "efSearch=40", SearchParams(ef_search=40), "efSearch=12", SearchParams(ef_search=400)),
        ("HNSW16,Refine(Flat)", "efSearch=40", SearchParams(ef_search=40), "efSearch=12", SearchParams(ef_search=400)),
    ],
    ids=["opq", "pca", "refined", "refined-fast-scan-hnsw-quantizer", "pca-hnsw", "refined-hnsw"],
)
def test_settings_reach_a_structure_behind_transforms_and_refinement(
    factory: str, own: str, want: SearchParams, low: str, high: SearchParams
) -> None:
    """Explicit factories whose IVF or HNSW structure sits behind an id map, a transform (OPQ, PCA) or a refinement
    (``Refine``, ``RFlat``): the index's own settings are read from it, and a call's settings are those of the
    index set to them, bit for bit (they were ignored, silently, so ``tune_search`` timed one setting again and
    again). A refinement keeps its own ``k_factor``."""
    index, q = _index(factory, own=own)
    assert index.search_settings == want
    fields = dict(pair.split("=") for pair in low.split(","))
    call = SearchParams(
        nprobe=int(fields["nprobe"]) if "nprobe" in fields else None,
        ef_search=int(fields.get("efSearch", fields.get("quantizer_efSearch", 0))) or None,
    )
    got = index.search(q, 10, params=call)
    assert index.search_settings == want  # the call changed nothing
    index.set_search_params(low)
    assert index.search_settings == SearchParams(nprobe=call.nprobe or want.nprobe, ef_search=call.ef_search)
    wanted = index.search(q, 10)
    np.testing.assert_array_equal(got[1], wanted[1])
    np.testing.assert_array_equal(got[0], wanted[0])
    assert not np.array_equal(got[1], index.search(q, 10, params=high)[1])  # the setting does something


@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_settings_for_other_structures_are_ignored(factory: str) -> None:
    """``nprobe`` on a flat or HNSW index (an "auto" workspace's index is Flat while small): no effect, no error."""
    index, q = _index(factory)
    want = index.search(q, 10)
    got = index.search(q, 10, params=SearchParams(nprobe=1))
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_concurrent_searches_each_get_their_own_nprobe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads searching one index at once with different settings each get the hits of theirs (a setting
    made on the shared index would leak from one into the other)."""
    index, q = _index("IVF32,SQ8", own="nprobe=8")
    wanted = {n: index.search(q, 10, params=SearchParams(nprobe=n))[1] for n in (1, 32)}
    assert not np.array_equal(wanted[1], wanted[32])
    wrong: list[int] = []
    start = threading.Barrier(2)

    def run(n: int) -> None:
        start.wait()
        for _ in range(30):
            if not np.array_equal(index.search(q, 10, params=SearchParams(nprobe=n))[1], wanted[n]):
                wrong.append(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in (1, 32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


@pytest.mark.parametrize(
    ("factory", "own", "want", "kwargs"),
    [
        ("Flat", None, SearchParams(), {}),
        ("HNSW16", "efSearch=40", SearchParams(ef_search=40), {}),
        ("IVF32,SQ8", "nprobe=5", SearchParams(nprobe=5), {}),
        ("IVF32,Flat", "nprobe=7", SearchParams(nprobe=7), {"reduce_dim": 8}),
        ("IVF32_HNSW32,SQ8", "nprobe=6,quantizer_efSearch=12", SearchParams(nprobe=6, ef_search=12), {}),
    ],
)
def test_the_index_own_settings_are_readable_and_a_call_leaves_them(
    factory: str, own: str | None, want: SearchParams, kwargs: dict[str, Any]
) -> None:
    index, q = _index(factory, own=own, **kwargs)
    assert index.search_settings == want
    index.search(q, 5, params=SearchParams(nprobe=1, ef_search=3))
    assert index.search_settings == want


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8", np.float32(4)])
@pytest.mark.parametrize("field", ["nprobe", "ef_search", "rescore_per_parent"])
def test_bad_settings_are_refused(field: str, bad: object) -> None:
    with pytest.raises(ConfigurationError, match=f"SearchParams.{field} must be a positive int"):
        SearchParams(**{field: bad})  # type: ignore[arg-type]


def test_settings_are_plain_ints() -> None:
    params = SearchParams(nprobe=np.int64(12))  # type: ignore[arg-type]
    assert params.nprobe == 12 and type(params.nprobe) is int and params.ef_search is None


@pytest.mark.parametrize("bad", [1, 0, "no", np.bool_(False)])
def test_a_rescore_that_is_not_a_bool_is_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"SearchParams\.rescore must be True, False or None, got"):
        SearchParams(rescore=bad)  # type: ignore[arg-type]


def test_what_an_index_takes_of_a_call_settings() -> None:
    """``rescore`` and ``rescore_per_parent`` are the facade's: an index gets the rest, nothing where only they
    are given, the same object where nothing of the facade's is given; and the settings describe themselves."""
    plain = SearchParams(nprobe=8)
    assert plain.for_index() is plain
    assert SearchParams(nprobe=8, ef_search=16, rescore=False).for_index() == SearchParams(nprobe=8, ef_search=16)
    assert SearchParams(rescore=False).for_index() is None and SearchParams().for_index() is None
    assert SearchParams(nprobe=8, rescore_per_parent=2).for_index() == SearchParams(nprobe=8)
    assert SearchParams(rescore_per_parent=2).for_index() is None
    assert SearchParams(nprobe=8, rescore=False).describe() == "nprobe=8 rescore=False"
    assert SearchParams(rescore=True, rescore_per_parent=2).describe() == "rescore=True rescore_per_parent=2"
    assert SearchParams().describe() == "own"


def test_a_call_settings_over_a_base_take_only_the_fields_not_given() -> None:
    base = SearchParams(nprobe=128, rescore=False)
    assert SearchParams().over(base) == base
    assert SearchParams(nprobe=256).over(base) == SearchParams(nprobe=256, rescore=False)
    assert SearchParams(ef_search=32, rescore=True).over(base) == SearchParams(nprobe=128, ef_search=32, rescore=True)
    given = SearchParams(nprobe=4, ef_search=8, rescore=True)
    assert given.over(base) is given and SearchParams(nprobe=4).over(SearchParams()) == SearchParams(nprobe=4)


def test_an_index_ignores_a_call_rescore() -> None:
    index, q = _index("IVF32,SQ8", own="nprobe=4")
    want = index.search(q, 5, params=SearchParams(nprobe=2))
    got = index.search(q, 5, params=SearchParams(nprobe=2, rescore=False))
    assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))


def test_params_that_are_not_search_params_are_refused() -> None:
    index, q = _index("IVF32,SQ8")
    with pytest.raises(ConfigurationError, match=r"params must be a crossscale\.types\.SearchParams or None, got dict"):
        index.search(q, 5, params={"nprobe": 4})  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,SQ8"])
def test_a_gpu_search_takes_the_call_nprobe(factory: str) -> None:
    """On a GPU copy (its own flat coarse quantizer), a call's ``nprobe`` gives the hits of the copy set to it."""
    from crossscale._device import faiss_gpu_count

    if not faiss_gpu_count():
        pytest.skip("faiss has no GPU")
    index, q = _index(factory, own="nprobe=8", device="cuda")
    got = index.search(q, 10, params=SearchParams(nprobe=2))
    assert index.device == "cuda:0"  # served by the GPU copy, not fallen back
    assert _settings(index) == (8, -1)
    index.set_search_params("nprobe=2")
    np.testing.assert_array_equal(got[1], index.search(q, 10)[1])
