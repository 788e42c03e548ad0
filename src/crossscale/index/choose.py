"""Choose a faiss index structure from the collection's size and a memory budget (``index_factory="auto"``).

After autofaiss' ``get_optimal_index_keys_v2``, cut down to the structures crossscale supports and migrates between:

- ``Flat`` (exact) while the collection is small (``flat_max`` vectors) and fits;
- ``IVF{c},Flat`` (exact vectors, ``nprobe`` lists searched) while the vectors fit in the budget;
- ``IVF{c},SQ8`` (one byte per dimension) while those fit: on alike region vectors its parent recall@10 was
  0.96-0.98 where ``PQ64`` gave 0.72 (1M vectors of 256-d, docs/benchmarks.md);
- ``IVF{c},PQ{m}`` (``m`` bytes per vector, the largest ``m`` that fits) beyond that.

From :data:`HNSW_QUANTIZER_LISTS` lists on, the lists' centroids are found with an HNSW graph
(``IVF{c}_HNSW32,...``): with a flat quantizer, training and filling 16k lists cost hours on a 2-core machine.

With ``reduce_dim``, vectors are projected to that many dimensions (:class:`~crossscale.index.ChunkIndex`'s
uncentred projection) once there are :data:`REDUCE_MIN_POINTS_PER_DIM` per kept dimension to learn it from; the
structure is then chosen for the reduced vectors, and the projection matrix counts against the budget.

A budget too small for any of them is an error naming the size needed. Too few vectors to train an IVF
(faiss wants ~39 per list) stay ``Flat``, with a log line, never a faiss assertion.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass

from crossscale.errors import ConfigurationError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "HNSW_QUANTIZER_LISTS",
    "MAX_NPROBE",
    "MIN_CODES_SCANNED",
    "REDUCE_MIN_POINTS_PER_DIM",
    "IndexPlan",
    "choose_index",
    "format_bytes",
    "parse_memory",
    "search_params",
]

#: the budget of a new workspace with ``index_factory="auto"`` when none is given
DEFAULT_MAX_MEMORY = 4 << 30
#: vectors under which an exact Flat index is kept (single queries stay ~15 ms at 512-d on 2 cores)
FLAT_MAX = 100_000
#: faiss' minimum training points per IVF list (it warns below 39)
MIN_POINTS_PER_LIST = 39
#: lists from which the coarse quantizer is an HNSW graph instead of a flat scan of the centroids
HNSW_QUANTIZER_LISTS = 8192
#: training vectors per kept dimension before a projection is learned (``reduce_dim``); fewer stay unreduced
REDUCE_MIN_POINTS_PER_DIM = 8
#: training vectors per kept dimension a projection is learned from, at most
REDUCE_TRAIN_POINTS_PER_DIM = 64
#: the most IVF lists a plan searches: at 10M alike regions (16,384 lists) parent recall@10 was 0.965 at 256 and
#: 0.966 at 512 for twice the time (docs/benchmarks.md)
MAX_NPROBE = 256
#: the fewest vectors a plan's search scans (on average): an IVF of a few lists' worth of vectors, which only a
#: tight budget makes, found 0.69 of the exact parents at 16 of 512 lists (20k alike regions, ~600 scanned) and
#: 0.96-1.00 from 32 lists on (docs/benchmarks.md); 4,096 SQ8 codes cost ~0.2 ms
MIN_CODES_SCANNED = 4096
_ID_BYTES = 8  # the 64-bit id kept per vector
_HNSW_LINK_BYTES = 2 * 32 * 4  # an HNSW32 node's level-0 links
_PQ_SIZES = (64, 48, 32, 24, 16, 12, 8, 4)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(value: str | int) -> int:
    """Bytes from ``"4G"``, ``"512M"``, ``"1.5GB"``, ``"2 GiB"`` or an int (binary units: 1K = 1024).

    Raises:
        ConfigurationError: not a positive size.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"max_memory must be a size such as '4G' or a number of bytes, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", value.upper())
        if m is None:
            raise ConfigurationError(f"max_memory must be a size such as '4G', '512M' or '1.5GB', got {value!r}")
        size = int(float(m.group(1)) * _UNITS[m.group(2)])
    else:
        raise ConfigurationError(f"max_memory must be a size such as '4G' or a number of bytes, got {value!r}")
    if size <= 0:
        raise ConfigurationError(f"max_memory must be more than 0 bytes, got {value!r}")
    return size


def format_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``: sizes in messages."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class IndexPlan:
    """An index structure for ``n`` vectors: the faiss ``factory`` string, what it needs, how to search it.

    Attributes:
        factory: for :class:`~crossscale.index.ChunkIndex` (and ``faiss.index_factory``).
        bytes: the estimated RAM of the index (vectors or codes, ids, centroids, codebooks).
        nprobe: IVF lists searched per query (``None`` for Flat); set on the index when it is built.
        train_size: vectors to train on (0: no training).
        reason: one line on why, for logs and ``info()``.
        reduce_dim: the dimensions vectors are projected to first (``None``: not reduced).
    """

    factory: str
    bytes: int
    nprobe: int | None
    train_size: int
    reason: str
    reduce_dim: int | None = None

    @property
    def search_params(self) -> str | None:
        """The faiss parameters to set on the built index (:func:`search_params`); None for Flat."""
        return None if self.nprobe is None else search_params(self.factory, self.nprobe)


def search_params(factory: str, nprobe: int) -> str:
    """faiss ``ParameterSpace`` settings to search an IVF ``factory`` with ``nprobe`` lists.

    With an HNSW coarse quantizer its ``efSearch`` is set to twice ``nprobe``: left at faiss' 16, the graph
    returned 170-340 lists when 512 were asked (10M vectors, 16,384 lists), so a larger ``nprobe`` searched no
    more lists.
    """
    if "_HNSW" in factory:
        return f"nprobe={nprobe},quantizer_efSearch={2 * nprobe}"
    return f"nprobe={nprobe}"


def _nlist(n: int) -> int:
    """IVF lists: a power of two near 4·sqrt(n), with at least MIN_POINTS_PER_LIST training points each."""
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return int(max(1, min(target, 65536, n // MIN_POINTS_PER_LIST)))


def choose_index(
    n: int,
    dim: int,
    max_memory: str | int = DEFAULT_MAX_MEMORY,
    *,
    flat_max: int | None = None,
    reduce_dim: int | None = None,
) -> IndexPlan:
    """The index structure for ``n`` vectors of ``dim`` within ``max_memory`` (see the module docstring).

    ``flat_max``: the most vectors kept in an exact Flat index (default :data:`FLAT_MAX`).
    ``reduce_dim``: project vectors to this many dimensions (``< dim``) once ``n`` is enough to learn it from.

    Raises:
        ConfigurationError: bad arguments, or no structure fits: the message names the size needed.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigurationError(f"n must be an int >= 0, got {n!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigurationError(f"dim must be a positive int, got {dim!r}")
    check_reduce_dim(reduce_dim, dim)
    budget = parse_memory(max_memory)
    flat_max = FLAT_MAX if flat_max is None else flat_max
    if reduce_dim is None or n < REDUCE_MIN_POINTS_PER_DIM * reduce_dim:
        return _choose(n, dim, budget, flat_max, extra=0)
    plan = _choose(n, reduce_dim, budget, flat_max, extra=4 * dim * reduce_dim)  # + the projection matrix
    return dataclasses.replace(
        plan,
        train_size=int(min(n, max(plan.train_size, REDUCE_TRAIN_POINTS_PER_DIM * reduce_dim))),
        reason=f"{plan.reason}, projected from {dim} to {reduce_dim} dimensions",
        reduce_dim=reduce_dim,
    )


def check_reduce_dim(reduce_dim: object, dim: int | None) -> None:
    """Refuse a ``reduce_dim`` that is not ``None`` or an int in ``[1, dim)`` (``dim=None``: not yet known, any
    positive int).

    Raises:
        ConfigurationError: naming the value and what is wrong.
    """
    if reduce_dim is None:
        return
    if isinstance(reduce_dim, bool) or not isinstance(reduce_dim, int) or reduce_dim < 1:
        raise ConfigurationError(f"reduce_dim must be a positive int or None, got {reduce_dim!r}")
    if dim is not None and reduce_dim >= dim:
        raise ConfigurationError(f"reduce_dim must be less than the vectors' dimension ({dim}), got {reduce_dim}")


def _choose(n: int, dim: int, budget: int, flat_max: int, *, extra: int) -> IndexPlan:
    """The plan for ``n`` vectors of ``dim`` (as the index stores them), each size counting ``extra`` bytes more."""
    flat = n * (4 * dim + _ID_BYTES) + extra
    if n <= flat_max and flat <= budget:
        return IndexPlan("Flat", flat, None, 0, f"{n} vectors: exact search")
    nlist = _nlist(n)
    if nlist < 16:
        if flat <= budget:
            logger.info("%d vectors are too few to train an IVF index; keeping Flat", n)
            return IndexPlan("Flat", flat, None, 0, f"{n} vectors: too few to train an IVF index")
        raise ConfigurationError(
            f"max_memory={format_bytes(budget)} cannot hold {n} vectors of dim {dim}: a Flat index needs "
            f"{format_bytes(flat)}, and {n} vectors are too few to train a compressed one"
        )
    hnsw = nlist >= HNSW_QUANTIZER_LISTS
    ivf = f"IVF{nlist}_HNSW32" if hnsw else f"IVF{nlist}"
    centroids = nlist * (4 * dim + (_HNSW_LINK_BYTES if hnsw else 0))
    nprobe = int(min(nlist, MAX_NPROBE, max(16, nlist // 32, math.ceil(nlist * MIN_CODES_SCANNED / n))))
    train = int(min(n, max(MIN_POINTS_PER_LIST * nlist, 64 * nlist)))
    ivf_flat = flat + centroids
    if ivf_flat <= budget:
        return IndexPlan(f"{ivf},Flat", ivf_flat, nprobe, train, f"{n} vectors: IVF, vectors kept exact")
    ivf_sq8 = n * (dim + _ID_BYTES) + centroids + extra
    if ivf_sq8 <= budget:
        return IndexPlan(f"{ivf},SQ8", ivf_sq8, nprobe, train, f"{n} vectors: IVF, 1 byte per dimension")
    if n < 256 * MIN_POINTS_PER_LIST:  # a PQ codebook has 256 centroids per sub-vector
        raise ConfigurationError(
            f"max_memory={format_bytes(budget)} cannot hold {n} vectors of dim {dim}: an IVF index needs "
            f"{format_bytes(ivf_sq8)} with 1 byte per dimension, and {n} vectors are too few to train product "
            "quantisation"
        )
    sizes = [m for m in _PQ_SIZES if m <= dim and dim % m == 0]
    smallest = None
    for m in sizes:
        need = n * (m + _ID_BYTES) + centroids + 256 * 4 * dim + extra  # codes + ids, centroids, codebooks
        smallest = need
        if need <= budget:
            return IndexPlan(
                f"{ivf},PQ{m}",
                need,
                nprobe,
                int(min(n, max(train, 256 * MIN_POINTS_PER_LIST))),
                f"{n} vectors: IVF-PQ, {m} B each",
            )
    needed = smallest if smallest is not None else ivf_flat
    raise ConfigurationError(
        f"max_memory={format_bytes(budget)} cannot hold {n} vectors of dim {dim}: the smallest index crossscale "
        f"builds needs {format_bytes(needed)}; give a bigger max_memory"
    )
