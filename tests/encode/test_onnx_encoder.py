"""export_onnx and OnnxEncoder: a CNN encoder's vectors without torch, and a workspace searched with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from crossscale import CrossScaleSearch
from crossscale.encode import BackboneEncoder, ColorHistogramEncoder, OnnxEncoder, create_encoder, export_onnx
from crossscale.encode.onnx_encoder import METADATA_KEY
from crossscale.errors import CapabilityError, ConfigurationError, DeviceError

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")


class _Net(torch.nn.Module):
    """A strided convolution, averaged: 8 features of a 32x32 input (and a dropout, which only training mode runs)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.conv(x)).mean(dim=(2, 3))) + 0.01


def _torch_encoder() -> BackboneEncoder:
    net = _Net()
    mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
    return BackboneEncoder(
        net, net, name="tiny-cnn", dim=8, image_size=32, mean=mean, std=std, device="cpu", precision="fp32"
    )


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    out = [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 60, 3), dtype=np.uint8)) for i in range(n)]
    return [*out[:-1], out[-1].convert("L")]  # a grey image is read as RGB, as the torch encoder reads it


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    return export_onnx(_torch_encoder(), tmp_path / "tiny.onnx")


def test_an_exported_encoder_gives_the_torch_encoders_vectors(tmp_path: Path) -> None:
    torch_encoder = _torch_encoder()
    images = _images(5)
    before = torch_encoder.encode(images)
    exported = export_onnx(torch_encoder, tmp_path / "tiny.onnx")
    assert not torch_encoder.model.training  # the export leaves the model as it was (eval: no dropout)
    np.testing.assert_array_equal(torch_encoder.encode(images), before)
    served = OnnxEncoder(exported, device="cpu", batch_size=2)  # 5 images: three runs
    assert (served.name, served.dim, served.image_size) == ("tiny-cnn", 8, 32)
    got = served.encode(images)
    assert got.dtype == np.float32 and got.shape == (5, 8)
    np.testing.assert_allclose(got, before, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert served.encode([]).shape == (0, 8)
    assert not [p.name for p in exported.parent.iterdir() if p.name != exported.name]  # no temporary file left


def test_efficientnet_lite0_serves_its_own_vectors(tmp_path: Path, lite0: Any, photos: dict[str, Image.Image]) -> None:
    served = create_encoder("onnx", path=export_onnx(lite0, tmp_path / "lite0.onnx"), device="cpu")
    assert isinstance(served, OnnxEncoder) and (served.name, served.dim) == (lite0.name, lite0.dim)
    images = list(photos.values())[:4]
    np.testing.assert_allclose(served.encode(images), lite0.encode(images), atol=1e-5)


def test_a_workspace_the_torch_encoder_indexed_is_searched_with_the_onnx_one(tmp_path: Path, exported: Path) -> None:
    images = _images(6)
    common: dict[str, Any] = {"segmenter": "whole+tiles", "verifier": False, "refine": False, "progress": False}
    with CrossScaleSearch.open(tmp_path / "ws", encoder=_torch_encoder(), device="cpu", **common) as cs:
        cs.index([(f"p{i}", im) for i, im in enumerate(images)])
        searched = [cs.search(im.crop((0, 0, 30, 30)), top_k=3) for im in images]
        want = [[(m.parent_id, m.box) for m in matches] for matches in searched]
        scores = [[m.score for m in matches] for matches in searched]
    served = OnnxEncoder(exported, device="cpu")
    with CrossScaleSearch.open(tmp_path / "ws", encoder=served, readonly=True, device="cpu", **common) as cs:
        for image, parents, best in zip(images, want, scores, strict=True):
            found = cs.search(image.crop((0, 0, 30, 30)), top_k=3)
            assert [(m.parent_id, m.box) for m in found] == parents
            np.testing.assert_allclose([m.score for m in found], best, atol=1e-5)


def _rewritten(source: Path, target: Path, meta: object) -> Path:
    """``source`` with its crossscale metadata replaced by ``meta`` (JSON), or removed (``None``)."""
    model = onnx.load(str(source))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta if isinstance(meta, str) else json.dumps(meta)
    onnx.save(model, str(target))
    return target


def test_a_file_that_is_not_an_exported_encoder_is_refused_by_name(tmp_path: Path, exported: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"ONNX encoder file .*missing.onnx does not exist"):
        OnnxEncoder(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ConfigurationError, match=r"ONNX encoder file .*text.onnx cannot be read"):
        OnnxEncoder(tmp_path / "text.onnx")
    bare = _rewritten(exported, tmp_path / "bare.onnx", None)
    with pytest.raises(ConfigurationError, match=r"bare.onnx holds no 'crossscale.encoder' metadata"):
        OnnxEncoder(bare)
    meta = json.loads(onnx.load(str(exported)).metadata_props[0].value)
    assert meta == {
        "format": 1,
        "name": "tiny-cnn",
        "dim": 8,
        "image_size": 32,
        "mean": [120.0, 110.0, 100.0],
        "std": [60.0, 55.0, 50.0],
    }
    cases: list[tuple[object, str]] = [
        ("{", r"is not JSON"),
        ({k: v for k, v in meta.items() if k != "dim"}, r"its metadata lacks dim"),
        ({**meta, "format": 2}, r"is of format 2; this crossscale reads 1"),
        ({**meta, "dim": -1}, r"bad metadata"),
        ({**meta, "std": [60.0, 0.0, 50.0]}, r"bad metadata"),
        ({**meta, "name": ""}, r"bad metadata"),
    ]
    for i, (value, message) in enumerate(cases):
        with pytest.raises(ConfigurationError, match=message):
            OnnxEncoder(_rewritten(exported, tmp_path / f"bad{i}.onnx", value))
    wrong_dim = OnnxEncoder(_rewritten(exported, tmp_path / "dim7.onnx", {**meta, "dim": 7}))
    with pytest.raises(ConfigurationError, match=r"dim7.onnx gave vectors of 8 values, its metadata says 7"):
        wrong_dim.encode(_images(2))


def test_bad_arguments_are_named(tmp_path: Path, exported: Path) -> None:
    with pytest.raises(DeviceError, match=r"device must be 'auto', 'cpu' or 'cuda', got 'tpu'"):
        OnnxEncoder(exported, device="tpu")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(DeviceError, match=r"this onnxruntime has no CUDA"):
            OnnxEncoder(exported, device="cuda")
    with pytest.raises(ConfigurationError, match=r"batch_size"):
        OnnxEncoder(exported, batch_size=0)
    with pytest.raises(ConfigurationError, match=r"threads"):
        OnnxEncoder(exported, threads=0)
    with pytest.raises(CapabilityError, match=r"export_onnx takes a BackboneEncoder .*got ColorHistogramEncoder"):
        export_onnx(ColorHistogramEncoder(), tmp_path / "histogram.onnx")
    with pytest.raises(ConfigurationError, match=r"is a folder"):
        export_onnx(_torch_encoder(), tmp_path)


def test_a_model_torch_cannot_export_leaves_no_file(tmp_path: Path) -> None:
    def fails(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("cannot trace this")

    encoder = BackboneEncoder(_Net(), fails, name="broken", dim=8, image_size=32, device="cpu")
    with pytest.raises(CapabilityError, match=r"could not export the model to ONNX: RuntimeError: cannot trace this"):
        export_onnx(encoder, tmp_path / "broken.onnx")
    assert list(tmp_path.iterdir()) == []
