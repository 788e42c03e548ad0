"""Encoding one parent's chunks: a forward pass per crop vs region vectors pooled from one feature map.

Same photo (1024x768), same boxes (the default ``whole+tiles(.5,.25,.18)`` segmenter, ~140 boxes), same
pretrained EfficientNet-Lite0 weights; the crop path is ``efficientnet-lite0`` (each crop resized to 224 px),
the region path ``efficientnet-lite0-regions`` (one pass at 1024 px on the long side, GeM per box). Also the
geometric verifier's per-parent extraction (SIFT, 4,000 keypoints; and its settings before and after 2026-12-04 on
a 1600x1200 parent), the other indexing cost it adds. Each EfficientNet-Lite0 path runs as built (auto
precision: bf16 on a CPU with bf16 matrix units), in fp32, and in fp32 as before 2026-12-05's changes (batch norms
not folded; weights not channels-last), side by side in one run.

The same comparison for CLIP ViT-B/32 (``clip`` vs ``clip-regions``: one pass at 448 px, the last layer's
attention restricted to each box), with random weights of the real architecture: no pretrained CLIP can be
downloaded here, and the cost of a forward pass does not depend on the weights.

Run: ``python -m pytest benchmarks/test_bench_encode.py --benchmark-enable``. Results: docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from benchmarks.lite0 import lite0_as_before
from crossscale.encode import create_encoder, embed, embed_regions
from crossscale.rank import GeometricVerifier, LocalFeatures

VARIANTS = pytest.mark.parametrize(
    "variant",
    ["default", "fp32", "fp32-kept", "fp32-kept-nchw"],
    ids=[
        "default: auto precision (bf16 on a CPU with bf16 matrix units), batch norms folded, channels-last",
        "fp32, batch norms folded, channels-last",
        "fp32, batch norms kept, channels-last (before 2026-12-05, later)",
        "fp32, batch norms kept, nchw (before 2026-12-05)",
    ],
)


def _built(name: str, variant: str) -> tuple[Any, str]:
    """The built-in encoder ``name`` as it is (auto precision, batch norms folded into the convolutions, weights
    channels-last on the CPU), in fp32, or in fp32 as it was before: the package's model with its batch norms, then
    also its weights in NCHW; and its dtype's name."""
    encoder = lite0_as_before(
        name,
        precision="auto" if variant == "default" else "fp32",
        fold_batch_norms=not variant.startswith("fp32-kept"),
        channels_last=not variant.endswith("nchw"),
    )
    return encoder, str(encoder.dtype).removeprefix("torch.")


@pytest.mark.benchmark(group="encode-one-parent")
@VARIANTS
def test_crop_encoding(benchmark, scene, variant: str) -> None:  # type: ignore[no-untyped-def]
    image, chunks = scene
    encoder, dtype = _built("efficientnet-lite0", variant)
    crops = [image.crop(c.box.as_tuple()) for c in chunks]
    vectors = benchmark.pedantic(embed, args=(encoder, crops), rounds=3, iterations=1, warmup_rounds=1)
    assert vectors.shape == (len(chunks), 1280)
    benchmark.extra_info.update(boxes=len(chunks), dtype=dtype)


@pytest.mark.benchmark(group="encode-one-parent")
@VARIANTS
def test_region_encoding(benchmark, scene, variant: str) -> None:  # type: ignore[no-untyped-def]
    image, chunks = scene
    encoder, dtype = _built("efficientnet-lite0-regions", variant)
    boxes = [c.box for c in chunks]
    vectors = benchmark.pedantic(embed_regions, args=(encoder, image, boxes), rounds=5, iterations=1, warmup_rounds=1)
    assert vectors.shape == (len(chunks), 1280)
    benchmark.extra_info.update(boxes=len(chunks), dtype=dtype)


@pytest.mark.benchmark(group="encode-one-parent")
def test_sift_extraction(benchmark, scene) -> None:  # type: ignore[no-untyped-def]
    image, _ = scene
    verifier = GeometricVerifier()
    blob = benchmark.pedantic(verifier.extract, args=(image,), rounds=5, iterations=1, warmup_rounds=1)
    features = LocalFeatures.from_bytes(blob)
    assert 500 <= len(features.points) <= verifier.max_keypoints
    assert np.isfinite(features.descriptors).all()
    benchmark.extra_info["bytes"] = len(blob)


@pytest.mark.benchmark(group="sift-settings")
@pytest.mark.parametrize(
    ("keypoints", "side"), [(2000, 1024), (4000, 1600)], ids=["2000-at-1024 (before)", "4000-at-1600 (default)"]
)
def test_sift_extraction_by_settings(benchmark, keypoints: int, side: int) -> None:  # type: ignore[no-untyped-def]
    """A 1600x1200 parent (the quality benchmark's parents are 1000-1600 px): the old and new stored-feature
    settings, side by side."""
    from skimage import data

    image = Image.fromarray(data.astronaut()).convert("RGB").resize((1600, 1200))
    verifier = GeometricVerifier(max_keypoints=keypoints, max_side=side)
    blob = benchmark.pedantic(verifier.extract, args=(image,), rounds=5, iterations=1, warmup_rounds=1)
    features = LocalFeatures.from_bytes(blob)
    assert keypoints // 2 <= len(features.points) <= keypoints and features.size == (1600, 1200)
    benchmark.extra_info["bytes"] = len(blob)


CLIP_PRECISIONS = pytest.mark.parametrize(
    "precision", ["auto", "fp32"], ids=["auto precision (bf16 on a CPU with bf16 matrix units)", "fp32"]
)


@pytest.mark.benchmark(group="encode-one-parent-clip-vit-b32")
@CLIP_PRECISIONS
def test_clip_crop_encoding(benchmark, scene, vit_b32_dir, precision: str) -> None:  # type: ignore[no-untyped-def]
    image, chunks = scene
    encoder = create_encoder("clip", name_or_path=str(vit_b32_dir), device="cpu", precision=precision)
    crops = [image.crop(c.box.as_tuple()) for c in chunks]
    vectors = benchmark.pedantic(embed, args=(encoder, crops), rounds=2, iterations=1, warmup_rounds=0)
    assert vectors.shape == (len(chunks), 512)
    benchmark.extra_info.update(boxes=len(chunks), dtype=str(encoder.dtype).removeprefix("torch."))


@pytest.mark.benchmark(group="encode-one-parent-clip-vit-b32")
@CLIP_PRECISIONS
def test_clip_region_encoding(benchmark, scene, vit_b32_dir, precision: str) -> None:  # type: ignore[no-untyped-def]
    image, chunks = scene
    encoder = create_encoder("clip-regions", name_or_path=str(vit_b32_dir), device="cpu", precision=precision)
    boxes = [c.box for c in chunks]
    vectors = benchmark.pedantic(embed_regions, args=(encoder, image, boxes), rounds=5, iterations=1, warmup_rounds=1)
    assert vectors.shape == (len(chunks), 512)
    benchmark.extra_info.update(boxes=len(chunks), dtype=str(encoder.dtype).removeprefix("torch."))
