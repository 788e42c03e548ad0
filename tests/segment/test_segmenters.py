from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from crossscale.errors import ConfigurationError
from crossscale.segment import (
    CombinedSegmenter,
    Segmenter,
    TileSegmenter,
    WholeSegmenter,
    create_segmenter,
    deduplicate,
    list_segmenters,
    tile_boxes,
)
from crossscale.types import Box, Chunk
from tests.strategies import boxes


def test_whole_is_one_chunk_covering_the_image() -> None:
    im = Image.new("RGB", (50, 30))
    [[chunk]] = WholeSegmenter().segment([im])
    assert chunk.box == Box(0, 0, 50, 30) and chunk.kind == "whole" and chunk.image.size == (50, 30)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(8, 600),
    st.integers(8, 600),
    st.lists(st.floats(0.05, 1.0), min_size=1, max_size=3, unique=True),
    st.floats(0.0, 0.75),
)
def test_tiles_of_each_scale_cover_every_pixel(w: int, h: int, scales: list[float], overlap: float) -> None:
    for scale in scales:
        boxes = tile_boxes(w, h, [scale], overlap, min_size=1)
        side = max(1, round(scale * min(w, h)))
        assert boxes
        assert all(b.x1 <= w and b.y1 <= h for b in boxes)
        assert {(b.width, b.height) for b in boxes} == {(min(side, w), min(side, h))}
        covered = np.zeros((h, w), dtype=bool)
        for b in boxes:
            covered[b.y0 : b.y1, b.x0 : b.x1] = True
        assert covered.all(), f"scale {scale}: {int((~covered).sum())} pixels uncovered"


def test_tiles_overlap_and_square() -> None:
    boxes = tile_boxes(1000, 600, (0.5,), 0.25, min_size=1)
    assert {(b.width, b.height) for b in boxes} == {(300, 300)}
    xs = sorted({b.x0 for b in boxes})
    assert xs[0] == 0 and xs[-1] == 700
    assert all(b - a <= 225 for a, b in itertools.pairwise(xs))  # stride <= side * (1 - overlap)


def test_tile_segmenter_proposes_boxes_only() -> None:
    im = Image.radial_gradient("L").convert("RGB")
    chunks = TileSegmenter(scales=(0.5,)).segment([im])[0]
    assert [c.box for c in chunks] == tile_boxes(im.width, im.height, (0.5,), 0.25, 32)
    assert all(c.kind == "tile" and c.image is None for c in chunks)  # indexing crops only when it must


def test_min_size_skips_small_tiles() -> None:
    assert TileSegmenter(scales=(0.1,), min_size=32).segment([Image.new("RGB", (100, 100))]) == [[]]


@pytest.mark.parametrize(
    "kw", [{"scales": ()}, {"scales": (0,)}, {"scales": (1.5,)}, {"overlap": 0.95}, {"min_size": 0}]
)
def test_tile_segmenter_validates(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        TileSegmenter(**kw)  # type: ignore[arg-type]


def test_combined_dedupes_in_priority_order() -> None:
    im = Image.new("RGB", (100, 100))
    seg = CombinedSegmenter([WholeSegmenter(), TileSegmenter(scales=(1.0, 0.5))], iou_threshold=0.9)
    chunks = seg.segment([im])[0]
    assert chunks[0].kind == "whole"
    assert sum(c.box == Box(0, 0, 100, 100) for c in chunks) == 1  # the scale-1 tile repeats the whole
    assert len(chunks) == 1 + 9
    assert seg.name == "whole+" + TileSegmenter(scales=(1.0, 0.5)).name


def test_combined_refuses_wrong_result_count() -> None:
    class Broken:
        name = "broken"

        def segment(self, images: list[Image.Image]) -> list[list[Chunk]]:
            return []

    with pytest.raises(ConfigurationError, match="returned 0 results"):
        CombinedSegmenter([Broken()]).segment([Image.new("RGB", (4, 4))])


def test_factory_by_name_and_combination() -> None:
    assert {"whole", "tiles", "yolo"} <= set(list_segmenters())
    seg = create_segmenter("whole+tiles", tiles={"scales": (0.5,)}, device="cpu", batch_size=4)
    assert isinstance(seg, CombinedSegmenter) and isinstance(seg, Segmenter)
    assert seg.segmenters[1].scales == (0.5,)  # type: ignore[attr-defined]
    assert isinstance(create_segmenter("tiles", device="cpu"), TileSegmenter)


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("tilez", {}, "did you mean 'tiles'"),
        ("whole+whole", {}, "repeats"),
        ("whole+tiles", {"scales": (0.5,)}, "unexpected keyword"),
        ("whole+tiles", {"tiles": 3}, "must be a dict"),
        ("tiles", {"bogus": 1}, "bad arguments"),
        ("", {}, "non-empty"),
    ],
)
def test_factory_errors(name: str, kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        create_segmenter(name, **kw)


@settings(max_examples=100, deadline=None)
@given(st.lists(boxes(max_side=300), max_size=25), st.floats(0.05, 1.0))
def test_deduplicate_matches_the_definition(bxs: list[Box], threshold: float) -> None:
    im = Image.new("RGB", (1, 1))
    chunks = [Chunk(b, im, "tile") for b in bxs]
    kept: list[Chunk] = []
    for c in chunks:  # the definition, pairwise
        if all(c.box.iou(k.box) < threshold for k in kept):
            kept.append(c)
    assert deduplicate(chunks, threshold) == kept
