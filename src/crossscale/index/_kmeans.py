"""Two-level k-means for the coarse centroids of a large IVF index.

Flat k-means costs ``points x lists`` distance computations per iteration: for 16,384 lists trained on 1M
vectors of 256-d, ~5 minutes on 2 cores, most of a 10M workspace's last migration. Clustering first into
``sqrt(lists)`` groups, then each group into its share of the lists (in proportion to its points), costs about
``2 x points x sqrt(lists)`` instead, ~1/60 of it at 16,384 lists (measured: the centroids in 9 s). This is
faiss' ``contrib.clustering.two_level_clustering``, spherical (cosine, for unit vectors) where faiss' helper
handles L2 only. On the project's alike region vectors it gave the same parent recall and list balance as flat
k-means (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TWO_LEVEL_MIN_LISTS", "two_level_centroids"]

#: IVF lists from which :class:`~crossscale.index.ChunkIndex` trains its centroids in two levels: flat k-means
#: took 21 s for 4,096 lists on 262k vectors, two levels 3 s, with the same recall (docs/benchmarks.md)
TWO_LEVEL_MIN_LISTS = 4096
#: k-means iterations at each level (faiss' default for IVF training)
NITER = 10
_SEED = 1234


def _kmeans(x: np.ndarray, k: int, seed: int, max_points_per_centroid: int = 256) -> np.ndarray:
    """``k`` spherical k-means centroids of the unit rows ``x`` (``len(x) > k``)."""
    import faiss

    km: object = faiss.Kmeans(
        x.shape[1],
        k,
        niter=NITER,
        spherical=True,
        seed=seed,
        min_points_per_centroid=1,  # groups of a few points per centroid are expected at the second level
        max_points_per_centroid=max_points_per_centroid,
    )
    km.train(x)  # type: ignore[attr-defined]
    return np.asarray(km.centroids, dtype=np.float32)  # type: ignore[attr-defined]


def two_level_centroids(x: np.ndarray, lists: int) -> np.ndarray:
    """``lists`` unit centroids of the unit float32 rows ``x`` (at least ``lists`` of them), by two-level
    spherical k-means; deterministic for a given ``x``."""
    import faiss

    n = len(x)
    if n < lists:
        raise ValueError(f"{lists} centroids need at least as many points, got {n}")
    groups = max(1, round(math.sqrt(lists)))
    coarse: object = faiss.IndexFlatIP(x.shape[1])
    coarse.add(_kmeans(x, groups, _SEED, max_points_per_centroid=2000))  # type: ignore[attr-defined]
    group_of = coarse.search(x, 1)[1].ravel()  # type: ignore[attr-defined]
    sizes = np.bincount(group_of, minlength=groups)
    # each group's share of the lists, in proportion to its points; never more lists than points, since
    # n >= lists makes every share at most ceil(points * lists / n) <= points
    bounds = np.cumsum(sizes) * lists // n
    shares = np.diff(bounds, prepend=0)
    order = np.argsort(group_of, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for g in range(groups):
        share = int(shares[g])
        if share == 0:
            continue
        members = x[order[starts[g] : starts[g + 1]]]
        if len(members) == share:  # one point per list: the points are the centroids
            parts.append(members)
        elif share == 1:
            mean = members.mean(axis=0)
            parts.append((mean / max(float(np.linalg.norm(mean)), 1e-12))[None, :])
        else:
            parts.append(_kmeans(members, share, _SEED + 1 + g))
    return np.ascontiguousarray(np.vstack(parts), dtype=np.float32)  # the shares sum to ``lists``
