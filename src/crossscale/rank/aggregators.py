"""How the scores of one parent's chunk hits fold into the parent's score."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from crossscale._checks import positive_int
from crossscale.errors import ConfigurationError

__all__ = ["Aggregator", "MaxAggregator", "MeanTopNAggregator", "SumAggregator", "create_aggregator"]


@runtime_checkable
class Aggregator(Protocol):
    """Maps a parent's chunk scores (sorted, best first, non-empty) to one score."""

    @property
    def name(self) -> str: ...

    def __call__(self, scores: np.ndarray) -> float: ...


class MaxAggregator:
    """The best chunk decides: right for "is the query somewhere in this image"."""

    name = "max"

    def __call__(self, scores: np.ndarray) -> float:
        return float(scores[0])


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


class SumAggregator:
    """Sum of all retrieved chunk scores: favours parents with many matching chunks."""

    name = "sum"

    def __call__(self, scores: np.ndarray) -> float:
        return float(scores.sum())


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
