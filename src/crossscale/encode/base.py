"""The encoder interface and the checks every encoder's output must pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from crossscale._vectors import l2_normalize

__all__ = ["Encoder", "l2_normalize"]


@runtime_checkable
class Encoder(Protocol):
    """Embeds images. Any object with these members can be an encoder.

    ``encode`` returns a float32 array of shape ``(len(images), dim)`` whose rows
    have unit L2 norm; equal images give equal rows.
    """

    @property
    def name(self) -> str:
        """Identity recorded in the workspace; vectors of encoders with different names are not comparable."""
        ...

    @property
    def dim(self) -> int:
        """Length of each vector."""
        ...

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray: ...
