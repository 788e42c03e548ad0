"""A CNN encoder exported to ONNX and run by ONNX Runtime: a serving process that embeds queries without torch.

A process that imports torch holds 185 MiB (torch's CPU build) to 470 MiB (the CUDA build PyPI's Linux wheels are)
before its first vector; ONNX Runtime holds ~20 MiB, and a session of EfficientNet-Lite0 ~50 MiB more. At 10M
regions that is what keeps a serving process within 1.2x of its index and model bytes (docs/benchmarks.md, "Serving
without torch"). :func:`export_onnx` writes a :class:`~crossscale.encode.backbone.BackboneEncoder`'s model to a
file, with what the encoder needs to read images as the torch one does (its name, dimension, input size and pixel
statistics); :class:`OnnxEncoder` reads that file and gives the same vectors, to float rounding (EfficientNet-Lite0:
5e-7 at most), so it searches a workspace the torch encoder indexed. It embeds whole images (queries, and chunks
as crops), not regions from one pass: index with the torch encoder, serve with this one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crossscale._checks import positive_int
from crossscale._vectors import l2_normalize
from crossscale.encode._torch import PixelNormaliser
from crossscale.errors import CapabilityError, ConfigurationError, DeviceError, MissingDependencyError

__all__ = ["OnnxEncoder", "export_onnx"]

#: the metadata key of what :class:`OnnxEncoder` needs to know of the encoder a file was exported from (JSON)
METADATA_KEY = "crossscale.encoder"
#: the file layout :func:`export_onnx` writes (one NCHW float32 input ``pixels``, one output ``features``)
FORMAT = 1
_OPSET = 17
_FIELDS = ("format", "name", "dim", "image_size", "mean", "std")


def export_onnx(encoder: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``encoder``'s model (a :class:`~crossscale.encode.backbone.BackboneEncoder`, e.g.
    ``create_encoder("efficientnet-lite0")``) to the ONNX file ``path``, for :class:`OnnxEncoder`: its features in
    float32 for any number of images, and its name, dimension, input size and pixel statistics. The file is written
    whole or not at all (a temporary file beside it, then renamed). Needs torch and the ``onnx`` package
    (``pip install 'crossscale[onnx]'``).

    Returns:
        ``path``.

    Raises:
        CapabilityError: ``encoder`` is not a BackboneEncoder (a CLIP or colour encoder), or torch cannot export its
            model.
        ConfigurationError: ``path`` is a folder.
        MissingDependencyError: the ``onnx`` package is not installed.
    """
    from crossscale.encode.backbone import BackboneEncoder

    if not isinstance(encoder, BackboneEncoder):
        raise CapabilityError(
            f"export_onnx takes a BackboneEncoder (e.g. create_encoder('efficientnet-lite0')), got "
            f"{type(encoder).__name__}"
        )
    target = Path(path)
    if target.is_dir():
        raise ConfigurationError(f"export_onnx: {target} is a folder, not a file name")
    onnx = _onnx()
    import torch

    weight = next(iter(encoder.model.parameters()), None)  # traced where it is: features() calls this very model
    device, dtype = (weight.device, weight.dtype) if weight is not None else (torch.device("cpu"), torch.float32)
    module = _features_module(encoder.model, encoder.features, dtype)
    example = torch.zeros(1, 3, encoder.image_size, encoder.image_size, device=device)
    meta = {
        "format": FORMAT,
        "name": encoder.name,
        "dim": int(encoder.dim),
        "image_size": int(encoder.image_size),
        "mean": [float(v) for v in encoder.mean],
        "std": [float(v) for v in encoder.std],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        buffer = _exported(torch, module, example)
        model = onnx.load_from_string(buffer)
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        onnx.save(model, temp)
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return target


def _exported(torch: Any, module: Any, example: Any) -> bytes:
    """``module`` exported by torch's TorchScript exporter (a batch axis of any size), as the bytes of a file.

    Raises:
        CapabilityError: torch cannot export it.
    """
    import io

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the exporter's notes on its own passes (constant folding, its deprecation): not the caller's to act on
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                input_names=["pixels"],
                output_names=["features"],
                dynamic_axes={"pixels": {0: "images"}, "features": {0: "images"}},
                opset_version=_OPSET,
            )
    except Exception as exc:  # torch raises many kinds for a model it cannot trace
        raise CapabilityError(f"torch could not export the model to ONNX: {type(exc).__name__}: {exc}") from exc
    return buffer.getvalue()


def _features_module(model: Any, features: Any, dtype: Any) -> Any:
    """The encoder's ``features`` over its ``model`` (of weights in ``dtype``), as one torch module for the exporter:
    float32 pixels in, float32 features out."""
    import torch

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # registered: its weights are the graph's

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = features(pixels.to(dtype)).float()
            return out

    return Features().train(model.training)  # the exporter puts back the wrapper's mode, and with it the model's


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError("export_onnx needs the onnx package: pip install 'crossscale[onnx]'") from exc
    return onnx


class OnnxEncoder:
    """Embeds images with a model :func:`export_onnx` wrote, run by ONNX Runtime: the vectors of the torch encoder
    it came from (same name and dimension, so it opens that encoder's workspaces), without torch in the process.

    Images are read as the torch encoder reads them (RGB, squashed to its input size, its pixel statistics), in
    batches of ``batch_size``; rows are L2-normalised float32.

    Args:
        path: the ``.onnx`` file.
        device: ``"auto"`` (CUDA where ONNX Runtime has it, else the CPU), ``"cpu"`` or ``"cuda"``.
        batch_size: images per run.
        threads: ONNX Runtime's threads within an operator (``None``: its default, the machine's cores).

    Raises:
        ConfigurationError: ``path`` is not a file :func:`export_onnx` wrote (missing, not ONNX, or without its
            metadata), or a bad ``batch_size`` / ``threads``.
        DeviceError: ``device`` is not one of the three, or ``"cuda"`` where ONNX Runtime has no CUDA.
        MissingDependencyError: ``onnxruntime`` is not installed.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, device: str = "auto", batch_size: int = 32, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.batch_size = positive_int("batch_size", batch_size)
        if threads is not None:
            threads = positive_int("threads", threads)
        ort = _onnxruntime()
        self.device, providers = _providers(ort, device)
        if not self.path.is_file():
            raise ConfigurationError(f"ONNX encoder file {self.path} does not exist")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own (Fail, InvalidProtobuf, ...) for a bad file
            raise ConfigurationError(f"ONNX encoder file {self.path} cannot be read: {exc}") from exc
        meta = _metadata(self.path, self._session.get_modelmeta().custom_metadata_map)
        self.name: str = meta["name"]
        self.dim: int = meta["dim"]
        self.image_size: int = meta["image_size"]
        self._normalise = PixelNormaliser(meta["mean"], meta["std"])

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed ``images`` in batches of ``batch_size``; returns unit-norm float32 rows ``(len(images), dim)``."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        size = (self.image_size, self.image_size)
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = [im if im.mode == "RGB" else im.convert("RGB") for im in images[start : start + self.batch_size]]
            (features,) = self._session.run(["features"], {"pixels": self._normalise.batch(batch, size)})
            parts.append(np.asarray(features, dtype=np.float32).reshape(len(batch), -1))
        out = np.concatenate(parts)
        if out.shape[1] != self.dim:
            raise ConfigurationError(
                f"ONNX encoder file {self.path} gave vectors of {out.shape[1]} values, its metadata says {self.dim}"
            )
        return l2_normalize(out)

    def __repr__(self) -> str:
        return f"OnnxEncoder(name={self.name!r}, dim={self.dim}, path={str(self.path)!r}, device={self.device!r})"


def _onnxruntime() -> Any:
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError as exc:
        raise MissingDependencyError("OnnxEncoder needs onnxruntime: pip install 'crossscale[onnx]'") from exc
    return onnxruntime


def _providers(ort: Any, device: str) -> tuple[str, list[str]]:
    """The device an ``OnnxEncoder`` runs on and ONNX Runtime's providers for it.

    Raises:
        DeviceError: an unknown device, or CUDA asked for where ONNX Runtime has none.
    """
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"OnnxEncoder device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not cuda:
        raise DeviceError("OnnxEncoder device 'cuda': this onnxruntime has no CUDA (pip install onnxruntime-gpu)")
    if device == "cuda" or (device == "auto" and cuda):
        return "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return "cpu", ["CPUExecutionProvider"]


def _metadata(path: Path, props: dict[str, str]) -> dict[str, Any]:
    """What :func:`export_onnx` recorded in ``path`` (its metadata ``props``), checked.

    Raises:
        ConfigurationError: none recorded, of another format, or fields missing or of the wrong type.
    """
    if METADATA_KEY not in props:
        raise ConfigurationError(
            f"ONNX encoder file {path} holds no {METADATA_KEY!r} metadata: write it with crossscale.encode.export_onnx"
        )
    try:
        meta: dict[str, Any] = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"ONNX encoder file {path}: its {METADATA_KEY!r} metadata is not JSON") from exc
    missing = [f for f in _FIELDS if not isinstance(meta, dict) or f not in meta]
    if missing:
        raise ConfigurationError(f"ONNX encoder file {path}: its metadata lacks {', '.join(missing)}")
    if meta["format"] != FORMAT:
        raise ConfigurationError(
            f"ONNX encoder file {path} is of format {meta['format']!r}; this crossscale reads {FORMAT}"
        )
    ok = (
        isinstance(meta["name"], str)
        and meta["name"]
        and all(isinstance(meta[f], int) and meta[f] > 0 for f in ("dim", "image_size"))
        and all(isinstance(meta[f], list) and len(meta[f]) == 3 for f in ("mean", "std"))
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in [*meta["mean"], *meta["std"]])
        and all(v > 0 for v in meta["std"])
    )
    if not ok:
        raise ConfigurationError(f"ONNX encoder file {path}: bad metadata {meta!r}")
    return meta
