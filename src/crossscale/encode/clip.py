"""CLIP image embeddings through Hugging Face ``transformers``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from crossscale.encode._torch import TorchImageEncoder
from crossscale.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["CLIPEncoder"]


class CLIPEncoder(TorchImageEncoder):
    """Embeds images with the vision tower of a CLIP (or CLIP-compatible) checkpoint.

    Args:
        name_or_path: a Hugging Face hub id or a local directory saved with ``save_pretrained``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        batch_size: images per forward pass.
        precision: ``"auto"`` (fp16 on CUDA, fp32 elsewhere), ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        local_files_only: never try the network (also on when ``HF_HUB_OFFLINE=1``).

    Raises:
        ModelLoadError: the checkpoint cannot be loaded; with no network pass a local directory.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str] = "openai/clip-vit-base-patch32",
        *,
        device: str = "auto",
        batch_size: int = 32,
        precision: str = "auto",
        local_files_only: bool = False,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size, precision=precision)
        from transformers import CLIPImageProcessor, CLIPModel

        self.name_or_path = os.fspath(name_or_path)
        try:
            model: Any = CLIPModel.from_pretrained(self.name_or_path, local_files_only=local_files_only)
            self.processor: Any = CLIPImageProcessor.from_pretrained(
                self.name_or_path, local_files_only=local_files_only
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load CLIP checkpoint {self.name_or_path!r}: {exc}. "
                "With no network, download it elsewhere (model.save_pretrained(DIR) and "
                "processor.save_pretrained(DIR)) and pass that local directory as name_or_path"
            ) from exc
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.dim = int(model.config.projection_dim)
        self.name = f"clip:{Path(self.name_or_path.rstrip('/')).name}"
        logger.info("loaded CLIP %s (dim %d) on %s", self.name_or_path, self.dim, self.device)

    def _preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels: torch.Tensor = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        out = self.model.get_image_features(pixel_values=pixels)
        # transformers >= 5 returns an output object; older versions a tensor.
        feats: torch.Tensor = out if isinstance(out, torch.Tensor) else out.pooler_output
        return feats

    def __repr__(self) -> str:
        return f"CLIPEncoder({self.name_or_path!r}, device={str(self.device)!r}, batch_size={self.batch_size})"
