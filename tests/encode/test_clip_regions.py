"""CLIP and SigLIP region vectors from one pass (CLIPRegionEncoder), on tiny random checkpoints built offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossscale import CrossScaleSearch
from crossscale.encode import CLIPEncoder, CLIPRegionEncoder, RegionEncoder, create_encoder
from crossscale.errors import CapabilityError, ConfigurationError
from crossscale.types import Box


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def deep_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP whose vision tower has 3 layers: the ones before the last run once, the last per box."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tower = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2}
    vision = {**tower, "num_hidden_layers": 3, "image_size": 32, "patch_size": 8}
    text = {**tower, "num_hidden_layers": 1, "vocab_size": 64, "max_position_embeddings": 16}
    path = tmp_path_factory.mktemp("deep-clip")
    torch.manual_seed(1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _model_embedding(encoder: CLIPRegionEncoder, image: Image.Image) -> np.ndarray:
    """What the model itself gives the whole image at the encoder's grid size (transformers, no crossscale)."""
    with torch.inference_mode():
        out = encoder.model.get_image_features(pixel_values=encoder._grid_pixels(image), interpolate_pos_encoding=True)
    feats = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()[0]
    return feats / np.linalg.norm(feats)


@pytest.mark.parametrize("checkpoint", ["deep_clip_dir", "tiny_siglip_dir"])
def test_a_box_over_the_whole_image_is_the_models_own_embedding(
    checkpoint: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(checkpoint)
    encoder = CLIPRegionEncoder(path, map_size=64, device="cpu", precision="fp32")  # _model_embedding's precision
    assert isinstance(encoder, RegionEncoder) and encoder.name.endswith("-regions(map=64)")
    image = _noise(80, 60)
    boxes = [Box(0, 0, 80, 60), Box(10, 10, 40, 30), Box(70, 50, 80, 60)]
    vectors = encoder.encode_regions(image, boxes)
    assert vectors.shape == (3, encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], _model_embedding(encoder, image), atol=1e-5)
    assert not np.allclose(vectors[1], vectors[0], atol=1e-3)  # a box sees less than the whole


def test_a_box_attends_to_its_own_patches_only(tiny_clip_dir: Path) -> None:
    """With one layer, the class token's last attention is all there is: pixels outside a box's patches cannot move
    its vector, and pixels inside it do. The grid is 8 x 6 patches (64 x 48 px), not square: rows and columns are
    not interchangeable."""
    encoder = CLIPRegionEncoder(tiny_clip_dir, map_size=64, device="cpu")
    image = _noise(64, 48)
    box = Box(0, 0, 24, 16)  # patches (rows 0-1, columns 0-2)
    before = encoder.encode_regions(image, [box])
    pixels = np.asarray(image).copy()
    pixels[16:, :] = 0  # every patch row below the box
    pixels[:, 24:] = 255  # every patch column right of it
    after = encoder.encode_regions(Image.fromarray(pixels), [box])
    np.testing.assert_allclose(after, before, atol=1e-5)
    pixels[0:8, 0:8] = 128  # a patch inside the box
    inside = encoder.encode_regions(Image.fromarray(pixels), [box])
    assert not np.allclose(inside, before, atol=1e-4)


def test_queries_are_embedded_as_the_plain_clip_encoder_does(tiny_clip_dir: Path) -> None:
    regions = create_encoder("clip-regions", name_or_path=str(tiny_clip_dir), device="cpu")
    plain = CLIPEncoder(tiny_clip_dir, device="cpu")
    assert isinstance(regions, CLIPRegionEncoder) and regions.name != plain.name  # workspaces told apart
    image = _noise(50, 40, seed=3)
    np.testing.assert_allclose(regions.encode([image]), plain.encode([image]), atol=1e-6)


def test_small_images_boxes_outside_and_no_boxes(tiny_clip_dir: Path) -> None:
    encoder = CLIPRegionEncoder(tiny_clip_dir, map_size=32, device="cpu")
    tiny = _noise(8, 8).convert("L")  # one patch; grey converted
    assert encoder.encode_regions(tiny, [Box(0, 0, 8, 8), Box(2, 2, 3, 3)]).shape == (2, encoder.dim)
    assert encoder.encode_regions(_noise(40, 30), []).shape == (0, encoder.dim)
    with pytest.raises(ConfigurationError, match=r"box \(0, 0, 50, 10\) is not inside the 40x30 image"):
        encoder.encode_regions(_noise(40, 30), [Box(0, 0, 50, 10)])
    with pytest.raises(ConfigurationError, match="map_size"):
        CLIPRegionEncoder(tiny_clip_dir, map_size=4, device="cpu")  # under one 8-px patch


def test_a_siglip_tower_without_a_pooling_head_is_refused(tmp_path: Path) -> None:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision = {**tower, "image_size": 32, "patch_size": 8, "vision_use_head": False}
    text = {**tower, "vocab_size": 64, "max_position_embeddings": 16}
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(tmp_path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    with pytest.raises(CapabilityError, match="no pooling head"):
        CLIPRegionEncoder(tmp_path, device="cpu")


def test_a_workspace_indexes_with_one_pass_per_image_and_reopens_by_name(
    tiny_clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[int] = []
    original = CLIPRegionEncoder._grid_pixels

    def counted(self: CLIPRegionEncoder, image: Image.Image) -> torch.Tensor:
        passes.append(1)
        return original(self, image)

    monkeypatch.setattr(CLIPRegionEncoder, "_grid_pixels", counted)
    kwargs = {"name_or_path": str(tiny_clip_dir), "map_size": 64}
    images = [(f"p{i}", _noise(120, 90, seed=i)) for i in range(3)]
    with CrossScaleSearch.open(
        tmp_path / "ws",
        encoder="clip-regions",
        encoder_kwargs=kwargs,
        segmenter="whole+tiles",
        verifier=False,
        refine=False,
        progress=False,
        device="cpu",
    ) as cs:
        cs.index(images)
        assert len(passes) == 3 and cs.store.chunk_count() > 3  # one pass per image for all its chunks
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, refine=False, progress=False, device="cpu") as cs:
        assert cs.config.encoder_name.endswith("-regions(map=64)")
        assert cs.search(images[1][1], top_k=3)[0].parent_id == "p1"  # the whole image's own chunk


def test_a_transformers_that_cannot_interpolate_position_encodings_is_named(
    tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = CLIPRegionEncoder(tiny_clip_dir, map_size=64, device="cpu")

    def old_forward(*args: object, **kwargs: object) -> None:
        raise TypeError("forward() got an unexpected keyword argument 'interpolate_pos_encoding'")

    monkeypatch.setattr(encoder.model.vision_model, "forward", old_forward)
    with pytest.raises(CapabilityError, match=r"interpolates position encodings \(>= 4.45\)"):
        encoder.encode_regions(_noise(64, 48), [Box(0, 0, 10, 10)])


def test_other_dual_encoders_are_refused_with_the_model_type(
    tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    real = transformers.AutoConfig.from_pretrained

    def as_altclip(*args: object, **kwargs: object) -> object:
        config = real(*args, **kwargs)  # type: ignore[arg-type]
        if not isinstance(config, tuple):  # (config, unused kwargs) when an image processor asks
            config.model_type = "altclip"  # a CLIP-style dual encoder whose tower this does not handle
        return config

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", as_altclip)
    with pytest.raises(CapabilityError, match="is a 'altclip' model; region vectors from one pass are implemented"):
        CLIPRegionEncoder(tiny_clip_dir, device="cpu")
