"""Model-free, multi-scale, overlapping square tiles (the SAHI idea)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from crossscale._checks import number_in, numbers_in, positive_int
from crossscale.types import Box, Chunk

__all__ = ["TileSegmenter", "tile_boxes"]


def _positions(length: int, window: int, stride: int) -> list[int]:
    """Window starts covering ``[0, length)``; the last window is flush with the end."""
    if window >= length:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    step = (length - window) / (count - 1)
    return sorted({round(i * step) for i in range(count)})


def tile_boxes(width: int, height: int, scales: Sequence[float], overlap: float, min_size: int) -> list[Box]:
    """Boxes of square tiles whose side is ``scale * min(width, height)``, for each scale.

    Neighbouring tiles overlap by at least ``overlap`` of their side, and the
    tiles of a scale cover the whole image. Tiles smaller than ``min_size`` are skipped.
    """
    boxes: list[Box] = []
    seen: set[tuple[int, int, int, int]] = set()
    short = min(width, height)
    for scale in scales:
        side = max(1, round(scale * short))
        if side < min_size:
            continue
        stride = max(1, math.floor(side * (1.0 - overlap)))
        for y in _positions(height, side, stride):
            for x in _positions(width, side, stride):
                box = Box(x, y, min(width, x + side), min(height, y + side))
                if box.as_tuple() not in seen:
                    seen.add(box.as_tuple())
                    boxes.append(box)
    return boxes


class TileSegmenter:
    """Cuts each image into overlapping square tiles at several scales.

    Finds objects that a detector misses, at the cost of more chunks: the number
    of tiles per scale grows as ``1 / (scale * (1 - overlap))**2``.

    Args:
        scales: tile sides as fractions of the image's shorter side, each in ``(0, 1]``.
        overlap: fraction of a tile's side shared with its neighbour, in ``[0, 0.9]``.
        min_size: tiles with a side under this many pixels are skipped.
    """

    #: chosen on the quality benchmark (docs/benchmarks.md): the smallest scale carries the recall of small
    #: objects, the larger ones the boxes.
    DEFAULT_SCALES = (0.5, 0.25, 0.18)

    def __init__(self, scales: Sequence[float] = DEFAULT_SCALES, overlap: float = 0.25, min_size: int = 32) -> None:
        self.scales = numbers_in("scales", scales, 0.0, 1.0, low_open=True)
        self.overlap = number_in("overlap", overlap, 0.0, 0.9)
        self.min_size = positive_int("min_size", min_size)

    @property
    def name(self) -> str:
        scales = ",".join(f"{s:g}" for s in self.scales)
        return f"tiles({scales};overlap={self.overlap:g})"

    def segment(self, images: Sequence[Image.Image]) -> list[list[Chunk]]:
        """Return the tiles of each image, as boxes: ``Chunk.image`` is ``None``, and indexing crops a tile only
        for an encoder that needs the pixels (one that pools regions from a feature map does not)."""
        return [
            [
                Chunk(box=b, image=None, kind="tile")
                for b in tile_boxes(im.width, im.height, self.scales, self.overlap, self.min_size)
            ]
            for im in images
        ]

    def __repr__(self) -> str:
        return f"TileSegmenter(scales={self.scales!r}, overlap={self.overlap!r}, min_size={self.min_size!r})"
