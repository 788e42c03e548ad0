"""ConvMapEncoder: crops as BackboneEncoder embeds them, and boxes pooled from one pass over a window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from crossscale.encode import ConvMapEncoder, MapEncoder
from crossscale.errors import ConfigurationError
from crossscale.protocols import BoxMap
from crossscale.types import Box


class _PatchNet(torch.nn.Module):
    """One 32x32 convolution of stride 32 and a ReLU: each cell sees its own 32x32 patch and nothing else."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, dim, 32, stride=32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + 0.01


def _encoder(net: torch.nn.Module | None = None, **kw: object) -> ConvMapEncoder:
    """In fp32, whatever this CPU would pick: these tests compare pooled boxes with crops to float rounding."""
    net = net if net is not None else _PatchNet()
    kw.setdefault("precision", "fp32")
    return ConvMapEncoder(net, net, name="patch", dim=6, image_size=64, device="cpu", **kw)  # type: ignore[arg-type]


def _image(width: int = 256, height: int = 192) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_a_window_that_is_the_box_gives_the_crops_vector(photos: dict[str, Image.Image]) -> None:
    enc = _encoder()
    image = photos["coffee"]
    box = Box(37, 21, 237, 171)  # 200x150: squashed to 64x64, as encode() squashes the crop
    [pooled] = enc.window_map(image, box, (box.width, box.height)).pool([box])
    [crop] = enc.encode([image.crop(box.as_tuple())])
    np.testing.assert_allclose(pooled, crop, atol=1e-5)
    assert isinstance(enc, MapEncoder)


def test_boxes_on_cell_edges_pool_what_their_crops_embed() -> None:
    """At scale 1 the window is not resized; a cell sees only its own patch, so a cell-aligned box's vector is
    its crop's exactly, wherever it lies in the window."""
    enc = _encoder()
    image = _image()
    window = Box(0, 0, 256, 192)
    box_map = enc.window_map(image, window, (64, 64))
    boxes = [Box(0, 0, 64, 64), Box(96, 32, 160, 96), Box(192, 128, 256, 192), Box(64, 64, 192, 128)]
    pooled = box_map.pool(boxes)
    crops = enc.encode([image.crop(b.as_tuple()) for b in boxes[:3]])
    np.testing.assert_allclose(pooled[:3], crops, atol=1e-5)
    # the 128x64 box: its 8 cells averaged (a squashed crop would halve the x resolution instead)
    cells = enc.model(torch.from_numpy(enc._normalise(image, (256, 192))).permute(2, 0, 1)[None])
    want = cells[0, :, 2:4, 2:6].mean(dim=(1, 2)).detach().numpy()
    np.testing.assert_allclose(pooled[3], want / np.linalg.norm(want), atol=1e-5)
    assert isinstance(box_map, BoxMap) and pooled.dtype == np.float32


def test_a_window_inside_a_larger_image_is_offset() -> None:
    enc = _encoder()
    image = _image()
    window = Box(64, 32, 192, 160)
    [inside] = enc.window_map(image, window, (64, 64)).pool([Box(96, 64, 160, 128)])
    [crop] = enc.encode([image.crop((96, 64, 160, 128))])
    np.testing.assert_allclose(inside, crop, atol=1e-5)


def test_one_forward_pass_per_window() -> None:
    calls: list[tuple[int, ...]] = []
    net = _PatchNet()

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return net(x)

    enc = ConvMapEncoder(net, counted, name="patch", dim=6, image_size=64, device="cpu")
    box_map = enc.window_map(_image(), Box(0, 0, 200, 100), (50, 25))  # 4x and 2.56x: a 256x256 pass
    box_map.pool([Box(0, 0, 50, 25), Box(20, 10, 120, 60)])
    box_map.pool([Box(150, 75, 200, 100)])
    assert calls == [(1, 3, 256, 256)]


def test_an_all_zero_region_pools_to_a_zero_row_not_an_error() -> None:
    class Dead(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros((x.shape[0], 6, x.shape[2] // 32, x.shape[3] // 32))

    dead = Dead()
    enc = ConvMapEncoder(dead, dead, name="dead", dim=6, image_size=64, device="cpu")
    rows = enc.window_map(_image(), Box(0, 0, 128, 128), (64, 64)).pool([Box(0, 0, 64, 64)])
    assert rows.shape == (1, 6) and not rows.any()


@pytest.mark.parametrize(
    ("window", "crop_size", "message"),
    [
        (Box(0, 0, 300, 100), (64, 64), "not inside the 256x192 image"),
        (Box(0, 0, 64, 64), (0, 64), "two positive numbers"),
        (Box(0, 0, 64, 64), (float("nan"), 64), "two positive numbers"),
        (Box(0, 0, 64, 64), (64,), "crop_size must be (width, height)"),
        (Box(0, 0, 64, 64), "big", "crop_size must be (width, height)"),
        (Box(0, 0, 256, 192), (4, 4), "longer than max_side=2048"),
    ],
)
def test_bad_windows_and_crop_sizes_are_refused(window: Box, crop_size: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _encoder().window_map(_image(), window, crop_size)  # type: ignore[arg-type]


def test_a_box_outside_the_window_is_refused() -> None:
    box_map = _encoder().window_map(_image(), Box(64, 64, 128, 128), (64, 64))
    with pytest.raises(ConfigurationError, match=r"box \(0, 0, 64, 64\) is not inside the window"):
        box_map.pool([Box(0, 0, 64, 64)])
    assert box_map.pool([]).shape == (0, 6)


def test_a_map_of_the_wrong_shape_is_reported() -> None:
    net = _PatchNet()
    enc = ConvMapEncoder(net, lambda x: net(x)[:, :3], name="patch", dim=6, image_size=64, device="cpu")
    with pytest.raises(ConfigurationError, match=r"feature_map returned shape \(1, 3, 4, 4\)"):
        enc.window_map(_image(), Box(0, 0, 64, 64), (32, 32))


def test_lite0_pools_a_box_about_as_its_crop(lite0: ConvMapEncoder, photos: dict[str, Image.Image]) -> None:
    """The pretrained network: a box pooled from a window twice its size (its neighbours in the receptive field)
    stays close to its crop's vector; a window that is the box gives the crop's vector."""
    image = photos["coffee"]
    box = Box(150, 100, 350, 260)
    window = Box(50, 20, 450, 340)
    [alone] = lite0.window_map(image, box, (box.width, box.height)).pool([box])
    [in_context, other] = lite0.window_map(image, window, (box.width, box.height)).pool([box, Box(50, 20, 250, 180)])
    [crop] = lite0.encode([image.crop(box.as_tuple())])
    np.testing.assert_allclose(alone, crop, atol=1e-4)
    assert float(in_context @ crop) > 0.8 and float(in_context @ crop) > float(other @ crop)


def test_channels_last_weights_give_the_same_vectors(photos: dict[str, Image.Image]) -> None:
    """On the CPU, channels_last lays the conv weights out NHWC (oneDNN's faster path); the vectors stay the same."""
    image = photos["coffee"]
    plain, nhwc = _encoder(), _encoder(channels_last=True)
    assert nhwc.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    crops = [image.crop((0, 0, 200, 150)), image.crop((100, 50, 300, 250)).convert("L")]
    np.testing.assert_allclose(nhwc.encode(crops), plain.encode(crops), atol=1e-5)
    box = Box(37, 21, 237, 171)
    window = Box(0, 0, image.width, image.height)
    np.testing.assert_allclose(
        nhwc.window_map(image, window, (box.width, box.height)).pool([box]),
        plain.window_map(image, window, (box.width, box.height)).pool([box]),
        atol=1e-5,
    )


def test_the_built_in_lite0_encoders_lay_their_weights_out_channels_last(lite0: ConvMapEncoder) -> None:
    from crossscale.encode import create_encoder

    regions = create_encoder("efficientnet-lite0-regions", device="cpu")
    for model in (lite0.model, regions.model):  # type: ignore[attr-defined]
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_a_folded_batch_norm_computes_what_the_norm_did(groups: int, conv_bias: bool, affine: bool) -> None:
    from crossscale.encode import fold_batch_norm

    torch.manual_seed(groups + 2 * conv_bias + 4 * affine)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=conv_bias)
    norm = torch.nn.BatchNorm2d(8, eps=1e-3, affine=affine)
    norm.running_mean.uniform_(-2, 2)  # type: ignore[union-attr]
    norm.running_var.uniform_(0.1, 3)  # type: ignore[union-attr]
    if affine:
        torch.nn.init.uniform_(norm.weight, -2, 2)
        torch.nn.init.uniform_(norm.bias, -1, 1)
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        raw = conv(x)
        expected = norm.eval()(raw)
        fold_batch_norm(conv, norm)
        folded = conv(x)
    assert not torch.allclose(raw, expected, atol=0.1)  # the norm did change the outputs
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)


def test_a_batch_norm_that_cannot_be_folded_is_refused() -> None:
    from crossscale.encode import fold_batch_norm

    conv = torch.nn.Conv2d(3, 8, 3)
    with pytest.raises(ConfigurationError, match="no running statistics"):
        fold_batch_norm(conv, torch.nn.BatchNorm2d(8, track_running_stats=False))
    with pytest.raises(ConfigurationError, match="6 channels, the convolution gives 8"):
        fold_batch_norm(conv, torch.nn.BatchNorm2d(6))


def test_lite0_with_its_batch_norms_folded_gives_the_same_features(photos: dict[str, Image.Image]) -> None:
    """The built-in EfficientNet-Lite0 is folded (faster inference); its features are the package model's."""
    from crossscale.encode.backbone import load_efficientnet_lite0

    folded = load_efficientnet_lite0("efficientnet-lite0").eval()
    plain = load_efficientnet_lite0("efficientnet-lite0", fold_batch_norms=False).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) == 49
    pixels = torch.from_numpy(np.asarray(photos["coffee"].resize((320, 240)), dtype=np.float32))
    pixels = ((pixels - 127.0) / 128.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        expected = plain.extract_features(pixels)
        got = folded.extract_features(pixels)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(folded(pixels), plain(pixels), atol=1e-3, rtol=1e-4)  # the classifier too
