"""Region vectors pooled from one feature map (FeatureMapEncoder, gem_pool_boxes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from crossscale.encode import FeatureMapEncoder, MapEncoder, RegionEncoder, create_encoder
from crossscale.encode.feature_map import gem_pool_boxes
from crossscale.errors import ConfigurationError
from crossscale.types import Box
from tests.photos import paste_scene


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.floats(1.0, 6.0), st.data())
def test_gem_pooling_of_a_box_is_the_gem_of_its_cells(h: int, w: int, p: float, data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    fmap = torch.from_numpy(rng.random((5, h, w)).astype(np.float32))
    r0, c0 = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    r1, c1 = data.draw(st.integers(r0 + 1, h)), data.draw(st.integers(c0 + 1, w))
    cell = 10  # image pixels per cell: box edges on cell edges
    box = Box(c0 * cell, r0 * cell, c1 * cell, r1 * cell)
    [got] = gem_pool_boxes(fmap, [box], (1 / cell, 1 / cell), p).numpy()
    cells = fmap[:, r0:r1, c0:c1].double().clamp_min(1e-6)
    want = cells.pow(p).mean(dim=(1, 2)).numpy()
    # compared as means of powers, where the integral image works: a difference of float64 running sums is
    # exact to ~1e-16 of the map's total (at most 81 here), which the 1/p-th root would magnify for tiny means
    np.testing.assert_allclose(got.astype(np.float64) ** p, want, rtol=1e-5, atol=1e-13)


def test_a_box_smaller_than_a_cell_pools_the_cell_it_lies_in() -> None:
    fmap = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4) + 1
    [[value]] = gem_pool_boxes(fmap, [Box(21, 11, 23, 13)], (0.1, 0.1), 1.0).numpy()  # inside cell (row 1, col 2)
    assert value == pytest.approx(float(fmap[0, 1, 2]))


class _TinyNet(torch.nn.Module):
    """Two strided convolutions and a ReLU: a stride-4 map of 8 non-negative channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x)) + 0.01


def _tiny(**kw: object) -> FeatureMapEncoder:
    net = _TinyNet()
    return FeatureMapEncoder(net, net, name="tiny", dim=8, device="cpu", **kw)  # type: ignore[arg-type]


def test_the_whole_image_as_a_region_equals_the_image_encoded_at_the_same_size(photos: dict[str, Image.Image]) -> None:
    net = _TinyNet()
    enc = FeatureMapEncoder(net, net, name="tiny", dim=8, map_size=96, query_size=96, device="cpu")
    im = photos["coffee"]
    [whole] = enc.encode_regions(im, [Box(0, 0, im.width, im.height)])
    np.testing.assert_allclose(whole, enc.encode([im])[0], atol=1e-5)
    assert isinstance(enc, RegionEncoder) and enc.name == "tiny-regions(map=96,query=96,gem=3)"


def test_regions_are_unit_rows_from_one_pass(photos: dict[str, Image.Image]) -> None:
    calls = []
    net = _TinyNet()

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return net(x)

    enc = FeatureMapEncoder(net, counted, name="tiny", dim=8, map_size=128, device="cpu")
    im = photos["rocket"]
    boxes = [Box(0, 0, im.width, im.height), Box(10, 10, 200, 150), Box(300, 200, 301, 201)]
    v = enc.encode_regions(im, boxes)
    assert v.shape == (3, 8) and v.dtype == np.float32 and calls == [(1, 3, 85, 128)]  # one pass, aspect kept
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert enc.encode_regions(im, []).shape == (0, 8)
    with pytest.raises(ConfigurationError, match="not inside the 640x427 image"):
        enc.encode_regions(im, [Box(0, 0, 641, 10)])


def test_queries_of_the_same_shape_share_a_pass_and_batching_changes_nothing(photos: dict[str, Image.Image]) -> None:
    enc = _tiny(batch_size=2)
    images = [photos["coffee"], photos["coffee"].rotate(90, expand=True), photos["chelsea"], photos["rocket"]]
    together = enc.encode(images)
    alone = np.concatenate([enc.encode([im]) for im in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert enc.encode([]).shape == (0, 8)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"map_size": 8}, "map_size must be an int >= 32"),
        ({"query_size": 2.5}, "query_size"),
        ({"p": 0.5}, "p must be"),
    ],
)
def test_bad_settings_are_named(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _tiny(**kw)


def test_a_feature_map_of_the_wrong_shape_is_reported(photos: dict[str, Image.Image]) -> None:
    net = _TinyNet()
    enc = FeatureMapEncoder(net, lambda x: net(x)[:, :4], name="tiny", dim=8, device="cpu")
    with pytest.raises(ConfigurationError, match=r"feature_map returned shape \(1, 4"):
        enc.encode([photos["coffee"]])


def test_lite0_regions_find_an_object_in_a_scene(photos: dict[str, Image.Image]) -> None:
    enc = create_encoder("efficientnet-lite0-regions", device="cpu")
    assert isinstance(enc, RegionEncoder) and enc.dim == 1280
    scene, box = paste_scene(photos["astronaut"].resize((1024, 768)), photos["chelsea"], at=(600, 380), size=(280, 200))
    boxes = [Box(*box), Box(0, 0, 280, 200), Box(300, 100, 580, 300), Box(600, 40, 880, 240), Box(0, 0, 1024, 768)]
    regions = enc.encode_regions(scene, boxes)
    sims = regions @ enc.encode([photos["chelsea"].resize((300, 200))])[0]
    assert int(np.argmax(sims)) == 0, sims  # the region that holds the cat, not the background


def test_pooling_moves_maps_off_a_device_without_float64() -> None:
    """Apple's MPS has no float64, which the integral images need: maps from it are pooled on the CPU (no Mac
    here, so a stand-in with an MPS device); maps elsewhere stay where they are."""
    from crossscale.encode._pool import float64_ready

    class OnMPS:
        device = torch.device("mps")

        def cpu(self) -> str:
            return "a CPU copy"

    assert float64_ready(OnMPS()) == "a CPU copy"  # type: ignore[arg-type,comparison-overlap]
    here = torch.ones(3)
    assert float64_ready(here) is here


def test_a_window_that_is_the_box_gives_the_crops_vector(photos: dict[str, Image.Image]) -> None:
    """window_map: a box of a window scaled as encode() resizes its crop (long side at query_size, aspect kept) is
    GeM-pooled as encode() pools the crop; boxes inside a larger window see their surroundings too."""
    enc = _tiny(query_size=96)
    image = photos["coffee"]
    box = Box(40, 30, 240, 180)
    [alone] = enc.window_map(image, box, (box.width, box.height)).pool([box])
    [crop] = enc.encode([image.crop(box.as_tuple())])
    np.testing.assert_allclose(alone, crop, atol=1e-5)
    window = Box(0, 0, 400, 300)
    box_map = enc.window_map(image, window, (box.width, box.height))
    [in_context] = box_map.pool([box])
    assert float(in_context @ crop) > 0.9 and isinstance(enc, MapEncoder)
    with pytest.raises(ConfigurationError, match="longer than max_side=2048"):
        enc.window_map(image, window, (2, 2))
    with pytest.raises(ConfigurationError, match="not inside the window"):
        box_map.pool([Box(300, 200, 450, 320)])
