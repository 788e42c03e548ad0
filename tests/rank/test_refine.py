from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from crossscale.encode import ColorHistogramEncoder
from crossscale.errors import ConfigurationError, VectorError
from crossscale.protocols import Refiner
from crossscale.rank import MapRefiner, RegionRefiner
from crossscale.types import Box, ParentMatch, Query


def _scene() -> tuple[Image.Image, Box]:
    rng = np.random.default_rng(0)
    arr = rng.integers(90, 130, (400, 600, 3), dtype=np.uint8)  # grey noise
    arr[150:230, 300:420] = (220, 30, 30)  # a red 120x80 object
    return Image.fromarray(arr), Box(300, 150, 420, 230)


def test_refine_tightens_the_box_and_raises_the_score() -> None:
    scene, truth = _scene()
    enc = ColorHistogramEncoder(bins=4)
    query = Image.new("RGB", (60, 40), (220, 30, 30))
    qv = enc.encode([query])[0]
    tile = Box(250, 100, 500, 350)  # a coarse tile containing the object
    start_score = float(enc.encode([scene.crop(tile.as_tuple())])[0] @ qv)
    other = ParentMatch("other", start_score + 0.01, Box(0, 0, 50, 50), "tile", start_score + 0.01, 1)
    match = ParentMatch("scene", start_score, tile, "tile", start_score, 0)
    parents = {"scene": scene, "other": Image.new("RGB", (100, 100), (0, 0, 255))}
    out = RegionRefiner(enc, top_n=2).refine(Query(qv, query), [other, match], parents.__getitem__)
    assert out[0].parent_id == "scene"  # re-scored above the other parent
    assert out[0].score > start_score and out[0].box.iou(truth) > tile.iou(truth) + 0.2
    shaped = RegionRefiner(enc, top_n=2, grow=(), side_steps=()).refine(Query(qv, query), [other, match], parents.get)
    ratio = shaped[0].box.width / shaped[0].box.height
    assert ratio == pytest.approx(60 / 40, rel=0.1)  # before the extent pass: the query's shape
    assert out[1].parent_id == "other" and out[1].box == Box(0, 0, 50, 50)  # a worse crop never replaces a match


def test_refine_leaves_matches_beyond_top_n_alone() -> None:
    enc = ColorHistogramEncoder(bins=4)
    matches = [ParentMatch(f"p{i}", 0.5 - i / 10, Box(0, 0, 10, 10), "tile", 0.5, i) for i in range(4)]
    calls: list[str] = []

    def load(pid: str) -> Image.Image:
        calls.append(pid)
        return Image.new("RGB", (40, 40))

    red = Image.new("RGB", (9, 9), "red")
    out = RegionRefiner(enc, top_n=1).refine(Query(enc.encode([red])[0], red), matches, load)
    assert calls == ["p0"] and [m.parent_id for m in out[1:]] == ["p1", "p2", "p3"]


@pytest.mark.parametrize("kw", [{"top_n": 0}, {"scales": ()}, {"scales": (9.0,)}, {"shift": 0.0}])
def test_validates(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RegionRefiner(ColorHistogramEncoder(), **kw)  # type: ignore[arg-type]


def test_a_parent_deleted_since_ranking_is_dropped_not_raised() -> None:
    enc = ColorHistogramEncoder(bins=4)
    matches = [ParentMatch(f"p{i}", 0.5 - i / 10, Box(0, 0, 10, 10), "tile", 0.5, i) for i in range(3)]
    images = {"p0": Image.new("RGB", (40, 40)), "p2": Image.new("RGB", (40, 40))}  # p1 was deleted
    out = RegionRefiner(enc, top_n=3).refine(Query(enc.encode([images["p0"]])[0], images["p0"]), matches, images.get)
    assert [m.parent_id for m in out] == ["p0", "p2"]


def test_unnormalised_encoder_output_is_normalised() -> None:
    class Loud(ColorHistogramEncoder):
        def encode(self, images):  # type: ignore[no-untyped-def]
            return super().encode(images) * 50.0  # rows of norm 50, not 1

    arr = np.zeros((40, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)  # every crop around the centre is part red: cosine with red well below 0.97
    match = ParentMatch("p", 0.97, Box(0, 0, 40, 40), "tile", 0.97, 0)
    red = Image.new("RGB", (9, 9), (255, 0, 0))
    query = Query(ColorHistogramEncoder(bins=4).encode([red])[0], red)
    [out] = RegionRefiner(Loud(bins=4)).refine(query, [match], {"p": Image.fromarray(arr)}.get)
    assert out == match  # scores 50x too large would have replaced it


def _object_scene() -> tuple[Image.Image, Box]:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)  # colourful noise
    arr[100:180, 150:270] = (220, 30, 30)
    arr[100:180, 150:210, 2] = 120  # a two-tone 120x80 object: red and magenta halves
    return Image.fromarray(arr), Box(150, 100, 270, 180)


def test_the_extent_pass_grows_the_box_from_a_part_of_the_object_to_the_whole() -> None:
    scene, truth = _object_scene()
    enc = ColorHistogramEncoder(bins=4)
    query = scene.crop((165, 110, 255, 170))  # the inner part of the object, as a partial-crop query is
    qv = enc.encode([query])[0]
    match = ParentMatch("scene", 0.0, Box(120, 70, 300, 210), "tile", 0.0, 0)
    load = {"scene": scene}.get
    without = RegionRefiner(enc, grow=(), side_steps=()).refine(Query(qv, query), [match], load)[0]
    with_extent = RegionRefiner(enc).refine(Query(qv, query), [match], load)[0]
    assert without.box.area < truth.area * 0.8  # the best-scoring crop lies inside the object
    assert with_extent.box.area > without.box.area
    assert with_extent.box.iou(truth) > without.box.iou(truth) + 0.1
    assert with_extent.box.iou(truth) >= 0.7


def test_a_zero_margin_keeps_only_growths_that_score_as_well() -> None:
    scene, truth = _object_scene()
    enc = ColorHistogramEncoder(bins=4)
    query = scene.crop((165, 110, 255, 170))
    qv = enc.encode([query])[0]
    match = ParentMatch("scene", 0.0, Box(120, 70, 300, 210), "tile", 0.0, 0)
    strict = RegionRefiner(enc, extent_margin=0.0).refine(Query(qv, query), [match], {"scene": scene}.get)[0]
    loose = RegionRefiner(enc, extent_margin=0.2).refine(Query(qv, query), [match], {"scene": scene}.get)[0]
    assert strict.box.intersection_area(truth) == strict.box.area  # grown only over the object
    assert loose.box.area > truth.area  # a wide margin lets background in
    assert strict.score == loose.score  # the margin moves the box, never the score


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"grow": (1.0,)}, r"grow\[0\] must be in \(1, 4\], got 1.0"),
        ({"grow": (1.2, 5.0)}, r"grow\[1\] must be in \(1, 4\], got 5.0"),
        ({"grow": 1.2}, "grow must be a sequence of numbers, got 1.2"),
        ({"grow": "1.2"}, "grow must be a sequence of numbers, got '1.2'"),
        ({"side_steps": (0.0,)}, r"side_steps\[0\] must be in \(0, 1\]"),
        ({"side_steps": (0.1, "0.2")}, r"side_steps\[1\] must be a number in \(0, 1\], got '0.2'"),
        ({"extent_margin": -0.1}, r"extent_margin must be in \[0, 1\], got -0.1"),
        ({"extent_margin": float("nan")}, "extent_margin must be in"),
        ({"extent_margin": None}, "extent_margin must be a number"),
        ({"shift": True}, "shift must be a number"),
        ({"scales": ()}, "scales must not be empty"),
        ({"scales": (0.5, 9.0)}, r"scales\[1\] must be in \[0.05, 4\]"),
    ],
)
def test_validates_every_setting_and_names_it(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RegionRefiner(ColorHistogramEncoder(), **kw)  # type: ignore[arg-type]


def test_under_a_sum_aggregator_the_crop_is_compared_with_the_best_chunk_not_the_sum() -> None:
    scene, truth = _scene()
    enc = ColorHistogramEncoder(bins=4)
    query = Image.new("RGB", (60, 40), (220, 30, 30))
    qv = enc.encode([query])[0]
    tile = Box(250, 100, 500, 350)
    chunk = float(enc.encode([scene.crop(tile.as_tuple())])[0] @ qv)
    match = ParentMatch("scene", 2.5, tile, "tile", chunk, 0, n_hits=4)  # a sum of four chunk scores
    [out] = RegionRefiner(enc).refine(Query(qv, query), [match], {"scene": scene}.get)
    assert out.box.iou(truth) > tile.iou(truth) + 0.2  # refined, though no crop can score 2.5
    assert 2.5 < out.score <= 2.5 + (1.0 - chunk) + 1e-6  # raised by what the crop adds over the chunk
    assert out.chunk_score == chunk  # still the best chunk's own similarity


def test_repr_shows_every_setting() -> None:
    text = repr(RegionRefiner(ColorHistogramEncoder(), top_n=2, grow=(1.2,), side_steps=(), extent_margin=0.05))
    for part in ("top_n=2", "grow=(1.2,)", "side_steps=()", "extent_margin=0.05", "scales=(0.5, 0.7, 1.0, 1.4)"):
        assert part in text, (part, text)


def test_a_query_without_an_image_takes_the_match_box_shape() -> None:
    scene, truth = _scene()
    enc = ColorHistogramEncoder(bins=4)
    qv = enc.encode([Image.new("RGB", (60, 40), (220, 30, 30))])[0]
    tile = Box(250, 100, 500, 350)
    chunk = float(enc.encode([scene.crop(tile.as_tuple())])[0] @ qv)
    match = ParentMatch("scene", chunk, tile, "tile", chunk, 0)
    [out] = RegionRefiner(enc, grow=(), side_steps=()).refine(Query(qv), [match], {"scene": scene}.get)
    assert out.score > chunk and out.box.iou(truth) > tile.iou(truth)
    assert out.box.width == pytest.approx(out.box.height, rel=0.1)  # the square tile's shape, not 60x40


def test_the_0_1_call_still_works_with_a_deprecation_warning() -> None:
    scene, _ = _scene()
    enc = ColorHistogramEncoder(bins=4)
    query = Image.new("RGB", (60, 40), (220, 30, 30))
    qv = enc.encode([query])[0]
    match = ParentMatch("scene", 0.1, Box(250, 100, 500, 350), "tile", 0.1, 0)
    refiner = RegionRefiner(enc, top_n=1)
    with pytest.warns(DeprecationWarning, match=r"refine\(Query\(vector, image\), matches, load\)"):
        old = refiner.refine(qv, query.size, [match], {"scene": scene}.get)  # type: ignore[arg-type, call-arg]
    assert old == refiner.refine(Query(qv, query), [match], {"scene": scene}.get)


def test_refiner_satisfies_its_protocol() -> None:
    from crossscale.protocols import Refiner

    assert isinstance(RegionRefiner(ColorHistogramEncoder()), Refiner)


class _HistogramMap:
    """A perfect map: each box pooled is its crop's colour histogram."""

    def __init__(self, encoder: ColorHistogramEncoder, image: Image.Image, window: Box) -> None:
        self.encoder, self.image, self.window = encoder, image, window

    def pool(self, boxes: Sequence[Box]) -> np.ndarray:
        for b in boxes:
            if b.x0 < self.window.x0 or b.y0 < self.window.y0 or b.x1 > self.window.x1 or b.y1 > self.window.y1:
                raise ConfigurationError(f"box {b.as_tuple()} is not inside the window {self.window.as_tuple()}")
        return ColorHistogramEncoder.encode(self.encoder, [self.image.crop(b.as_tuple()) for b in boxes])


class _CountingMapHistogram(ColorHistogramEncoder):
    """The colour histogram as a MapEncoder, counting the crops it encodes and the windows it maps."""

    def __init__(self) -> None:
        super().__init__(bins=4)
        self.crops = 0
        self.windows: list[tuple[Box, tuple[float, float]]] = []

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.crops += len(images)
        return super().encode(images)

    def window_map(self, image: Image.Image, window: Box, crop_size: tuple[float, float]) -> _HistogramMap:
        self.windows.append((window, crop_size))
        return _HistogramMap(self, image, window)


def test_map_refiner_finds_the_object_with_few_crops() -> None:
    scene, truth = _scene()
    enc = _CountingMapHistogram()
    query = Image.new("RGB", (60, 40), (220, 30, 30))
    qv = ColorHistogramEncoder(bins=4).encode([query])[0]
    tile = Box(250, 100, 500, 350)  # a coarse tile containing the object
    start = float(ColorHistogramEncoder(bins=4).encode([scene.crop(tile.as_tuple())])[0] @ qv)
    match = ParentMatch("scene", start, tile, "tile", start, 0)
    [out] = MapRefiner(enc).refine(Query(qv, query), [match], {"scene": scene}.get)
    assert out.score > start and out.box.iou(truth) > 0.5 and out.box.iou(truth) > tile.iou(truth) + 0.3
    assert enc.crops <= 5 and len(enc.windows) == 1  # 4 sizes, at most one shifted crop; one map
    [(window, crop_size)] = enc.windows
    assert window.width <= 2 * crop_size[0] + 1 and window.height <= 2 * crop_size[1] + 1
    crops_before = enc.crops
    [regional] = RegionRefiner(enc).refine(Query(qv, query), [match], {"scene": scene}.get)
    assert enc.crops - crops_before > 2 * crops_before  # the crop refiner's cost, for comparison
    assert out.box.iou(truth) >= regional.box.iou(truth) - 0.1


def test_map_refiner_moves_to_a_shifted_object_only_when_its_crop_agrees() -> None:
    """The map ranks the shifts; the crop of the best one decides, so a map that misleads cannot lower a score."""
    scene, truth = _scene()
    query = Image.new("RGB", (60, 40), (220, 30, 30))
    qv = ColorHistogramEncoder(bins=4).encode([query])[0]
    off = Box(280, 140, 400, 220)  # the object's box shifted by 20 px left and 10 px up
    start = float(ColorHistogramEncoder(bins=4).encode([scene.crop(off.as_tuple())])[0] @ qv)
    match = ParentMatch("scene", start, off, "tile", start, 0)
    enc = _CountingMapHistogram()
    [out] = MapRefiner(enc, scales=(1.0,), grow=(), side_steps=()).refine(
        Query(qv, query), [match], {"scene": scene}.get
    )
    assert out.box.iou(truth) > off.iou(truth) and out.score >= start

    class Misleading(_CountingMapHistogram):
        def window_map(self, image: Image.Image, window: Box, crop_size: tuple[float, float]) -> _HistogramMap:
            return _HistogramMap(self, Image.eval(image, lambda v: 255 - v), window)  # ranks the wrong shifts

    [kept] = MapRefiner(Misleading(), scales=(1.0,), grow=(), side_steps=()).refine(
        Query(qv, query), [match], {"scene": scene}.get
    )
    assert kept.score >= start


def test_map_refiner_needs_a_map_encoder() -> None:
    with pytest.raises(ConfigurationError, match=r"window_map.*use RegionRefiner"):
        MapRefiner(ColorHistogramEncoder())


@pytest.mark.parametrize("kw", [{"top_n": 0}, {"step": 0.0}, {"reach": 1.5}, {"window": 0.5}, {"scales": ()}])
def test_map_refiner_validates(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        MapRefiner(_CountingMapHistogram(), **kw)  # type: ignore[arg-type]


def test_map_refiner_drops_deleted_parents_and_leaves_the_rest() -> None:
    enc = _CountingMapHistogram()
    matches = [ParentMatch(f"p{i}", 0.5 - i / 10, Box(0, 0, 10, 10), "tile", 0.5, i) for i in range(4)]
    images = {"p0": Image.new("RGB", (40, 40)), "p2": Image.new("RGB", (40, 40)), "p3": Image.new("RGB", (40, 40))}
    red = Image.new("RGB", (9, 9), "red")
    out = MapRefiner(enc, top_n=2).refine(Query(enc.encode([red])[0], red), matches, images.get)
    assert [m.parent_id for m in out] == ["p0", "p2", "p3"] and out[1:] == [matches[2], matches[3]]
    assert isinstance(MapRefiner(enc), Refiner)


def test_map_refiner_on_a_parent_smaller_than_its_window() -> None:
    """A match box that is the whole (small) parent: the window is clipped to the image, every box stays inside."""
    enc = _CountingMapHistogram()
    arr = np.full((30, 50, 3), 100, np.uint8)
    arr[5:25, 10:40] = (220, 30, 30)
    parent = Image.fromarray(arr)
    red = Image.new("RGB", (9, 9), (220, 30, 30))
    match = ParentMatch("p", 0.1, Box(0, 0, 50, 30), "whole", 0.1, 0)
    [out] = MapRefiner(enc).refine(Query(enc.encode([red])[0], red), [match], {"p": parent}.get)
    assert out.score > 0.1 and 0 <= out.box.x0 < out.box.x1 <= 50 and 0 <= out.box.y0 < out.box.y1 <= 30
    assert all(w.x1 <= 50 and w.y1 <= 30 for w, _ in enc.windows)


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        (lambda n, d: np.full((n, d), 50.0, np.float32), None),  # not unit rows: normalised, as crops are
        (lambda n, d: np.zeros((n, d), np.float32), None),  # all-zero boxes score 0, never divide by zero
        (lambda n, d: np.full((n, d), np.nan, np.float32), "NaN or inf"),
        (lambda n, d: np.ones((n, 3), np.float32), r"into shape \(\d+, 3\); expected \(\d+, 8\)"),
    ],
)
def test_map_refiner_checks_what_a_window_map_returns(rows, error: str | None) -> None:  # type: ignore[no-untyped-def]
    class OddMap:
        def __init__(self, window: Box) -> None:
            self.window = window

        def pool(self, boxes: Sequence[Box]) -> np.ndarray:
            return rows(len(boxes), 8)

    class Odd(ColorHistogramEncoder):
        def window_map(self, image: Image.Image, window: Box, crop_size: tuple[float, float]) -> OddMap:
            return OddMap(window)

    enc = Odd(bins=2)
    assert enc.dim == 8
    scene, _ = _scene()
    red = Image.new("RGB", (9, 9), (220, 30, 30))
    query = Query(enc.encode([red])[0], red)
    match = ParentMatch("scene", 0.1, Box(250, 100, 500, 350), "tile", 0.1, 0)
    refiner = MapRefiner(enc)
    if error is None:
        [out] = refiner.refine(query, [match], {"scene": scene}.get)
        assert out.parent_id == "scene" and np.isfinite(out.score)
    else:
        with pytest.raises(VectorError, match=error):
            refiner.refine(query, [match], {"scene": scene}.get)
