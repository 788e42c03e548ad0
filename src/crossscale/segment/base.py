"""The segmenter interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from crossscale.types import Chunk

__all__ = ["Segmenter"]


@runtime_checkable
class Segmenter(Protocol):
    """Cuts images into chunks. Any object with these members can be a segmenter.

    ``segment`` takes a batch of RGB images and returns, for each image in order,
    its chunks; boxes are in that image's pixel coordinates.
    """

    @property
    def name(self) -> str:
        """A short description recorded in the workspace, e.g. ``"whole+tiles"``."""
        ...

    def segment(self, images: Sequence[Image.Image]) -> list[list[Chunk]]: ...
