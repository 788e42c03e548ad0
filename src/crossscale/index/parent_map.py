"""Chunk id → parent, in bulk and in RAM: what the query path needs to fold hits without reading records.

The store assigns each parent's chunk ids as one contiguous run, so the map keeps a run per parent (its first
and one-past-last id) instead of an entry per chunk: ~24 bytes per parent whatever its chunk count. A lookup of
a whole faiss result is one ``np.searchsorted``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["ParentMap"]


def _runs(chunk_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs ``(start, stop)`` of consecutive ids in ``chunk_ids`` (in any order)."""
    ids = sorted(int(i) for i in chunk_ids)
    runs: list[tuple[int, int]] = []
    for cid in ids:
        if runs and cid == runs[-1][1]:
            runs[-1] = (runs[-1][0], cid + 1)
        else:
            runs.append((cid, cid + 1))
    return runs


class ParentMap:
    """Which parent each chunk id belongs to, as sorted id runs (satisfies
    :class:`~crossscale.protocols.ChunkParents`).

    Parents get small integer codes; :meth:`parent_codes` maps an array of chunk ids to codes (``-1``: no
    such chunk, or a ``-1`` padding id), :meth:`parent_id` a code back to the parent's id.
    """

    def __init__(self) -> None:
        self._starts = np.zeros(0, np.int64)
        self._stops = np.zeros(0, np.int64)
        self._codes = np.zeros(0, np.int64)
        self._names: list[str | None] = []
        self._code_of: dict[str, int] = {}

    @classmethod
    def from_parents(cls, parents: Iterable[tuple[str, Sequence[int]]]) -> ParentMap:
        """A map of ``(parent_id, chunk_ids)`` pairs, built in one pass."""
        out = cls()
        out.add_many(parents)
        return out

    def __len__(self) -> int:
        """Number of parents mapped."""
        return len(self._code_of)

    def __contains__(self, parent_id: object) -> bool:
        return parent_id in self._code_of

    def __repr__(self) -> str:
        return f"ParentMap(parents={len(self)}, runs={len(self._starts)})"

    @property
    def nbytes(self) -> int:
        """Bytes of the run arrays (parent id strings not counted)."""
        return int(self._starts.nbytes + self._stops.nbytes + self._codes.nbytes)

    def add(self, parent_id: str, chunk_ids: Sequence[int]) -> None:
        """Map ``chunk_ids`` to ``parent_id`` (replacing what was mapped to it before)."""
        self.add_many([(parent_id, chunk_ids)])

    def add_many(self, parents: Iterable[tuple[str, Sequence[int]]]) -> None:
        """:meth:`add` for many parents, with one re-sort of the runs."""
        starts: list[int] = []
        stops: list[int] = []
        codes: list[int] = []
        for parent_id, chunk_ids in parents:
            if parent_id in self._code_of:
                self.remove(parent_id)
            code = len(self._names)
            self._names.append(parent_id)
            self._code_of[parent_id] = code
            for start, stop in _runs(chunk_ids):
                starts.append(start)
                stops.append(stop)
                codes.append(code)
        if not starts:
            return
        all_starts = np.concatenate([self._starts, np.asarray(starts, np.int64)])
        order = np.argsort(all_starts, kind="stable")
        self._starts = all_starts[order]
        self._stops = np.concatenate([self._stops, np.asarray(stops, np.int64)])[order]
        self._codes = np.concatenate([self._codes, np.asarray(codes, np.int64)])[order]

    def remove(self, parent_id: str) -> bool:
        """Forget ``parent_id`` and its chunks; False if it was not mapped."""
        code = self._code_of.pop(parent_id, None)
        if code is None:
            return False
        self._names[code] = None
        keep = self._codes != code
        self._starts, self._stops, self._codes = self._starts[keep], self._stops[keep], self._codes[keep]
        return True

    def parent_codes(self, chunk_ids: np.ndarray) -> np.ndarray:
        """The parent code of each chunk id (any shape), ``-1`` where no mapped parent has that chunk."""
        ids = np.asarray(chunk_ids, dtype=np.int64)
        if len(self._starts) == 0:
            return np.full(ids.shape, -1, np.int64)
        pos = np.searchsorted(self._starts, ids, side="right") - 1
        safe = np.maximum(pos, 0)
        found = (pos >= 0) & (ids < self._stops[safe])
        return np.where(found, self._codes[safe], -1)

    def parent_id(self, code: int) -> str:
        """The parent id of a code :meth:`parent_codes` returned.

        Raises:
            KeyError: the code is not one of a mapped parent.
        """
        name = self._names[code] if 0 <= code < len(self._names) else None
        if name is None:
            raise KeyError(code)
        return name
