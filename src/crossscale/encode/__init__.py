"""Encoders: turn images into unit vectors (``chunks → vectors``).

Build one by name with :func:`create_encoder`::

    create_encoder("clip", name_or_path="/models/clip-vit-base-patch32", device="cuda")
    create_encoder("siglip", name_or_path="/models/siglip-base-patch16-224")
    create_encoder("clip-regions", name_or_path="/models/clip-vit-base-patch32")  # one pass per image, every box
    create_encoder("efficientnet-lite0")        # real ImageNet weights, installs offline
    create_encoder("efficientnet-lite0-regions")  # the same network, one pass per image for all its regions
    create_encoder("color-histogram")           # no model: a baseline
    create_encoder("onnx", path="lite0.onnx")   # a CNN encoder's export_onnx file, run without torch (serving)

or pass any object that satisfies :class:`Encoder`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crossscale._registry import Registry
from crossscale._vectors import embed, embed_regions, embed_text, l2_normalize
from crossscale.encode._torch import fold_batch_norm
from crossscale.encode.backbone import BackboneEncoder, ConvMapEncoder, efficientnet_lite0
from crossscale.encode.clip import CLIPEncoder, siglip
from crossscale.encode.clip_regions import CLIPRegionEncoder, siglip_regions
from crossscale.encode.feature_map import FeatureMapEncoder, efficientnet_lite0_regions
from crossscale.encode.histogram import ColorHistogramEncoder
from crossscale.encode.onnx_encoder import OnnxEncoder, export_onnx
from crossscale.protocols import Encoder, MapEncoder, RegionEncoder, TextEncoder

__all__ = [
    "BackboneEncoder",
    "CLIPEncoder",
    "CLIPRegionEncoder",
    "ColorHistogramEncoder",
    "ConvMapEncoder",
    "Encoder",
    "FeatureMapEncoder",
    "MapEncoder",
    "OnnxEncoder",
    "RegionEncoder",
    "TextEncoder",
    "create_encoder",
    "efficientnet_lite0",
    "efficientnet_lite0_regions",
    "embed",
    "embed_regions",
    "embed_text",
    "encoder_keywords",
    "export_onnx",
    "fold_batch_norm",
    "l2_normalize",
    "list_encoders",
    "register_encoder",
    "siglip",
    "siglip_regions",
]

_REGISTRY: Registry[Encoder] = Registry("encoder")
_REGISTRY.register("clip")(CLIPEncoder)
_REGISTRY.register("siglip")(siglip)
_REGISTRY.register("clip-regions")(CLIPRegionEncoder)
_REGISTRY.register("siglip-regions")(siglip_regions)
_REGISTRY.register("efficientnet-lite0")(efficientnet_lite0)
_REGISTRY.register("efficientnet-lite0-regions")(efficientnet_lite0_regions)
_REGISTRY.register("color-histogram")(ColorHistogramEncoder)
_REGISTRY.register("onnx")(OnnxEncoder)


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator registering an encoder factory under ``name`` for :func:`create_encoder`."""
    return _REGISTRY.register(name)


def list_encoders() -> list[str]:
    """Names :func:`create_encoder` knows."""
    return _REGISTRY.names()


def encoder_keywords(name: str) -> frozenset[str] | None:
    """The keyword arguments ``create_encoder(name, ...)`` takes; ``None`` if it takes any.

    Raises:
        ConfigurationError: unknown name.
    """
    return _REGISTRY.keywords(name)


def create_encoder(name: str, **kwargs: Any) -> Encoder:
    """Build the encoder registered as ``name`` with ``kwargs`` (``device=``, ``batch_size=``, ...).

    Raises:
        ConfigurationError: unknown name (the message lists the known ones) or bad arguments.
        ModelLoadError: the model's weights cannot be loaded.
        MissingDependencyError: the encoder's optional package is not installed.
    """
    return _REGISTRY.create(name, **kwargs)
