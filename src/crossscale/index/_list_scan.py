"""Batched IVF search list by list: each probed inverted list is read once for the whole batch.

faiss' CPU IVF search scans each query's ``nprobe`` lists one query at a time: a batch of 1,000 queries at 10M
regions (``IVF16384_HNSW32,SQ8``, ``nprobe`` 256) reads ~158k codes per query from memory, ~50 ns each, whatever
the batch. Here the queries are sorted by the lists they probe; each list is decoded once into float32 rows and
scored against all of its queries by one matrix product (BLAS; a large list a slice of its codes at a time, so that
each step's temporaries stay within :data:`_SCORE_SLOTS`), and each query keeps its best ``k`` in a faiss heap.
The candidates are faiss' (the same probed lists, every code in them) and the scores are the same inner products,
computed in another order: they may differ from faiss' in the last bits. One exception, for the better:
an HNSW coarse quantizer whose beam would cost more than scoring every centroid is replaced by that exact product
(:func:`exact_coarse_pays`), so a batch probes each query's nearest lists where the beam may miss one.

Supported structures: ``IVF*,Flat``; IVF lists of the scalar quantizer's 8-bit codes (``SQ8``, or one range
for all dimensions) or float16 ones (``SQfp16``); and product-quantizer codes (``IVF*,PQ16``, ``PQ16x4``: each list
decoded by faiss' own decoder into the vectors faiss' look-up tables score), with or without residuals; behind
optional transforms; with faiss' in-memory inverted lists. Others are left to faiss (:meth:`ListScan.of` returns
``None``): fast-scan PQ, PQ with refinement codes (``PQ16+8``), 4-, 6-bit and direct scalar codes, bfloat16 ones
(faiss scores those against a bfloat16 copy of the query), lists on disk; and so are searches under a ``max_codes``
cap or a polysemous filter (:meth:`ListScan.search` returns ``None``).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from crossscale.index._shared_setting import SharedSetting

__all__ = [
    "NEAR_LISTS",
    "ListScan",
    "exact_coarse_pays",
    "faiss_pair_ns",
    "ivf_of",
    "ivf_search_parameters",
    "pays",
    "probe_settings",
]

#: What a scan costs, and faiss' search of the same batch, on the machine they were measured on (2 cores,
#: AVX-512; docs/benchmarks.md, "Batched IVF search list by list"), in nanoseconds of wall time: a scan pays for
#: each list it visits (Python and the calls around one matrix product), for each dimension of each code it
#: decodes (8-bit and float16 codes; IVF-Flat lists are read as they are) and for each (query, code) pair (its
#: share of the matrix product, the heap, the copies); faiss pays for each dimension of each pair it scores, one
#: query at a time, at or below the lowest rates measured (SQ8 codes 0.071-0.105 ns, IVF-Flat 0.131-0.17). So
#: the rule (:func:`pays`) errs towards faiss: it missed a 1.4x faster scan of 512 queries at 10M regions.
LIST_NS = 38_600.0
DECODE_NS = 0.25
PAIR_NS = 5.0
FAISS_FLAT_NS = 0.13
FAISS_CODES_NS = 0.065
#: The same for product-quantizer codes, measured on a slower machine (docs/benchmarks.md, "IVF-PQ batches list by
#: list") and scaled to the rates above by faiss' SQ8 scan measured beside them (0.119 ns there): faiss' decoder
#: writes each dimension of a code (0.26-0.47 ns more than an 8-bit code's, scaled), and faiss' scan looks up one
#: table entry per sub-quantizer of each pair (0.24-0.37 ns, scaled; PQ16's dearer by its tables' share). Both
#: taken at the side that errs towards faiss.
DECODE_PQ_NS = 0.7
FAISS_PQ_NS = 0.25
#: how many times the average list's codes a query's probed lists may hold: its nearest lists are the large ones
#: in clustered data (at 10M regions in 16,384 lists, 1,000 queries: 3.8x at nprobe 16, 2.8x at 64, 1.0x at 256)
NEAR_LISTS = 4.0
#: the most ``(query, hit)`` slots one pass holds in each thread's heap (12 bytes each): larger batches go in parts
_HEAP_SLOTS = 1 << 23
#: the most float32 values (4 MiB) a step of a list's scan decodes, and the most ``(query, code)`` scores it makes,
#: per thread: a large list is decoded and scored a slice of its codes at a time (at least :data:`_MIN_SLICE`), so
#: that a batch's temporaries stay small whatever its lists' sizes (at 10M regions, 10,000 queries, 128 lists
#: each: lists of up to 6,881 codes, probed by up to 186 queries)
_SCORE_SLOTS = 1 << 20
_MIN_SLICE = 256


class ListScan:
    """A batched searcher over an IVF index's inverted lists (a view: the index must outlive it).

    Use :meth:`of`, which returns ``None`` for structures it cannot read.
    """

    def __init__(
        self,
        ivf: Any,
        transforms: list[Any],
        decode: Callable[[np.ndarray], np.ndarray],
        scale: np.ndarray | None,
        offset: np.ndarray | None,
        *,
        decode_ns: float,
        faiss_ns: float,
    ) -> None:
        self._ivf = ivf
        self._invlists = ivf.invlists  # an ArrayInvertedLists view (checked by of())
        self._transforms = transforms
        self._decode = decode  # a list's codes (n, code_size) uint8 -> (n, d) float32 rows, up to scale and offset
        self._scale = scale  # per dimension: a code's row times it (plus offset) is the decoded vector
        self._offset = offset
        self._residual = bool(ivf.by_residual)
        self._decode_ns = decode_ns  # what decoding one code costs (0: IVF-Flat's codes are the float32 rows)
        self._faiss_ns = faiss_ns  # what faiss' scan of one (query, code) pair costs (:func:`faiss_pair_ns`)
        self._graph, self._centroids, self._neighbours = _hnsw_storage(ivf.quantizer)
        self._sizes: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))  # (ntotal, codes per list)

    @classmethod
    def of(cls, index: Any) -> ListScan | None:
        """The list scanner for ``index`` (an owning faiss index as :class:`ChunkIndex` builds it), or ``None``."""
        import faiss

        found = ivf_of(index)
        if found is None:
            return None
        outer, transforms = found
        invlists: Any = outer.invlists
        if not isinstance(faiss.downcast_InvertedLists(invlists), faiss.ArrayInvertedLists):
            return None
        d, faiss_ns = int(outer.d), faiss_pair_ns(outer)
        if type(outer) is faiss.IndexIVFFlat:
            as_rows = {"decode_ns": 0.0, "faiss_ns": faiss_ns}  # the codes are the float32 rows
            return cls(outer, transforms, lambda codes: codes.view(np.float32), None, None, **as_rows)
        if type(outer) is faiss.IndexIVFPQ:  # not its subclasses (refinement codes)
            pq: Any = outer.pq
            costs = {"decode_ns": d * DECODE_PQ_NS, "faiss_ns": faiss_ns}
            return cls(outer, transforms, lambda codes: pq.decode(np.ascontiguousarray(codes)), None, None, **costs)
        if type(outer) is not faiss.IndexIVFScalarQuantizer:
            return None
        costs = {"decode_ns": d * DECODE_NS, "faiss_ns": faiss_ns}
        sq: Any = outer.sq
        kinds = faiss.ScalarQuantizer
        if sq.qtype == kinds.QT_fp16:
            return cls(outer, transforms, lambda codes: codes.view(np.float16).astype(np.float32), None, None, **costs)
        trained = faiss.vector_to_array(sq.trained).astype(np.float32)
        if sq.qtype == kinds.QT_8bit:
            vmin, vdiff = trained[:d], trained[d:]
        elif sq.qtype == kinds.QT_8bit_uniform:
            vmin, vdiff = np.full(d, trained[0], np.float32), np.full(d, trained[1], np.float32)
        else:  # 4- and 6-bit codes, direct ones
            return None
        # faiss decodes a code c as vmin + (c + 0.5) / 255 * vdiff: the rows of c, scaled, plus an offset
        step = (vdiff / np.float32(255)).astype(np.float32)
        offset = vmin + np.float32(0.5) * step
        return cls(outer, transforms, lambda codes: codes.astype(np.float32), step, offset, **costs)

    def search(
        self, q: np.ndarray, k: int, *, nprobe: int | None = None, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``k`` best hits of each (unit, float32) query row, as faiss' ``search`` at the index's ``nprobe``
        (or this call's ``nprobe`` and coarse ``ef_search``: :func:`probe_settings`): ``(scores, ids)``, best
        first, padded with ids ``-1`` where the probed lists hold fewer. ``None`` where the batch's queries share
        too few lists for a scan to be faster than faiss (:func:`pays`), even were their lists :data:`NEAR_LISTS`
        times the average size: the caller then asks faiss. Where only the lists found can tell, and they tell
        against the scan, faiss searches them (its ``search_preassigned``, one slice of queries per thread)."""
        ivf = self._ivf
        if len(q) < 2 or int(ivf.max_codes):  # nothing to share; faiss' scans stop after max_codes codes
            return None
        if int(getattr(ivf, "polysemous_ht", 0)):  # faiss scores only the PQ codes near the query's in Hamming
            return None
        nlist, total = int(ivf.nlist), int(ivf.ntotal)
        asked = (nprobe, ef_search)
        nprobe, coarse_params = probe_settings(ivf, nprobe, ef_search)
        # first, before any work: the lists the batch is expected to visit if its queries probed lists at random,
        # and the codes in them (at 10M and 1M regions of clustered data, within 2% of what batches of 128-1,000
        # queries visited and probed at nprobe 256). A query's nearest lists are the large ones in clustered data,
        # so fewer lists probe more codes than that (up to NEAR_LISTS times): where that could change the answer,
        # the lists the coarse search finds decide, and faiss searches them if the scan does not pay
        share = 1.0 if nlist == 1 else -math.expm1(len(q) * nprobe * math.log1p(-1 / nlist))
        expected = len(q) * nprobe * total / nlist
        sure = pays(nlist * share, total * share, expected, self._decode_ns, self._faiss_ns)
        if not sure and not pays(nlist * share, total * share, NEAR_LISTS * expected, self._decode_ns, self._faiss_ns):
            return None
        for transform in self._transforms:
            q = transform.apply(q)
        q = np.ascontiguousarray(q, dtype=np.float32)
        coarse, lists = self._coarse(q, nprobe, coarse_params)
        if not sure and not self._pays_for(lists):
            return self._preassigned(q, k, coarse, lists, *asked)
        rows = max(1, _HEAP_SLOTS // k)
        pending = [_Pairs.of(coarse[s : s + rows], lists[s : s + rows], self._residual) for s in range(0, len(q), rows)]
        del coarse, lists  # the pairs hold what the scan needs of them: the lists' arrays are freed before it
        parts = []
        for s in range(0, len(q), rows):
            parts.append(self._search_part(q[s : s + rows], pending.pop(0), k))  # each part's pairs freed after it
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _pays_for(self, lists: np.ndarray) -> bool:
        """:func:`pays` for the lists a batch probes (``-1``: none), from their sizes."""
        probed = lists[lists >= 0]
        visited = np.unique(probed)
        sizes = self._list_sizes()
        codes, pairs = float(sizes[visited].sum()), float(sizes[probed].sum())
        return pays(len(visited), codes, pairs, self._decode_ns, self._faiss_ns)

    def index_changed(self) -> None:
        """Vectors were added or removed: the list sizes are worked out again at the next batch that needs them
        (a change that leaves the index's size as it was would not show in it)."""
        self._sizes = (-1, self._sizes[1])

    def _list_sizes(self) -> np.ndarray:
        """The codes in each list (worked out again after :meth:`index_changed`, or when the index's size
        changes)."""
        total = int(self._ivf.ntotal)
        if self._sizes[0] != total:
            sizes = np.array([self._invlists.list_size(i) for i in range(int(self._ivf.nlist))], dtype=np.int64)
            self._sizes = (total, sizes)
        return self._sizes[1]

    def _preassigned(
        self, q: np.ndarray, k: int, coarse: np.ndarray, lists: np.ndarray, nprobe: int | None, ef_search: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss' search of the (transformed) rows ``q`` in the ``lists`` found for them, at centroid scores
        ``coarse``: its ``search_preassigned`` on one slice of the queries per thread (as its own search splits a
        batch), so that the coarse search is not made twice."""
        from crossscale.index import _probe_split

        params = ivf_search_parameters(self._ivf, nprobe, ef_search)  # its nprobe: lists' columns
        parts = max(1, min(_probe_split.split_threads(), len(q)))
        bounds = np.linspace(0, len(q), parts + 1).astype(int)

        def run(part: int) -> tuple[np.ndarray, np.ndarray]:
            s, e = bounds[part], bounds[part + 1]
            return _probe_split.search_preassigned(self._ivf, q[s:e], k, lists[s:e], coarse[s:e], params)

        found = _probe_split.in_parts(run, parts)
        return np.concatenate([s for s, _ in found]), np.concatenate([i for _, i in found])

    def _coarse(self, q: np.ndarray, nprobe: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``nprobe`` lists and its scores against their centroids, from the coarse quantizer searched
        with ``params`` (``None``: its own settings). An HNSW quantizer whose beam costs more than one product of
        the batch with every centroid (:func:`exact_coarse_pays`) is searched exactly, through its flat storage:
        the nearest lists themselves, in less time (at 10M regions, 16,384 lists, a beam of 512: 0.86 s instead of
        1.6-2.2 s for 10,000 queries, where the beam found 99.85% of the nearest lists; docs/benchmarks.md)."""
        if self._graph is not None:  # its own beam (efSearch) is read now: set_search_params may have changed it
            beam = int(self._graph.efSearch if params is None else params.efSearch)
            if exact_coarse_pays(int(self._ivf.nlist), beam, self._neighbours):
                coarse, lists = self._centroids.search(q, nprobe)
                return coarse, lists
        coarse, lists = self._ivf.quantizer.search(q, nprobe, params=params)
        return coarse, lists

    def _search_part(self, q: np.ndarray, pairs: _Pairs, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best hits of the rows ``q`` in the lists ``pairs`` groups them by: :meth:`search`'s result."""
        flat, starts, ends = pairs.lists, pairs.starts, pairs.ends
        sizes = np.array([self._invlists.list_size(int(list_no)) for list_no in flat], dtype=np.int64)
        work = sizes * (ends - starts)
        todo = [int(j) for j in np.argsort(-work, kind="stable") if work[j]]  # the largest first: threads end together
        scaled = q if self._scale is None else q * self._scale
        dim = q.shape[1]  # of a decoded code too
        shift = np.zeros(len(q), np.float32) if self._offset is None else q @ self._offset

        def scan(part: int, next_list: Callable[[], int]) -> None:
            while (j := next_list()) >= 0:
                s, e = starts[j], ends[j]
                codes, ids = self._list(int(flat[j]), int(sizes[j]))
                mine = pairs.queries[s:e]
                rows, x = mine.astype(np.int64), scaled[mine]
                add = (shift[mine] + pairs.near[s:e] if pairs.near is not None else shift[mine])[:, None]
                step = max(_MIN_SLICE, _SCORE_SLOTS // max(len(mine), dim))
                for c in range(0, len(ids), step):
                    scores = x @ self._decode(codes[c : c + step]).T  # (queries, codes): the heap's rows
                    scores += add
                    heaps.add(part, rows, scores, ids[c : c + step])

        threads = min(_threads(), max(1, len(todo)))
        heaps = _Heaps(threads, len(q), k)
        taker = _taker(todo)
        if threads == 1:
            scan(0, taker)
        else:
            with _one_blas_thread(), ThreadPoolExecutor(threads) as pool:
                for done in [pool.submit(scan, part, taker) for part in range(threads)]:
                    done.result()
        return heaps.merged()

    def _list(self, list_no: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """A list's codes ``(size, code_size)`` and ids, as views of faiss' memory."""
        import faiss

        code_size = int(self._ivf.code_size)
        codes = faiss.rev_swig_ptr(self._invlists.get_codes(list_no), size * code_size).reshape(size, code_size)
        ids = faiss.rev_swig_ptr(self._invlists.get_ids(list_no), size)
        return codes, ids


class _Pairs:
    """A batch's ``(query, list)`` pairs grouped by list: run ``j`` of :attr:`queries` (``starts[j]`` to ``ends[j]``)
    holds the queries that probe list ``lists[j]``, and :attr:`near` their scores against its centroid (``None``
    where the codes are not residuals, which need them). Lists ``-1`` (fewer found than asked) are left out."""

    __slots__ = ("ends", "lists", "near", "queries", "starts")

    def __init__(
        self, lists: np.ndarray, starts: np.ndarray, ends: np.ndarray, queries: np.ndarray, near: np.ndarray | None
    ) -> None:
        self.lists, self.starts, self.ends, self.queries, self.near = lists, starts, ends, queries, near

    @classmethod
    def of(cls, coarse: np.ndarray, lists: np.ndarray, residual: bool) -> _Pairs:
        """The pairs of a coarse search's ``(scores, lists)``, each ``(queries, nprobe)``."""
        nprobe = lists.shape[1]
        order = np.argsort(lists.ravel(), kind="stable")  # (query, list) pairs grouped by list
        flat = lists.ravel()[order]
        near = coarse.ravel()[order] if residual else None
        queries = (order // nprobe).astype(np.int32)  # a batch's pairs number millions: 4 bytes each here
        del order
        starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
        ends = np.r_[starts[1:], len(flat)]
        keep = flat[starts] >= 0  # the quantizer may return fewer lists than asked (-1)
        starts, ends = starts[keep], ends[keep]
        return cls(flat[starts], starts, ends, queries, near)


class _Heaps:
    """One faiss heap of the ``k`` best hits of each of ``n`` queries per thread (``parts``), each over its own pair
    of ``(n, k)`` arrays; each thread adds to its own part only. :meth:`merged` then offers the other parts' hits to
    the first part's heaps where they are, so a batch holds no third pair of arrays for the merge (faiss'
    ``merge_knn_results`` writes one: 19 MiB more at the peak of 10,000 queries of 160 hits on 2 threads)."""

    def __init__(self, parts: int, n: int, k: int) -> None:
        import faiss

        self._k = k
        self._scores = [np.empty((n, k), np.float32) for _ in range(parts)]
        self._ids = [np.empty((n, k), np.int64) for _ in range(parts)]
        self._heaps: list[Any] = []
        for part in range(parts):
            heap: Any = faiss.float_minheap_array_t()  # keeps the largest scores (inner products)
            heap.k, heap.nh = k, n
            heap.val, heap.ids = faiss.swig_ptr(self._scores[part]), faiss.swig_ptr(self._ids[part])
            heap.heapify()
            self._heaps.append(heap)

    def add(self, part: int, rows: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> None:
        """Offer part ``part``'s heaps of queries ``rows`` the hits ``scores`` (one row each, float32) of the
        vectors ``ids`` (the same for every row)."""
        import faiss

        rows = np.ascontiguousarray(rows, dtype=np.int64)
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if scores.shape != (len(rows), len(ids)):
            raise ValueError(f"scores of shape {scores.shape} for {len(rows)} queries and {len(ids)} ids")
        self._heaps[part].addn_query_subset_with_ids(
            len(rows), faiss.swig_ptr(rows), len(ids), faiss.swig_ptr(scores), faiss.swig_ptr(ids), 0
        )

    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        """Every part's hits merged into the first part's heaps, then sorted, best first (padding, ids ``-1``,
        last): ``(scores, ids)``, each ``(n, k)``. The heaps are spent: call it once, after the last :meth:`add`."""
        import faiss

        first, k = self._heaps[0], self._k
        while len(self._heaps) > 1:  # a part's slots never filled hold faiss' lowest score and are never taken
            scores, ids = self._scores.pop(), self._ids.pop()
            self._heaps.pop()
            first.addn_with_ids(k, faiss.swig_ptr(scores), faiss.swig_ptr(ids), k)
        first.reorder()
        return self._scores[0], self._ids[0]


def behind_transforms(index: Any) -> tuple[Any, list[Any]]:
    """The index behind ``index``'s vector transforms (crossscale's projection, an explicit factory's own, or
    both), downcast, and those transforms in the order faiss applies them (downcast); ``index`` itself and no
    transforms where it has none."""
    import faiss

    outer: Any = faiss.downcast_index(index)
    transforms: list[Any] = []
    while isinstance(outer, faiss.IndexPreTransform):
        chain: Any = outer.chain
        transforms += [faiss.downcast_VectorTransform(chain.at(i)) for i in range(chain.size())]
        outer = faiss.downcast_index(outer.index)
    return outer, transforms


def ivf_of(index: Any) -> tuple[Any, list[Any]] | None:
    """The inner-product IVF structure of ``index`` (downcast) and the vector transforms before it (a projection),
    or ``None`` where ``index`` is not an IVF index, optionally behind transforms."""
    import faiss

    outer, transforms = behind_transforms(index)
    if not isinstance(outer, faiss.IndexIVF) or outer.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    return outer, transforms


def probe_settings(ivf: Any, nprobe: int | None, ef_search: int | None) -> tuple[int, Any]:
    """How a search of the IVF index ``ivf`` probes under one call's settings (``None``: the index's own): the
    lists per query (at most the index's lists) and the search parameters of its coarse quantizer, ``None`` for
    the quantizer's own. An HNSW quantizer searches with a beam of ``ef_search`` where given, else ``2 * nprobe``
    where ``nprobe`` is given (what :func:`crossscale.index.search_params` sets on an index: a narrower beam
    returns fewer lists than asked), else its own."""
    import faiss

    probes = max(1, min(int(ivf.nprobe) if nprobe is None else int(nprobe), int(ivf.nlist)))
    if ef_search is not None:
        beam = int(ef_search)
    elif nprobe is not None:
        beam = 2 * int(nprobe)
    else:
        return probes, None
    if not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        return probes, None
    params: Any = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
    params.efSearch = beam
    return probes, params


def ivf_search_parameters(ivf: Any, nprobe: int | None, ef_search: int | None) -> Any:
    """faiss ``SearchParametersIVF`` for one search of ``ivf`` (or an index wrapping it) under one call's settings
    (:func:`probe_settings`; its coarse quantizer's in ``quantizer_params``, ``None`` for the quantizer's own), the
    index's ``max_codes`` kept."""
    import faiss

    probes, coarse_params = probe_settings(ivf, nprobe, ef_search)
    params: Any = faiss.SearchParametersIVF()  # type: ignore[attr-defined]
    params.nprobe = probes
    params.max_codes = int(ivf.max_codes)
    if coarse_params is not None:
        params.quantizer_params = coarse_params  # faiss' wrapper keeps a reference with it
    return params


def _hnsw_storage(quantizer: Any) -> tuple[Any, Any, int]:
    """An HNSW coarse quantizer's graph, the flat index of its centroids and the neighbours each node has on the
    graph's lowest level (views); ``(None, None, 0)`` for other quantizers (a flat one is exact already)."""
    import faiss

    hnsw: Any = faiss.downcast_index(quantizer)
    if not isinstance(hnsw, faiss.IndexHNSW):
        return None, None, 0
    storage: Any = faiss.downcast_index(hnsw.storage)
    if not isinstance(storage, faiss.IndexFlat) or storage.metric_type != hnsw.metric_type:
        return None, None, 0
    graph: Any = hnsw.hnsw
    return graph, storage, int(graph.nb_neighbors(0))


def exact_coarse_pays(lists: int, beam: int, neighbours: int) -> bool:
    """Whether a batch finds its lists faster by one product with all ``lists`` centroids (BLAS) than by an HNSW
    search with a beam of ``beam`` over a graph of ``neighbours`` per node on its lowest level: a beam visits about
    ``beam * neighbours`` centroids, each at about the cost of a centroid in the product (measured at 16,384 lists,
    256-d, 64 neighbours, 10,000 queries, 2 cores: beam 512 1.6-2.2 s, 256 0.74-0.79 s, the product 0.86 s)."""
    return lists < beam * neighbours


def pays(lists: float, codes: float, pairs: float, decode_ns: float, faiss_ns: float) -> bool:
    """Whether scanning a batch list by list is expected to be faster than faiss' search of it: the scan visits
    ``lists`` lists holding ``codes`` codes, each costing ``decode_ns`` to decode (0 for IVF-Flat's float32 rows),
    and the batch's queries probe ``pairs`` (query, code) pairs, which faiss would score one query at a time at
    ``faiss_ns`` each (:func:`faiss_pair_ns`; :data:`LIST_NS` and the rates beside it)."""
    scan = lists * LIST_NS + codes * decode_ns + pairs * PAIR_NS
    return scan < pairs * faiss_ns


def faiss_pair_ns(ivf: Any) -> float:
    """What faiss' scan of one (query, code) pair of the IVF index ``ivf`` costs (ns): each dimension of a float32 row
    (IVF-Flat) or of a scalar code, or one table look-up per sub-quantizer of a product-quantizer code."""
    import faiss

    if isinstance(ivf, faiss.IndexIVFFlat):
        return int(ivf.d) * FAISS_FLAT_NS
    if isinstance(ivf, faiss.IndexIVFPQ):
        return int(ivf.pq.M) * FAISS_PQ_NS
    return int(ivf.d) * FAISS_CODES_NS


def _taker(todo: list[int]) -> Callable[[], int]:
    """A thread-safe ``next`` over ``todo`` that returns ``-1`` at the end."""
    items = iter(todo)
    lock = threading.Lock()

    def take() -> int:
        with lock:
            return next(items, -1)

    return take


def _threads() -> int:
    """Threads for a scan: faiss' OpenMP setting, at most the CPUs; 1 where BLAS' threads cannot be limited (two
    scans each with a multi-threaded BLAS contend: 0.3x measured)."""
    import faiss

    wanted = max(1, min(os.cpu_count() or 1, int(faiss.omp_get_max_threads())))
    return wanted if wanted > 1 and _blas_controller() is not None else 1


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's handle on the BLAS libraries loaded (numpy's), or ``None`` if it finds none."""
    from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

    blas = ThreadpoolController().select(user_api="blas")
    return blas if blas.lib_controllers else None


_ONE_BLAS_THREAD = SharedSetting()


def _one_blas_thread() -> AbstractContextManager[None]:
    """BLAS runs single-threaded while any scan runs (the scan's own threads use the cores): the first scan in
    limits it and the last one out restores it (:class:`._shared_setting.SharedSetting`), so that concurrent scans
    never leave it limited."""

    def apply() -> Callable[[], None] | None:
        controller = _blas_controller()
        if controller is None:
            return None
        return controller.limit(limits=1).restore_original_limits  # type: ignore[no-any-return]

    return _ONE_BLAS_THREAD(apply)
