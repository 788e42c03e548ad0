"""FAISS inner-product index over L2-normalised chunk vectors, with 64-bit ids."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from crossscale._checks import positive_int
from crossscale._device import resolve_faiss_device
from crossscale._vectors import l2_normalize
from crossscale.errors import ChunkIndexError, ConfigurationError, VectorError, WorkspaceFormatError
from crossscale.index._faiss_file import IndexFile
from crossscale.index._flat_search import FlatSearch
from crossscale.index._kmeans import TWO_LEVEL_MIN_LISTS, two_level_centroids
from crossscale.index._list_scan import ListScan, behind_transforms, ivf_search_parameters, probe_settings
from crossscale.index._probe_split import ProbeSplit
from crossscale.index._shared_setting import SharedSetting
from crossscale.types import SearchParams

logger = logging.getLogger(__name__)

__all__ = ["ChunkIndex"]

_FILE = IndexFile(b"CSIDX\x00\x01\n", 1, "chunk index")
_VERSIONS = itertools.count()  # stamps of index states, unique in the process (see ChunkIndex.version)
#: an IVF index's searches of this many queries or more have faiss find their lists through BLAS, fewer through its
#: own kernels; other structures' searches always go through BLAS. faiss decides by its
#: ``distance_compute_blas_threshold``, compared with the queries (older faiss) or with queries x dimensions (this
#: wheel, 1.15: its default 128,000 kept batches below ~250 queries of 512-d off BLAS, ~10x slower). One IVF query
#: was 1.8-2.8x slower through BLAS, and BLAS wins from 4-8 queries on (docs/benchmarks.md, "One query over all
#: the cores"). A flat index stays on BLAS for every search; its hits are scored again pair by pair
#: (:mod:`._flat_search`), so that a query scores the same alone and in any batch whatever the BLAS rounds.
DEFAULT_BLAS_THRESHOLD = 8
_NEVER = 2**31 - 1  # a threshold no search reaches, in either of faiss' readings
#: the most hits faiss' GPU indexes return per query; deeper searches run on the CPU master copy
GPU_MAX_K = 2048
#: an HNSW coarse quantizer's ``efSearch`` while vectors are added (each assigned to its list). The search-time
#: value (``2 * nprobe``, e.g. 1,024) made adding 10M vectors ~20x slower; faiss' default, 16, put 8.4% of them in
#: a list not their nearest centroid's, and a search that probes the nearest lists then misses them: at 10M regions
#: 128 found the nearest for 99.5% at 3x the time of 16 (30 against 10 us a vector on 2 cores), and parent
#: recall@10 rose from 0.986 to 0.998 (docs/benchmarks.md, "how well adds find their lists")
ADD_EF_SEARCH = 128


_THRESHOLD = SharedSetting()


def _blas_threshold(min_queries: int, rows: int) -> contextlib.AbstractContextManager[None]:
    """faiss' ``distance_compute_blas_threshold`` (one value for the whole process) for a search of ``rows``
    queries: BLAS where ``rows >= min_queries``, faiss' own kernels below, whichever way this faiss compares it.

    The first search in sets it and the last one out restores what it was (:class:`._shared_setting.SharedSetting`),
    so that concurrent searches never leave it changed (each saving and restoring it alone, two overlapping searches
    could leave the other's value for good: every later faiss search in the process, the user's own included, then
    took the other kernels). A search that overlaps another runs on the value the first set: the same hits, up to
    float32 rounding of the scores."""
    import faiss

    def apply() -> Callable[[], None]:
        before = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 1 if rows >= min_queries else _NEVER

        def undo() -> None:
            faiss.cvar.distance_compute_blas_threshold = before

        return undo

    return _THRESHOLD(apply)


def _check_ids(ids: Any, n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ConfigurationError(f"ids must be a 1-D sequence of {n} ints, got shape {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise ConfigurationError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if n and arr.min() < 0:
        raise ConfigurationError("ids must be >= 0 (-1 marks 'no result' in searches)")
    if len(np.unique(arr)) != n:
        raise ConfigurationError("ids must be unique within a call")
    return arr


@contextlib.contextmanager
def _assigning(index: Any) -> Iterator[None]:
    """While adding to an IVF index with an HNSW coarse quantizer, that graph's ``efSearch`` is
    :data:`ADD_EF_SEARCH` (restored after), whatever the search setting: assigning a vector to its list needs its
    nearest centroid, not the ``nprobe`` lists a search walks, and a narrower beam misses it more often. Also for an
    IVF behind an explicit factory's id map, transform or refinement."""
    import faiss

    core: Any = _layers(index)[-1]
    quantizer: Any = faiss.downcast_index(core.quantizer) if isinstance(core, faiss.IndexIVF) else None
    if not isinstance(quantizer, faiss.IndexHNSW):
        yield
        return
    before = int(quantizer.hnsw.efSearch)
    quantizer.hnsw.efSearch = ADD_EF_SEARCH
    try:
        yield
    finally:
        quantizer.hnsw.efSearch = before


def _ties_by_id(scores: np.ndarray, ids: np.ndarray) -> None:
    """Order hits of equal score by id, smallest first, in place; rows are best first, padded at the end, and only
    rows with a tie are sorted."""
    if scores.shape[1] < 2:
        return
    tied = (scores[:, 1:] == scores[:, :-1]) & (ids[:, 1:] >= 0)
    rows = np.nonzero(tied.any(axis=1))[0]
    if len(rows):
        order = np.lexsort((ids[rows], -scores[rows]), axis=1)  # padding (-inf) stays last
        scores[rows] = np.take_along_axis(scores[rows], order, axis=1)
        ids[rows] = np.take_along_axis(ids[rows], order, axis=1)


def _unit_rows(vectors: Any, dim: int) -> np.ndarray:
    """``vectors`` (one row, or ``(n, dim)``) as unit float32 rows: what every chunk index stores and searches.

    Raises:
        VectorError: wrong shape, not numeric, NaN/inf or zero rows.
    """
    arr = np.asarray(vectors)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise VectorError(f"expected vectors of shape (n, {dim}), got {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise VectorError(f"vectors must be numeric, got dtype {arr.dtype}")
    return l2_normalize(arr)


def _with_projection(dim: int, reduce_dim: int, index: Any) -> Any:
    """``index`` (over ``reduce_dim``-d vectors) behind an untrained projection from ``dim`` and a
    re-normalisation, in one owning faiss ``IndexPreTransform`` (as ``index_factory`` builds them)."""
    import faiss

    projection: Any = faiss.LinearTransform(dim, reduce_dim, False)  # learned by ChunkIndex.train
    renorm: Any = faiss.NormalizationTransform(reduce_dim, 2.0)
    outer = faiss.IndexPreTransform(index)
    outer.prepend_transform(renorm)
    outer.prepend_transform(projection)
    outer.own_fields = True  # faiss frees the chain and the inner index with the outer one
    for part in (index, projection, renorm):
        part.this.disown()
    return outer


def _projection_of(index: Any) -> Any:
    """The projection of an index made by :func:`_with_projection` (a non-owning view), or ``None``: a plain
    ``LinearTransform`` first in the outer transform's chain. An explicit factory's own transforms (``"PCA64,..."``,
    ``"OPQ16_64,..."``: faiss' subclasses of it, which faiss trains) are not one."""
    import faiss

    outer: Any = faiss.downcast_index(index)
    if not isinstance(outer, faiss.IndexPreTransform):
        return None
    chain: Any = outer.chain  # a SWIG vector
    first: Any = faiss.downcast_VectorTransform(chain.at(0))
    return first if type(first) is faiss.LinearTransform else None


def _with_ids(index: Any) -> Any:
    """The part of ``index`` that holds the ids (an ``IndexIDMap`` or an ``IndexIVF``), behind any transforms
    (crossscale's projection, an explicit factory's own); a non-owning view."""
    return behind_transforms(index)[0]


def _structure(index: Any) -> Any:
    """The structure that holds the vectors in ``index``: behind any projection and any ``IndexIDMap``; a
    non-owning view."""
    import faiss

    core = _with_ids(index)
    return faiss.downcast_index(core.index) if isinstance(core, faiss.IndexIDMap) else core


def _layers(index: Any) -> list[Any]:
    """``index``'s layers from the outside in, each a downcast, non-owning view: through id maps, vector transforms
    and refinement (``Refine(...)``, ``RFlat``: to the index whose hits are refined) down to the structure searched
    first. What a search's settings (``nprobe``, ``efSearch``) are for is the last one, whatever wraps it: an
    explicit factory such as ``"HNSW32,Refine(Flat)"`` is kept as an ``IDMap`` over the refinement over the graph,
    and index files written before 2026-12-07 kept ``"OPQ16_64,IVF1024,PQ16"`` as an ``IDMap`` over the
    transform over the IVF."""
    import faiss

    layers = [faiss.downcast_index(index)]
    while True:
        layer = layers[-1]
        if isinstance(layer, (faiss.IndexIDMap, faiss.IndexPreTransform)):
            inner = layer.index
        elif isinstance(layer, faiss.IndexRefine):
            inner = layer.base_index
        else:
            return layers
        layers.append(faiss.downcast_index(inner))


def _through_refinement(layers: list[Any], params: Any) -> Any:
    """Search parameters ``params`` for the innermost of ``layers`` (:func:`_layers`), as the outermost one takes
    them: a refining layer wants its own parameters (faiss refuses others) holding the inner ones, and keeps its
    ``k_factor``. Id maps and transforms hand them on as they are."""
    import faiss

    for layer in reversed(layers[:-1]):
        if isinstance(layer, faiss.IndexRefine):
            outer: Any = faiss.IndexRefineSearchParameters()  # type: ignore[attr-defined]
            outer.k_factor = float(layer.k_factor)
            outer.base_index_params = params  # faiss' wrapper keeps a reference with it
            params = outer
    return params


def _refined_depth(layers: list[Any], k: int) -> int:
    """How many hits the innermost of ``layers`` is asked for when the outermost is asked for ``k``: each refining
    layer asks its inner index for ``k_factor`` times as many."""
    import faiss

    depth = float(k)
    for layer in layers[:-1]:
        if isinstance(layer, faiss.IndexRefine):
            depth *= float(layer.k_factor)
    return max(k, int(depth))


def _note_shallow_refinement(factory: str, index: Any) -> None:
    """Log where a factory's refinement (``Refine(...)``, ``RFlat``) re-ranks only the ``k`` hits asked for: faiss
    builds one with ``k_factor`` 1, so it re-orders the base index's hits without finding any it missed."""
    import faiss

    if any(isinstance(layer, faiss.IndexRefine) and float(layer.k_factor) <= 1 for layer in _layers(index)):
        logger.warning(
            "index factory %r refines only the k hits its base index finds (faiss' k_factor 1), which changes their "
            "order but finds none it missed; give it more candidates with set_search_params('k_factor_rf=4')",
            factory,
        )


def _hnsw_search_parameters() -> Any:
    """A new ``faiss.SearchParametersHNSW`` (not in faiss' type stubs)."""
    import faiss

    return faiss.SearchParametersHNSW()  # type: ignore[attr-defined]


def _principal_axes(x: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """The ``k`` leading eigenvectors of the uncentred second moment ``xᵀx`` of the rows of ``x``, as a
    ``(k, d)`` float32 matrix, and the share of ``x``'s energy they keep."""
    moment = (x.T @ x).astype(np.float64)  # float32 product, float64 eigen-decomposition
    values, vectors = np.linalg.eigh(moment)  # ascending
    top = np.argsort(values)[::-1][:k]
    total = float(values.clip(min=0).sum())
    kept = float(values[top].clip(min=0).sum()) / total if total > 0 else 1.0
    return np.ascontiguousarray(vectors[:, top].T, dtype=np.float32), kept


class ChunkIndex:
    """Chunk vectors in a FAISS index, searched by inner product (cosine on unit vectors).

    Vectors are L2-normalised on the way in, queries too. Ids are caller-chosen
    64-bit ints >= 0. Removal is native where the index type supports it (Flat,
    IVF) and by tombstones (filtered at search time) where it does not (HNSW).

    With ``reduce_dim``, vectors (and queries) are projected onto the ``reduce_dim`` principal axes of a
    training sample and L2-normalised again before ``factory`` sees them: scores are then the cosines of the
    projections. The projection is *uncentred* (the axes of the vectors' second moment, not of their
    covariance): the inner products of unit vectors are what it keeps, so scores stay comparable with
    unreduced ones, which faiss' ``PCA`` (it subtracts the mean) would not give. It is learned by
    :meth:`train` (or the first :meth:`add`) and saved with the index.

    Args:
        dim: vector length.
        factory: a ``faiss.index_factory`` string (``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``, ...), of
            the structure over the (reduced) vectors.
        reduce_dim: project to this many dimensions (``< dim``); ``None``: keep ``dim``.
        device: ``"auto"`` (GPU when the faiss build has one), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
            The CPU index stays the master copy; a GPU mirror serves searches.
        blas_threshold: an IVF index's searches of at least this many queries find their lists through BLAS
            (faiss' ``distance_compute_blas_threshold`` is set for each search so that they do, whatever faiss'
            version compares it with), fewer through faiss' own kernels; other structures always use BLAS.

    Raises:
        ConfigurationError: bad ``dim``, ``reduce_dim`` or factory string.
    """

    def __init__(
        self,
        dim: int,
        factory: str = "Flat",
        *,
        reduce_dim: int | None = None,
        device: str = "auto",
        blas_threshold: int = DEFAULT_BLAS_THRESHOLD,
    ) -> None:
        dim = positive_int("dim", dim)
        if not isinstance(factory, str) or not factory.strip():
            raise ConfigurationError(f"factory must be a faiss index_factory string, got {factory!r}")
        if reduce_dim is not None:
            reduce_dim = positive_int("reduce_dim", reduce_dim)
            if reduce_dim >= dim:
                raise ConfigurationError(f"reduce_dim must be less than dim ({dim}), got {reduce_dim}")
        try:
            index = self._build(reduce_dim or dim, factory)
        except RuntimeError as exc:
            raise ConfigurationError(f"invalid faiss factory string {factory!r}: {exc}") from exc
        if reduce_dim is not None:
            index = _with_projection(dim, reduce_dim, index)
        _note_shallow_refinement(factory, index)
        self._init(dim, factory, index, device, blas_threshold, tombstones=(), energy_kept=None)

    @staticmethod
    def _build(dim: int, factory: str) -> Any:
        """Build the index with 64-bit id support: IVF has it natively (also behind the factory's transforms:
        ``"PCA64,IVF4096,SQ8"`` keeps the IVF's lists and searches, and no second copy of the ids), others inside
        an ``IDMap``.

        The wrapper comes from the factory string so that faiss owns the inner
        index; wrapping a Python-made index by hand leaves ownership to Python.
        The object returned is the *owning* proxy: ``faiss.downcast_index`` gives
        a non-owning view, to be used only while the owner is alive.
        """
        import faiss

        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if isinstance(_with_ids(index), (faiss.IndexIDMap, faiss.IndexIVF)):
            return index
        return faiss.index_factory(dim, "IDMap," + factory, faiss.METRIC_INNER_PRODUCT)

    def _init(
        self,
        dim: int,
        factory: str,
        index: Any,
        device: str,
        blas_threshold: int,
        tombstones: Any,
        energy_kept: float | None,
    ) -> None:
        self.dim = dim
        self.factory = factory
        self._energy_kept = energy_kept
        self.blas_threshold = int(blas_threshold)
        self.device = resolve_faiss_device(device)
        self._index = index
        self._tombstones: set[int] = {int(i) for i in tombstones}
        self._skipping: tuple[Any, Any] | None = None  # the ID selector that skips the tombstones, and its part
        self._gpu_index: Any = None
        self._gpu_resources: Any = None
        self._scores_exact: bool | None = None  # the structure never changes: worked out once
        self._prefix_stable: bool | None = None
        self._scan: ListScan | None = None  # batched IVF search list by list, once the index is trained
        self._scan_checked = False
        self._split: ProbeSplit | None = None  # a single query's IVF lists searched over the cores
        self._layer_views: list[Any] | None = None  # the index's layers (_layers), outside in: worked out once
        self._split_checked = False
        self._flat: FlatSearch | None = None  # a flat index searched with scores that do not depend on the batch
        self._flat_checked = False
        self._version = next(_VERSIONS)

    # ------------------------------------------------------------------ basic facts
    def __len__(self) -> int:
        """Number of live (not removed) vectors."""
        return int(self._index.ntotal) - len(self._tombstones)

    @property
    def tombstone_count(self) -> int:
        """Removed vectors the structure still holds (HNSW cannot remove them): searches skip them, and a
        workspace rebuilds its index from the store once they are many (:data:`crossscale.workspace.COMPACT_SHARE`)."""
        return len(self._tombstones)

    def _removed_ids(self) -> np.ndarray:
        """The tombstones' ids as an int64 array (unsorted), for ``np.isin`` and faiss' selectors."""
        return np.fromiter(self._tombstones, np.int64, len(self._tombstones))

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def reduce_dim(self) -> int | None:
        """The dimensions vectors are projected to, or ``None`` (not reduced)."""
        projection = _projection_of(self._index)
        return None if projection is None else int(projection.d_out)

    @property
    def scores_exact(self) -> bool:
        """Whether search scores are the exact cosines of the vectors added: the index keeps them whole (Flat,
        IVF-Flat, HNSW), not transformed (``reduce_dim``, an explicit factory's ``PCA``, ``OPQ``, ...) nor coded
        (SQ8, PQ). Where not, the query path re-scores the hits it gets with the stored vectors
        (:func:`~crossscale.query.search_parents`' ``exact_vectors``)."""
        import faiss

        if self._scores_exact is None:
            core: Any = _structure(self._index)
            whole = isinstance(core, (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexHNSWFlat))
            transformed = any(isinstance(layer, faiss.IndexPreTransform) for layer in _layers(self._index))
            self._scores_exact = whole and not transformed
        return self._scores_exact

    @property
    def prefix_stable(self) -> bool:
        """Whether ``search(q, k)`` gives the first ``k`` hits of ``search(q, K)`` for any ``K > k``: true of the
        exhaustive scans on the CPU (Flat, SQ and PQ codes, and IVF lists but fast-scan ones), which score the same
        vectors at any depth and whose ties :meth:`search` orders by id; not of HNSW, whose beam widens with
        ``k``, of a refining index, which re-ranks ``k_factor * k`` candidates, nor of a GPU search: searches
        deeper than faiss' GPU limit (:data:`GPU_MAX_K`) run on the CPU copy, whose scores differ from the GPU's
        in the last bits, and a GPU's matrix products may round differently with the batch's size, so equal
        scores at one depth need not be equal at another. The query path may then search deeper at first, with
        the same result (:class:`~crossscale.query.FetchDepth`). Up to the last bits of scores: faiss' SQ scan, and
        the list scan :meth:`search` runs for large IVF batches, may score a query a few last bits apart in
        another batch (the list scan also at another depth, in batches of many thousands: it splits them by
        depth), so hits whose scores are that close may swap places."""
        if self._prefix_stable is None:  # the structure never changes: worked out once
            import faiss

            core: Any = _structure(self._index)
            scans = isinstance(core, (faiss.IndexFlatCodes, faiss.IndexIVF))
            self._prefix_stable = scans and not isinstance(core, faiss.IndexIVFFastScan)
        return self.device == "cpu" and self._prefix_stable

    @property
    def search_settings(self) -> SearchParams:
        """The index's own search settings, which a search without ``params`` uses, as a
        :class:`~crossscale.types.SearchParams`: an IVF index's ``nprobe``, and the beam (``ef_search``) of an HNSW
        index or of an IVF index's HNSW coarse quantizer, also where an explicit factory puts the structure behind a
        transform or a refinement (``"OPQ16_64,IVF1024,PQ16"``, ``"HNSW32,Refine(Flat)"``); ``None`` where the
        structure has no such setting.
        :meth:`set_search_params` changes them; a search's ``params`` do not."""
        import faiss

        ivf = self._ivf_view()
        graph: Any = self._graph_view() if ivf is None else faiss.downcast_index(ivf.quantizer)
        beam = int(graph.hnsw.efSearch) if isinstance(graph, faiss.IndexHNSW) else None
        return SearchParams(nprobe=None if ivf is None else int(ivf.nprobe), ef_search=beam)

    @property
    def energy_kept(self) -> float | None:
        """The share of the training sample's energy (sum of squared coordinates) that the projection keeps:
        ``None`` until it is learned, or when vectors are not reduced."""
        return self._energy_kept

    def __repr__(self) -> str:
        reduced = "" if self.reduce_dim is None else f", reduce_dim={self.reduce_dim}"
        return (
            f"ChunkIndex(dim={self.dim}, factory={self.factory!r}{reduced}, device={self.device!r}, size={len(self)})"
        )

    def ids(self) -> np.ndarray:
        """All live ids, sorted (int64)."""
        import faiss

        index: Any = _with_ids(self._index)  # a view; self._index owns it
        if isinstance(index, faiss.IndexIDMap):
            found = faiss.vector_to_array(index.id_map).astype(np.int64)
        else:  # IndexIVF: read the inverted lists
            invlists = index.invlists
            parts = []
            for list_no in range(index.nlist):
                size = invlists.list_size(list_no)
                if size:
                    ptr = invlists.get_ids(list_no)
                    parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                    invlists.release_ids(list_no, ptr)
            found = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        if self._tombstones:
            found = found[~np.isin(found, self._removed_ids())]
        return np.sort(found)

    # ------------------------------------------------------------------ mutation
    def _prepare(self, vectors: Any) -> np.ndarray:
        return _unit_rows(vectors, self.dim)

    def train(self, vectors: Any) -> None:
        """Train the index on a representative sample: the projection (``reduce_dim``), then IVF or PQ; a no-op
        for an unreduced Flat or HNSW.

        Raises:
            VectorError: wrong shape, NaN/inf or zero vectors.
            ChunkIndexError: too few vectors to learn from, or faiss refused them.
        """
        if self.is_trained:
            return
        x = self._prepare(vectors)
        projection = _projection_of(self._index)
        if projection is not None and not projection.is_trained:
            if len(x) < projection.d_out:
                raise ChunkIndexError(
                    f"learning a projection to {projection.d_out} dimensions needs at least {projection.d_out} "
                    f"vectors, got {len(x)}"
                )
            import faiss

            axes, self._energy_kept = _principal_axes(x, int(projection.d_out))
            faiss.copy_array_to_vector(axes.ravel(), projection.A)
            projection.is_trained = True
            logger.info(
                "projecting vectors from %d to %d dimensions keeps %.1f%% of their energy",
                self.dim,
                projection.d_out,
                100 * self._energy_kept,
            )
        try:
            self._train_coarse(x)
            self._index.train(x)
        except RuntimeError as exc:
            raise ChunkIndexError(f"training {self.factory!r} on {len(x)} vectors failed: {exc}") from exc
        finally:
            self._changed()

    def _train_coarse(self, x: np.ndarray) -> None:
        """Give an IVF index of :data:`~crossscale.index._kmeans.TWO_LEVEL_MIN_LISTS` lists or more its
        centroids by two-level k-means (faiss then trains only the codes): flat k-means over 16,384 lists took
        most of a 10M ingest's time. Also an IVF behind an explicit factory's transform or refinement
        (``"OPQ64_256,IVF16384_HNSW32,PQ64"``): its transforms are trained first, on the same vectors, as faiss
        would. Other structures, and too few vectors (faiss' error), are left to faiss."""
        import faiss

        layers = _layers(self._index)
        core: Any = layers[-1]
        if not isinstance(core, faiss.IndexIVF) or core.nlist < TWO_LEVEL_MIN_LISTS or len(x) < core.nlist:
            return
        quantizer: Any = faiss.downcast_index(core.quantizer)
        if quantizer.ntotal == core.nlist:  # trained already (or given its centroids)
            return
        for layer in layers[:-1]:  # the centroids live where the IVF does: after every transform
            if isinstance(layer, faiss.IndexPreTransform):
                chain: Any = layer.chain  # a SWIG vector (crossscale's own: the projection, the re-normalisation)
                for i in range(chain.size()):
                    transform: Any = faiss.downcast_VectorTransform(chain.at(i))
                    if not transform.is_trained:  # faiss' own training of the chain then leaves it as it is
                        transform.train(x)
                    x = transform.apply(x)
        started = time.perf_counter()
        quantizer.add(two_level_centroids(np.ascontiguousarray(x, dtype=np.float32), int(core.nlist)))
        logger.info(
            "trained %d IVF centroids on %d vectors in two levels in %.1f s",
            core.nlist,
            len(x),
            time.perf_counter() - started,
        )

    def add(self, vectors: Any, ids: Any) -> None:
        """Add vectors with their ids. An untrained index is trained on this batch first.

        Ids are checked within the call, not against the ids already held (that would take a copy of every id,
        80 MB at 10M vectors): keep them unique across calls, as a workspace's chunk ids are. An id added twice is
        held twice, and a search may return it twice.

        Raises:
            VectorError: wrong shape, NaN/inf or zero vectors.
            ConfigurationError: ids not unique, negative or of the wrong length; or ids removed from a structure
                that keeps removed vectors (:attr:`tombstone_count`), which cannot take them again.
            ChunkIndexError: the index cannot be trained on this batch.
        """
        x = self._prepare(vectors)
        id_arr = _check_ids(ids, len(x))
        if len(x) == 0:
            return
        self._refuse_removed(id_arr)
        if not self.is_trained:
            self.train(x)
        with _assigning(self._index):
            self._index.add_with_ids(x, id_arr)
        self._changed()

    def _refuse_removed(self, ids: np.ndarray) -> None:
        """Refuse ids this index removed but still holds (an HNSW graph's tombstones): the tombstone would hide the
        new vector from every search, while ``len()`` counted it.

        Raises:
            ConfigurationError: naming the first few such ids.
        """
        if not self._tombstones:
            return
        again = ids[np.isin(ids, self._removed_ids())]
        if len(again):
            shown = ", ".join(str(int(i)) for i in np.sort(again)[:5]) + (", ..." if len(again) > 5 else "")
            raise ConfigurationError(
                f"{len(again)} of the ids were removed from this {self.factory!r} index, which keeps removed vectors "
                f"(it cannot delete them) and so cannot take their ids again: {shown}; give new ids, or rebuild the "
                "index from the live vectors"
            )

    def remove(self, ids: Any) -> int:
        """Remove vectors by id; unknown ids are ignored. Returns how many were removed."""
        import faiss

        id_arr = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
        if id_arr.size == 0:
            return 0
        try:
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(id_arr)))
        except RuntimeError:
            # HNSW and some others cannot remove: remember tombstones, filter at search.
            present = id_arr[np.isin(id_arr, self.ids())]
            self._tombstones.update(int(i) for i in present)
            self._skipping = None
            removed = len(present)
        self._changed()
        return removed

    @property
    def version(self) -> int:
        """A stamp of what this index holds, unique in the process: training, adding, removing and
        :meth:`set_search_params` change it, searching does not (a workspace skips rewriting an unchanged file)."""
        return self._version

    def _changed(self) -> None:
        """Forget what was worked out from the vectors held: the GPU copy, the list scan's list sizes; and stamp
        a new :attr:`version`."""
        self._version = next(_VERSIONS)
        self._gpu_index = None
        if self._scan is not None:
            self._scan.index_changed()

    # ------------------------------------------------------------------ search
    def _searcher(self) -> Any:
        if self.device == "cpu":
            return self._index
        if self._gpu_index is None:
            import faiss

            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            try:
                self._gpu_index = faiss.index_cpu_to_gpu(
                    self._gpu_resources, int(self.device.split(":")[1]), self._index
                )
            except RuntimeError as exc:
                logger.warning("index %r cannot run on %s (%s); searching on CPU", self.factory, self.device, exc)
                self.device = "cpu"
                return self._index
        return self._gpu_index

    def search(self, vectors: Any, k: int, *, params: SearchParams | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best chunks for each query row.

        ``params`` (:class:`~crossscale.types.SearchParams`): how hard this call looks (an IVF index's
        ``nprobe``, an HNSW graph's ``ef_search``), for this call only: the index's own settings
        (:meth:`set_search_params`) and concurrent searches are untouched. Settings that do not apply to the
        structure are ignored.

        Hits of equal score are ordered by id, smallest first (the first added first), and where equal scores
        straddle the ``k``-th hit the ones with the smallest ids are kept. faiss' own order and choice among them
        depend on ``k`` (its heap, and its reservoir from 100 hits on, keep and list different ones); this way a
        search is the first ``k`` hits of any deeper one for the exhaustive structures (:attr:`prefix_stable`),
        and a chunk indexed later never displaces an equal one indexed earlier.

        Fewer queries than threads (one query, on any multi-core machine) are searched over the cores by the
        lists they probe (:mod:`crossscale.index._probe_split`: 1.8x faster on 2 cores at 10M regions), with
        faiss' own scores. A flat index's hits come from faiss' BLAS search and are scored again pair by pair
        (:mod:`crossscale.index._flat_search`): a query scores the same alone and in any batch, and copies the
        same, on every CPU (one's BLAS rounded them apart). A batch whose queries share the IVF lists they probe
        (enough of them that it pays: :func:`crossscale.index._list_scan.pays`) is searched list by list on the
        CPU: each list read once and scored against all of its queries by one matrix product, for IVF-Flat, SQ8,
        SQfp16 and PQ lists (not fast-scan). The hits are faiss' (the same lists, every vector in them; an HNSW
        coarse quantizer's beam that would cost more than scoring every centroid gives way to that exact product,
        which finds each query's nearest lists), 2-6x faster for 1,000-10,000 queries (docs/benchmarks.md); the
        scores are the same inner products summed in another order, so they may differ from faiss' in the last
        bits, and hits that close may swap places between a large batch and a small one.

        Returns:
            ``(scores, ids)``, both of shape ``(n, k)``, best first; where fewer
            than ``k`` results exist, ids are ``-1`` and scores ``-inf``.
        """
        k = positive_int("k", k)
        params = SearchParams.checked(params)
        q = self._prepare(vectors)
        n = len(q)
        total = int(self._index.ntotal)
        if n == 0 or total == 0:
            return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
        rows = np.arange(n)
        # one more: is the k-th hit's score tied beyond it? (and as many more as there are tombstones, unless the
        # CPU index serves and HNSW skips them: _hnsw_params)
        skipped = self.device == "cpu" and self._graph_view() is not None
        ask = min(total, k + (0 if skipped else len(self._tombstones)) + 1)
        # the results are made after the first search, so as not to be held through its peak (a batch's list scan)
        scores, ids = np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        while len(rows):
            d, i = self._search_raw(q if len(rows) == n else q[rows], ask, params)  # no copy of a whole batch
            if len(ids) != n:
                scores, ids = np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
            if i.shape[1] > k and ask < total:  # equal scores at the k-th hit that may go on past the last one
                open_tie = (d[:, k] == d[:, k - 1]) & (i[:, -1] >= 0) & (d[:, -1] == d[:, k - 1])
                done = ~open_tie
            else:
                done = np.ones(len(rows), dtype=bool)
            _ties_by_id(d, i)
            width = min(k, i.shape[1])
            ids[rows[done], :width] = i[done, :width]
            scores[rows[done], :width] = d[done, :width]
            rows, ask = rows[~done], min(total, 2 * ask)  # equal scores past the k-th: until they all are in
        return scores, ids

    def _search_raw(self, q: np.ndarray, ask: int, params: SearchParams | None) -> tuple[np.ndarray, np.ndarray]:
        """faiss' ``ask`` best hits of each row with removed ids taken out: ``(scores, ids)``, best first, padded
        (``-inf``, ``-1``) at the end of each row; under one call's ``params``, if any."""
        nprobe, ef = (None, None) if params is None else (params.nprobe, params.ef_search)
        searcher = self._searcher() if ask <= GPU_MAX_K else self._index  # faiss' GPU k limit: not cut short
        skip = self._hnsw_params(ask, ef) if searcher is self._index else None
        scan = self._list_scan() if searcher is self._index else None
        split = self._probe_split() if searcher is self._index else None
        flat = self._flat_search() if searcher is self._index else None
        with _blas_threshold(self._blas_from(), len(q)):  # the scan's coarse search too
            listed = None if scan is None else scan.search(q, ask, nprobe=nprobe, ef_search=ef)  # None: too small
            if listed is None and split is not None:
                listed = split.search(q, ask, nprobe=nprobe, ef_search=ef)  # None: as many queries as threads
            if listed is None and flat is not None:
                listed = flat.search(q, ask)  # scored pair by pair: the same in any batch
            if listed is not None:
                d, i = listed
            elif skip is not None:
                d, i = searcher.search(q, ask, params=skip)
            elif (nprobe is not None or ef is not None) and (ivf := self._ivf_view()) is not None:
                d, i = searcher.search(q, ask, params=self._ivf_params(ivf, searcher, nprobe, ef))
            elif ef is not None and self._graph_view() is not None:
                d, i = searcher.search(q, ask, params=self._graph_params(searcher, ask, ef))
            else:
                d, i = searcher.search(q, ask)
        if self._tombstones and skip is None:
            i = np.where(np.isin(i, self._removed_ids()), -1, i)
        found = i >= 0
        if bool((found[:, :-1] >= found[:, 1:]).all()):  # padding only at the ends: as it is
            return np.where(found, d, np.float32(-np.inf)), i
        scores = np.full(d.shape, -np.inf, dtype=np.float32)
        ids = np.full(i.shape, -1, dtype=np.int64)
        for row in range(len(i)):
            keep = found[row]
            ids[row, : keep.sum()] = i[row][keep]
            scores[row, : keep.sum()] = d[row][keep]
        return scores, ids

    def _list_scan(self) -> ListScan | None:
        """The batched list-by-list searcher of a trained IVF index on the CPU (:mod:`._list_scan`), or ``None``
        for structures it cannot read; worked out once the index is trained (SQ codes' ranges are learned)."""
        if not self._scan_checked and self.is_trained and not self._tombstones:
            self._scan, self._scan_checked = ListScan.of(self._index), True
        return self._scan if self._scan_checked and not self._tombstones else None

    def _blas_from(self) -> int:
        """From how many queries a search goes through BLAS: :attr:`blas_threshold` for an IVF index (its coarse
        search), 1 for the others (see :data:`DEFAULT_BLAS_THRESHOLD`)."""
        return self.blas_threshold if self._ivf_view() is not None else 1

    def _ivf_view(self) -> Any | None:
        """The IVF structure the index searches first (a downcast, non-owning view), also behind an explicit
        factory's id map, transform or refinement (:func:`_layers`), or ``None`` for other structures; worked out
        once (the structure never changes). Its ``nprobe`` and coarse quantizer are what a search's settings
        change."""
        import faiss

        core = self._first_structure()
        return core if isinstance(core, faiss.IndexIVF) else None

    def _graph_view(self) -> Any | None:
        """The HNSW structure the index searches first (a downcast, non-owning view), also behind an id map,
        transform or refinement, or ``None`` for other structures: whose beam (``efSearch``) a search's
        ``ef_search`` sets."""
        import faiss

        core = self._first_structure()
        return core if isinstance(core, faiss.IndexHNSW) else None

    def _own_layers(self) -> list[Any]:
        """The index's layers (:func:`_layers`, non-owning views), worked out once (the structure never changes):
        an HNSW search asks for them on every call."""
        if self._layer_views is None:
            self._layer_views = _layers(self._index)
        return self._layer_views

    def _first_structure(self) -> Any:
        """The innermost of the index's layers: the structure searched first."""
        return self._own_layers()[-1]

    def _ivf_params(self, ivf: Any, searcher: Any, nprobe: int | None, ef: int | None) -> Any:
        """faiss' ``SearchParametersIVF`` for one search by ``searcher`` under one call's settings, wrapped as its
        refining layers take them (:func:`_through_refinement`). A GPU copy's coarse quantizer is its own flat one:
        only ``nprobe`` is given to it."""
        if searcher is self._index:
            tuned = ivf_search_parameters(ivf, nprobe, ef)
        else:
            import faiss

            tuned = faiss.SearchParametersIVF()  # type: ignore[attr-defined]
            tuned.nprobe = probe_settings(ivf, nprobe, None)[0]
        return _through_refinement(_layers(searcher), tuned)

    def _graph_params(self, searcher: Any, ask: int, ef: int) -> Any:
        """faiss parameters for ``ask`` hits of ``searcher``, a copy of the index other than itself (what faiss'
        GPU cloner makes of layers it cannot place on a GPU), whose first structure is an HNSW graph: a beam of
        ``ef``, widened to the hits the graph is asked for (a beam narrower than them returns fewer), wrapped as the
        refining layers take them. (The index itself is searched with :meth:`_hnsw_params`, which also skips removed
        vectors inside the walk.)"""
        layers = _layers(searcher)
        params = _hnsw_search_parameters()
        params.efSearch = max(int(ef), _refined_depth(layers, ask))
        return _through_refinement(layers, params)

    def _flat_search(self) -> FlatSearch | None:
        """The searcher of a flat index whose scores do not depend on the batch (:mod:`._flat_search`), or ``None``
        for other structures; worked out once (the structure never changes)."""
        if not self._flat_checked:
            self._flat, self._flat_checked = FlatSearch.of(self._index), True
        return self._flat

    def _probe_split(self) -> ProbeSplit | None:
        """The searcher of fewer queries than threads over an IVF index's lists, a part per thread
        (:mod:`._probe_split`), or ``None`` for other structures; worked out once (the structure never changes)."""
        if not self._split_checked:
            self._split, self._split_checked = ProbeSplit.of(self._index), True
        return self._split

    def _hnsw_params(self, ask: int, ef: int | None = None) -> Any | None:
        """faiss search parameters for ``ask`` hits of an index whose first structure is an HNSW graph, also behind
        an id map, transform or refinement, wrapped as its refining layers take them (:func:`_through_refinement`);
        ``None`` for other structures. The beam (``efSearch``) is ``ef`` (one call's) or the graph's own
        (:meth:`set_search_params`), widened to hold the live vectors the graph is asked for (``ask``, times each
        refinement's ``k_factor``): a beam narrower than that returns fewer hits than asked (faiss does not widen
        it: 225 of 1,000 at ``efSearch`` 16), and with most vectors removed a beam finds a live one only so often.
        The tombstones are skipped inside the graph walk, so a search asks for ``k`` hits, not ``k`` plus every
        removed vector (an ID selector, made once per set of tombstones: :meth:`_skipper`)."""
        core = self._graph_view()
        if core is None:
            return None
        layers = self._own_layers()
        params = _hnsw_search_parameters()
        live = max(1, len(self))
        own = int(core.hnsw.efSearch) if ef is None else ef
        params.efSearch = max(own, -(-_refined_depth(layers, ask) * int(self._index.ntotal) // live))
        if self._tombstones:
            params.sel = self._skipper(layers)
        return _through_refinement(layers, params)

    def _skipper(self, layers: list[Any]) -> Any:
        """An ID selector of the vectors not removed, for the parameters of the graph innermost in ``layers``. An id
        map translates a selector it is handed, in chunk ids, to its graph's positions, but a refinement hands its
        inner index parameters of their own, which the id map above it never sees: behind one, the selector is of
        the removed vectors' positions in the id map."""
        import faiss

        if self._skipping is None:
            removed_ids = self._removed_ids()
            id_map = None  # the id map above a refinement, if any
            for layer in layers[:-1]:
                if isinstance(layer, faiss.IndexIDMap):
                    id_map = layer
                elif isinstance(layer, faiss.IndexRefine) and id_map is not None:
                    removed_ids = np.flatnonzero(np.isin(faiss.vector_to_array(id_map.id_map), removed_ids))
                    break
            removed = faiss.IDSelectorBatch(removed_ids)
            self._skipping = (faiss.IDSelectorNot(removed), removed)  # the second lives as long as the first
        return self._skipping[0]

    def set_search_params(self, params: str) -> None:
        """Set search-time parameters, e.g. ``"nprobe=32"`` (IVF) or ``"efSearch=128"`` (HNSW)."""
        import faiss

        try:
            faiss.ParameterSpace().set_index_parameters(self._index, params)  # type: ignore[arg-type]
        except RuntimeError as exc:
            raise ConfigurationError(f"cannot set {params!r} on a {self.factory!r} index: {exc}") from exc
        self._changed()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> None:
        """Write the index and ``meta`` to ``path`` atomically (temp file, fsync, ``os.replace``).

        The faiss data is streamed to the file: saving needs no second copy of the index in memory.
        """
        header: dict[str, Any] = {
            "dim": self.dim,
            "factory": self.factory,
            "tombstones": sorted(self._tombstones),
            "meta": dict(meta or {}),
        }
        if self._energy_kept is not None:
            header["energy_kept"] = self._energy_kept
        _FILE.write(path, header, self._index)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, device: str = "auto", blas_threshold: int = DEFAULT_BLAS_THRESHOLD
    ) -> tuple[ChunkIndex, dict[str, Any]]:
        """Read an index written by :meth:`save`; returns ``(index, meta)``.

        Raises:
            WorkspaceFormatError: the file is not a crossscale index, is of a newer format, or is corrupt.
        """
        import faiss

        header, index = _FILE.read(path)  # the faiss data is streamed from the file: no copy of it all in memory
        if index is None:
            raise WorkspaceFormatError(f"{path}: holds no faiss index")
        if not isinstance(_with_ids(index), (faiss.IndexIDMap, faiss.IndexIVF)):
            raise WorkspaceFormatError(f"{path}: faiss index has no id map")
        energy = header.get("energy_kept")
        obj = cls.__new__(cls)
        obj._init(
            int(header["dim"]),
            str(header["factory"]),
            index,
            device,
            blas_threshold,
            tombstones=header.get("tombstones", ()),
            energy_kept=float(energy) if isinstance(energy, (int, float)) else None,
        )
        if obj._index.d != obj.dim:
            raise WorkspaceFormatError(f"{path}: header says dim {obj.dim}, faiss index has {obj._index.d}")
        return obj, dict(header.get("meta", {}))

    @classmethod
    def check_file(cls, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Check a file written by :meth:`save` without loading it; returns its ``meta``.

        The header is read and the faiss data streamed through its CRC-32, in blocks: memory stays small whatever
        the index's size (``verify()`` uses it). A file written before the checksum was kept is loaded instead.

        Raises:
            WorkspaceFormatError: the file is not a crossscale index, is of a newer format, or is corrupt.
        """
        header = _FILE.check(path)
        if header is not None:
            return dict(header.get("meta", {}))
        return cls.load(path, device="cpu")[1]  # no checksum: only faiss can tell
