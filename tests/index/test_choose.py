"""choose_index: a structure by size within a memory budget; parse_memory; "auto" workspaces that migrate."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from crossscale import CrossScaleSearch
from crossscale.errors import ConfigurationError
from crossscale.index import ChunkIndex, IndexPlan, choose_index, parse_memory
from crossscale.index import choose as choose_module
from crossscale.index.choose import MAX_NPROBE
from crossscale.workspace import INDEX_FILE, _growth_key


@pytest.mark.parametrize(
    ("text", "size"),
    [("4G", 4 << 30), ("512M", 512 << 20), ("1.5GB", 3 << 29), ("2 GiB", 2 << 30), ("100k", 102400), (4096, 4096)],
)
def test_memory_sizes_are_read_in_binary_units(text: str | int, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("bad", ["", "4X", "G", "-1G", 0, -5, True, 1.5, None])
def test_bad_memory_sizes_are_named(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_memory"):
        parse_memory(bad)  # type: ignore[arg-type]


def test_small_collections_are_exact_then_ivf_then_sq8_then_pq_as_the_budget_shrinks() -> None:
    assert choose_index(0, 512).factory == "Flat"
    assert choose_index(50_000, 512).factory == "Flat"
    ivf = choose_index(1_000_000, 512, "4G")
    assert ivf.factory == "IVF4096,Flat" and ivf.nprobe == 128 and ivf.bytes <= 4 << 30
    ten_million = choose_index(10_000_000, 256, "4G")  # 1/32 of the lists up to MAX_NPROBE
    assert ten_million.factory == "IVF16384_HNSW32,SQ8" and ten_million.nprobe == MAX_NPROBE == 256
    sq8 = choose_index(10_000_000, 256, "4G")  # 10.3 GB of float32 do not fit; 2.6 GB of bytes do
    assert sq8.factory == "IVF16384_HNSW32,SQ8" and 2.6e9 < sq8.bytes <= 4 << 30
    pq = choose_index(10_000_000, 256, "2G")
    assert pq.factory.startswith("IVF16384_HNSW32,PQ") and pq.bytes <= 2 << 30
    assert pq.train_size <= 10_000_000
    assert choose_index(1_000_000, 256, "400M").factory == "IVF4096,SQ8"  # the flat quantizer below 8192 lists


def test_a_budget_that_holds_nothing_names_the_size_needed() -> None:
    with pytest.raises(ConfigurationError, match=r"max_memory=1\.0 KiB cannot hold 10000000 vectors.*needs \d"):
        choose_index(10_000_000, 256, "1K")
    with pytest.raises(ConfigurationError, match="too few to train"):
        choose_index(500, 512, "1K")  # Flat needs 1 MiB; 500 vectors cannot train an IVF
    with pytest.raises(ConfigurationError, match="too few to train product quantisation"):
        choose_index(5_000, 512, "1M")


def test_too_few_vectors_for_an_ivf_stay_flat(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="crossscale.index.choose")
    plan = choose_index(400, 64, "1G", flat_max=10)
    assert plan.factory == "Flat" and "too few" in caplog.text


def _plan_or_none(n: int, dim: int, budget: int, reduce_dim: int | None = None) -> IndexPlan | None:
    """The plan, or None where the budget holds nothing (then the error says what is needed)."""
    try:
        return choose_index(n, dim, budget, reduce_dim=reduce_dim)
    except ConfigurationError as exc:
        message = str(exc)
    if "needs" not in message and "too few" not in message:
        raise AssertionError(message)
    return None


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 50_000_000),
    st.sampled_from([64, 128, 256, 384, 512, 768, 1024, 1280]),
    st.integers(1 << 20, 64 << 30),
    st.sampled_from([None, 32, 256]),
)
def test_a_plan_fits_its_budget_and_grows_with_the_collection(
    n: int, dim: int, budget: int, reduce_dim: int | None
) -> None:
    reduce_dim = reduce_dim if reduce_dim is not None and reduce_dim < dim else None
    plan = _plan_or_none(n, dim, budget, reduce_dim)
    if plan is None:
        return
    assert plan.bytes <= budget
    assert plan.train_size <= n
    assert plan.reduce_dim in (None, reduce_dim) and (plan.reduce_dim is None or plan.train_size >= 8 * reduce_dim)
    if plan.nprobe is not None:
        nlist = int(re.match(r"IVF(\d+)", plan.factory).group(1))  # type: ignore[union-attr]
        assert ("_HNSW32," in plan.factory) == (nlist >= choose_module.HNSW_QUANTIZER_LISTS)
        assert 1 <= plan.nprobe <= nlist and n >= 39 * nlist
        scanned = plan.nprobe * n / nlist  # on average
        assert scanned >= choose_module.MIN_CODES_SCANNED or plan.nprobe in (nlist, choose_module.MAX_NPROBE)
    bigger = _plan_or_none(2 * n + 1, dim, budget, reduce_dim)
    if bigger is None:
        return
    assert _growth_key(bigger.factory, bigger.reduce_dim) >= _growth_key(
        plan.factory, plan.reduce_dim
    )  # never a smaller structure for more vectors


@pytest.mark.parametrize("n", [700, 5_000])
def test_chosen_ivf_structures_build_train_and_find_their_vectors(n: int) -> None:
    plan = choose_index(n, 32, "1G", flat_max=100)
    assert plan.factory.startswith("IVF") and plan.factory.endswith(",Flat")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 32)).astype(np.float32)
    index = ChunkIndex(32, plan.factory, device="cpu")
    index.train(x[rng.choice(n, plan.train_size, replace=False)])
    index.add(x, np.arange(n))
    index.set_search_params(f"nprobe={plan.nprobe}")
    _, ids = index.search(x[:20], 1)
    assert (ids[:, 0] == np.arange(20)).mean() >= 0.9


@pytest.mark.parametrize("budget", ["1M", "400K"])  # IVF-SQ8, then IVF-PQ
def test_compressed_structures_with_an_hnsw_quantizer_build_and_find_their_vectors(
    budget: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(choose_module, "HNSW_QUANTIZER_LISTS", 16)
    n = 12_000
    plan = choose_index(n, 32, budget, flat_max=100)
    assert "_HNSW32," in plan.factory and plan.factory.endswith("SQ8" if budget == "1M" else "PQ8")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 32)).astype(np.float32)
    index = ChunkIndex(32, plan.factory, device="cpu")
    index.train(x[np.sort(rng.choice(n, plan.train_size, replace=False))])
    index.add(x, np.arange(n))
    assert plan.search_params == f"nprobe={plan.nprobe},quantizer_efSearch={2 * plan.nprobe}"
    index.set_search_params(plan.search_params)
    import faiss

    ivf = faiss.extract_index_ivf(index._index)
    assert ivf.nprobe == plan.nprobe and faiss.downcast_index(ivf.quantizer).hnsw.efSearch == 2 * plan.nprobe
    _, ids = index.search(x[:50], 5)
    assert (ids == np.arange(50)[:, None]).any(axis=1).mean() >= 0.9  # each vector among its own 5 nearest
    assert index.remove([0, 1]) == 2 and len(index) == n - 2 and 0 not in set(index.ids()[:5].tolist())


def test_an_hnsw_quantizer_returns_every_list_asked_for() -> None:
    """faiss' HNSW left at efSearch 16 returned 170-340 of 512 lists asked for (10M clustered vectors, 16,384
    lists); here ~100 of 512 without search_params. It sets the quantizer's efSearch with nprobe."""
    import faiss

    from crossscale.index import search_params

    rng = np.random.default_rng(1)
    clusters = rng.standard_normal((64, 64)).astype(np.float32)
    centroids = clusters[rng.integers(0, 64, 4096)] + 0.6 * rng.standard_normal((4096, 64)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    quantizer = faiss.IndexHNSWFlat(64, 32, faiss.METRIC_INNER_PRODUCT)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, 64, 4096, faiss.METRIC_INNER_PRODUCT)
    faiss.ParameterSpace().set_index_parameters(index, search_params("IVF4096_HNSW32,Flat", 512))
    queries = centroids[:20] + 0.1 * rng.standard_normal((20, 64)).astype(np.float32)
    _, lists = quantizer.search(queries, index.nprobe)
    assert index.nprobe == 512 and (lists >= 0).all()
    assert search_params("IVF4096,Flat", 128) == "nprobe=128"


def test_the_structures_grow_in_one_order() -> None:
    order = [
        "Flat",
        "IVF1024,Flat",
        "IVF4096,Flat",
        "IVF4096,SQ8",
        "IVF16384_HNSW32,SQ8",
        "IVF16384_HNSW32,PQ64",
        "IVF16384_HNSW32,PQ32",
    ]
    keys = [_growth_key(f, None) for f in order]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    # a projection is learned at a fixed size, so projected structures come after every whole-vector one
    assert _growth_key("IVF4096,SQ8", None) < _growth_key("Flat", 256) < _growth_key("IVF1024,Flat", 256)


def test_projected_plans_learn_from_enough_vectors_and_count_the_matrix() -> None:
    few = choose_index(8 * 256 - 1, 1280, reduce_dim=256)
    assert few.reduce_dim is None and few.factory == "Flat" and few.train_size == 0
    flat = choose_index(8 * 256, 1280, reduce_dim=256)
    assert flat.reduce_dim == 256 and flat.factory == "Flat" and flat.train_size == 8 * 256
    assert flat.bytes == 8 * 256 * (4 * 256 + 8) + 4 * 1280 * 256 and "from 1280 to 256" in flat.reason
    big = choose_index(50_000, 1280, reduce_dim=256)
    assert big.train_size == 64 * 256  # the projection's sample, not all 50k
    # the headline: 10M regions of 1280-d, projected to 256, in 4 GiB
    ten_m = choose_index(10_000_000, 1280, "4G", reduce_dim=256)
    assert ten_m.factory == "IVF16384_HNSW32,SQ8" and ten_m.reduce_dim == 256 and ten_m.bytes <= 4 << 30
    assert choose_index(10_000_000, 1280, "4G").factory.startswith("IVF16384_HNSW32,PQ")  # unreduced: PQ
    assert ten_m.bytes == choose_index(10_000_000, 256, "4G").bytes + 4 * 1280 * 256


@pytest.mark.parametrize(
    ("bad", "match"),
    [(0, "positive int"), (True, "positive int"), ("256", "positive int"), (512, "less than the vectors' dimension")],
)
def test_bad_reduce_dims_are_named(bad: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        choose_index(1000, 512, reduce_dim=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ "auto" workspaces
def _scenes(k: int) -> list[tuple[str, Image.Image]]:
    """Images of distinct colours (with some noise), told apart by colour histograms."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(k):
        base = np.array([(i * 70) % 256, (i * 40 + 30) % 256, (255 - i * 20) % 256], dtype=np.float64)
        pixels = np.clip(base + rng.normal(0, 6, (240, 320, 3)), 0, 255).astype(np.uint8)
        out.append((f"p{i}", Image.fromarray(pixels)))
    return out


def _open(path: Path, **kw: object) -> CrossScaleSearch:
    return CrossScaleSearch.open(  # type: ignore[arg-type]
        path,
        encoder="color-histogram",
        segmenter="whole+tiles",
        refine=False,
        verifier=False,
        progress=False,
        device="cpu",
        **kw,
    )


def test_new_workspaces_choose_their_index_and_record_the_budget(tmp_path: Path) -> None:
    with _open(tmp_path / "ws", max_memory="2G") as cs:
        info = cs.info()
        assert info["index_factory"] == "auto" and info["index_structure"] == "Flat"
        assert info["max_memory"] == 2 << 30
    doc = json.loads((tmp_path / "ws" / "workspace.json").read_text())
    assert doc["format"] == 2 and doc["index_factory"] == "auto" and doc["max_memory"] == 2 << 30
    with _open(tmp_path / "ws", max_memory="3G") as cs:  # a writer may change the budget
        assert cs.info()["max_memory"] == 3 << 30
    with _open(tmp_path / "flat", index_factory="Flat", vector_dtype="float32") as cs:
        assert cs.info()["index_structure"] == "Flat" and cs.config.format == 1
    with pytest.raises(ConfigurationError, match="only applies to an 'auto' index"):
        _open(tmp_path / "flat", max_memory="1G")
    with pytest.raises(ConfigurationError, match="max_memory"):
        _open(tmp_path / "bad", max_memory="lots")


def test_an_outgrown_index_migrates_at_save_and_stays_searchable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(choose_module, "FLAT_MAX", 500)  # migrate at 500 vectors instead of 100k
    scenes = _scenes(12)
    with _open(tmp_path / "ws") as cs:
        cs.index(scenes[:2])
        assert cs.info()["index_structure"] == "Flat" and len(cs.chunk_index) < 500
        cs.index(scenes[2:])
        structure = cs.info()["index_structure"]
        assert structure.startswith("IVF") and structure.endswith(",Flat"), structure
        assert cs.search(scenes[7][1], top_k=1)[0].parent_id == "p7"
        assert cs.verify().ok
        cs.delete("p3")
        assert cs.info()["index_structure"] == structure  # shrinking never migrates down on save
    with _open(tmp_path / "ws") as cs:  # reopened: the saved IVF, no rebuild
        assert cs.info()["index_structure"] == structure and cs.verify().ok
        assert cs.search(scenes[9][1], top_k=1)[0].parent_id == "p9"


def test_a_long_ingest_migrates_as_it_grows_not_at_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One index() call over the whole collection: the Flat index is replaced (and the new one saved) by the batch
    that outgrows it, so the index follows max_memory during the call, not only after it."""
    monkeypatch.setattr(choose_module, "FLAT_MAX", 500)
    scenes = _scenes(12)
    file = tmp_path / "ws" / INDEX_FILE
    seen: list[tuple[str, int, str | None]] = []
    with _open(tmp_path / "ws", batch_size=2) as cs:

        def inputs() -> Iterator[tuple[str, Image.Image]]:
            for item in scenes:
                saved = ChunkIndex.load(file, device="cpu")[0].factory if file.exists() else None
                seen.append((cs.info()["index_structure"], len(cs.chunk_index), saved))
                yield item

        report = cs.index(inputs())
        total = len(cs.chunk_index)
        assert len(report.added) == 12 and cs.verify().ok
        assert cs.search(scenes[5][1], top_k=1)[0].parent_id == "p5"
    assert seen[0][0] == "Flat"
    during = [(structure, n, saved) for structure, n, saved in seen if structure.startswith("IVF")]
    assert during, f"still Flat while the call ran: {seen}"
    structure, n, saved = during[0]
    assert 500 < n < total  # migrated by the batch that crossed 500 vectors, before the end
    assert saved == structure  # and saved then: reopening after a kill starts from it
    assert all(s == "Flat" for s, m, _ in seen if m <= 500)


def test_a_migration_that_fails_mid_ingest_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outgrown index is let go before the new one is built (one index in RAM, not two); if the build fails,
    the index is rebuilt from the store when next needed, and the batch that triggered it stays stored."""
    monkeypatch.setattr(choose_module, "FLAT_MAX", 500)
    scenes = _scenes(12)
    real_train = ChunkIndex.train

    def out_of_memory(self: ChunkIndex, x: np.ndarray) -> None:
        raise MemoryError("training sample")

    with _open(tmp_path / "ws", batch_size=2) as cs:
        monkeypatch.setattr(ChunkIndex, "train", out_of_memory)
        with pytest.raises(MemoryError):
            cs.index(scenes[:8])
        monkeypatch.setattr(ChunkIndex, "train", real_train)
        stored = len(cs)
        assert 0 < stored < 8 and cs.verify().ok  # rebuilt from the store, in the structure its size calls for
        assert (
            cs.info()["index_structure"].startswith("IVF") and len(cs.chunk_index) == cs.workspace.store.chunk_count()
        )
        assert cs.search(scenes[stored - 1][1], top_k=1)[0].parent_id == f"p{stored - 1}"
        assert len(cs.index(scenes).added) == 12 - stored
    with _open(tmp_path / "ws", readonly=True) as cs:
        assert len(cs) == 12 and cs.verify().ok


def test_a_migration_left_undone_happens_when_a_writer_next_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill during a migration leaves the old index (reliability suite); the next writer session must migrate
    even if it adds nothing, not keep saving the structure the collection outgrew."""
    scenes = _scenes(12)
    with _open(tmp_path / "ws") as cs:  # stands for the interrupted session: stored, still Flat
        cs.index(scenes)
        assert cs.info()["index_structure"] == "Flat" and len(cs.chunk_index) >= 500
    monkeypatch.setattr(choose_module, "FLAT_MAX", 500)
    with _open(tmp_path / "ws", readonly=True) as reader:  # a reader never rebuilds
        assert reader.info()["index_structure"] == "Flat"
    with _open(tmp_path / "ws") as cs:
        assert cs.info()["index_structure"] == "Flat"  # opening does not rebuild either
    with _open(tmp_path / "ws", readonly=True) as reader:  # the writer's close did
        assert reader.info()["index_structure"].startswith("IVF") and reader.verify().ok
        assert reader.search(scenes[4][1], top_k=1)[0].parent_id == "p4"


def test_a_workspace_grows_into_ivf_sq8_with_an_hnsw_quantizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 10M plan's structure at test size: 2,048 vectors of 512-d in 2 MiB (IVF-Flat needs 4 MiB)."""
    import faiss

    monkeypatch.setattr(choose_module, "FLAT_MAX", 10)
    monkeypatch.setattr(choose_module, "HNSW_QUANTIZER_LISTS", 16)
    scenes = _scenes(16)
    with _open(tmp_path / "ws", max_memory="2M") as cs:
        cs.index(scenes)
        structure = cs.info()["index_structure"]
        assert re.fullmatch(r"IVF\d+_HNSW32,SQ8", structure), structure
    with _open(tmp_path / "ws", readonly=True) as cs:  # the saved index, with its search settings
        assert cs.info()["index_structure"] == structure and cs.verify().ok
        ivf = faiss.extract_index_ivf(cs.chunk_index._index)  # type: ignore[union-attr]
        assert faiss.downcast_index(ivf.quantizer).hnsw.efSearch == 2 * ivf.nprobe
        assert [cs.search(scenes[i][1], top_k=1)[0].parent_id for i in (0, 7, 15)] == ["p0", "p7", "p15"]


def test_a_budget_too_small_for_what_is_stored_is_refused_at_open(tmp_path: Path) -> None:
    with _open(tmp_path / "ws") as cs:
        cs.index(_scenes(2))
    with pytest.raises(ConfigurationError, match="cannot hold"):
        _open(tmp_path / "ws", max_memory="1K")
    with _open(tmp_path / "ws") as cs:  # the refused budget was not recorded
        assert cs.info()["max_memory"] == 4 << 30 and len(cs) == 2


def test_an_index_over_budget_is_still_rebuilt_when_the_file_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with _open(tmp_path / "ws", max_memory="1M") as cs:  # Flat holds ~500 vectors of 512-d in 1 MiB
        cs.index(_scenes(2))
        assert len(cs.chunk_index) < 500
    monkeypatch.setattr(choose_module, "FLAT_MAX", 10)
    with _open(tmp_path / "ws", batch_size=4) as cs:  # 2,048 vectors: IVF-SQ8 needs > 1 MiB, too few for IVF-PQ
        cs.index(_scenes(16)[2:])  # stored; batches migrate while the budget holds, then one warning, not one a batch
        kept = cs.info()["index_structure"]
        assert caplog.text.count("keeping the") == 1 and f"keeping the {kept} index" in caplog.text
    (tmp_path / "ws" / "chunks.index").unlink()
    with _open(tmp_path / "ws") as cs:  # rebuilt all the same
        assert "building" in caplog.text and cs.verify().ok and len(cs) == 16


def test_a_rebuild_trains_on_the_same_sample_read_batch_by_batch() -> None:
    from crossscale.workspace import _training_sample

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 8)).astype(np.float32)

    class Store:  # what _training_sample reads: batches of (ids, vectors) in id order
        dim = 8

        def iter_vectors(self, *, txn: object) -> object:
            return ((np.arange(s, min(1000, s + 64)), x[s : s + 64]) for s in range(0, 1000, 64))

    want = x[np.sort(np.random.default_rng(0).choice(1000, 100, replace=False))]  # what the one-pass version took
    np.testing.assert_array_equal(_training_sample(Store(), None, 1000, 100), want)  # type: ignore[arg-type]
    np.testing.assert_array_equal(_training_sample(Store(), None, 1000, 0), x)  # type: ignore[arg-type]
    np.testing.assert_array_equal(_training_sample(Store(), None, 1000, 5000), x)  # type: ignore[arg-type]


def test_a_workspace_learns_its_projection_when_it_has_enough_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reduce_dim=32 of the histogram's 512: whole vectors until 8 x 32 are stored, then a migration at save."""
    scenes = _scenes(6)  # 128 chunks each
    with _open(tmp_path / "ws", reduce_dim=32) as cs:
        cs.index(scenes[:1])
        info = cs.info()
        assert info["reduce_dim"] == 32 and info["index_reduce_dim"] is None and info["index_structure"] == "Flat"
        cs.index(scenes[1:])
        assert cs.info()["index_reduce_dim"] == 32 and cs.chunk_index.energy_kept > 0.5  # type: ignore[union-attr]
        assert [cs.search(scenes[i][1], top_k=1)[0].parent_id for i in (0, 3, 5)] == ["p0", "p3", "p5"]
        cs.delete("p3")
        assert cs.verify().ok
        assert not cs.chunk_index.scores_exact  # type: ignore[union-attr]
        projected = [cs.search(scenes[i][1].rotate(90), top_k=3) for i in (0, 2, 4)]
    with _open(tmp_path / "whole") as cs:  # the same parents, vectors kept whole
        cs.index([s for s in scenes if s[0] != "p3"])
        assert cs.info()["index_reduce_dim"] is None
        whole = [cs.search(scenes[i][1].rotate(90), top_k=3) for i in (0, 2, 4)]
    for a, b in zip(projected, whole, strict=True):  # hits re-scored with the stored vectors: exact cosines
        assert a[0].parent_id == b[0].parent_id
        exact = {m.parent_id: m.score for m in b}
        common = [m for m in a if m.parent_id in exact]  # the projection may find other candidates lower down
        assert len(common) >= 2
        np.testing.assert_allclose([m.score for m in common], [exact[m.parent_id] for m in common], atol=1e-5)
    assert json.loads((tmp_path / "ws" / "workspace.json").read_text())["reduce_dim"] == 32
    with _open(tmp_path / "ws", readonly=True) as cs:  # the saved projection, not a rebuild
        assert cs.info()["index_reduce_dim"] == 32 and cs.verify().ok
        assert cs.search(scenes[5][1], top_k=2)[0].parent_id == "p5"
    with pytest.raises(ConfigurationError, match="keeps vectors projected to 32; reduce_dim=64 only applies to new"):
        _open(tmp_path / "ws", reduce_dim=64)
    with pytest.raises(ConfigurationError, match="keeps whole vectors; reduce_dim=32 only applies to new"):
        _open(tmp_path / "whole", reduce_dim=32)
    (tmp_path / "ws" / "chunks.index").unlink()
    with _open(tmp_path / "ws") as cs:  # rebuilt from the store's whole vectors, the projection learned again
        assert cs.info()["index_reduce_dim"] == 32 and cs.verify().ok


def test_bad_reduce_dims_are_refused_before_a_workspace_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="less than the vectors' dimension"):
        _open(tmp_path / "a", reduce_dim=512)  # the histogram's own 512
    with pytest.raises(ConfigurationError, match="only applies to index_factory='auto'"):
        _open(tmp_path / "b", reduce_dim=32, index_factory="Flat")
    with pytest.raises(ConfigurationError, match="positive int"):
        _open(tmp_path / "c", reduce_dim="32")
    for name in ("a", "b", "c"):
        assert not (tmp_path / name / "workspace.json").exists()
