"""Re-score the top parents at the query's scale, and tighten their boxes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from crossscale._vectors import l2_normalize
from crossscale.errors import ConfigurationError
from crossscale.types import Box, ParentMatch

__all__ = ["RegionRefiner"]


class _Encodes(Protocol):
    def encode(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class RegionRefiner:
    """Re-scores the ``top_n`` best parents by encoding crops around their match box at the query's shape.

    A chunk is a fixed tile; the object can be smaller, shifted, or of another aspect ratio. For each of the
    top parents the refiner cuts crops with the query's aspect ratio around the match's box: first at
    several sizes on its centre, then, at the best size, shifted by ``shift`` of the crop's size in eight
    directions. It encodes them and compares them with the query. If a crop scores above the match, the
    match takes that crop's score and box. The parents are then re-sorted. Costs ``top_n * (len(scales) + 8)``
    encoder passes per query.

    Args:
        encoder: the workspace's encoder (anything with ``encode(images) -> unit rows``).
        top_n: how many of the best parents are re-scored.
        scales: crop sizes relative to the match box's size (geometric mean of its sides).
        shift: the fine pass's step, as a fraction of the crop's size.
    """

    def __init__(
        self, encoder: _Encodes, *, top_n: int = 3, scales: Sequence[float] = (0.5, 0.7, 1.0, 1.4), shift: float = 0.2
    ) -> None:
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            raise ConfigurationError(f"top_n must be a positive int, got {top_n!r}")
        if not scales or any(not (0.05 <= s <= 4.0) for s in scales):
            raise ConfigurationError(f"scales must be in [0.05, 4], got {scales!r}")
        if not (0.0 < shift <= 1.0):
            raise ConfigurationError(f"shift must be in (0, 1], got {shift!r}")
        self.encoder = encoder
        self.top_n = top_n
        self.scales = tuple(float(s) for s in scales)
        self.shift = float(shift)

    @staticmethod
    def _crop_box(cx: float, cy: float, w: float, h: float, width: int, height: int) -> Box | None:
        w, h = min(w, width), min(h, height)  # keep the shape inside the image by sliding, not shrinking
        x0 = min(max(cx - w / 2, 0.0), width - w)
        y0 = min(max(cy - h / 2, 0.0), height - h)
        try:
            box = Box.from_floats(x0, y0, x0 + w, y0 + h, width=width, height=height)
        except ConfigurationError:
            return None
        return box if box.width >= 8 and box.height >= 8 else None

    def _best(self, query: np.ndarray, image: Image.Image, boxes: list[Box]) -> tuple[float, Box]:
        # normalised here as the facade does for every encoder: crop scores must compare with chunk scores
        vectors = l2_normalize(np.asarray(self.encoder.encode([image.crop(b.as_tuple()) for b in boxes])))
        scores = vectors @ query
        i = int(np.argmax(scores))
        return float(scores[i]), boxes[i]

    def refine(
        self,
        query_vector: np.ndarray,
        query_size: tuple[int, int],
        matches: Sequence[ParentMatch],
        load: Callable[[str], Image.Image | None],
    ) -> list[ParentMatch]:
        """``matches`` with the first ``top_n`` re-scored (score and box), re-sorted by score.

        ``load`` returns a parent's image, or ``None`` if the parent is gone (deleted by a writer since the
        search ranked it); such a match is dropped.
        """
        query = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        aspect = query_size[0] / max(1, query_size[1])
        refined: list[ParentMatch] = []
        for match in matches[: self.top_n]:
            image = load(match.parent_id)
            if image is None:
                continue
            box = match.box
            cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
            side = math.sqrt(box.width * box.height)
            shapes = [(side * s * math.sqrt(aspect), side * s / math.sqrt(aspect)) for s in self.scales]
            coarse = [b for w, h in shapes if (b := self._crop_box(cx, cy, w, h, image.width, image.height))]
            if not coarse:
                refined.append(match)
                continue
            score, best = self._best(query, image, coarse)
            w, h = best.width, best.height
            bx, by = (best.x0 + best.x1) / 2, (best.y0 + best.y1) / 2
            moves = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]
            fine = [
                b
                for dx, dy in moves
                if (b := self._crop_box(bx + dx * self.shift * w, by + dy * self.shift * h, w, h, *image.size))
            ]
            if fine:
                fine_score, fine_box = self._best(query, image, fine)
                if fine_score > score:
                    score, best = fine_score, fine_box
            if score > match.score:
                match = dataclasses.replace(match, score=score, box=best)
            refined.append(match)
        refined += list(matches[self.top_n :])
        return sorted(refined, key=lambda m: (-m.score, m.parent_id))
