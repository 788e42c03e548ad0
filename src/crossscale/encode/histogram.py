"""A colour histogram as an embedding: no model, no torch, deterministic."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from crossscale._checks import int_at_least, positive_int
from crossscale._vectors import l2_normalize
from crossscale.errors import ConfigurationError
from crossscale.types import Box

__all__ = ["ColorHistogramEncoder"]


class ColorHistogramEncoder:
    """Joint RGB histogram with ``bins`` per channel, square-rooted (Hellinger) and L2-normalised.

    A baseline for retrieval quality and a fast stand-in for a neural encoder in
    tests. It knows colours, not objects.

    Args:
        bins: bins per channel (``bins**3`` dimensions), 2 to 16.
        size: images are resized to ``size`` x ``size`` first (speed; histograms barely change).
    """

    def __init__(self, bins: int = 8, size: int = 64, batch_size: int = 256, device: str = "cpu") -> None:
        self.bins = int_at_least("bins", bins, 2)
        if self.bins > 16:
            raise ConfigurationError(f"bins must be an int in [2, 16], got {bins!r}")
        self.size = int_at_least("size", size, 4)
        self.batch_size = positive_int("batch_size", batch_size)  # accepted like every encoder's; no batching needed
        self.device = device

    @property
    def name(self) -> str:
        return f"color-histogram({self.bins})"

    @property
    def dim(self) -> int:
        return self.bins**3

    @property
    def settings(self) -> dict[str, int]:
        """The arguments its vectors depend on (recorded by a workspace)."""
        return {"bins": self.bins, "size": self.size}

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One histogram row per image."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, im in enumerate(images):
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            arr = np.asarray(rgb.resize((self.size, self.size), Image.Resampling.BILINEAR), dtype=np.int64)
            q = arr * self.bins // 256
            codes = (q[..., 0] * self.bins + q[..., 1]) * self.bins + q[..., 2]
            out[i] = np.sqrt(np.bincount(codes.ravel(), minlength=self.dim))
        return l2_normalize(out) if len(images) else out

    def encode_regions(self, image: Image.Image, boxes: Sequence[Box]) -> np.ndarray:
        """The histogram of each box of ``image`` (a histogram of a region is that of its crop)."""
        return self.encode([image.crop(b.as_tuple()) for b in boxes])

    def __repr__(self) -> str:
        return f"ColorHistogramEncoder(bins={self.bins}, size={self.size})"
