"""Chunk id → parent and chunk details, in bulk and in RAM: what the query path needs to fold hits and build
matches without reading records.

The store assigns each parent's chunk ids as one contiguous run, so the map keeps a run per parent (its first
and one-past-last id, and where its chunks' rows start) instead of an id per chunk: ~32 bytes per parent. A
lookup of a whole faiss result is one ``np.searchsorted``. Beside the runs it keeps each chunk's box, kind and
label as columns (10 bytes per chunk while boxes fit in 16 bits and there are at most 128 labels; 18 at most),
so that a search never decodes a record.

A workspace saves the map beside its chunk index (:meth:`ParentMap.save`), so that opening reads one file of
~10 bytes per chunk instead of every parent's record in the store.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from crossscale.errors import WorkspaceFormatError
from crossscale.index._faiss_file import IndexFile
from crossscale.types import ChunkDetails

__all__ = ["ParentMap"]

_U16_MAX = np.iinfo(np.uint16).max
#: the label column's kinds, narrowest first: the first whose largest value is a code of the vocabulary holds it
_LABEL_KINDS = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))
_FILE = IndexFile(b"CSPMAP\x00\x01", 1, "parent map", checksummed=True)


def _label_kind(vocabulary: int) -> np.dtype[Any]:
    """The narrowest of :data:`_LABEL_KINDS` that holds the codes of a vocabulary of this many labels and ``-1``."""
    return next(kind for kind in _LABEL_KINDS if vocabulary - 1 <= np.iinfo(kind).max)


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
        self._labels = np.zeros(0, np.int8)  # widened as the vocabulary grows (_label_kind)
        self._vocabulary: tuple[str, ...] = ()
        self._label_code: dict[str, int] = {}
        # parent_codes' int32 copy of _codes, and the array it was made from
        self._narrow_codes = (self._codes, self._codes.astype(np.int32))
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
    def chunk_count(self) -> int:
        """Number of chunk ids mapped."""
        return int((self._stops - self._starts).sum())

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
        """Append pending rows to the columns (widening the boxes to 32 bits once one needs it, and the labels to the
        kind the vocabulary needs)."""
        if not pending:
            return
        boxes = np.concatenate([b for b, _, _ in pending])
        if self._boxes.dtype == np.uint16 and len(boxes) and int(boxes.max()) > _U16_MAX:
            self._boxes = self._boxes.astype(np.int32)
        self._boxes = np.concatenate([self._boxes, boxes.astype(self._boxes.dtype)])
        self._kinds = np.concatenate([self._kinds, *(k for _, k, _ in pending)])
        kind = np.promote_types(self._labels.dtype, _label_kind(len(self._vocabulary)))  # codes already in it
        self._labels = np.concatenate([self._labels, *(lab for _, _, lab in pending)], dtype=kind)
        pending.clear()

    def remove(self, parent_id: str) -> bool:
        """Forget ``parent_id`` and its chunks; False if it was not mapped."""
        return self.remove_many([parent_id]) == 1

    def remove_many(self, parent_ids: Iterable[str]) -> int:
        """Forget these parents and their chunks, in one pass over the runs (:meth:`remove` of each would make one
        per parent); returns how many were mapped."""
        codes = [code for p in dict.fromkeys(parent_ids) if (code := self._code_of.pop(p, None)) is not None]
        if not codes:
            return 0
        for code in codes:
            self._names[code] = None
        keep = ~np.isin(self._codes, np.asarray(codes, np.int64))
        self._garbage += int((self._stops[~keep] - self._starts[~keep]).sum())
        self._starts, self._stops = self._starts[keep], self._stops[keep]
        self._codes, self._rows = self._codes[keep], self._rows[keep]
        if self._garbage > max(1024, len(self._kinds) - self._garbage):
            self._compact()
        return len(codes)

    def _compact(self) -> None:
        """Drop the rows of removed parents."""
        self._boxes, self._kinds, self._labels, self._rows = self._compacted()
        self._garbage = 0

    def _compacted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The columns without the rows of removed parents, and the runs' rows in them (new arrays; the map is
        unchanged)."""
        if not self._garbage:
            return self._boxes, self._kinds, self._labels, self._rows
        sizes = self._stops - self._starts
        firsts = (np.cumsum(sizes) - sizes).astype(np.int64)  # where each run starts once compacted
        take = np.repeat(self._rows - firsts, sizes) + np.arange(int(sizes.sum()))
        return self._boxes[take], self._kinds[take], self._labels[take], firsts

    # ------------------------------------------------------------------ file
    def save(self, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None) -> None:
        """Write the map and ``meta`` (JSON-ready) to ``path`` atomically (temporary file, fsync, ``os.replace``),
        with a checksum. Removed parents are left out and the parent codes renumbered, so :meth:`load` gives an
        equal map, not the same codes."""
        _FILE.write_arrays(path, *self._file_content(meta))

    def _file_content(self, meta: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The header and the arrays :meth:`save` writes."""
        live = np.fromiter((name is not None for name in self._names), bool, len(self._names))
        new_code = np.cumsum(live) - 1
        names = [name.encode() for name in self._names if name is not None]
        boxes, kinds, labels, rows = self._compacted()
        arrays = {
            "starts": self._starts,
            "stops": self._stops,
            "codes": new_code[self._codes] if len(self._codes) else self._codes,
            "rows": rows,
            "boxes": boxes,
            "kinds": kinds,
            "labels": labels,
            "name_ends": np.cumsum([len(n) for n in names], dtype=np.int64),
            "names": np.frombuffer(b"".join(names), np.uint8),
        }
        return {"vocabulary": list(self._vocabulary), "meta": dict(meta or {})}, arrays

    @staticmethod
    def check_file(path: str | os.PathLike[str]) -> dict[str, Any]:
        """Check a file written by :meth:`save` against its checksum, in blocks, without loading it; returns its
        ``meta``.

        Raises:
            WorkspaceFormatError: not a parent map file, a newer format, corrupt or truncated.
            OSError: it cannot be read.
        """
        header = _FILE.check(path)
        if header is None:  # pragma: no cover - a checksummed kind refuses a file without the trailer
            raise WorkspaceFormatError(f"{path}: no checksum")
        meta = header.get("meta", {})
        if not isinstance(meta, dict):
            raise WorkspaceFormatError(f"{path}: parent map header is inconsistent: meta {meta!r}")
        return dict(meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> tuple[ParentMap, dict[str, Any]]:
        """Read a map written by :meth:`save`; returns ``(map, meta)``.

        Raises:
            WorkspaceFormatError: not a parent map file, a newer format, corrupt, truncated, or inconsistent.
            OSError: it cannot be read.
        """
        header, arrays = _FILE.read_arrays(path)
        try:
            vocabulary = tuple(str(v) for v in header["vocabulary"])
            meta = dict(header["meta"])
            starts, stops, codes, rows = (arrays[k] for k in ("starts", "stops", "codes", "rows"))
            boxes, kinds, labels = arrays["boxes"], arrays["kinds"], arrays["labels"]  # labels of any _LABEL_KINDS
            blob = arrays["names"].tobytes()
            bounds = [0, *arrays["name_ends"].tolist()]
            if bounds[-1] != len(blob) or any(b <= a for a, b in itertools.pairwise(bounds)):
                raise ValueError("parent names are not laid end to end")
            names = [blob[a:b].decode() for a, b in itertools.pairwise(bounds)]
        except (KeyError, TypeError, ValueError) as exc:  # a missing array or key, a name that is not UTF-8
            raise WorkspaceFormatError(f"{path}: parent map is inconsistent: {exc!r}") from exc
        problem = _inconsistency(starts, stops, codes, rows, boxes, kinds, labels, len(names), len(vocabulary))
        if problem is None and len(set(names)) != len(names):
            problem = "a parent is named twice"
        if problem is not None:
            raise WorkspaceFormatError(f"{path}: parent map is inconsistent: {problem}")
        out = cls()
        out._starts, out._stops, out._codes, out._rows = starts, stops, codes, rows
        out._boxes, out._kinds = boxes, kinds
        out._labels = labels.astype(_label_kind(len(vocabulary)), copy=False)  # a file of wider labels is narrowed
        out._names = list(names)
        out._code_of = {name: code for code, name in enumerate(names)}
        out._vocabulary = vocabulary
        out._label_code = {label: code for code, label in enumerate(vocabulary)}
        return out, meta

    def _positions(self, chunk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each id's run (clipped to a valid one) and whether the id is in it."""
        run = np.searchsorted(self._starts, chunk_ids, side="right")
        run -= 1  # in place: a batch's ids are millions
        found = run >= 0
        np.maximum(run, 0, out=run)
        found &= chunk_ids < self._stops[run]
        return run, found

    def chunk_ids_at(self, positions: np.ndarray) -> np.ndarray:
        """The chunk ids at ``positions`` (any shape) in the sorted list of every mapped chunk id, ``0`` to
        :attr:`chunk_count` - 1: e.g. a uniform sample of the chunks from positions drawn at random.

        Raises:
            IndexError: a position outside that range.
        """
        at = np.asarray(positions, dtype=np.int64)
        sizes = self._stops - self._starts
        ends = np.cumsum(sizes)
        total = int(ends[-1]) if len(ends) else 0
        if at.size and (int(at.min()) < 0 or int(at.max()) >= total):
            raise IndexError(f"chunk positions must lie in [0, {total}), got {int(at.min())}..{int(at.max())}")
        run = np.searchsorted(ends, at, side="right")  # the first run ending past the position
        out: np.ndarray = self._starts[run] + at - (ends[run] - sizes[run])
        return out

    def parent_codes(self, chunk_ids: np.ndarray) -> np.ndarray:
        """The parent code of each chunk id (any shape), ``-1`` where no mapped parent has that chunk, as int32: 4
        bytes a hit, where a batch of 10,000 queries holds 1.6M hits (a code numbers a parent ever added: a map
        holds a name for each, so never 2**31 of them)."""
        ids = np.asarray(chunk_ids, dtype=np.int64)
        if len(self._starts) == 0:
            return np.full(ids.shape, -1, np.int32)
        run, found = self._positions(ids)
        if self._narrow_codes[0] is not self._codes:  # every change of the runs assigns a new array
            self._narrow_codes = (self._codes, self._codes.astype(np.int32))
        out: np.ndarray = self._narrow_codes[1].take(run)
        out[~found] = -1
        return out

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
            self._labels[rows].astype(np.int32) if len(self._kinds) else np.full(len(ids), -1, np.int32),
            self._vocabulary,
        )

    def code_of(self, parent_id: str) -> int:
        """The code :meth:`parent_codes` gives ``parent_id``'s chunks, ``-1`` if it is not mapped."""
        return self._code_of.get(parent_id, -1)

    def parent_id(self, code: int) -> str:
        """The parent id of a code :meth:`parent_codes` returned.

        Raises:
            KeyError: the code is not one of a mapped parent.
        """
        name = self._names[code] if 0 <= code < len(self._names) else None
        if name is None:
            raise KeyError(code)
        return name


def _inconsistency(
    starts: np.ndarray,
    stops: np.ndarray,
    codes: np.ndarray,
    rows: np.ndarray,
    boxes: np.ndarray,
    kinds: np.ndarray,
    labels: np.ndarray,
    parents: int,
    vocabulary: int,
) -> str | None:
    """What makes these arrays no map :meth:`ParentMap.save` wrote (``None``: nothing): kinds, lengths, runs
    that are unsorted, overlap or point outside the columns, codes or labels out of range."""
    runs = (starts, stops, codes, rows)
    if any(a.dtype != np.int64 or a.ndim != 1 or len(a) != len(starts) for a in runs):
        return "run arrays of other kinds or lengths"
    n = len(kinds)
    if boxes.dtype not in (np.uint16, np.int32) or boxes.shape != (n, 4):
        return f"boxes of {boxes.dtype} {boxes.shape} for {n} chunks"
    if kinds.dtype != np.uint8 or kinds.ndim != 1 or labels.dtype not in _LABEL_KINDS or labels.shape != (n,):
        return "kind or label columns of other kinds or lengths"
    sizes = stops - starts
    if len(starts) and (
        (sizes <= 0).any()
        or (starts[1:] < stops[:-1]).any()
        or (rows < 0).any()
        or (rows + sizes > n).any()
        or (codes < 0).any()
        or (codes >= parents).any()
    ):
        return "runs that are empty, overlap, leave the columns or name no parent"
    if n and ((labels < -1).any() or (labels >= vocabulary).any()):
        return "labels outside the vocabulary"
    return None
