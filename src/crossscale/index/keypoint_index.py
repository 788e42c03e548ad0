"""Parents found by their local features: every parent's keypoint descriptors in one faiss index, and a vote.

The classic first stage of instance retrieval before global descriptors (Lowe 2004; Sivic & Zisserman's "Video
Google", 2003): each descriptor of the query looks up its nearest stored descriptors, and a parent earns a vote
when the query descriptor's nearest neighbour is one of its keypoints and is distinctly closer than the nearest
keypoint of any *other* parent (Lowe's ratio test, taken across parents). An object pasted into one parent is
found by its own keypoints, however small it is in that parent, where one vector per region sees it mixed with
its background. The parents with the most votes are candidates for geometric verification, which decides.

Descriptors (SIFT's, or RootSIFT's scaled to 0-255, one byte per dimension) are stored in 4 bits per dimension
(or as they come, ``codec="sq8"``) in an inverted file: the lists are trained from the descriptors held when the
index is first searched and trained again when it has grown fourfold since, so a search scans a few lists whatever
the collection's size (from 4,096 lists, by two-level k-means, as :class:`~crossscale.index.ChunkIndex` does).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from crossscale._checks import int_at_least, number_in, positive_int
from crossscale.errors import ConfigurationError, CrossScaleError, VectorError, WorkspaceFormatError
from crossscale.index._faiss_file import IndexFile
from crossscale.index._kmeans import TWO_LEVEL_MIN_LISTS, two_level_centroids

logger = logging.getLogger(__name__)

__all__ = ["KeypointIndex", "ratio_votes"]

_SHIFT = 24  # descriptor id = parent slot << _SHIFT | keypoint number: up to 16M keypoints per parent
_NEIGHBOURS = 8  # stored descriptors looked up per query descriptor (the ratio test needs another parent's)
_PER_LIST = 256  # descriptors per inverted list the training aims for
_MAX_LISTS = 16384
_SAMPLE_PER_LIST = 64  # training descriptors per list
_ADD_ROWS = 65_536  # descriptors per faiss add when filling a trained index
_FILE = IndexFile(b"CSKPX\x00\x01\n", 1, "keypoint index", checksummed=True)
#: how stored descriptors are coded: the faiss scalar quantizer and the bytes per dimension
CODECS = {"sq8": ("QT_8bit_direct", 1.0), "sq4": ("QT_4bit", 0.5)}


def _faiss() -> Any:
    import faiss

    return faiss


def ratio_votes(distances: np.ndarray, owners: np.ndarray, ratio: float, parents: int) -> np.ndarray:
    """Votes per parent (an array of ``parents`` counts) from a kNN search of query descriptors: ``distances``
    (squared L2, nearest first) and ``owners`` (the parent number of each neighbour, ``-1`` for padding), one row
    per query descriptor. A row votes for its nearest neighbour's parent when that neighbour is closer than
    ``ratio`` times the nearest neighbour of another parent (squared: ``ratio**2``), or when no other parent's is
    among its neighbours."""
    first = owners[:, 0]
    other = (owners != first[:, None]) & (owners >= 0)
    has_other = other.any(axis=1)
    nearest_other = distances[np.arange(len(owners)), np.where(has_other, other.argmax(axis=1), 0)]
    passed = (first >= 0) & (~has_other | (distances[:, 0] < ratio**2 * nearest_other))
    return np.bincount(first[passed], minlength=parents)


def _lists_for(n: int) -> int:
    """Inverted lists for ``n`` descriptors: a power of two near ``n / 256`` (one list, i.e. a flat scan, below
    1,024 descriptors)."""
    if n < 4 * _PER_LIST:
        return 1
    return int(min(_MAX_LISTS, 2 ** round(np.log2(n / _PER_LIST))))


class KeypointIndex:
    """Local descriptors of many parents, and :meth:`vote`: which parents a query's descriptors point to.

    Args:
        dim: descriptor length (128 for SIFT).
        ratio: Lowe's ratio test across parents: a query descriptor votes for the parent of its nearest stored
            descriptor only if that one is closer than ``ratio`` times the nearest descriptor of another parent.
        nprobe: inverted lists searched per query descriptor.
        seed: for the training sample.
        codec: how descriptors are kept: ``"sq4"`` (the default: 4 bits per dimension, each dimension's range
            learned when the lists are trained; distances approximate) or ``"sq8"`` (each byte as it is, twice the
            bytes). On the quality benchmark both gave the same figures in every run (docs/benchmarks.md).

    Memory: ``dim / 2 + 8`` bytes per stored descriptor with ``"sq4"`` (its codes and its id), ``dim + 8`` with
    ``"sq8"``, plus the lists' growth slack; ~0.19 MB (``"sq4"``) or ~0.36 MB (``"sq8"``) per parent at the SIFT
    verifier's defaults (~2,700 keypoints of a photo kept). Training again holds the old and the new lists side by
    side for a moment (twice that).
    """

    def __init__(
        self, dim: int = 128, *, ratio: float = 0.8, nprobe: int = 8, seed: int = 0, codec: str = "sq4"
    ) -> None:
        if codec not in CODECS:
            raise ConfigurationError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
        self.codec = codec
        self.dim = positive_int("dim", dim)
        self.ratio = number_in("ratio", ratio, 0.0, 1.0, low_open=True)
        self.nprobe = positive_int("nprobe", nprobe)
        self.seed = int_at_least("seed", seed, 0)
        self._slots: list[str | None] = []
        self._slot_of: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._pending: list[tuple[int, np.ndarray]] = []  # added since the last training: (slot, descriptors)
        self._index: Any = None
        self._trained_for = 0
        self._total = 0

    def __len__(self) -> int:
        """Parents held."""
        return len(self._slot_of)

    def __contains__(self, parent_id: object) -> bool:
        return parent_id in self._slot_of

    def __repr__(self) -> str:
        return f"KeypointIndex(parents={len(self)}, descriptors={self._total}, dim={self.dim}, codec={self.codec!r})"

    @property
    def descriptor_count(self) -> int:
        """Descriptors held, all parents together."""
        return self._total

    @property
    def nbytes(self) -> int:
        """Bytes of the descriptors and their ids (without the lists' slack)."""
        return self._total * (math.ceil(self.dim * CODECS[self.codec][1]) + 8)

    def count(self, parent_id: str) -> int:
        """Descriptors held for ``parent_id`` (0 if none or not held)."""
        return self._counts.get(parent_id, 0)

    def parent_ids(self) -> Iterator[str]:
        """The parents held, in the order they were added."""
        return (p for p in self._slots if p is not None)

    def add(self, parent_id: str, descriptors: np.ndarray) -> None:
        """Hold ``descriptors`` ((n, dim) uint8) as ``parent_id``'s, replacing any it had.

        Raises:
            VectorError: not a 2-D uint8 array of ``dim`` columns.
        """
        if not isinstance(parent_id, str) or not parent_id:
            raise VectorError(f"parent_id must be a non-empty string, got {parent_id!r}")
        rows = self._rows(descriptors, f"descriptors of parent {parent_id!r}")
        if rows.shape[0] >= 1 << _SHIFT:
            raise VectorError(f"parent {parent_id!r} has {rows.shape[0]} descriptors; at most {(1 << _SHIFT) - 1}")
        self.remove(parent_id)
        slot = len(self._slots)
        self._slots.append(parent_id)
        self._slot_of[parent_id] = slot
        self._counts[parent_id] = len(rows)
        self._total += len(rows)
        if len(rows):
            if self._index is None:
                self._pending.append((slot, np.ascontiguousarray(rows)))
            else:
                self._index.add_with_ids(rows.astype(np.float32), self._ids(slot, len(rows)))

    def remove(self, parent_id: str) -> bool:
        """Forget ``parent_id``'s descriptors; ``False`` if it held none."""
        slot = self._slot_of.pop(parent_id, None)
        if slot is None:
            return False
        self._slots[slot] = None
        self._total -= self._counts.pop(parent_id)
        self._pending = [(s, rows) for s, rows in self._pending if s != slot]
        if self._index is not None:
            faiss = _faiss()
            self._index.remove_ids(faiss.IDSelectorRange(slot << _SHIFT, (slot + 1) << _SHIFT))
        return True

    def vote(self, descriptors: np.ndarray, top_n: int) -> list[tuple[str, int]]:
        """The (at most) ``top_n`` parents with the most votes from the query's ``descriptors``, most first.

        Each query descriptor votes at most once: for the parent of its nearest stored descriptor, when that one
        passes the ratio test against the nearest descriptor of any other parent (or when no other parent's is
        among its neighbours). Parents with no vote are left out; ties go to the parent added first.

        Raises:
            VectorError: ``descriptors`` is not a (n, dim) uint8 array.
        """
        top_n = positive_int("top_n", top_n)
        rows = self._rows(descriptors, "query descriptors")
        if not len(rows) or not self._total:
            return []
        index = self._searchable()
        distances, ids = index.search(rows.astype(np.float32), min(_NEIGHBOURS, self._total))
        counts = ratio_votes(distances, np.where(ids >= 0, ids >> _SHIFT, -1), self.ratio, len(self._slots))
        order = np.argsort(-counts, kind="stable")[:top_n]
        return [(name, int(counts[s])) for s in order if counts[s] > 0 and (name := self._slots[s]) is not None]

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> None:
        """Write the index and ``meta`` (JSON-ready) to ``path`` atomically (temp file, fsync, ``os.replace``).

        Descriptors added since the lists were trained are put in them first (:meth:`train`), so the file holds
        one faiss index, streamed to it (no second copy in memory), with a checksum.
        """
        self.train()
        header = {
            "dim": self.dim,
            "ratio": self.ratio,
            "nprobe": self.nprobe,
            "seed": self.seed,
            "codec": self.codec,
            "slots": self._slots,
            "counts": [self._counts.get(p, 0) if p is not None else 0 for p in self._slots],
            "total": self._total,
            "trained_for": self._trained_for,
            "meta": dict(meta or {}),
        }
        _FILE.write(path, header, self._index)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> tuple[KeypointIndex, dict[str, Any]]:
        """Read an index written by :meth:`save`; returns ``(index, meta)``. The faiss data is checked against
        the file's checksum as it is read.

        Raises:
            WorkspaceFormatError: not a keypoint index file, a newer format, corrupt, truncated, or inconsistent.
            OSError: it cannot be read.
        """
        header, index = _FILE.read(path)
        try:
            obj = cls(
                int(header["dim"]),
                ratio=float(header["ratio"]),
                nprobe=int(header["nprobe"]),
                seed=int(header["seed"]),
                codec=str(header.get("codec", "sq8")),
            )
            slots = [None if p is None else str(p) for p in header["slots"]]
            counts = [int(c) for c in header["counts"]]
            total, trained_for = int(header["total"]), int(header["trained_for"])
            meta = dict(header["meta"])
        except (KeyError, TypeError, ValueError, AttributeError, CrossScaleError) as exc:  # missing, wrong kind
            raise WorkspaceFormatError(f"{path}: keypoint index header is inconsistent: {exc!r}") from exc
        held = [p for p in slots if p is not None]
        wrong = (
            len(counts) != len(slots)
            or len(set(held)) != len(held)
            or min(counts, default=0) < 0
            or sum(counts) != total
            or (index is None and total > 0)
            or (index is not None and (index.ntotal != total or index.d != obj.dim))
            or (index is not None and getattr(index, "code_size", -1) != math.ceil(obj.dim * CODECS[obj.codec][1]))
        )
        if wrong:
            raise WorkspaceFormatError(f"{path}: keypoint index header disagrees with its faiss data")
        obj._slots = slots
        obj._slot_of = {p: s for s, p in enumerate(slots) if p is not None}
        obj._counts = {p: counts[s] for s, p in enumerate(slots) if p is not None}
        obj._total = total
        obj._trained_for = trained_for
        obj._index = index
        if index is not None:
            index.nprobe = min(obj.nprobe, index.nlist)
        return obj, meta

    @staticmethod
    def check_file(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The ``meta`` of a file :meth:`save` wrote, after checking its checksum block by block (without
        loading it).

        Raises:
            WorkspaceFormatError, OSError: as :meth:`load`.
        """
        header = _FILE.check(path)  # checksummed: a file without the checksum raises instead of giving None
        return dict((header or {}).get("meta", {}))

    def check(self) -> list[str]:
        """What is inconsistent between the stored descriptors' ids and the parents held (``verify()``): ids of
        no parent held, and parents holding another number of descriptors than recorded. Reads every list."""
        found = np.zeros(len(self._slots), np.int64)
        stray = 0
        for _, ids in self._held():
            slots = ids >> _SHIFT
            inside = slots < len(self._slots)
            stray += int((~inside).sum())
            found += np.bincount(slots[inside], minlength=len(self._slots))
        problems = []
        dropped = sum(int(found[s]) for s, p in enumerate(self._slots) if p is None)
        if stray or dropped:
            problems.append(f"{stray + dropped} descriptor(s) belong to no parent held")
        wrong = [p for s, p in enumerate(self._slots) if p is not None and found[s] != self._counts[p]]
        if wrong:
            problems.append(f"{len(wrong)} parent(s) hold other descriptor counts than recorded, e.g. {wrong[0]!r}")
        return problems

    # ------------------------------------------------------------------ internals
    def _rows(self, descriptors: np.ndarray, what: str) -> np.ndarray:
        """``descriptors`` as an array, or a :class:`VectorError` naming ``what`` unless (n, dim) uint8."""
        rows = np.asarray(descriptors)
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != self.dim:
            raise VectorError(f"{what} must be a (n, {self.dim}) uint8 array, got {rows.dtype} {rows.shape}")
        return rows

    @staticmethod
    def _ids(slot: int, n: int) -> np.ndarray:
        return (np.int64(slot) << _SHIFT) + np.arange(n, dtype=np.int64)

    def train(self) -> None:
        """Train the inverted lists on the descriptors held, if there are none yet or the collection has grown
        fourfold since they were trained (the first :meth:`vote` does it otherwise)."""
        if not self._total:  # nothing to train on: a vote finds nothing either way
            return
        grown = self._total >= 4 * max(1, self._trained_for) and _lists_for(self._total) > 1
        if self._index is None or grown:
            self._train()

    def _searchable(self) -> Any:
        self.train()  # vote() returns before this when nothing is held, so there is an index now
        return self._index

    def _held(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every held descriptor with its id, in blocks: from the faiss lists, then what waits to be added."""
        faiss = _faiss()
        if self._index is not None:
            lists, code_size = self._index.invlists, self._index.code_size
            for number in range(lists.nlist):
                size = lists.list_size(number)
                if not size:
                    continue
                codes = np.array(faiss.rev_swig_ptr(lists.get_codes(number), size * code_size), dtype=np.uint8)
                ids = np.array(faiss.rev_swig_ptr(lists.get_ids(number), size), dtype=np.int64)
                if self.codec == "sq8":  # the codes are the descriptors
                    yield codes.reshape(size, self.dim), ids
                else:  # decoded: what the 4-bit codes stand for, rounded back to bytes
                    decoded = self._index.sq.decode(codes.reshape(size, code_size))
                    yield np.clip(np.rint(decoded), 0, 255).astype(np.uint8), ids
        for slot, rows in self._pending:
            yield rows, self._ids(slot, len(rows))

    def _train(self) -> None:
        """A new inverted file for what is held: lists trained on a random sample, then every descriptor added from
        the old lists block by block (the old and the new index side by side at most, no third copy)."""
        faiss = _faiss()
        total = self._total
        nlist = _lists_for(total)
        take = min(total, _SAMPLE_PER_LIST * nlist)
        if take < total:  # the same sample as drawing from all descriptors in _held()'s order, read block by block
            picks = np.sort(np.random.default_rng(self.seed).choice(total, take, replace=False))
            parts, start = [], 0
            for codes, _ in self._held():
                lo, hi = np.searchsorted(picks, [start, start + len(codes)])
                parts.append(codes[picks[lo:hi] - start])
                start += len(codes)
            sample = np.concatenate(parts)
        else:
            sample = np.concatenate([codes for codes, _ in self._held()])
        quantizer = faiss.IndexFlatL2(self.dim)
        kind = getattr(faiss.ScalarQuantizer, CODECS[self.codec][0])
        index = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, kind, faiss.METRIC_L2)
        index.by_residual = False
        floats = sample.astype(np.float32)
        if nlist >= TWO_LEVEL_MIN_LISTS:  # flat k-means over this many lists takes minutes on 2 cores
            norms = np.linalg.norm(floats, axis=1, keepdims=True)
            unit = floats / np.maximum(norms, 1e-12)
            quantizer.add(two_level_centroids(unit, nlist) * float(np.median(norms)))  # RootSIFT: norms alike
        index.train(floats)  # with the centroids in place faiss trains only the codes (a range per dimension for sq4)
        index.nprobe = min(self.nprobe, nlist)
        batch: list[tuple[np.ndarray, np.ndarray]] = []  # blocks added 65,536 rows at a time, not one call each
        for block in (*self._held(), None):
            if block is not None:
                batch.append(block)
            if batch and (block is None or sum(len(c) for c, _ in batch) >= _ADD_ROWS):
                index.add_with_ids(
                    np.concatenate([c for c, _ in batch]).astype(np.float32), np.concatenate([i for _, i in batch])
                )
                batch = []
        self._index = index
        self._pending = []
        self._trained_for = total
        logger.debug("keypoint index trained: %d descriptors in %d lists", total, nlist)
