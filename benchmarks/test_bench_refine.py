"""Refining one query's top 3 parents: a crop per candidate box (RegionRefiner) vs boxes pooled from one pass over
a window of each parent (MapRefiner).

Same parents, same matches, same query, the same pretrained EfficientNet-Lite0 (``efficientnet-lite0``, which
can do both). The parents are skimage photos at 1024x768; the first has a coffee cup pasted into it, and each
match box is a coarse tile (half the parent's width) around where the cup would be, as a search hands them over.

Run: ``python -m pytest benchmarks/test_bench_refine.py --benchmark-enable``. Results: docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from crossscale.encode import create_encoder, embed
from crossscale.encode.backbone import ConvMapEncoder
from crossscale.rank import MapRefiner, RegionRefiner
from crossscale.types import Box, ParentMatch, Query

CUP = Box(560, 330, 760, 480)  # where the cup is pasted in the first parent
TILE = Box(400, 200, 912, 584)  # the match box each parent arrives with


class CountingEncoder:
    """The encoder, counting the crops it encodes and the windows it maps (the refiners' encoder cost)."""

    def __init__(self, inner: ConvMapEncoder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.crops = 0
        self.window_pixels = 0

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.crops += len(images)
        return self.inner.encode(images)

    def window_map(self, image: Image.Image, window: Box, crop_size: tuple[float, float]):  # type: ignore[no-untyped-def]
        box_map = self.inner.window_map(image, window, crop_size)
        self.window_pixels += round(window.width * 224 / crop_size[0]) * round(window.height * 224 / crop_size[1])
        return box_map


@pytest.fixture(scope="module")
def setting() -> tuple[ConvMapEncoder, dict[str, Image.Image], Query, list[ParentMatch]]:
    from skimage import data

    encoder = create_encoder("efficientnet-lite0", device="cpu")
    assert isinstance(encoder, ConvMapEncoder)
    parents = {
        name: Image.fromarray(getattr(data, name)()).convert("RGB").resize((1024, 768))
        for name in ("astronaut", "chelsea", "rocket")
    }
    cup = Image.fromarray(data.coffee()).convert("RGB")
    parents["astronaut"].paste(cup.resize((CUP.width, CUP.height)), (CUP.x0, CUP.y0))
    query_image = cup.resize((160, 120))
    [vector] = embed(encoder, [query_image])
    tile_vectors = embed(encoder, [im.crop(TILE.as_tuple()) for im in parents.values()])
    matches = [
        ParentMatch(name, float(s), TILE, "tile", float(s), 0)
        for name, s in zip(parents, tile_vectors @ vector, strict=True)
    ]
    return encoder, parents, Query(vector, query_image), sorted(matches, key=lambda m: -m.score)


@pytest.mark.benchmark(group="refine-three-parents")
@pytest.mark.parametrize("kind", ["crops (RegionRefiner)", "one window pass (MapRefiner)"])
def test_refine_three_parents(benchmark, setting, kind: str) -> None:  # type: ignore[no-untyped-def]
    encoder, parents, query, matches = setting
    counting = CountingEncoder(encoder)
    refiner = RegionRefiner(counting) if kind.startswith("crops") else MapRefiner(counting)
    runs: list[int] = []

    def refine() -> list[ParentMatch]:
        runs.append(1)
        return refiner.refine(query, matches, parents.get)

    out = benchmark.pedantic(refine, rounds=3, iterations=1)
    assert len(out) == 3
    top = next(m for m in out if m.parent_id == "astronaut")
    assert top.box.iou(CUP) > 0.4, top.box  # each finds the cup
    per_parent = 3 * len(runs)
    benchmark.extra_info["crops per parent"] = counting.crops / per_parent
    benchmark.extra_info["window pixels per parent (in 224x224 crops)"] = round(
        counting.window_pixels / (per_parent * 224 * 224), 2
    )
    benchmark.extra_info["cup IoU"] = round(top.box.iou(CUP), 3)
