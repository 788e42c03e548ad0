"""One query's IVF search split over the cores by the lists it probes.

faiss' CPU IVF search splits a batch over its queries (``parallel_mode`` 0): a single query runs on one core
whatever the machine has. Its other mode (1: the lists of each query over the cores) makes one query ~1.8x faster
on 2 cores but a batch up to 20% slower, and it is a setting of the shared index, not of one call. Here a search
of fewer queries than there are threads cuts the lists each query probes into one part per thread, searches each
part with faiss' ``search_preassigned`` in its own thread (faiss releases the GIL), and merges the parts' hits.
The lists, the codes scanned and the scores are faiss' own (each (query, code) pair is scored by the same code);
only which of several equal scores comes first may differ, which :class:`~crossscale.index.ChunkIndex` orders by
id anyway. Larger batches are left to faiss.

Supported: ``IndexIVFFlat``, ``IndexIVFScalarQuantizer`` and ``IndexIVFPQ``, behind an optional projection, with
any inverted lists; structures with their own search (fast-scan, ``IVFPQR``, ...) are left to faiss, and so are
searches under a ``max_codes`` cap (per part it would cap something else).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

_T = TypeVar("_T")

__all__ = ["MIN_SCAN_NS", "ProbeSplit", "in_parts", "search_preassigned", "split_threads"]

#: a query is split only where faiss' scan of its lists is expected to take at least this long on one core (ns, at
#: :mod:`._list_scan`'s rates): handing parts to threads costs ~50 us, and a query of an IVF1024 over 200k vectors
#: (~0.16 ms) was 5% slower split; one over 10M regions (~9 ms) 1.8x faster
MIN_SCAN_NS = 200_000.0


class ProbeSplit:
    """A searcher of a few queries at a time over an IVF index's lists, one part per thread (a view: the index must
    outlive it). Use :meth:`of`, which returns ``None`` for structures it does not split."""

    def __init__(self, ivf: Any, transforms: list[Any]) -> None:
        self._ivf = ivf
        self._transforms = transforms
        self._judged: tuple[int, int, float, bool] = (-1, -1, -1.0, False)  # (nprobe, vectors, floor, worth it)

    @classmethod
    def of(cls, index: Any) -> ProbeSplit | None:
        """The splitter for ``index`` (an owning faiss index as :class:`ChunkIndex` builds it), or ``None``."""
        import faiss

        from crossscale.index._list_scan import ivf_of

        found = ivf_of(index)
        if found is None:
            return None
        ivf, transforms = found
        if type(ivf) not in (faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer, faiss.IndexIVFPQ):
            return None
        return cls(ivf, transforms)

    def search(
        self,
        q: np.ndarray,
        k: int,
        threads: int | None = None,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``k`` best hits of each (unit, float32) query row, as faiss' ``search`` gives them (at the index's
        ``nprobe``, or this call's ``nprobe`` and coarse ``ef_search``: :func:`._list_scan.probe_settings`):
        ``(scores, ids)``, best first, padded with ids ``-1``. ``None`` where splitting does not help (as many
        queries as threads, or more; one list probed; lists too short to pay for the threads:
        :data:`MIN_SCAN_NS`; a ``max_codes`` cap): the caller then asks faiss. ``threads``: how many parts
        (default: faiss' OpenMP threads, at most the CPUs)."""
        from crossscale.index._list_scan import ivf_search_parameters

        ivf = self._ivf
        parts = split_threads() if threads is None else int(threads)
        if parts < 2 or not 0 < len(q) < parts:
            return None
        params = ivf_search_parameters(ivf, nprobe, ef_search)
        nprobe, total = int(params.nprobe), int(ivf.ntotal)
        if (nprobe, total, MIN_SCAN_NS) != self._judged[:3]:  # what the lists hold changes only with adds
            worth = min(nprobe, int(ivf.nlist)) >= 2 and _scan_ns(ivf, nprobe) >= MIN_SCAN_NS
            self._judged = (nprobe, total, MIN_SCAN_NS, worth)
        if not self._judged[3] or int(ivf.max_codes):
            return None
        parts = min(parts, nprobe)
        for transform in self._transforms:
            q = transform.apply(q)
        q = np.ascontiguousarray(q, dtype=np.float32)
        coarse, lists = ivf.quantizer.search(q, nprobe, params=params.quantizer_params)
        # the lists nearest first, dealt out back and forth (0 1 1 0 0 1 ...): the near lists are the large ones
        # in clustered data, so each part gets a like share of them; the other parts' columns are -1 (skipped)
        snake = np.arange(nprobe) % (2 * parts)
        owner = np.where(snake < parts, snake, 2 * parts - 1 - snake)
        shares = [np.where(owner == p, lists, -1) for p in range(parts)]

        def run(part: int) -> tuple[np.ndarray, np.ndarray]:
            return search_preassigned(ivf, q, k, shares[part], coarse, params)

        found = in_parts(run, parts)
        import faiss

        return faiss.merge_knn_results(  # type: ignore[no-any-return]
            np.stack([s for s, _ in found]), np.stack([i for _, i in found]), keep_max=True
        )


def search_preassigned(
    ivf: Any, q: np.ndarray, k: int, lists: np.ndarray, coarse: np.ndarray, params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """faiss' ``search_preassigned`` of the (float32, contiguous) rows ``q`` in the probed ``lists`` (``-1``:
    skipped) at distances ``coarse``, under ``params`` (whose ``nprobe`` is ``lists``' columns). Called below faiss'
    Python wrapper, which takes no parameters and wants the index's own ``nprobe`` of columns; faiss releases the
    GIL while it searches."""
    import faiss

    lists = np.ascontiguousarray(lists, dtype=np.int64)
    coarse = np.ascontiguousarray(coarse, dtype=np.float32)
    scores = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    sp = faiss.swig_ptr
    ivf.search_preassigned_c(len(q), sp(q), k, sp(lists), sp(coarse), sp(scores), sp(ids), False, params)
    return scores, ids


def _scan_ns(ivf: Any, nprobe: int) -> float:
    """What faiss' scan of one query's ``nprobe`` lists is expected to take on one core (ns): the codes in that many
    lists of average size, at the rate of :func:`._list_scan.faiss_pair_ns` each."""
    from crossscale.index._list_scan import faiss_pair_ns

    codes = int(ivf.ntotal) * min(nprobe, int(ivf.nlist)) / max(1, int(ivf.nlist))
    return codes * faiss_pair_ns(ivf)


def in_parts(run: Callable[[int], _T], parts: int) -> list[_T]:
    """``[run(0), ..., run(parts - 1)]``: part 0 in this thread, the others on the process's shared pool (faiss
    releases the GIL while it searches, so the parts run at once)."""
    pending = [_pool(parts - 1).submit(run, part) for part in range(1, parts)] if parts > 1 else []
    return [run(0)] + [p.result() for p in pending]


def split_threads() -> int:
    """Parts for a split search: faiss' OpenMP threads, at most the CPUs (``faiss.omp_set_num_threads(1)`` turns
    splitting off)."""
    import faiss

    return max(1, min(_cpus(), int(faiss.omp_get_max_threads())))


@functools.cache
def _cpus() -> int:
    """The machine's CPUs, asked once: ``os.cpu_count()`` took 8 us a call here, a tenth of a small search."""
    return os.cpu_count() or 1


_POOL_LOCK = threading.Lock()
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of at least ``workers`` threads for split searches, made on first use and again in a
    forked child (a child inherits the pool object but not its threads: tasks given to it would never run)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < workers:
            if _POOL is not None and _POOL[0] == os.getpid():  # outgrown: its threads end once idle
                _POOL[2].shutdown(wait=False)
            _POOL = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="crossscale-probe"))
        return _POOL[2]
