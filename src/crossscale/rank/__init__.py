"""Ranking: fold chunk hits into ranked parent images (``hits → parents``), then refine the best of them."""

from crossscale.protocols import FetchHits, Ranker, Refiner
from crossscale.rank.aggregators import (
    Aggregator,
    MaxAggregator,
    MeanTopNAggregator,
    SumAggregator,
    create_aggregator,
)
from crossscale.rank.ranker import BOX_MODES, ParentRanker
from crossscale.rank.refine import RegionRefiner

__all__ = [
    "Aggregator",
    "BOX_MODES",
    "FetchHits",
    "MaxAggregator",
    "MeanTopNAggregator",
    "ParentRanker",
    "Ranker",
    "Refiner",
    "RegionRefiner",
    "SumAggregator",
    "create_aggregator",
]
