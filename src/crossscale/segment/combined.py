"""Several segmenters as one, with near-duplicate chunks removed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from crossscale._checks import number_in
from crossscale.errors import ConfigurationError
from crossscale.protocols import Segmenter
from crossscale.types import Chunk

__all__ = ["CombinedSegmenter", "deduplicate"]


def deduplicate(chunks: Sequence[Chunk], iou_threshold: float) -> list[Chunk]:
    """Keep chunks in order, dropping any whose box has IoU >= ``iou_threshold`` with a kept one."""
    if len(chunks) < 2:
        return list(chunks)
    boxes = np.array([c.box.as_tuple() for c in chunks], dtype=np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for i, box in enumerate(boxes):
        if kept:
            k = boxes[kept]
            w = np.clip(np.minimum(k[:, 2], box[2]) - np.maximum(k[:, 0], box[0]), 0, None)
            h = np.clip(np.minimum(k[:, 3], box[3]) - np.maximum(k[:, 1], box[1]), 0, None)
            inter = w * h
            if (inter / (areas[kept] + areas[i] - inter) >= iou_threshold).any():
                continue
        kept.append(i)
    return [chunks[i] for i in kept]


class CombinedSegmenter:
    """Runs segmenters in order and merges their chunks.

    Earlier segmenters win ties: with ``whole``, then a detector, then tiles, a
    tile that repeats a detection (IoU >= ``iou_threshold``) is dropped.

    Args:
        segmenters: the parts, in priority order.
        iou_threshold: chunks overlapping a kept chunk at least this much are dropped; ``1.0`` keeps all
            but exact duplicates.
    """

    def __init__(self, segmenters: Sequence[Segmenter], iou_threshold: float = 0.85) -> None:
        if not segmenters:
            raise ConfigurationError("CombinedSegmenter needs at least one segmenter")
        self.segmenters = tuple(segmenters)
        self.iou_threshold = number_in("iou_threshold", iou_threshold, 0.0, 1.0, low_open=True)

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.segmenters)

    def segment(self, images: Sequence[Image.Image]) -> list[list[Chunk]]:
        """Chunks of every part, merged per image and deduplicated."""
        merged: list[list[Chunk]] = [[] for _ in images]
        for segmenter in self.segmenters:
            per_image = segmenter.segment(images)
            if len(per_image) != len(images):
                raise ConfigurationError(
                    f"segmenter {segmenter.name!r} returned {len(per_image)} results for {len(images)} images"
                )
            for bucket, chunks in zip(merged, per_image, strict=True):
                bucket.extend(chunks)
        return [deduplicate(chunks, self.iou_threshold) for chunks in merged]

    def __repr__(self) -> str:
        return f"CombinedSegmenter({list(self.segmenters)!r}, iou_threshold={self.iou_threshold!r})"
