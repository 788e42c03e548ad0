"""A flat index's search whose scores do not depend on the batch.

faiss scores a batch against a flat index with one BLAS matrix product. How that product rounds a (query, vector)
pair depends on the BLAS' kernels, and on some CPUs on the shape around the pair: on an AMD EPYC (OpenBLAS' Zen
kernels, 2026-12-06) a query of 8-64 dimensions scored a last bit differently alone than in a batch of 7, and two
copies of one vector a last bit apart when one sat in the last, partial block of the matrix. On the Intel machines
before it the same searches agreed bit for bit. The query path relies on a query scoring the same in any batch and
copies scoring the same (a deeper search of the queries a batch left is a smaller batch; ties are ordered by id).

So the candidates come from faiss' BLAS search as before, a few more than asked, and are scored again pair by pair
with faiss' own per-pair kernel (``compute_distance_subset``, the one its single-query path and IVF-Flat lists use),
which reads only the two vectors. Where the ``k``-th score is not clear of what the candidates left out could score
(within the two computations' rounding, :func:`rounding_bound`) the row is searched again, deeper. The result is
the ``k`` best by the per-pair scores, ties by id: the same for a query alone or in any batch.

Supported: ``IndexFlat`` / ``IndexFlatIP`` (inner product) inside an ``IndexIDMap``, behind an optional projection,
on the CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FlatSearch", "rounding_bound"]


def rounding_bound(dim: int) -> float:
    """How far two float32 sums of the ``dim`` products of unit vectors' coordinates can lie apart, whatever their
    order: each is within ``dim * 2**-24`` of the exact value (``sum |q_i x_i| <= 1``, Cauchy-Schwarz), so twice
    that, with a margin for the bound's second-order term."""
    return 2.0 * 1.01 * dim * 2.0**-24


class FlatSearch:
    """A CPU flat index's search with pair-by-pair scores (a view: the index must outlive it). Use :meth:`of`,
    which returns ``None`` for other structures."""

    def __init__(self, flat: Any, id_map: Any, transforms: list[Any]) -> None:
        self._flat = flat
        self._id_map = id_map
        self._transforms = transforms
        self._bound = rounding_bound(int(flat.d))

    @classmethod
    def of(cls, index: Any) -> FlatSearch | None:
        """The searcher for ``index`` (an owning faiss index as :class:`~crossscale.index.ChunkIndex` builds it),
        or ``None`` if it is not an inner-product ``IndexFlat`` in an ``IndexIDMap``."""
        import faiss

        from crossscale.index._list_scan import behind_transforms

        outer, transforms = behind_transforms(index)
        if not isinstance(outer, faiss.IndexIDMap):
            return None
        flat: Any = faiss.downcast_index(outer.index)
        if not isinstance(flat, faiss.IndexFlat) or flat.metric_type != faiss.METRIC_INNER_PRODUCT:
            return None
        return cls(flat, outer.id_map, transforms)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best hits of each (unit, float32) query row: ``(scores, ids)`` of shape ``(n, min(k, size))``,
        best first, equal scores by id; every score is the pair's own, whatever else the batch holds."""
        import faiss

        x = q
        for transform in self._transforms:  # as IndexPreTransform applies its chain
            x = transform.apply(x)
        x = np.ascontiguousarray(x, dtype=np.float32)
        total = int(self._flat.ntotal)
        k = min(k, total)
        scores = np.empty((len(x), k), dtype=np.float32)
        ids = np.empty((len(x), k), dtype=np.int64)
        rows = np.arange(len(x))
        fetch = min(total, k + max(8, k // 4))
        while len(rows):
            part = np.ascontiguousarray(x[rows])
            blas, at = self._flat.search(part, fetch)
            at = np.where(at >= 0, at, 0)  # a flat search of at most ntotal hits returns no padding; never read past
            exact = np.empty(at.shape, dtype=np.float32)
            self._flat.compute_distance_subset(
                len(part), faiss.swig_ptr(part), fetch, faiss.swig_ptr(exact), faiss.swig_ptr(at)
            )
            found = faiss.rev_swig_ptr(self._id_map.data(), total)[at]
            order = np.lexsort((found, -exact), axis=1)
            exact = np.take_along_axis(exact, order, axis=1)
            found = np.take_along_axis(found, order, axis=1)
            # a vector left out scored at most blas[:, -1] by BLAS, so at most that + the bound pair by pair
            done = np.ones(len(rows), bool) if fetch >= total else exact[:, k - 1] > blas[:, -1] + self._bound
            scores[rows[done]] = exact[done, :k]
            ids[rows[done]] = found[done, :k]
            rows, fetch = rows[~done], min(total, 2 * fetch)
        return scores, ids
