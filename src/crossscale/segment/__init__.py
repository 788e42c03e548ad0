"""Segmenters: cut an image into chunks (``image → chunks``).

Build one by name with :func:`create_segmenter`::

    create_segmenter("whole+tiles")
    create_segmenter("yolo", model="/models/yolo11n.pt", device="cuda")
    create_segmenter("whole+yolo+tiles", yolo={"model": "/models/yolo11n.pt"}, tiles={"scales": (0.5,)})

or pass any object that satisfies :class:`Segmenter`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from crossscale._registry import Registry
from crossscale.errors import ConfigurationError
from crossscale.protocols import Segmenter
from crossscale.segment.combined import CombinedSegmenter, deduplicate
from crossscale.segment.tiles import TileSegmenter, tile_boxes
from crossscale.segment.whole import WholeSegmenter
from crossscale.segment.yolo import YoloSegmenter

__all__ = [
    "CombinedSegmenter",
    "SHARED_KEYWORDS",
    "Segmenter",
    "TileSegmenter",
    "WholeSegmenter",
    "YoloSegmenter",
    "create_segmenter",
    "deduplicate",
    "list_segmenters",
    "register_segmenter",
    "tile_boxes",
]

_REGISTRY: Registry[Segmenter] = Registry("segmenter")
_REGISTRY.register("whole")(WholeSegmenter)
_REGISTRY.register("tiles")(TileSegmenter)
_REGISTRY.register("yolo")(YoloSegmenter)


def register_segmenter(name: str) -> Callable[[Callable[..., Segmenter]], Callable[..., Segmenter]]:
    """Decorator registering a segmenter factory under ``name`` for :func:`create_segmenter`."""
    return _REGISTRY.register(name)


def list_segmenters() -> list[str]:
    """Names :func:`create_segmenter` knows (combine them with ``+``)."""
    return _REGISTRY.names()


#: keywords the facade passes to every part; a part that does not take one is built without it.
SHARED_KEYWORDS = frozenset({"device", "batch_size"})


def _build(part: str, shared: Mapping[str, Any], own: Mapping[str, Any]) -> Segmenter:
    factory = _REGISTRY.factory(part)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {k: v for k, v in shared.items() if takes_any or k in params}
    return _REGISTRY.create(part, **{**accepted, **own})


def create_segmenter(name: str, *, iou_threshold: float = 0.85, **kwargs: Any) -> Segmenter:
    """Build a segmenter by name; ``"a+b+c"`` builds a :class:`CombinedSegmenter` of the parts.

    ``device=`` and ``batch_size=`` go to every part that takes them. For a
    single name the other keywords go to its constructor; for a combination, a
    keyword named after a part (``yolo={...}``) holds that part's arguments.

    Raises:
        ConfigurationError: unknown name or bad arguments.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"segmenter name must be a non-empty str, got {name!r}")
    parts = [p.strip().lower() for p in name.split("+")]
    shared = {k: kwargs.pop(k) for k in list(kwargs) if k in SHARED_KEYWORDS}
    if len(parts) == 1:
        return _build(parts[0], shared, kwargs)
    if len(set(parts)) != len(parts) or not all(parts):
        raise ConfigurationError(f"segmenter combination {name!r} repeats a part or has an empty one")
    unknown = set(kwargs) - set(parts)
    if unknown:
        raise ConfigurationError(
            f"unexpected keyword(s) {sorted(unknown)} for {name!r}; pass a part's arguments as part={{...}}"
        )
    built: list[Segmenter] = []
    for part in parts:
        own = kwargs.get(part, {})
        if not isinstance(own, Mapping):
            raise ConfigurationError(f"keyword {part}= must be a dict of that segmenter's arguments")
        built.append(_build(part, shared, own))
    return CombinedSegmenter(built, iou_threshold=iou_threshold)
