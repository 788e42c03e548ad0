"""Rankers: fold chunk hits into ranked parent images (``hits → parents``)."""

from crossscale.rank.aggregators import (
    Aggregator,
    MaxAggregator,
    MeanTopNAggregator,
    SumAggregator,
    create_aggregator,
)
from crossscale.rank.ranker import FetchHits, ParentRanker, Ranker

__all__ = [
    "Aggregator",
    "FetchHits",
    "MaxAggregator",
    "MeanTopNAggregator",
    "ParentRanker",
    "Ranker",
    "SumAggregator",
    "create_aggregator",
]
