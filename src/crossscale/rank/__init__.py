"""Ranking: fold chunk hits into ranked parent images (``hits → parents``), then verify and refine the best.

Verifiers are built by name with :func:`create_verifier` (``"sift"``), or any object with the
:class:`~crossscale.protocols.Verifier` members serves.
"""

from collections.abc import Callable
from typing import Any

from crossscale._registry import Registry
from crossscale.protocols import FetchHits, Ranker, Refiner, Verifier
from crossscale.rank.aggregators import (
    Aggregator,
    MaxAggregator,
    MeanTopNAggregator,
    SumAggregator,
    create_aggregator,
)
from crossscale.rank.ranker import BOX_MODES, ParentRanker
from crossscale.rank.refine import MapRefiner, RegionRefiner
from crossscale.rank.verify import VERIFIED_BONUS, GeometricVerifier, LocalFeatures

_VERIFIERS: Registry[Verifier] = Registry("verifier")
_VERIFIERS.register("sift")(GeometricVerifier)


def register_verifier(name: str) -> Callable[[Callable[..., Verifier]], Callable[..., Verifier]]:
    """Decorator registering a verifier factory under ``name`` for :func:`create_verifier`."""
    return _VERIFIERS.register(name)


def list_verifiers() -> list[str]:
    """Names :func:`create_verifier` knows."""
    return _VERIFIERS.names()


def verifier_keywords(name: str) -> frozenset[str] | None:
    """The keyword arguments ``create_verifier(name, ...)`` takes; ``None`` if it takes any.

    Raises:
        ConfigurationError: unknown name.
    """
    return _VERIFIERS.keywords(name)


def create_verifier(name: str, **kwargs: Any) -> Verifier:
    """Build the verifier registered as ``name`` (``"sift"``: :class:`GeometricVerifier`) with ``kwargs``.

    Raises:
        ConfigurationError: unknown name (the message lists the known ones) or bad arguments.
    """
    return _VERIFIERS.create(name, **kwargs)


__all__ = [
    "Aggregator",
    "BOX_MODES",
    "FetchHits",
    "GeometricVerifier",
    "LocalFeatures",
    "MapRefiner",
    "MaxAggregator",
    "MeanTopNAggregator",
    "ParentRanker",
    "Ranker",
    "Refiner",
    "RegionRefiner",
    "SumAggregator",
    "VERIFIED_BONUS",
    "Verifier",
    "create_aggregator",
    "create_verifier",
    "list_verifiers",
    "register_verifier",
    "verifier_keywords",
]
