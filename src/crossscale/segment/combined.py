"""Several segmenters as one, with near-duplicate chunks removed."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from crossscale.errors import ConfigurationError
from crossscale.segment.base import Segmenter
from crossscale.types import Chunk

__all__ = ["CombinedSegmenter", "deduplicate"]


def deduplicate(chunks: Sequence[Chunk], iou_threshold: float) -> list[Chunk]:
    """Keep chunks in order, dropping any whose box has IoU >= ``iou_threshold`` with a kept one."""
    kept: list[Chunk] = []
    for chunk in chunks:
        if all(chunk.box.iou(k.box) < iou_threshold for k in kept):
            kept.append(chunk)
    return kept


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
        if not (0.0 < iou_threshold <= 1.0):
            raise ConfigurationError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
        self.segmenters = tuple(segmenters)
        self.iou_threshold = float(iou_threshold)

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
