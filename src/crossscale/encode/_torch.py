"""Batching, device and precision handling shared by the torch encoders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from crossscale._checks import positive_int
from crossscale._device import model_dtype, resolve_torch_device
from crossscale._vectors import l2_normalize
from crossscale.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PixelNormaliser", "TorchImageEncoder", "fold_batch_norm"]

#: ImageNet channel statistics on the 0-255 scale: the default normalisation of the CNN encoders
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def fold_batch_norm(conv: torch.nn.Conv2d, norm: torch.nn.BatchNorm2d) -> None:
    """Fold ``norm``, a batch norm applied directly to ``conv``'s output, into ``conv``'s weight and bias, in place.

    Afterwards ``conv`` alone computes what ``norm(conv(x))`` computed in eval mode (to float rounding), so the
    caller replaces ``norm`` with an identity. A model folded this way is for inference: the norm's running
    statistics are baked in, and it no longer trains as before. EfficientNet-Lite0 on 2 cores: a parent's
    1,024-px pass and crops both faster (docs/benchmarks.md), since each norm was a pass over its activations.

    Raises:
        ConfigurationError: ``norm`` keeps no running statistics, or its channels are not ``conv``'s outputs.
    """
    import torch

    if norm.running_mean is None or norm.running_var is None:
        raise ConfigurationError(f"cannot fold {norm!r}: it keeps no running statistics")
    if norm.num_features != conv.out_channels:
        raise ConfigurationError(
            f"cannot fold {norm!r} into {conv!r}: {norm.num_features} channels, the convolution gives "
            f"{conv.out_channels}"
        )
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        bias = -norm.running_mean.double() if conv.bias is None else conv.bias.double() - norm.running_mean.double()
        bias = bias * scale
        if norm.bias is not None:
            bias = bias + norm.bias.double()
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.ndim - 1)))
        conv.weight = torch.nn.Parameter(weight.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        conv.bias = torch.nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


class PixelNormaliser:
    """Resizes an RGB image (bilinear) and normalises its channels: ``(pixel - mean) / std`` on the 0-255 scale."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self._mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        self._std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)

    def __call__(self, image: Image.Image, size: tuple[int, int]) -> np.ndarray:
        """``image`` at ``size`` (width, height), normalised: float32 of shape ``(height, width, 3)``."""
        pixels = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
        normalised: np.ndarray = (pixels - self._mean) / self._std
        return normalised

    def batch(self, images: Sequence[Image.Image], size: tuple[int, int]) -> np.ndarray:
        """RGB ``images``, each at ``size`` (width, height) and normalised, as one contiguous float32 array of shape
        ``(n, 3, height, width)``: what a CNN's forward pass takes, in torch (``torch.from_numpy``) or ONNX Runtime."""
        return np.ascontiguousarray(np.stack([self(im, size) for im in images]).transpose(0, 3, 1, 2))

    def tensor(self, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
        """``image`` (converted to RGB if need be) at ``size`` (width, height), normalised: a float32 torch tensor
        of shape ``(1, 3, height, width)``, what a one-image forward pass takes."""
        import torch

        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return torch.from_numpy(self(rgb, size)).permute(2, 0, 1)[None].contiguous()


class TorchImageEncoder:
    """Base class: subclasses set ``self.model`` and implement ``_preprocess`` and ``_forward``."""

    name: str
    dim: int

    def __init__(self, *, device: str, batch_size: int, precision: str = "auto") -> None:
        self.batch_size = positive_int("batch_size", batch_size)
        self.device = resolve_torch_device(device)
        self.dtype = model_dtype(self.device, precision)

    def _placed(self, model: torch.nn.Module, *, channels_last: bool = False) -> torch.nn.Module:
        """``model`` on this encoder's device and dtype, in eval mode: the one place an encoder's model is moved.

        ``channels_last``: on the CPU, a CNN's convolution weights are also laid out channels-last (NHWC), which
        makes oneDNN run its faster convolutions; the vectors are the same to ~1e-6. EfficientNet-Lite0 on 2 cores:
        crops 1.48x faster, a parent's 1,024-px pass 1.23x (docs/benchmarks.md). Only for models whose code takes any
        memory layout (a ``view`` of a conv output fails on it); not applied on GPUs, where it is unmeasured here.
        """
        import torch

        placed = model.to(self.device, dtype=self.dtype).eval()
        if channels_last and self.device.type == "cpu":
            placed = placed.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return placed

    def _preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed ``images`` in batches of ``batch_size``; returns unit-norm float32 rows."""
        import torch

        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = [
                    im if im.mode == "RGB" else im.convert("RGB") for im in images[start : start + self.batch_size]
                ]
                pixels = self._preprocess(batch).to(self.device, dtype=self.dtype)
                feats = self._forward(pixels)
                parts.append(feats.float().cpu().numpy())
        return l2_normalize(np.concatenate(parts, axis=0))
