"""A hypothesis state machine over one ChunkIndex per structure: add / add a removed id again / remove / search /
save and load, checked against a model of the live vectors after every step."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from crossscale.errors import ConfigurationError
from crossscale.index import ChunkIndex, _list_scan

DIM = 8

#: (factory, reduce_dim, search setting, how exact its scores are: "exact" (the k best of the live vectors, found
#: exhaustively), a tolerance on each returned score against the vector's exact cosine, or None (projected: the
#: scores are of the projection))
STRUCTURES = [
    ("Flat", None, None, "exact"),
    ("IVF4,Flat", None, "nprobe=4", "exact"),  # every list probed
    ("IVF4,SQ8", None, "nprobe=4", 0.1),  # 8-bit codes (a vector past the trained range is clipped)
    ("HNSW8", None, "efSearch=64", 1e-5),  # removes by tombstones
    ("HNSW8,Refine(Flat)", None, "efSearch=64", 1e-5),  # tombstones are positions under the refinement
    ("Flat", 4, None, None),  # crossscale's projection
]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class ChunkIndexMachine(RuleBasedStateMachine):
    """One structure's index against ``model`` (id -> unit vector); ``removed`` the ids taken out."""

    factory: str = "Flat"
    reduce_dim: int | None = None
    setting: str | None = None
    exactness: str | float | None = "exact"

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(0)
        self.dir = Path(tempfile.mkdtemp(prefix="crossscale-index-stateful-"))
        self.index = ChunkIndex(DIM, self.factory, reduce_dim=self.reduce_dim, device="cpu")
        if not self.index.is_trained:
            self.index.train(_unit(self.rng, 2000))
        if self.setting:
            self.index.set_search_params(self.setting)
        self.model: dict[int, np.ndarray] = {}
        self.removed: set[int] = set()
        self.next_id = 10**12  # 64-bit ids, not positions
        self.saves = 0

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def keeps_removed(self) -> bool:
        return self.factory.startswith("HNSW")

    @rule(count=st.integers(1, 40), seed=st.integers(0, 2**16))
    def add(self, count: int, seed: int) -> None:
        x = _unit(np.random.default_rng(seed), count)
        ids = np.arange(self.next_id, self.next_id + count, dtype=np.int64)
        self.next_id += count + int(np.random.default_rng(seed).integers(0, 3))  # gaps between calls
        self.index.add(x, ids)
        self.model.update(zip(ids.tolist(), x, strict=True))

    @rule(data=st.data(), seed=st.integers(0, 2**16))
    def add_a_removed_id_again(self, data: st.DataObject, seed: int) -> None:
        if not self.removed:
            return
        again = data.draw(st.sampled_from(sorted(self.removed)))
        x = _unit(np.random.default_rng(seed), 2)
        ids = np.array([self.next_id, again], dtype=np.int64)
        if self.keeps_removed:
            version = self.index.version
            with pytest.raises(ConfigurationError, match=str(again)):
                self.index.add(x, ids)
            assert self.index.version == version  # nothing taken, the new id either
            return
        self.next_id += 1
        self.index.add(x, ids)
        self.model.update(zip(ids.tolist(), x, strict=True))
        self.removed.discard(again)

    @rule(data=st.data(), unknown=st.booleans())
    def remove(self, data: st.DataObject, unknown: bool) -> None:
        live = sorted(self.model)
        picked = data.draw(st.lists(st.sampled_from(live), max_size=10, unique=True)) if live else []
        asked = picked + ([self.next_id + 5] if unknown else [])  # an id never added is ignored
        assert self.index.remove(asked) == len(picked)
        for i in picked:
            del self.model[i]
        self.removed.update(picked)

    @rule(k=st.integers(1, 30), queries=st.integers(1, 6), seed=st.integers(0, 2**16))
    def search(self, k: int, queries: int, seed: int) -> None:
        q = _unit(np.random.default_rng(seed), queries)
        self._check(q, k, *self.index.search(q, k))

    @rule(k=st.integers(1, 30), queries=st.integers(2, 40), seed=st.integers(0, 2**16))
    def search_list_by_list(self, k: int, queries: int, seed: int) -> None:
        """A batch through the list scan (:mod:`crossscale.index._list_scan`), which a batch this small would not
        pay for: told it does."""
        if not self.factory.startswith("IVF") or not self.model:
            return
        q = _unit(np.random.default_rng(seed), queries)
        scanned = []
        part = _list_scan.ListScan._search_part

        def spied(scan: Any, *args: Any) -> Any:
            scanned.append(True)
            return part(scan, *args)

        with (
            mock.patch.object(_list_scan, "pays", return_value=True),
            mock.patch.object(_list_scan.ListScan, "_search_part", spied),
        ):
            found = self.index.search(q, k)
        assert scanned, "the list scan was not used"
        self._check(q, k, *found)

    def _check(self, q: np.ndarray, k: int, scores: np.ndarray, ids: np.ndarray) -> None:
        """A search's result for queries ``q`` against the model of the live vectors."""
        assert scores.shape == ids.shape == (len(q), k)
        live = np.array(sorted(self.model), dtype=np.int64)
        for row_scores, row_ids, query in zip(scores, ids, q, strict=True):
            found = row_ids[row_ids >= 0]
            assert (row_ids[: len(found)] >= 0).all(), "padding only at the end"
            assert np.isneginf(row_scores[len(found) :]).all()
            assert len(set(found.tolist())) == len(found), "an id twice in one row"
            assert np.isin(found, live).all(), "a removed or unknown id returned"
            assert (np.diff(row_scores[: len(found)]) <= 1e-6).all(), "best first"
            if self.exactness is None:
                continue
            exact = np.array([self.model[int(i)] @ query for i in found], dtype=np.float32)
            if self.exactness == "exact":
                assert len(found) == min(k, len(live))
                best = np.sort(np.array([v @ query for v in self.model.values()], np.float32))[::-1][: len(found)]
                np.testing.assert_allclose(row_scores[: len(found)], best, atol=1e-5)
                np.testing.assert_allclose(row_scores[: len(found)], exact, atol=1e-5)
            else:
                np.testing.assert_allclose(row_scores[: len(found)], exact, atol=float(self.exactness))

    @rule(seed=st.integers(0, 2**16))
    def save_and_load(self, seed: int) -> None:
        path = self.dir / f"i{self.saves}.idx"
        self.saves += 1
        q = _unit(np.random.default_rng(seed), 3)
        before = self.index.search(q, 10)
        self.index.save(path)
        self.index, _ = ChunkIndex.load(path, device="cpu")
        after = self.index.search(q, 10)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_allclose(after[0], before[0], atol=1e-6)

    @invariant()
    def holds_the_live_vectors(self) -> None:
        assert len(self.index) == len(self.model)
        np.testing.assert_array_equal(self.index.ids(), np.array(sorted(self.model), dtype=np.int64))
        if not self.keeps_removed:
            assert self.index.tombstone_count == 0


def _machine(factory: str, reduce_dim: int | None, setting: str | None, exactness: str | float | None) -> type:
    name = f"Machine_{factory}_{reduce_dim}"
    attrs = {"factory": factory, "reduce_dim": reduce_dim, "setting": setting, "exactness": exactness}
    return type(name, (ChunkIndexMachine,), attrs)


@pytest.mark.parametrize(
    ("factory", "reduce_dim", "setting", "exactness"), STRUCTURES, ids=[f"{f}-{r}" for f, r, _, _ in STRUCTURES]
)
def test_a_chunk_index_holds_what_was_added_and_not_removed(
    factory: str, reduce_dim: int | None, setting: str | None, exactness: str | float | None
) -> None:
    machine = _machine(factory, reduce_dim, setting, exactness)
    test = machine.TestCase
    test.settings = settings(
        max_examples=25, stateful_step_count=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    test().runTest()
