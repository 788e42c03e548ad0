from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crossscale.encode import ColorHistogramEncoder
from crossscale.errors import ConfigurationError
from crossscale.rank import RegionRefiner
from crossscale.types import Box, ParentMatch


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
    out = RegionRefiner(enc, top_n=2).refine(qv, query.size, [other, match], parents.__getitem__)
    assert out[0].parent_id == "scene"  # re-scored above the other parent
    assert out[0].score > start_score and out[0].box.iou(truth) > tile.iou(truth) + 0.2
    ratio = out[0].box.width / out[0].box.height
    assert ratio == pytest.approx(60 / 40, rel=0.1)  # the query's shape
    assert out[1].parent_id == "other" and out[1].box == Box(0, 0, 50, 50)  # a worse crop never replaces a match


def test_refine_leaves_matches_beyond_top_n_alone() -> None:
    enc = ColorHistogramEncoder(bins=4)
    matches = [ParentMatch(f"p{i}", 0.5 - i / 10, Box(0, 0, 10, 10), "tile", 0.5, i) for i in range(4)]
    calls: list[str] = []

    def load(pid: str) -> Image.Image:
        calls.append(pid)
        return Image.new("RGB", (40, 40))

    out = RegionRefiner(enc, top_n=1).refine(enc.encode([Image.new("RGB", (9, 9), "red")])[0], (9, 9), matches, load)
    assert calls == ["p0"] and [m.parent_id for m in out[1:]] == ["p1", "p2", "p3"]


@pytest.mark.parametrize("kw", [{"top_n": 0}, {"scales": ()}, {"scales": (9.0,)}, {"shift": 0.0}])
def test_validates(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RegionRefiner(ColorHistogramEncoder(), **kw)  # type: ignore[arg-type]


def test_a_parent_deleted_since_ranking_is_dropped_not_raised() -> None:
    enc = ColorHistogramEncoder(bins=4)
    matches = [ParentMatch(f"p{i}", 0.5 - i / 10, Box(0, 0, 10, 10), "tile", 0.5, i) for i in range(3)]
    images = {"p0": Image.new("RGB", (40, 40)), "p2": Image.new("RGB", (40, 40))}  # p1 was deleted
    out = RegionRefiner(enc, top_n=3).refine(enc.encode([images["p0"]])[0], (9, 9), matches, images.get)
    assert [m.parent_id for m in out] == ["p0", "p2"]


def test_unnormalised_encoder_output_is_normalised() -> None:
    class Loud(ColorHistogramEncoder):
        def encode(self, images):  # type: ignore[no-untyped-def]
            return super().encode(images) * 50.0  # rows of norm 50, not 1

    arr = np.zeros((40, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)  # every crop around the centre is part red: cosine with red well below 0.97
    match = ParentMatch("p", 0.97, Box(0, 0, 40, 40), "tile", 0.97, 0)
    query = ColorHistogramEncoder(bins=4).encode([Image.new("RGB", (9, 9), (255, 0, 0))])[0]
    [out] = RegionRefiner(Loud(bins=4)).refine(query, (9, 9), [match], {"p": Image.fromarray(arr)}.get)
    assert out == match  # scores 50x too large would have replaced it
