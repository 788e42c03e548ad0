"""CLIP-style image and text embeddings (CLIP, SigLIP) through Hugging Face ``transformers``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from crossscale._vectors import l2_normalize
from crossscale.encode._torch import TorchImageEncoder
from crossscale.errors import ConfigurationError, ModelLoadError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["CLIPEncoder", "siglip"]

HUB_PROBE_TIMEOUT_S = 2.0
_HINT = (
    "With no network, download it elsewhere (model.save_pretrained(DIR) and processor.save_pretrained(DIR)) "
    "and pass that local directory as name_or_path"
)


def _features(out: Any) -> torch.Tensor:
    """The embeddings of ``get_image_features``/``get_text_features``: transformers >= 5 returns an output object."""
    import torch

    feats: torch.Tensor = out if isinstance(out, torch.Tensor) else out.pooler_output
    return feats


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", config)


def _embedding_dim(config: Any) -> int:
    """The length of the shared image-text embedding: CLIP's ``projection_dim``, else the towers' width."""
    projection = getattr(config, "projection_dim", None)
    if projection:
        return int(projection)
    return int(getattr(config, "vision_config", config).hidden_size)


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
    """Embeds images, and texts, with a CLIP-style dual encoder from ``transformers`` (CLIP, SigLIP, ...).

    Images go through the vision tower (:meth:`encode`), texts through the text tower (:meth:`encode_text`), into
    the one space, so a text can search images. The tokenizer is loaded from the same checkpoint on the first
    text; a checkpoint saved without one embeds images only.

    Args:
        name_or_path: a Hugging Face hub id or a local directory saved with ``save_pretrained`` (model, image
            processor and, for text queries, tokenizer: ``CLIPProcessor.save_pretrained`` saves both).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        batch_size: images per forward pass.
        precision: ``"auto"`` (fp16 on CUDA, bf16 on a CPU with bf16 matrix units, fp32 elsewhere), ``"fp32"``,
            ``"fp16"`` or ``"bf16"``.
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
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPImageProcessor

        self.name_or_path = os.fspath(name_or_path)
        self.local_files_only = local_files_only
        reason = _hub_unreachable_reason(self.name_or_path, local_files_only)
        if reason is not None:
            raise ModelLoadError(f"cannot load CLIP checkpoint {self.name_or_path!r}: {reason}. {_HINT}")
        try:
            model_type = AutoConfig.from_pretrained(self.name_or_path, local_files_only=local_files_only).model_type
            model: Any = AutoModel.from_pretrained(self.name_or_path, local_files_only=local_files_only)
            # CLIP keeps the processor it always had, so that vectors of existing workspaces stay comparable
            processor_class: Any = CLIPImageProcessor if model_type == "clip" else AutoImageProcessor
            self.processor: Any = processor_class.from_pretrained(self.name_or_path, local_files_only=local_files_only)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load CLIP checkpoint {self.name_or_path!r}: {exc}. {_HINT}") from exc
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ModelLoadError(
                f"{self.name_or_path!r} is a {model_type!r} model, not a dual image-text encoder like CLIP or SigLIP"
            )
        self.model: Any = self._placed(model)
        self.model_type = str(model_type)
        self.dim = _embedding_dim(model.config)
        self.name = f"{self.model_type}:{Path(self.name_or_path.rstrip('/')).name}"
        self._tokenizer: Any = None
        logger.info("loaded %s %s (dim %d) on %s", self.model_type, self.name_or_path, self.dim, self.device)

    def _preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels: torch.Tensor = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))

    def _load_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            hint = "Save one beside the model: AutoTokenizer.from_pretrained(HUB_ID).save_pretrained(DIR)"
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, local_files_only=self.local_files_only)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelLoadError(
                    f"{self.name_or_path!r} has no usable tokenizer, so it cannot embed text ({exc}). {hint}"
                ) from exc
            # transformers >= 5 makes an empty tokenizer when a checkpoint has none: it must not pass silently
            size, vocab = len(tokenizer), int(_text_config(self.model.config).vocab_size)
            if size <= len(set(tokenizer.all_special_ids)) + 1 or size > vocab:
                raise ModelLoadError(
                    f"{self.name_or_path!r} has no usable tokenizer, so it cannot embed text: it has {size} tokens "
                    f"for a text tower of {vocab}. {hint}"
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` with the text tower, in batches of ``batch_size``; unit float32 rows ``(n, dim)``.

        Texts longer than the model's context are truncated (CLIP: 77 tokens).

        Raises:
            ConfigurationError: a text is not a non-empty string.
            ModelLoadError: the checkpoint has no tokenizer.
        """
        import torch

        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ConfigurationError(f"texts[{i}] must be a non-empty string, got {text!r}")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokenizer = self._load_tokenizer()
        # SigLIP was trained on texts padded to its full length; CLIP pads to the longest text of the batch
        padding: str | bool = "max_length" if self.model_type == "siglip" else True
        limit = int(getattr(_text_config(self.model.config), "max_position_embeddings", 77))
        parts: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start : start + self.batch_size])
                tokens = tokenizer(batch, padding=padding, truncation=True, max_length=limit, return_tensors="pt")
                tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
                parts.append(_features(self.model.get_text_features(**tokens)).float().cpu().numpy())
        return l2_normalize(np.concatenate(parts, axis=0))

    @property
    def settings(self) -> dict[str, Any]:
        """The arguments its vectors depend on; a workspace records them, so that reopening it loads this checkpoint
        even if the default changes."""
        return {"name_or_path": self.name_or_path}

    def __repr__(self) -> str:
        return f"CLIPEncoder({self.name_or_path!r}, device={str(self.device)!r}, batch_size={self.batch_size})"


def siglip(name_or_path: str | os.PathLike[str] = "google/siglip-base-patch16-224", **kwargs: Any) -> CLIPEncoder:
    """A SigLIP checkpoint as a :class:`CLIPEncoder` (the ``"siglip"`` name of :func:`create_encoder`)."""
    return CLIPEncoder(name_or_path, **kwargs)
