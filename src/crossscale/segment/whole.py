"""The whole image as its only chunk."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from crossscale.types import Box, Chunk

__all__ = ["WholeSegmenter"]


class WholeSegmenter:
    """One chunk per image: the image itself, so every image can be found."""

    name = "whole"

    def segment(self, images: Sequence[Image.Image]) -> list[list[Chunk]]:
        """Return ``[[whole chunk]]`` for each image."""
        return [[Chunk(box=Box(0, 0, im.width, im.height), image=im, kind="whole")] for im in images]

    def __repr__(self) -> str:
        return "WholeSegmenter()"
