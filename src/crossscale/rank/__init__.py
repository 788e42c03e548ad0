"""Rankers: fold chunk hits into ranked parent images (``hits → parents``)."""

from crossscale.rank.aggregators import (
    Aggregator,
    MaxAggregator,
    MeanTopNAggregator,
    SumAggregator,
    create_aggregator,
)
from crossscale.rank.ranker import BOX_MODES, FetchHits, ParentRanker, Ranker
from crossscale.rank.refine import RegionRefiner

__all__ = [
    "Aggregator",
    "BOX_MODES",
    "FetchHits",
    "MaxAggregator",
    "MeanTopNAggregator",
    "ParentRanker",
    "Ranker",
    "RegionRefiner",
    "SumAggregator",
    "create_aggregator",
]
