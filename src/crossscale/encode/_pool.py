"""Pooling boxes from a CNN's feature map through integral images: each box costs O(channels), however large."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from crossscale.errors import ConfigurationError
from crossscale.types import Box

if TYPE_CHECKING:
    import torch

__all__ = ["box_cells", "check_boxes_inside", "gem_pool_boxes", "mean_pool_boxes"]


def box_cells(
    boxes: Sequence[Box], scale: tuple[float, float], height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cells of a ``height x width`` grid under each box: ``(c0, r0, c1, r1)``, int64 tensors of ``len(boxes)``,
    half-open. ``scale`` maps image pixels to cells (cells per pixel, x and y). A box covers the cells whose
    centres it holds (rounded edges), and at least one."""
    import torch

    edges = torch.tensor([b.as_tuple() for b in boxes], dtype=torch.float64).reshape(-1, 4)
    c0 = (edges[:, 0] * scale[0]).round().clamp(0, width - 1).long()
    r0 = (edges[:, 1] * scale[1]).round().clamp(0, height - 1).long()
    c1 = torch.maximum(c0 + 1, (edges[:, 2] * scale[0]).round().clamp(1, width).long())
    r1 = torch.maximum(r0 + 1, (edges[:, 3] * scale[1]).round().clamp(1, height).long())
    return c0, r0, c1, r1


def check_boxes_inside(image: Image.Image, boxes: Sequence[Box]) -> None:
    """Refuse a box that reaches past ``image`` (what every one-pass region encoder checks first).

    Raises:
        ConfigurationError: naming the box and the image size.
    """
    for box in boxes:
        if box.x1 > image.width or box.y1 > image.height:
            raise ConfigurationError(f"box {box.as_tuple()} is not inside the {image.width}x{image.height} image")


def gem_pool_boxes(
    feature_map: torch.Tensor, boxes: Sequence[Box], scale: tuple[float, float], p: float
) -> torch.Tensor:
    """GeM-pool the cells of ``feature_map`` (``C x H x W``) under each box; returns ``(len(boxes), C)``.

    ``scale`` maps image pixels to cells (cells per pixel, x and y). A box covers the cells whose centres it holds
    (rounded edges), and at least one. ``p = 1`` is average pooling; a large ``p`` tends to max pooling.
    """
    import torch

    channels, height, width = feature_map.shape
    powered = feature_map.double().clamp_min(1e-6).pow(p)
    integral = torch.zeros((channels, height + 1, width + 1), dtype=torch.float64, device=feature_map.device)
    integral[:, 1:, 1:] = powered.cumsum(1).cumsum(2)
    c0, r0, c1, r1 = (t.to(feature_map.device) for t in box_cells(boxes, scale, height, width))
    sums = integral[:, r1, c1] - integral[:, r0, c1] - integral[:, r1, c0] + integral[:, r0, c0]  # C x n
    means = (sums / ((r1 - r0) * (c1 - c0))).clamp_min(0.0)  # float64 sums can dip a hair below 0
    pooled: torch.Tensor = means.pow(1.0 / p).T.float()
    return pooled


def mean_pool_boxes(feature_map: torch.Tensor, boxes: Sequence[Box], scale: tuple[float, float]) -> torch.Tensor:
    """Average the cells of ``feature_map`` (``C x H x W``) under each box; returns ``(len(boxes), C)`` float32.

    As :func:`gem_pool_boxes` with ``p = 1``, but for maps of any sign (nothing is clamped): over a whole map it
    equals ``feature_map.mean(dim=(1, 2))``, what average-pooling encoders embed an image with.
    """
    import torch

    channels, height, width = feature_map.shape
    integral = torch.zeros((channels, height + 1, width + 1), dtype=torch.float64, device=feature_map.device)
    integral[:, 1:, 1:] = feature_map.double().cumsum(1).cumsum(2)
    c0, r0, c1, r1 = (t.to(feature_map.device) for t in box_cells(boxes, scale, height, width))
    sums = integral[:, r1, c1] - integral[:, r0, c1] - integral[:, r1, c0] + integral[:, r0, c0]  # C x n
    pooled: torch.Tensor = (sums / ((r1 - r0) * (c1 - c0))).T.float()
    return pooled
