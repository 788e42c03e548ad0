"""MilvusChunkIndex against Milvus Lite: the ChunkIndex contract, grouped search, generations; factory strings."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossscale.errors import ChunkIndexError, ConfigurationError, MissingDependencyError, VectorError
from crossscale.index import ChunkIndex, MilvusTarget, is_milvus_factory, parse_milvus_factory
from crossscale.types import SearchParams

# ------------------------------------------------------------------ factory strings (no pymilvus needed)


@pytest.mark.parametrize(
    ("factory", "uri", "collection", "lite"),
    [
        ("milvus", "milvus.db", None, True),
        ("milvus:chunks.db", "chunks.db", None, True),
        ("milvus:/data/x.db#mine", "/data/x.db", "mine", True),
        ("milvus#mine", "milvus.db", "mine", True),
        ("milvus://10.0.0.5:19530", "http://10.0.0.5:19530", None, False),
        ("milvus:https://host:443#_c2", "https://host:443", "_c2", False),
    ],
)
def test_factory_strings_name_a_target(factory: str, uri: str, collection: str | None, lite: bool) -> None:
    target = parse_milvus_factory(factory)
    assert (target.uri, target.collection, target.is_lite) == (uri, collection, lite)
    named = target.named()
    assert named.collection is not None and (collection is None or named.collection == collection)
    assert parse_milvus_factory(named.factory) == named  # the canonical form reads back the same
    assert target.named().collection != target.named().collection or collection is not None  # fresh names


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("milvus:", "empty Milvus URI"),
        ("milvus:ftp://host", "unsupported Milvus URI scheme"),
        ("milvus:chunks.sqlite", "must end in .db"),
        ("milvus#9bad", "collection name '9bad'"),
        ("Flat", "not a Milvus index factory"),
    ],
)
def test_bad_factory_strings_are_named(factory: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_milvus_factory(factory)


def test_milvus_factories_are_told_from_faiss_ones() -> None:
    assert is_milvus_factory("milvus") and is_milvus_factory("milvus://h:1") and is_milvus_factory("milvus:a.db")
    assert not any(is_milvus_factory(f) for f in ("Flat", "auto", "milvusX", "IVF16,Flat", None, 3))


def test_lite_paths_are_inside_the_workspace_servers_as_given(tmp_path: Path) -> None:
    assert MilvusTarget("milvus.db", "c").connect_uri(tmp_path) == str(tmp_path / "milvus.db")
    assert MilvusTarget("/abs/x.db", "c").connect_uri(tmp_path) == "/abs/x.db"
    assert MilvusTarget("http://h:19530", "c").connect_uri(tmp_path) == "http://h:19530"


def test_a_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_pymilvus(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pymilvus" or name.startswith("pymilvus."):
            raise ImportError("No module named 'pymilvus'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pymilvus", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_pymilvus)
    from crossscale.index.milvus import MilvusChunkIndex

    with pytest.raises(MissingDependencyError, match=r'pip install "crossscale\[milvus\]"'):
        MilvusChunkIndex(8, "/nowhere/x.db", "c")


# ------------------------------------------------------------------ against Milvus Lite
pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")

from crossscale.index import MilvusChunkIndex  # noqa: E402


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def lite(tmp_path: Path) -> Any:
    index = MilvusChunkIndex(16, str(tmp_path / "m.db"), "chunks")
    yield index
    index.close()


def test_search_equals_faiss_flat_with_padding_and_64_bit_ids(lite: MilvusChunkIndex, rng: np.random.Generator) -> None:
    x, q = _unit(rng, 300, 16), _unit(rng, 5, 16)
    ids = rng.permutation(100_000)[:300].astype(np.int64) + 2**40
    flat = ChunkIndex(16, device="cpu")
    flat.add(x, ids)
    lite.add(x * 2.0, ids, groups=[f"p{i % 30}" for i in range(300)])  # normalised on the way in
    for k in (1, 10, 299):
        want_s, want_i = flat.search(q, k)
        got_s, got_i = lite.search(q * 0.5, k)
        assert (got_i == want_i).all()
        np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    s, i = lite.search(q, 400)  # more than it holds: padded as faiss pads
    assert (i[:, 300:] == -1).all() and np.isneginf(s[:, 300:]).all() and (i[:, :300] >= 0).all()
    assert len(lite) == 300 and (lite.ids() == np.sort(ids)).all()


def test_search_settings_are_taken_and_change_nothing(lite: MilvusChunkIndex, rng: np.random.Generator) -> None:
    """A search with ``params`` (as the facade passes them) works on Milvus' exact FLAT index, with the same hits."""
    x, q = _unit(rng, 200, 16), _unit(rng, 5, 16)
    lite.add(x, np.arange(200, dtype=np.int64), groups=[f"p{i % 20}" for i in range(200)])
    want = lite.search(q, 10)
    got = lite.search(q, 10, params=SearchParams(nprobe=1, ef_search=4))
    assert (got[1] == want[1]).all() and (got[0] == want[0]).all()
    assert lite.search_settings == SearchParams()
    with pytest.raises(ConfigurationError, match="params must be a crossscale"):
        lite.search(q, 10, params="nprobe=1")  # type: ignore[arg-type]


def test_grouped_search_gives_the_best_parents_by_their_best_chunk(
    lite: MilvusChunkIndex, rng: np.random.Generator
) -> None:
    x = _unit(rng, 600, 16)
    parents = np.repeat(np.arange(60), 10)
    lite.add(x, np.arange(600), groups=[f"p{p}" for p in parents])
    q = _unit(rng, 4, 16)
    scores, ids = lite.search_grouped(q, 5, 3)
    assert scores.shape == ids.shape == (4, 15)
    exact = q @ x.T
    for row in range(4):
        best = np.full(60, -np.inf)
        np.maximum.at(best, parents, exact[row])
        got = ids[row][ids[row] >= 0]
        got_parents = {int(parents[i]) for i in got}
        assert got_parents <= set(np.argsort(-best)[:5].tolist())  # never a parent outside the true top 5
        assert int(np.argmax(best)) in got_parents
        assert (np.diff(scores[row][ids[row] >= 0]) <= 1e-6).all()  # flattened best first
        for p in got_parents:  # each parent's best chunk is among what it brought
            assert int(np.argmax(np.where(parents == p, exact[row], -np.inf))) in got


def test_upserts_are_idempotent_and_remove_counts_what_it_removed(
    lite: MilvusChunkIndex, rng: np.random.Generator
) -> None:
    x = _unit(rng, 20, 16)
    lite.add(x, np.arange(20), groups=["a"] * 20)
    lite.add(x[:5], np.arange(5), groups=["a"] * 5)  # a replayed change
    assert len(lite) == 20
    assert lite.remove([1, 2, 3, 999]) == 3 and lite.remove([]) == 0
    assert len(lite) == 17 and 2 not in set(lite.ids().tolist())


def test_bad_inputs_are_refused_by_name(lite: MilvusChunkIndex, rng: np.random.Generator) -> None:
    x = _unit(rng, 3, 16)
    with pytest.raises(VectorError, match=r"shape \(n, 16\)"):
        lite.add(_unit(rng, 3, 8), [1, 2, 3], groups=["a"] * 3)
    with pytest.raises(VectorError, match="NaN"):
        lite.search(np.full((1, 16), np.nan), 3)
    with pytest.raises(ConfigurationError, match="needs groups="):
        lite.add(x, [1, 2, 3])
    with pytest.raises(ConfigurationError, match="each of the 3 vectors"):
        lite.add(x, [1, 2, 3], groups=["a"])
    with pytest.raises(ConfigurationError, match="non-empty str"):
        lite.add(x, [1, 2, 3], groups=["a", "", "b"])
    with pytest.raises(ConfigurationError, match="unique"):
        lite.add(x, [1, 1, 3], groups=["a"] * 3)
    with pytest.raises(ConfigurationError, match="k must be"):
        lite.search(x, 0)
    assert len(lite) == 0  # nothing half-written


def test_the_collection_persists_with_its_generation_and_reset_forgets_both(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    index = MilvusChunkIndex(16, str(tmp_path / "m.db"), "chunks")
    assert index.committed_generation() == -1
    index.add(_unit(rng, 7, 16), np.arange(7), groups=["a"] * 7)
    index.commit(12)
    index.close()
    index.close()  # idempotent
    with pytest.raises(ChunkIndexError, match="closed"):
        index.search(_unit(rng, 1, 16), 1)
    again = MilvusChunkIndex(16, str(tmp_path / "m.db"), "chunks")
    assert len(again) == 7 and again.committed_generation() == 12
    assert again.search(_unit(rng, 1, 16), 3)[1].min() >= 0  # loaded, searchable
    again.reset()
    assert len(again) == 0 and again.committed_generation() == -1
    again.close()


def test_another_dimension_or_foreign_collection_is_refused(tmp_path: Path) -> None:
    MilvusChunkIndex(16, str(tmp_path / "m.db"), "chunks").close()
    with pytest.raises(ChunkIndexError, match="holds 16-d vectors, not 32-d"):
        MilvusChunkIndex(32, str(tmp_path / "m.db"), "chunks")
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(str(tmp_path / "m.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("emb", DataType.FLOAT_VECTOR, dim=16)
    client.create_collection("theirs", schema=schema)
    with pytest.raises(ChunkIndexError, match="not a crossscale chunk index"):
        MilvusChunkIndex(16, str(tmp_path / "m.db"), "theirs", client=client)
    schema = client.create_schema(auto_id=False)  # the right vector field, but no parent to group by
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=16)
    schema.add_field("note", DataType.VARCHAR, max_length=64)
    client.create_collection("almost", schema=schema)
    with pytest.raises(ChunkIndexError, match="not a crossscale chunk index"):
        MilvusChunkIndex(16, str(tmp_path / "m.db"), "almost", client=client)
    client.close()


def test_ids_are_read_in_ranges_however_sparse(lite: MilvusChunkIndex, rng: np.random.Generator) -> None:
    ids = np.array([0, 5, 2**20, 2**40 + 3, 2**62, 2**63 - 1], dtype=np.int64)
    lite.add(_unit(rng, len(ids), 16), ids, groups=["a"] * len(ids))
    assert (lite.ids() == ids).all()


def test_grouped_search_widens_its_window_when_a_parents_chunks_are_alike(
    lite: MilvusChunkIndex, rng: np.random.Generator
) -> None:
    centres = _unit(rng, 40, 16)
    x = np.repeat(centres, 50, axis=0) + 0.01 * rng.standard_normal((2000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    parents = np.repeat(np.arange(40), 50)
    lite.add(x, np.arange(2000), groups=[f"p{p}" for p in parents])
    q = _unit(rng, 3, 16)
    # Milvus Lite groups a fixed window of 3 * 5 * 2 nearest chunks: one parent's 50 alike chunks fill it
    assert any(len({p for _, _, p in hits}) < 5 for hits in lite._grouped(q, 5, 2))
    scores, ids = lite.search_grouped(q, 5, 2)
    exact = q @ x.T
    for row in range(3):
        best = np.full(40, -np.inf)
        np.maximum.at(best, parents, exact[row])
        got = parents[ids[row][ids[row] >= 0]]
        assert set(got.tolist()) == set(np.argsort(-best)[:5].tolist())
        assert np.bincount(got).max() <= 2  # trimmed back to group_size per parent
        assert (np.diff(scores[row][ids[row] >= 0]) <= 1e-6).all()
