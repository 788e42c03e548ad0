"""How the scores of one parent's chunk hits fold into the parent's score."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from crossscale._checks import positive_int
from crossscale.errors import ConfigurationError

__all__ = [
    "Aggregator",
    "GroupedAggregator",
    "MaxAggregator",
    "MeanTopNAggregator",
    "SumAggregator",
    "create_aggregator",
]


@runtime_checkable
class Aggregator(Protocol):
    """Maps a parent's chunk scores (sorted, best first, non-empty) to one score."""

    @property
    def name(self) -> str: ...

    def __call__(self, scores: np.ndarray) -> float: ...


@runtime_checkable
class GroupedAggregator(Aggregator, Protocol):
    """An :class:`Aggregator` that also scores many parents at once (what the ranker's numpy fold uses).

    ``over_groups(scores, starts)``: ``scores`` holds each parent's chunk scores, best first, one parent after
    the other, starting at the offsets ``starts`` (ascending, first 0); returns one float64 score per parent,
    equal to calling the aggregator on each group.
    """

    def over_groups(self, scores: np.ndarray, starts: np.ndarray) -> np.ndarray: ...


def _group_sizes(scores: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.diff(np.append(starts, len(scores)))


class MaxAggregator:
    """The best chunk decides: right for "is the query somewhere in this image"."""

    name = "max"

    def __call__(self, scores: np.ndarray) -> float:
        return float(scores[0])

    def over_groups(self, scores: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return np.asarray(scores[starts], dtype=np.float64)


class MeanTopNAggregator:
    """Mean of the ``n`` best chunk scores (fewer if the parent has fewer hits, counted as missing=0 if
    ``strict``); rewards parents where several chunks agree."""

    def __init__(self, n: int = 3, *, strict: bool = False) -> None:
        self.n = positive_int("n", n)
        self.strict = strict

    @property
    def name(self) -> str:
        return f"mean_top{self.n}"

    def __call__(self, scores: np.ndarray) -> float:
        top = scores[: self.n]
        return float(top.sum() / self.n) if self.strict else float(top.mean())

    def over_groups(self, scores: np.ndarray, starts: np.ndarray) -> np.ndarray:
        sizes = _group_sizes(scores, starts)
        rank = np.arange(len(scores)) - np.repeat(starts, sizes)
        top = np.where(rank < self.n, scores, 0.0).astype(np.float64)
        totals = np.add.reduceat(top, starts)
        return totals / (self.n if self.strict else np.minimum(sizes, self.n))


class SumAggregator:
    """Sum of all retrieved chunk scores: favours parents with many matching chunks."""

    name = "sum"

    def __call__(self, scores: np.ndarray) -> float:
        return float(scores.sum())

    def over_groups(self, scores: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return np.add.reduceat(np.asarray(scores, dtype=np.float64), starts)


def create_aggregator(spec: str | Aggregator) -> Aggregator:
    """``"max"``, ``"sum"``, ``"mean_top3"`` (any n), or an :class:`Aggregator` object."""
    if not isinstance(spec, str):
        if isinstance(spec, Aggregator):
            return spec
        raise ConfigurationError(f"aggregator must be a name or an Aggregator, got {spec!r}")
    key = spec.strip().lower()
    if key == "max":
        return MaxAggregator()
    if key == "sum":
        return SumAggregator()
    if key.startswith("mean_top") and key[len("mean_top") :].isdigit():
        return MeanTopNAggregator(int(key[len("mean_top") :]))
    if key == "mean":
        return MeanTopNAggregator(3)
    raise ConfigurationError(f"unknown aggregator {spec!r}; use 'max', 'sum' or 'mean_topN' (e.g. 'mean_top3')")
