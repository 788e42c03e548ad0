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

HUB_PROBE_TIMEOUT_S = 2.0


def _hub_unreachable_reason(name_or_path: str, local_files_only: bool) -> str | None:
    """Why a checkpoint cannot be loaded without trying, or None if loading should be tried.

    A hub id that is neither a local directory nor cached would make transformers
    retry for ~23 s when there is no network; a 2 s TCP probe of the hub answers first.
    """
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants, try_to_load_from_cache

    if Path(name_or_path).is_dir():
        return None
    try:
        cached = try_to_load_from_cache(name_or_path, "config.json")
    except ValueError:  # not a valid hub id either
        return "there is no such local directory, and it is not a valid Hugging Face hub id"
    if isinstance(cached, str):
        return None  # cached: transformers loads it without the network
    if local_files_only or constants.HF_HUB_OFFLINE:
        return "it is not a local directory, not in the Hugging Face cache, and downloads are off (offline mode)"
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a test's network guard
        return f"it is not a local directory or cached, and {constants.ENDPOINT} is unreachable ({exc})"


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
        hint = (
            "With no network, download it elsewhere (model.save_pretrained(DIR) and "
            "processor.save_pretrained(DIR)) and pass that local directory as name_or_path"
        )
        reason = _hub_unreachable_reason(self.name_or_path, local_files_only)
        if reason is not None:
            raise ModelLoadError(f"cannot load CLIP checkpoint {self.name_or_path!r}: {reason}. {hint}")
        try:
            model: Any = CLIPModel.from_pretrained(self.name_or_path, local_files_only=local_files_only)
            self.processor: Any = CLIPImageProcessor.from_pretrained(
                self.name_or_path, local_files_only=local_files_only
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load CLIP checkpoint {self.name_or_path!r}: {exc}. {hint}") from exc
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
