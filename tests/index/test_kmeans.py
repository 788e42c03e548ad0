from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from crossscale.index import ChunkIndex, _kmeans
from crossscale.index._kmeans import TWO_LEVEL_MIN_LISTS, two_level_centroids


def _clustered(rng: np.random.Generator, n: int, d: int, clusters: int, spread: float = 0.3) -> np.ndarray:
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    unit: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit


def _mean_best_cosine(x: np.ndarray, centroids: np.ndarray) -> float:
    return float((x @ centroids.T).max(axis=1).mean())


def test_two_levels_make_exactly_the_lists_asked_for_as_unit_rows_deterministically(
    rng: np.random.Generator,
) -> None:
    x = _clustered(rng, 6000, 16, 40)
    first = two_level_centroids(x, 300)
    assert first.shape == (300, 16) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-4)
    assert np.array_equal(first, two_level_centroids(x, 300))


def test_two_levels_fit_the_data_about_as_well_as_flat_kmeans(rng: np.random.Generator) -> None:
    """The point of the two levels is speed: they must not give a much worse clustering than one level."""
    x = _clustered(rng, 20_000, 24, 200)
    flat = faiss.Kmeans(24, 400, niter=10, spherical=True, seed=1234)
    flat.train(x)
    two = _mean_best_cosine(x, two_level_centroids(x, 400))
    one = _mean_best_cosine(x, np.asarray(flat.centroids))
    assert two >= one - 0.01, (two, one)
    assert two > _mean_best_cosine(x, x[rng.choice(len(x), 400, replace=False)]) + 0.01  # better than sampling


@pytest.mark.parametrize("lists", [5, 64])
def test_as_many_points_as_lists_or_one_group_still_gives_every_list(rng: np.random.Generator, lists: int) -> None:
    x = _clustered(rng, lists, 8, 3)
    centroids = two_level_centroids(x, lists)
    assert centroids.shape == (lists, 8)
    assert np.allclose(np.sort((x @ centroids.T).max(axis=1)), 1.0, atol=1e-4)  # each point is a centroid


def test_fewer_points_than_lists_is_refused(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="at least as many points"):
        two_level_centroids(_clustered(rng, 10, 8, 2), 11)


@pytest.mark.parametrize(
    ("prefix", "suffix", "reduce_dim", "dim"),
    [
        ("", "", None, 16),
        ("", "", 8, 8),
        ("RR16,", "", None, 16),  # an explicit factory's transform (a random rotation) before the IVF
        ("OPQ4_16,", ",RFlat", None, 16),  # and a refinement, kept behind an id map
    ],
    ids=["ivf", "projected", "rotated", "opq-refined"],
)
def test_a_large_ivf_is_trained_in_two_levels_and_finds_its_vectors(
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    prefix: str,
    suffix: str,
    reduce_dim: int | None,
    dim: int,
) -> None:
    lists = TWO_LEVEL_MIN_LISTS
    shapes: list[tuple[int, ...]] = []
    real = _kmeans.two_level_centroids

    def spy(x: np.ndarray, n: int) -> np.ndarray:
        shapes.append(x.shape)
        return real(x, n)

    monkeypatch.setattr("crossscale.index.chunk_index.two_level_centroids", spy)
    x = _clustered(rng, 2 * lists, 16, 64)
    index = ChunkIndex(16, f"{prefix}IVF{lists},Flat{suffix}", reduce_dim=reduce_dim, device="cpu")
    with caplog.at_level(logging.INFO, logger="crossscale.index.chunk_index"):
        index.add(x, np.arange(len(x)))
    assert shapes == [(len(x), dim)]  # the centroids live where the IVF does: after the projection
    assert "in two levels" in caplog.text
    assert index.is_trained and len(index) == len(x)
    index.set_search_params("nprobe=8")
    assert (index.search(x[:50], 1)[1][:, 0] == np.arange(50)).mean() >= 0.9


def test_smaller_ivfs_and_other_structures_are_left_to_faiss(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(x: np.ndarray, n: int) -> np.ndarray:
        raise AssertionError("two levels used")

    monkeypatch.setattr("crossscale.index.chunk_index.two_level_centroids", refuse)
    x = _clustered(rng, 3000, 8, 20)
    for factory in (f"IVF{TWO_LEVEL_MIN_LISTS // 64},Flat", "HNSW16", "Flat", "PQ4"):
        index = ChunkIndex(8, factory, device="cpu")
        index.add(x, np.arange(len(x)))
        assert len(index) == len(x)


def test_a_large_ivf_with_too_few_vectors_gets_faiss_reason_as_a_clear_error(rng: np.random.Generator) -> None:
    from crossscale.errors import ChunkIndexError

    index = ChunkIndex(8, f"IVF{TWO_LEVEL_MIN_LISTS},Flat", device="cpu")
    with pytest.raises(ChunkIndexError, match="training"):
        index.add(_clustered(rng, 100, 8, 4), np.arange(100))
