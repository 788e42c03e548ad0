from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crossscale.encode import ColorHistogramEncoder
from crossscale.errors import ConfigurationError
from crossscale.rank import RegionRefiner
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
