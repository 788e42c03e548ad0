"""Chunk id → parent and chunk details, in bulk and in RAM: what the query path needs to fold hits and build
matches without reading records.

The store assigns each parent's chunk ids as one contiguous run, so the map keeps a run per parent (its first
and one-past-last id, and where its chunks' rows start) instead of an id per chunk: ~32 bytes per parent. A
lookup of a whole faiss result is one ``np.searchsorted``. Beside the runs it keeps each chunk's box, kind and
label as columns (13 bytes per chunk while boxes fit in 16 bits, 21 after), so that a search never decodes a
record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from crossscale.types import ChunkDetails

__all__ = ["ParentMap"]

_U16_MAX = np.iinfo(np.uint16).max


def _ids(chunk_ids: Sequence[int]) -> np.ndarray:
    """``chunk_ids`` as a 1-D int64 array (a ``range``, as a store's runs are, without a Python loop)."""
    if isinstance(chunk_ids, range) and chunk_ids.step == 1:
        return np.arange(chunk_ids.start, chunk_ids.stop, dtype=np.int64)
    return np.asarray(chunk_ids, dtype=np.int64).reshape(-1)


def _runs(chunk_ids: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs ``(start, stop)`` of consecutive ids in sorted ``chunk_ids``."""
    if len(chunk_ids) == 0:
        return []
    first, last = int(chunk_ids[0]), int(chunk_ids[-1])
    if last - first == len(chunk_ids) - 1:  # one run, as the store assigns them
        return [(first, last + 1)]
    breaks = np.flatnonzero(np.diff(chunk_ids) != 1) + 1
    firsts = np.r_[0, breaks]
    lasts = np.r_[breaks, len(chunk_ids)]
    return [(int(chunk_ids[a]), int(chunk_ids[b - 1]) + 1) for a, b in zip(firsts, lasts, strict=True)]


class ParentMap:
    """Which parent each chunk id belongs to, and each chunk's box, kind and label, as sorted id runs (satisfies
    :class:`~crossscale.protocols.ChunkParents`).

    Parents get small integer codes; :meth:`parent_codes` maps an array of chunk ids to codes (``-1``: no
    such chunk, or a ``-1`` padding id), :meth:`parent_id` a code back to the parent's id, and :meth:`details`
    chunk ids to their :class:`~crossscale.types.ChunkDetails` (unknown for a parent added without them).
    """

    def __init__(self) -> None:
        self._starts = np.zeros(0, np.int64)
        self._stops = np.zeros(0, np.int64)
        self._codes = np.zeros(0, np.int64)
        self._rows = np.zeros(0, np.int64)  # where each run's chunks start in the columns below
        self._names: list[str | None] = []
        self._code_of: dict[str, int] = {}
        self._boxes = np.zeros((0, 4), np.uint16)
        self._kinds = np.zeros(0, np.uint8)
        self._labels = np.zeros(0, np.int32)
        self._vocabulary: tuple[str, ...] = ()
        self._label_code: dict[str, int] = {}
        self._garbage = 0  # rows of removed parents, dropped when they outnumber the live ones

    @classmethod
    def from_parents(
        cls, parents: Iterable[tuple[str, Sequence[int]] | tuple[str, Sequence[int], ChunkDetails | None]]
    ) -> ParentMap:
        """A map of ``(parent_id, chunk_ids)`` or ``(parent_id, chunk_ids, details)`` items, built in one pass."""
        out = cls()
        out.add_many(parents)
        return out

    def __len__(self) -> int:
        """Number of parents mapped."""
        return len(self._code_of)

    def __contains__(self, parent_id: object) -> bool:
        return parent_id in self._code_of

    def __repr__(self) -> str:
        return f"ParentMap(parents={len(self)}, runs={len(self._starts)}, chunks={len(self._kinds) - self._garbage})"

    @property
    def nbytes(self) -> int:
        """Bytes of the run and detail arrays (parent id strings and the label vocabulary not counted)."""
        arrays = (self._starts, self._stops, self._codes, self._rows, self._boxes, self._kinds, self._labels)
        return int(sum(a.nbytes for a in arrays))

    def add(self, parent_id: str, chunk_ids: Sequence[int], details: ChunkDetails | None = None) -> None:
        """Map ``chunk_ids`` to ``parent_id`` (replacing what was mapped to it before), with their details (in the
        order of ``chunk_ids``) if known."""
        self.add_many([(parent_id, chunk_ids, details)])

    def add_many(
        self, parents: Iterable[tuple[str, Sequence[int]] | tuple[str, Sequence[int], ChunkDetails | None]]
    ) -> None:
        """:meth:`add` for many parents, with one re-sort of the runs.

        Details are appended in slices of ~1M chunks, so that building a map of every stored parent holds little
        more than the map itself.
        """
        starts: list[int] = []
        stops: list[int] = []
        codes: list[int] = []
        rows: list[int] = []
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        pending_rows = 0
        row = len(self._kinds)
        for item in parents:
            parent_id, chunk_ids = item[0], item[1]
            details = item[2] if len(item) > 2 else None  # type: ignore[misc]
            ids = _ids(chunk_ids)
            if details is not None and len(details) != len(ids):
                raise ValueError(f"parent {parent_id!r}: {len(ids)} chunk ids but details of {len(details)} chunks")
            if parent_id in self._code_of:  # replaced: first make what this call added so far part of the map
                self._flush(pending)
                pending_rows = 0
                self._commit(starts, stops, codes, rows)
                self.remove(parent_id)  # which may compact the rows
                row = len(self._kinds)
            code = len(self._names)
            self._names.append(parent_id)
            self._code_of[parent_id] = code
            order = None if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()) else np.argsort(ids, kind="stable")
            if order is not None:
                ids = ids[order]
            for start, stop in _runs(ids):
                starts.append(start)
                stops.append(stop)
                codes.append(code)
                rows.append(row)
                row += stop - start
            pending.append(self._columns(details, order, len(ids)))
            pending_rows += len(ids)
            if pending_rows >= 1 << 20:
                self._flush(pending)
                pending_rows = 0
        self._flush(pending)
        self._commit(starts, stops, codes, rows)

    def _commit(self, starts: list[int], stops: list[int], codes: list[int], rows: list[int]) -> None:
        """Merge new runs (their rows already appended) into the sorted run arrays, and empty the lists."""
        if not starts:
            return
        all_starts = np.concatenate([self._starts, np.asarray(starts, np.int64)])
        order = np.argsort(all_starts, kind="stable")
        self._starts = all_starts[order]
        self._stops = np.concatenate([self._stops, np.asarray(stops, np.int64)])[order]
        self._codes = np.concatenate([self._codes, np.asarray(codes, np.int64)])[order]
        self._rows = np.concatenate([self._rows, np.asarray(rows, np.int64)])[order]
        for pending in (starts, stops, codes, rows):
            pending.clear()

    def _columns(
        self, details: ChunkDetails | None, order: np.ndarray | None, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One parent's rows: boxes, kinds and labels (coded in this map's vocabulary), in chunk-id order."""
        if details is None:
            return np.zeros((n, 4), np.int32), np.full(n, ChunkDetails.UNKNOWN, np.uint8), np.full(n, -1, np.int32)
        boxes, kinds, labels = details.boxes, details.kinds, details.labels
        if order is not None:
            boxes, kinds, labels = boxes[order], kinds[order], labels[order]
        if details.vocabulary:
            codes = np.array([self._label_code.setdefault(v, len(self._label_code)) for v in details.vocabulary])
            if len(self._label_code) > len(self._vocabulary):
                self._vocabulary = tuple(self._label_code)
            labels = np.where(labels >= 0, codes[np.maximum(labels, 0)], -1)
        return boxes.astype(np.int32), kinds.astype(np.uint8, copy=False), labels.astype(np.int32, copy=False)

    def _flush(self, pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Append pending rows to the columns (widening the boxes to 32 bits once one needs it)."""
        if not pending:
            return
        boxes = np.concatenate([b for b, _, _ in pending])
        if self._boxes.dtype == np.uint16 and len(boxes) and int(boxes.max()) > _U16_MAX:
            self._boxes = self._boxes.astype(np.int32)
        self._boxes = np.concatenate([self._boxes, boxes.astype(self._boxes.dtype)])
        self._kinds = np.concatenate([self._kinds, *(k for _, k, _ in pending)])
        self._labels = np.concatenate([self._labels, *(lab for _, _, lab in pending)])
        pending.clear()

    def remove(self, parent_id: str) -> bool:
        """Forget ``parent_id`` and its chunks; False if it was not mapped."""
        code = self._code_of.pop(parent_id, None)
        if code is None:
            return False
        self._names[code] = None
        keep = self._codes != code
        self._garbage += int((self._stops[~keep] - self._starts[~keep]).sum())
        self._starts, self._stops = self._starts[keep], self._stops[keep]
        self._codes, self._rows = self._codes[keep], self._rows[keep]
        if self._garbage > max(1024, len(self._kinds) - self._garbage):
            self._compact()
        return True

    def _compact(self) -> None:
        """Drop the rows of removed parents."""
        sizes = self._stops - self._starts
        take = np.repeat(self._rows - np.r_[0, np.cumsum(sizes)[:-1]], sizes) + np.arange(int(sizes.sum()))
        self._boxes, self._kinds, self._labels = self._boxes[take], self._kinds[take], self._labels[take]
        self._rows = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
        self._garbage = 0

    def _positions(self, chunk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each id's run (clipped to a valid one) and whether the id is in it."""
        pos = np.searchsorted(self._starts, chunk_ids, side="right") - 1
        safe = np.maximum(pos, 0)
        return safe, (pos >= 0) & (chunk_ids < self._stops[safe])

    def parent_codes(self, chunk_ids: np.ndarray) -> np.ndarray:
        """The parent code of each chunk id (any shape), ``-1`` where no mapped parent has that chunk."""
        ids = np.asarray(chunk_ids, dtype=np.int64)
        if len(self._starts) == 0:
            return np.full(ids.shape, -1, np.int64)
        run, found = self._positions(ids)
        return np.where(found, self._codes[run], -1)

    def details(self, chunk_ids: np.ndarray) -> ChunkDetails:
        """The box, kind and label of each chunk id (1-D); unknown (:attr:`ChunkDetails.known` False) for an id of
        no mapped parent or of a parent added without details."""
        ids = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        if len(self._starts) == 0:
            return ChunkDetails.unknown(len(ids))
        run, found = self._positions(ids)
        rows = np.where(found, self._rows[run] + ids - self._starts[run], 0)
        kinds = self._kinds[rows] if len(self._kinds) else np.zeros(len(ids), np.uint8)
        return ChunkDetails(
            self._boxes[rows].astype(np.int64) if len(self._kinds) else np.zeros((len(ids), 4), np.int64),
            np.where(found, kinds, ChunkDetails.UNKNOWN).astype(np.uint8),
            self._labels[rows] if len(self._kinds) else np.full(len(ids), -1, np.int32),
            self._vocabulary,
        )

    def parent_id(self, code: int) -> str:
        """The parent id of a code :meth:`parent_codes` returned.

        Raises:
            KeyError: the code is not one of a mapped parent.
        """
        name = self._names[code] if 0 <= code < len(self._names) else None
        if name is None:
            raise KeyError(code)
        return name
