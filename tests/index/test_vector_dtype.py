"""Vectors kept as float16: half the bytes, read back as float32, recorded in the store and the workspace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossscale import CrossScaleSearch
from crossscale.errors import ConfigurationError, WorkspaceMismatchError
from crossscale.index import RootStore
from crossscale.index.root_store import NewParent
from crossscale.types import Box, Chunk

DIM = 256


def _parents(n: int, per: int = 20, seed: int = 0) -> list[NewParent]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.standard_normal((per, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out.append(NewParent(f"p{i}", b"\x89PNG", "PNG", 8, 8, [Chunk(Box(0, 0, 8, 8), None, "tile")] * per, x))
    return out


def test_float16_vectors_read_back_as_float32_within_rounding(tmp_path: Path) -> None:
    parents = _parents(3)
    with RootStore(tmp_path / "s", dim=DIM, vector_dtype="float16") as store:
        ids = store.add_parents(parents)
        got_ids, got = store.vectors(ids[1])
        assert got.dtype == np.float32 and list(got_ids) == ids[1]
        np.testing.assert_allclose(got, parents[1].vectors, atol=1e-3)
        np.testing.assert_array_equal(got, store.as_stored(parents[1].vectors))  # the rounding is the stored one
        batches = list(store.iter_vectors())
        assert sum(len(i) for i, _ in batches) == 60 and all(v.dtype == np.float32 for _, v in batches)
        assert store.check() == []
    with RootStore(tmp_path / "s", dim=DIM) as again:  # recorded: no need to say it again
        assert again.vector_dtype == "float16"
        np.testing.assert_array_equal(again.vectors(ids[1])[1], got)
    with RootStore(tmp_path / "s", dim=DIM, readonly=True) as reader:
        assert reader.vector_dtype == "float16"


def test_float16_takes_about_half_the_bytes(tmp_path: Path) -> None:
    sizes = {}
    for dtype in ("float32", "float16"):
        with RootStore(tmp_path / dtype, dim=DIM, vector_dtype=dtype) as store:
            store.add_parents(_parents(100))  # 2,000 vectors: 2 MB as float32
            sizes[dtype] = store.disk_bytes()
    assert sizes["float16"] < 0.7 * sizes["float32"], sizes


def test_a_store_is_read_only_as_what_it_was_written(tmp_path: Path) -> None:
    with RootStore(tmp_path / "old", dim=DIM) as store:  # as before the option: float32, unrecorded
        store.add_parents(_parents(1))
    with pytest.raises(WorkspaceMismatchError, match="are float32"):
        RootStore(tmp_path / "old", dim=DIM, vector_dtype="float16")
    RootStore(tmp_path / "new", dim=DIM, vector_dtype="float16").close()
    with pytest.raises(WorkspaceMismatchError, match="are float16"):
        RootStore(tmp_path / "new", dim=DIM, vector_dtype="float32")
    with pytest.raises(ConfigurationError, match="vector_dtype must be one of"):
        RootStore(tmp_path / "bad", dim=DIM, vector_dtype="int8")


def test_a_float16_workspace_searches_the_vectors_it_stored(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    items = [(name, photos[name]) for name in ("coffee", "rocket", "astronaut")]
    opts = {"encoder": "color-histogram", "segmenter": "whole+tiles", "refine": False, "progress": False}
    with CrossScaleSearch.open(tmp_path / "ws", vector_dtype="float16", device="cpu", **opts) as cs:  # type: ignore[arg-type]
        cs.index(items)
        query = photos["rocket"].crop((100, 50, 300, 250))
        before = cs.search(query, top_k=3)
        cs.rebuild_index()  # from the stored float16 vectors: the same index as the one built while indexing
        after = cs.search(query, top_k=3)
        assert [(m.parent_id, m.score) for m in before] == [(m.parent_id, m.score) for m in after]
        assert before[0].parent_id == "rocket" and cs.verify().ok
        assert cs.info()["vector_dtype"] == "float16"
    doc = json.loads((tmp_path / "ws" / "workspace.json").read_text())
    assert doc["vector_dtype"] == "float16" and doc["format"] == 2
    with pytest.raises(ConfigurationError, match="only applies to new workspaces"):
        CrossScaleSearch.open(tmp_path / "ws", vector_dtype="float32", device="cpu", **opts)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="vector_dtype must be one of"):
        CrossScaleSearch.open(tmp_path / "ws2", vector_dtype="bf16", device="cpu", **opts)  # type: ignore[arg-type]


def test_every_float16_reads_back_as_numpy_widens_it(tmp_path: Path) -> None:
    """The store widens float16 with faiss' decoder, not numpy's ``astype``: the same bits for every finite
    float16 (subnormals and -0 included), whichever ids are asked, in any order, some missing."""
    bits = np.arange(2**16, dtype=np.uint16)
    finite = bits[np.isfinite(bits.view(np.float16))]
    rows = np.random.default_rng(1).permutation(finite)[: len(finite) // DIM * DIM].view(np.float16).reshape(-1, DIM)
    chunks = [Chunk(Box(0, 0, 8, 8), None, "tile")] * len(rows)
    with RootStore(tmp_path / "s", dim=DIM, vector_dtype="float16") as store:
        (ids,) = [
            list(i)
            for i in store.add_parents([NewParent("p", b"\x89PNG", "PNG", 8, 8, chunks, rows.astype(np.float32))])
        ]
        asked = np.array([ids[5], 10**9, ids[0], *ids[200:], 2**56], dtype=np.int64)  # ids 2**56 / 256n: zero bytes
        got_ids, got = store.vectors(asked)
        np.testing.assert_array_equal(got_ids, [ids[5], ids[0], *ids[200:]])
        want = rows[[5, 0, *range(200, len(rows))]].astype(np.float32)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        (_, whole), *_ = store.iter_vectors()
        np.testing.assert_array_equal(whole.view(np.uint32), rows.astype(np.float32).view(np.uint32))
