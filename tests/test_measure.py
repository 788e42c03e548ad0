"""measure_search and the exhaustive search it compares with: exact parents by their best chunk, parent recall."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import crossscale.measure as measure
from crossscale import CrossScaleSearch, ParentRanker, SearchMeasurement, SearchParams
from crossscale.errors import CapabilityError, ConfigurationError, VectorError, WorkspaceError
from crossscale.measure import exact_parents, parent_recall
from crossscale.query import embed_queries
from crossscale.search import TUNING_RESCORE_PER_PARENT


class _Codes:
    """A ChunkParents over an array: chunk id ``i`` belongs to parent code ``of[i]`` (``-1``: none)."""

    def __init__(self, of: np.ndarray) -> None:
        self.of = of

    def parent_codes(self, chunk_ids: np.ndarray) -> np.ndarray:
        return self.of[np.asarray(chunk_ids, dtype=np.int64)]

    def parent_id(self, code: int) -> str:
        return f"p{code}"


def _brute(q: np.ndarray, x: np.ndarray, of: np.ndarray, top_k: int) -> list[list[int]]:
    """Each query's top_k parent codes by best cosine, best first, equal scores by code: one parent at a time."""
    out = []
    for row in q:
        best: dict[int, float] = {}
        for vector, code in zip(x, of, strict=True):
            if code >= 0:
                score = float(np.float32(vector @ row) / np.float32(np.linalg.norm(vector)))
                best[int(code)] = max(best.get(int(code), -np.inf), score)
        out.append([c for c, _ in sorted(best.items(), key=lambda t: (-t[1], t[0]))[:top_k]])
    return out


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    parents=st.integers(1, 40),
    queries=st.integers(1, 12),
    top_k=st.integers(1, 15),
    batch=st.integers(1, 120),
    runs=st.booleans(),
    group=st.integers(1, 5),
    hint=st.integers(0, 50),
)
def test_exact_parents_are_the_best_chunks_parents(
    seed: int, n: int, parents: int, queries: int, top_k: int, batch: int, runs: bool, group: int, hint: int
) -> None:
    """Against a parent-by-parent count: batches of any size (a parent split between them), ids in runs per
    parent (as a store assigns them) or not, vectors of no parent, queries in groups (a small memory budget),
    fewer parents than asked, a parent count that is too low (codes past it) or too high."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32) * rng.uniform(0.5, 2, (n, 1)).astype(np.float32)
    of = np.sort(rng.integers(0, parents, n)) if runs else rng.integers(0, parents, n)
    of[rng.random(n) < 0.1] = -1  # deleted meanwhile
    q = rng.standard_normal((queries, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    def stored() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, n, batch):
            yield np.arange(start, min(n, start + batch)), x[start : start + batch]

    budget = measure.BEST_BYTES
    measure.BEST_BYTES = 4 * max(1, hint) * group  # `group` queries at a time
    try:
        got = exact_parents(q, top_k, stored, _Codes(of), parent_count=hint)
    finally:
        measure.BEST_BYTES = budget
    want = _brute(q, x, of, top_k)
    assert got.shape == (queries, top_k)
    for row, expected in zip(got, want, strict=True):
        assert [int(c) for c in row if c >= 0] == expected  # distinct random scores: one right order
        assert (row[len(expected) :] == -1).all()


def test_equal_best_scores_are_ordered_by_parent() -> None:
    x = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    of = np.array([2, 0, 1, 3])

    def stored() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield np.arange(4), x

    got = exact_parents(np.array([[1, 0]], dtype=np.float32), 4, stored, _Codes(of), parent_count=4)
    assert got.tolist() == [[0, 2, 3, 1]]


def test_parent_recall() -> None:
    assert parent_recall([["a", "b"], ["c"]], [["a", "x"], ["c"]]) == pytest.approx(0.75)
    assert parent_recall([["a"], []], [["a"], []]) == 1.0  # a query with no exact parent is left out
    assert parent_recall([[]], [[]]) == 1.0


# ------------------------------------------------------------------ through a workspace
def _workspace(path: Path, photos: dict[str, Image.Image]) -> tuple[CrossScaleSearch, np.ndarray]:
    """Every photo indexed by colour histogram over tiles, in an IVF index of 4 lists (searched by 1 to 4); query
    vectors of crops of them."""
    cs = CrossScaleSearch.open(
        path,
        encoder="color-histogram",
        segmenter="whole+tiles",
        index_factory="IVF4,Flat",
        verifier=False,
        refine=False,
        progress=False,
        device="cpu",
    )
    names = sorted(photos)
    report = cs.index([(n, photos[n]) for n in names])
    assert report.ok
    crops = [photos[n].crop((20 + 9 * i, 30, 220, 180)) for i, n in enumerate(names)]
    return cs, np.stack([q.vector for q in embed_queries(cs.encoder, crops)])


def test_measure_search_finds_all_exact_parents_when_it_searches_every_list(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    """Every list searched: a search returns the exact parents (recall 1); one list of four: fewer. Each figure
    is the recall of what search_vectors returns under that setting; the index keeps its own settings."""
    cs, vectors = _workspace(tmp_path / "ws", photos)
    with cs:
        before = cs.chunk_index.search_settings
        every, one = SearchParams(nprobe=4), SearchParams(nprobe=1)
        got = cs.measure_search(vectors, [every, one, None], top_k=3, repeats=2, singles=3)
        assert [m.params for m in got] == [every, one, None]
        assert all(len(m.single_ms) == 3 and all(t > 0 for t in m.single_ms) for m in got)
        assert all(m.single_p50_ms == pytest.approx(float(np.median(m.single_ms))) for m in got)
        assert got[0].to_dict()["single_p95_ms"] == got[0].single_p95_ms
        assert all(isinstance(m, SearchMeasurement) and m.queries == len(vectors) for m in got)
        assert all(m.seconds > 0 and m.queries_per_second == pytest.approx(len(vectors) / m.seconds) for m in got)
        assert got[0].recall == 1.0
        assert got[1].recall < 1.0  # one list misses some: the measure can tell
        exact = [[m.parent_id for m in r] for r in cs.search_vectors(vectors, top_k=3, params=every)]
        for measured in got[1:]:
            found = [[m.parent_id for m in r] for r in cs.search_vectors(vectors, top_k=3, params=measured.params)]
            assert measured.recall == pytest.approx(parent_recall(found, exact))
        assert cs.chunk_index.search_settings == before


def test_measure_search_refuses_bad_input(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    cs, vectors = _workspace(tmp_path / "ws", dict(list(sorted(photos.items()))[:3]))
    with cs:
        with pytest.raises(VectorError, match="dimension"):
            cs.measure_search(vectors[:, :5])
        with pytest.raises(VectorError, match="NaN or inf"):
            cs.measure_search(np.where(np.arange(vectors.shape[1]) == 0, np.nan, vectors))
        with pytest.raises(ConfigurationError, match="settings must be a non-empty sequence"):
            cs.measure_search(vectors, [])
        with pytest.raises(ConfigurationError, match="settings must be a non-empty sequence"):
            cs.measure_search(vectors, SearchParams(nprobe=2))  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=r"settings\[1\] must be a crossscale\.types\.SearchParams"):
            cs.measure_search(vectors, [None, {"nprobe": 2}])  # type: ignore[list-item]
        with pytest.raises(ConfigurationError, match="top_k"):
            cs.measure_search(vectors, top_k=0)
        with pytest.raises(ConfigurationError, match="repeats"):
            cs.measure_search(vectors, repeats=0)
        with pytest.raises(ConfigurationError, match="singles must be an int >= 0"):
            cs.measure_search(vectors, singles=-1)
        assert cs.measure_search(vectors)[0].single_p50_ms is None  # none asked for
        cs.ranker = ParentRanker(aggregator="sum")
        with pytest.raises(CapabilityError, match="best chunk"):
            cs.measure_search(vectors)


# ------------------------------------------------------------------ tune_search
def _measured(params: SearchParams, recall: float, seconds: float) -> SearchMeasurement:
    return SearchMeasurement(params, recall, seconds, 100)


def test_tune_search_chooses_the_fastest_that_reaches_the_recall(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """From scripted measurements: the highest rate of those at or above ``min_recall`` (equal rates: the higher
    recall), whatever their order; none reaching it: no choice, and a warning with the best recall."""
    cs, vectors = _workspace(tmp_path / "ws", dict(list(sorted(photos.items()))[:3]))
    a, b, c, d = (SearchParams(nprobe=n) for n in (4, 3, 2, 1))
    script = [_measured(a, 1.0, 0.4), _measured(b, 0.95, 0.2), _measured(c, 0.97, 0.2), _measured(d, 0.9, 0.1)]
    asked: list[object] = []

    def measure_search(vectors: object, settings: list[SearchParams], **kw: object) -> list[SearchMeasurement]:
        asked.append(settings)
        return script

    monkeypatch.setattr(cs, "measure_search", measure_search)
    with cs:
        tuning = cs.tune_search(vectors, settings=[a, b, c, d])
        assert tuning.chosen is script[2] and tuning.params == c  # b is as fast, with less recall; d too low
        assert tuning.measurements == tuple(script) and tuning.min_recall == 0.95
        assert cs.tune_search(vectors, min_recall=0.9, settings=[a]).params == d
        assert cs.tune_search(vectors, min_recall=1.0, settings=[a]).params == a
        script.reverse()
        assert cs.tune_search(vectors, settings=[a]).params == c  # not the first or last of the fastest
        assert "no setting reached" not in caplog.text
        script[:] = [_measured(a, 0.5, 1.0), _measured(SearchParams(), 0.75, 2.0)]
        with caplog.at_level("WARNING", logger="crossscale.search"):
            none = cs.tune_search(vectors, settings=[a, None])
        assert none.chosen is None and none.params is None
        assert "no setting reached parent recall@10 0.950 (the best: 0.7500)" in caplog.text
        assert asked[-1] == [a, SearchParams()]  # "own" given as None is measured as SearchParams()
        assert none.to_dict()["chosen"] is None and len(tuning.to_dict()["measurements"]) == 4  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factory", "own", "want"),
    [
        ("IVF4,SQ8", "nprobe=4", ["own", "nprobe=3", "nprobe=2", "nprobe=1"]),
        ("IVF4,Flat", "nprobe=4", ["own", "nprobe=3", "nprobe=2", "nprobe=1"]),
        ("IVF4,SQ8", "nprobe=1", ["own"]),
        ("HNSW8", "efSearch=16", ["own", "ef_search=8", "ef_search=4"]),
        ("Flat", None, ["own"]),
    ],
)
def test_tune_search_tries_fewer_lists_and_rescoring_both_ways_by_default(
    tmp_path: Path,
    photos: dict[str, Image.Image],
    monkeypatch: pytest.MonkeyPatch,
    factory: str,
    own: str | None,
    want: list[str],
) -> None:
    """The default settings: the index's own, fewer lists (an IVF index) or a narrower beam (an HNSW graph), each
    with re-scoring turned the other way where the index's scores are approximate, and with each parent's first
    TUNING_RESCORE_PER_PARENT hits re-scored."""
    cs = CrossScaleSearch.open(
        tmp_path / "ws", encoder="color-histogram", segmenter="whole+tiles", index_factory=factory,
        verifier=False, refine=False, progress=False, device="cpu",
    )  # fmt: skip
    with cs:
        names = sorted(photos)[:3]
        cs.index([(n, photos[n]) for n in names])
        if own is not None:
            cs.chunk_index.set_search_params(own)
        asked: list[list[SearchParams]] = []
        monkeypatch.setattr(
            cs, "measure_search", lambda v, settings, **kw: asked.append(settings) or [_measured(settings[0], 1, 1)]
        )
        cs.tune_search(np.ones((1, cs.config.dim), np.float32))
        approximate = not cs.chunk_index.scores_exact
        per_parent = f"rescore=True rescore_per_parent={TUNING_RESCORE_PER_PARENT}"
        assert [p.describe() for p in asked[0]] == want + (
            [f"{w} rescore=False".removeprefix("own ") for w in want]
            + [f"{w} {per_parent}".removeprefix("own ") for w in want]
            if approximate
            else []
        )
        cs.rescore = False
        cs.tune_search(np.ones((1, cs.config.dim), np.float32))
        assert [p.rescore for p in asked[1]] == [None] * len(want) + ([True] * 2 * len(want) if approximate else [])


def test_tune_search_through_a_workspace(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    """A real run: every list and re-scoring reach recall 1; the choice is the fastest of the settings that did,
    its recall is what searches given its params return, and the index keeps its own settings."""
    cs = CrossScaleSearch.open(
        tmp_path / "ws", encoder="color-histogram", segmenter="whole+tiles", index_factory="IVF4,SQ8",
        verifier=False, refine=False, progress=False, device="cpu",
    )  # fmt: skip
    names = sorted(photos)
    with cs:
        cs.index([(n, photos[n]) for n in names])
        crops = [photos[n].crop((20 + 9 * i, 30, 220, 180)) for i, n in enumerate(names)]
        vectors = np.stack([q.vector for q in embed_queries(cs.encoder, crops)])
        cs.chunk_index.set_search_params("nprobe=4")
        tuning = cs.tune_search(vectors, min_recall=1.0, top_k=3, repeats=2)
        assert len(tuning.measurements) == 12 and tuning.measurements[0].recall == 1.0
        reached = [m for m in tuning.measurements if m.recall >= 1.0]
        assert tuning.chosen in reached
        assert tuning.chosen.queries_per_second == max(m.queries_per_second for m in reached)  # type: ignore[union-attr]
        exact = [[m.parent_id for m in r] for r in cs.search_vectors(vectors, top_k=3)]
        found = [[m.parent_id for m in r] for r in cs.search_vectors(vectors, top_k=3, params=tuning.params)]
        assert parent_recall(found, exact) == 1.0
        assert cs.chunk_index.search_settings.nprobe == 4 and cs.rescore


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -1, "0.9", True, float("nan")])
def test_tune_search_refuses_a_bad_min_recall(tmp_path: Path, photos: dict[str, Image.Image], bad: object) -> None:
    cs, vectors = _workspace(tmp_path / "ws", dict(list(sorted(photos.items()))[:2]))
    with cs, pytest.raises(ConfigurationError, match="min_recall must be"):
        cs.tune_search(vectors, min_recall=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- sample_vectors
def _stored(cs: CrossScaleSearch) -> tuple[np.ndarray, np.ndarray]:
    """Every stored (id, unit vector), in id order."""
    ids, vectors = zip(*cs.workspace.store.iter_vectors(), strict=True)
    rows = np.concatenate(vectors)
    return np.concatenate(ids), rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_sample_vectors_are_stored_regions_drawn_at_random(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unit rows of stored vectors, no chunk twice, in id order; repeatable with a seed; every region where fewer
    are stored; never a deleted parent's; and as queries each finds its own parent first."""
    cs, _ = _workspace(tmp_path / "ws", photos)
    with cs:
        ids, rows = _stored(cs)
        store, asked = cs.workspace.store, []
        read = store.vectors

        def spy(chunk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            asked.append(np.asarray(chunk_ids).copy())
            return read(chunk_ids)

        monkeypatch.setattr(store, "vectors", spy)
        sample = cs.sample_vectors(6, seed=3)
        picked = asked[-1]
        assert len(picked) == 6 and picked.tolist() == sorted(set(picked.tolist()))  # none twice, in id order
        assert set(picked.tolist()) <= set(ids.tolist())
        assert sample.shape == (6, cs.config.dim) and sample.dtype == np.float32
        assert np.allclose(sample, rows[np.searchsorted(ids, picked)], atol=1e-6)  # unit rows of those vectors
        assert np.array_equal(cs.sample_vectors(6, seed=3), sample)
        for _ in range(5):
            cs.sample_vectors(6)
        assert len({tuple(a.tolist()) for a in asked[-5:]}) > 1  # unseeded draws differ
        assert np.allclose(cs.sample_vectors(len(ids) + 5, seed=0), rows, atol=1e-6)  # all of them, in id order
        found = cs.search_vectors(sample, top_k=3, params=SearchParams(nprobe=4))
        owners = [cs.workspace.parents.parent_id(int(c)) for c in cs.workspace.parents.parent_codes(picked)]
        for result, owner in zip(found, owners, strict=True):  # first, or tied with the first (a region alike)
            assert result[0].score > 0.9999 and owner in {m.parent_id for m in result if m.score > 0.9999}
        gone = sorted(cs.parent_ids())[0]
        cs.delete(gone)
        left_ids, left = _stored(cs)
        assert len(left_ids) < len(ids)
        assert np.allclose(cs.sample_vectors(len(ids), seed=1), left, atol=1e-6)


def test_sample_vectors_leaves_out_zero_vectors_and_refuses_bad_input(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    empty = CrossScaleSearch.open(
        tmp_path / "empty", encoder="color-histogram", segmenter="whole", progress=False, device="cpu"
    )
    with empty, pytest.raises(WorkspaceError, match="nothing to sample"):
        empty.sample_vectors(3)
    cs, _ = _workspace(tmp_path / "ws", dict(list(sorted(photos.items()))[:2]))
    with cs:
        for bad in (0, -1, 1.5, True, "3"):
            with pytest.raises(ConfigurationError, match="count must be"):
                cs.sample_vectors(bad)  # type: ignore[arg-type]
        for bad in (-1, 1.5, "1"):
            with pytest.raises(ConfigurationError, match="seed must be"):
                cs.sample_vectors(3, seed=bad)  # type: ignore[arg-type]
        store = cs.workspace.store
        read = store.vectors

        def with_a_dead_region(chunk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            got, vectors = read(chunk_ids)
            vectors[1] = 0  # a region of a feature map's dead cells is stored as zeros
            return got, vectors

        monkeypatch.setattr(store, "vectors", with_a_dead_region)
        with caplog.at_level("INFO", logger="crossscale.search"):
            sample = cs.sample_vectors(4, seed=0)
        assert sample.shape == (3, cs.config.dim) and np.isfinite(sample).all()
        assert "1 sampled regions have all-zero vectors" in caplog.text


# ---------------------------------------------------------------------- a saved search setting
def test_a_saved_search_setting_is_what_later_searches_start_from(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved by the writer (over what it used), read by every later open, readers included; a call's params still
    override it field by field; None clears it."""
    from crossscale.index import ChunkIndex

    cs, vectors = _workspace(tmp_path / "ws", photos)
    with cs:
        assert cs.search_params == SearchParams()
        cs.search_params = SearchParams(rescore=False)  # this object only: not saved
        cs.save_search_params(SearchParams(nprobe=1))
        assert cs.search_params == SearchParams(nprobe=1, rescore=False)
        assert cs.info()["saved_search_params"]["structure"] == "IVF4,Flat"
    seen: list[object] = []
    search = ChunkIndex.search

    def spy(self: ChunkIndex, x: np.ndarray, k: int, *, params: SearchParams | None = None) -> object:
        seen.append(params)
        return search(self, x, k, params=params)

    monkeypatch.setattr(ChunkIndex, "search", spy)
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        assert reader.search_params == SearchParams(nprobe=1, rescore=False)

        def found(params: SearchParams | None) -> list[list[str]]:
            return [[m.parent_id for m in r] for r in reader.search_vectors(vectors, top_k=3, params=params)]

        one = found(None)
        assert seen[-1] == SearchParams(nprobe=1)  # the index gets the lists, never the facade's rescore
        every = found(SearchParams(nprobe=4))
        assert seen[-1] == SearchParams(nprobe=4)
        assert one != every  # one list of four misses parents: the saved setting was used
        assert found(SearchParams(nprobe=1)) == one
        with pytest.raises(WorkspaceError, match="read-only"):
            reader.save_search_params(SearchParams(nprobe=2))
    with CrossScaleSearch.open(tmp_path / "ws", progress=False) as writer:
        writer.save_search_params(None)
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        assert reader.search_params == SearchParams() and reader.info()["saved_search_params"] is None


def test_a_saved_search_setting_for_another_structure_is_not_used(
    tmp_path: Path, photos: dict[str, Image.Image], caplog: pytest.LogCaptureFixture
) -> None:
    """A setting tuned for one index structure says nothing about another (an "auto" index migrates to more
    lists): opening ignores it and says so; a bad stored value likewise."""
    from crossscale.workspace import SEARCH_PARAMS_KEY

    cs, _ = _workspace(tmp_path / "ws", dict(list(sorted(photos.items()))[:3]))
    with cs:
        cs.save_search_params(SearchParams(nprobe=2))
        stored = cs.store.get_info(SEARCH_PARAMS_KEY)
        cs.store.set_info(SEARCH_PARAMS_KEY, {**stored, "structure": "IVF16,Flat"})
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        assert reader.search_params == SearchParams()
    assert "is for a IVF16,Flat index, this one is IVF4,Flat" in caplog.text
    with CrossScaleSearch.open(tmp_path / "ws", progress=False) as writer:
        writer.store.set_info(SEARCH_PARAMS_KEY, {**stored, "nprobe": -3})
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        assert reader.search_params == SearchParams()
    assert "is unreadable" in caplog.text


def test_tune_search_starts_from_the_saved_setting_and_saving_its_choice_keeps_it_whole(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a setting saved, "own" is what searches use now: the grid's fewer lists are fewer than the saved
    ones, re-scoring is flipped from the saved choice, and saving a choice that leaves a field to "now" keeps it."""
    cs = CrossScaleSearch.open(
        tmp_path / "ws", encoder="color-histogram", segmenter="whole+tiles", index_factory="IVF8,SQ8",
        verifier=False, refine=False, progress=False, device="cpu",
    )  # fmt: skip
    with cs:
        cs.index([(n, photos[n]) for n in sorted(photos)[:3]])
        cs.save_search_params(SearchParams(nprobe=4, rescore=False))
        asked: list[list[SearchParams]] = []
        monkeypatch.setattr(
            cs, "measure_search", lambda v, settings, **kw: asked.append(settings) or [_measured(settings[1], 1, 1)]
        )
        tuning = cs.tune_search(np.ones((1, cs.config.dim), np.float32))
        assert [p.describe() for p in asked[0]] == [
            "own", "nprobe=3", "nprobe=2", "nprobe=1", "rescore=True", "nprobe=3 rescore=True",
            "nprobe=2 rescore=True", "nprobe=1 rescore=True", "rescore=True rescore_per_parent=2",
            "nprobe=3 rescore=True rescore_per_parent=2", "nprobe=2 rescore=True rescore_per_parent=2",
            "nprobe=1 rescore=True rescore_per_parent=2",
        ]  # fmt: skip
        cs.save_search_params(tuning.params)  # nprobe=3, its rescore left to what searches used: False
        assert cs.search_params == SearchParams(nprobe=3, rescore=False)


def test_a_saved_search_setting_follows_migrations_and_refresh(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In a running process: once the index has another structure (a migration), the saved setting stops being
    used; a reader sees a setting a writer saved after its open when it refreshes; one set on the object wins
    until it is set back to None."""
    cs, _ = _workspace(tmp_path / "ws", dict(list(sorted(photos.items()))[:3]))
    with cs, CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False) as reader:
        assert reader.search_params == SearchParams()
        cs.save_search_params(SearchParams(nprobe=2))
        assert reader.search_params == SearchParams()  # its snapshot: until it refreshes
        reader.refresh()
        assert reader.search_params == SearchParams(nprobe=2)
        reader.search_params = SearchParams(nprobe=3)
        assert reader.search_params == SearchParams(nprobe=3)
        reader.search_params = None
        assert reader.search_params == SearchParams(nprobe=2)
        with pytest.raises(ConfigurationError, match="search_params must be"):
            reader.search_params = {"nprobe": 2}  # type: ignore[assignment]
        assert cs.search_params == SearchParams(nprobe=2)
        monkeypatch.setattr(cs.workspace, "_structure", lambda: ("IVF64,Flat", None))  # as after a migration
        assert cs.search_params == SearchParams()
        assert "is for a IVF4,Flat index, this one is IVF64,Flat" in caplog.text
