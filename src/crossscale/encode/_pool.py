"""Pooling boxes from a CNN's feature map through integral images: each box costs O(channels), however large."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from crossscale._vectors import unit_rows
from crossscale.errors import ConfigurationError
from crossscale.types import Box

if TYPE_CHECKING:
    import torch

__all__ = [
    "WindowMap",
    "box_cells",
    "check_boxes_inside",
    "checked_crop_size",
    "float64_ready",
    "gem_pool_boxes",
    "mean_pool_boxes",
    "window_input_size",
]

MIN_SIDE = 32  # the smallest input side a stride-32 network makes one cell of


def float64_ready(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` where float64 arithmetic runs: itself, or a CPU copy from a device without float64 (Apple's MPS).

    The pooling sums run in float64 (an integral image's differences lose precision in float32); a feature map
    is small (channels x cells), so the copy costs little next to the forward pass that made it.
    """
    return tensor.cpu() if tensor.device.type == "mps" else tensor


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


def _box_means(values: torch.Tensor, boxes: Sequence[Box], scale: tuple[float, float]) -> torch.Tensor:
    """The mean of ``values`` (float64, ``C x H x W``) over each box's cells, from one integral image:
    ``C x len(boxes)``."""
    import torch

    channels, height, width = values.shape
    integral = torch.zeros((channels, height + 1, width + 1), dtype=torch.float64, device=values.device)
    integral[:, 1:, 1:] = values.cumsum(1).cumsum(2)
    c0, r0, c1, r1 = (t.to(values.device) for t in box_cells(boxes, scale, height, width))
    sums = integral[:, r1, c1] - integral[:, r0, c1] - integral[:, r1, c0] + integral[:, r0, c0]
    return sums / ((r1 - r0) * (c1 - c0))


def gem_pool_boxes(
    feature_map: torch.Tensor, boxes: Sequence[Box], scale: tuple[float, float], p: float
) -> torch.Tensor:
    """GeM-pool the cells of ``feature_map`` (``C x H x W``) under each box; returns ``(len(boxes), C)``.

    ``scale`` maps image pixels to cells (cells per pixel, x and y). A box covers the cells whose centres it holds
    (rounded edges), and at least one. ``p = 1`` is average pooling; a large ``p`` tends to max pooling.
    """
    powered = float64_ready(feature_map).double().clamp_min(1e-6).pow(p)
    means = _box_means(powered, boxes, scale).clamp_min(0.0)  # float64 sums can dip a hair below 0
    pooled: torch.Tensor = means.pow(1.0 / p).T.float()
    return pooled


def mean_pool_boxes(feature_map: torch.Tensor, boxes: Sequence[Box], scale: tuple[float, float]) -> torch.Tensor:
    """Average the cells of ``feature_map`` (``C x H x W``) under each box; returns ``(len(boxes), C)`` float32.

    As :func:`gem_pool_boxes` with ``p = 1``, but for maps of any sign (nothing is clamped): over a whole map it
    equals ``feature_map.mean(dim=(1, 2))``, what average-pooling encoders embed an image with.
    """
    pooled: torch.Tensor = _box_means(float64_ready(feature_map).double(), boxes, scale).T.float()
    return pooled


def checked_crop_size(crop_size: object) -> tuple[float, float]:
    """``crop_size`` as two positive finite floats (width, height).

    Raises:
        ConfigurationError: anything else, named.
    """
    try:
        cw, ch = (float(v) for v in crop_size)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ConfigurationError(f"crop_size must be (width, height), got {crop_size!r}") from None
    if not (math.isfinite(cw) and math.isfinite(ch) and cw > 0 and ch > 0):
        raise ConfigurationError(f"crop_size must be two positive numbers, got {crop_size!r}")
    return cw, ch


def window_input_size(window: Box, scale: tuple[float, float], max_side: int) -> tuple[int, int]:
    """The input size (width, height) of a pass over ``window`` scaled by ``scale`` (x, y), each side at least
    one cell.

    Raises:
        ConfigurationError: a side would be longer than ``max_side``.
    """
    size = (max(MIN_SIDE, round(window.width * scale[0])), max(MIN_SIDE, round(window.height * scale[1])))
    if max(size) > max_side:
        raise ConfigurationError(
            f"window {window.as_tuple()} would be a {size[0]}x{size[1]} pass, longer than max_side={max_side}"
        )
    return size


class WindowMap:
    """One forward pass over a window of an image (``C x H x W``): any box inside the window, pooled from its cells.

    Made by the encoders' ``window_map``; satisfies :class:`crossscale.protocols.BoxMap`. ``p=None`` averages the
    cells (maps of any sign); a number GeM-pools them with that exponent (non-negative maps).
    """

    def __init__(self, window: Box, feature_map: torch.Tensor, dim: int, p: float | None = None) -> None:
        self.window = window
        self._map = feature_map
        self._scale = (feature_map.shape[2] / window.width, feature_map.shape[1] / window.height)
        self.dim = dim
        self.p = p

    def pool(self, boxes: Sequence[Box]) -> np.ndarray:
        """Each box's cells (those whose centres it holds, at least one) pooled, as unit float32 rows of shape
        ``(len(boxes), dim)``; a box over cells that are all zero gets a zero row.

        Raises:
            ConfigurationError: a box is not inside :attr:`window`.
        """
        w = self.window
        outside = [b for b in boxes if b.x0 < w.x0 or b.y0 < w.y0 or b.x1 > w.x1 or b.y1 > w.y1]
        if outside:
            raise ConfigurationError(f"box {outside[0].as_tuple()} is not inside the window {w.as_tuple()}")
        if not boxes:
            return np.zeros((0, self.dim), dtype=np.float32)
        local = [Box(b.x0 - w.x0, b.y0 - w.y0, b.x1 - w.x0, b.y1 - w.y0) for b in boxes]
        if self.p is None:
            pooled = mean_pool_boxes(self._map, local, self._scale)
        else:
            pooled = gem_pool_boxes(self._map, local, self._scale, self.p)
        return unit_rows(pooled.cpu().numpy())

    def __repr__(self) -> str:
        return f"WindowMap(window={self.window.as_tuple()}, cells={tuple(self._map.shape[1:])}, p={self.p})"
