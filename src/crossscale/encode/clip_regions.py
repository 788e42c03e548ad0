"""CLIP and SigLIP region vectors from one pass: the last attention pooling restricted to each box's patches.

A ViT embeds an image by attention pooling over its patch tokens: CLIP's class token attends to every token in
the last layer, SigLIP's pooling head attends to every token with a learned probe. Restricting that last
attention to the patches under a box (a mask, as MaskCLIP and masked-attention segmenters do) gives the box its
own vector in the image-text space, while everything before it runs once over the whole image:

- CLIP: all layers but the last run once (at ``map_size``, position encodings interpolated); the last layer is
  run for the class token alone, once per box, attending to the class token and the box's patches; then the
  post-layernorm and the projection, as for a whole image.
- SigLIP: the whole tower runs once; its pooling head runs once per box over the box's patches.

With a box that covers the whole image, the vector is exactly the model's own embedding of that image at
``map_size`` (a test checks it). Queries are embedded as :class:`~crossscale.encode.CLIPEncoder` embeds them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from crossscale._checks import int_at_least
from crossscale._vectors import l2_normalize
from crossscale.encode._pool import box_cells, check_boxes_inside
from crossscale.encode._torch import PixelNormaliser
from crossscale.encode.clip import CLIPEncoder
from crossscale.errors import CapabilityError
from crossscale.types import Box

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["CLIPRegionEncoder", "siglip_regions"]


class _Captured(Exception):
    """Stops the vision tower once the last layer's input is captured (that layer is run per box instead)."""


class CLIPRegionEncoder(CLIPEncoder):
    """A :class:`CLIPEncoder` that also embeds many boxes of one image from one pass (:meth:`encode_regions`).

    For CLIP ViTs (a class token) and SigLIP (an attention-pooling head); other towers raise
    :class:`~crossscale.errors.CapabilityError`. Its vectors are in the same space as :meth:`encode`'s, but a box's
    vector is not the vector of its crop: it sees the box through the context of the whole image. Its name
    carries ``map_size``, so workspaces built with it are told apart from crop-encoded ones.

    Args:
        name_or_path, device, batch_size, precision, local_files_only: as for :class:`CLIPEncoder`.
        map_size: the long side, in pixels, an image is resized to for its one pass (its aspect ratio kept, each
            side a whole number of patches). The model's own input size (224) sees a small object through a
            patch or two; 448 gives ViT-B/32 a 14 x 10 grid for a 4:3 photo, at ~4x the cost of one 224 pass.

    Raises:
        CapabilityError: the checkpoint is not a CLIP or SigLIP vision transformer with attention pooling.
        ModelLoadError: as for :class:`CLIPEncoder`.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str] = "openai/clip-vit-base-patch32",
        *,
        map_size: int = 448,
        device: str = "auto",
        batch_size: int = 32,
        precision: str = "auto",
        local_files_only: bool = False,
    ) -> None:
        super().__init__(
            name_or_path, device=device, batch_size=batch_size, precision=precision, local_files_only=local_files_only
        )
        if self.model_type not in ("clip", "siglip"):
            raise CapabilityError(
                f"{self.name_or_path!r} is a {self.model_type!r} model; region vectors from one pass are implemented "
                "for CLIP and SigLIP vision transformers"
            )
        vision = self.model.vision_model
        if self.model_type == "siglip" and not getattr(vision, "use_head", False):
            raise CapabilityError(f"{self.name_or_path!r}: this SigLIP vision tower has no pooling head to restrict")
        self.patch_size = int(vision.config.patch_size)
        self.map_size = int_at_least("map_size", map_size, self.patch_size)
        self.name = f"{self.name}-regions(map={self.map_size})"
        rescale = float(getattr(self.processor, "rescale_factor", 1 / 255))
        mean = [m / rescale for m in self.processor.image_mean]
        std = [s / rescale for s in self.processor.image_std]
        self._normalise = PixelNormaliser(mean, std)

    def _grid_pixels(self, image: Image.Image) -> torch.Tensor:
        """``image`` at ``map_size`` on its long side, each side a whole number of patches: ``1 x 3 x H x W``."""
        scale = self.map_size / max(image.size)
        cols = max(1, round(image.width * scale / self.patch_size))
        rows = max(1, round(image.height * scale / self.patch_size))
        pixels = self._normalise.tensor(image, (cols * self.patch_size, rows * self.patch_size))
        return pixels.to(self.device, dtype=self.dtype)

    @property
    def settings(self) -> dict[str, Any]:
        """The arguments its vectors depend on (recorded by a workspace, as for :class:`CLIPEncoder`)."""
        return {"name_or_path": self.name_or_path, "map_size": self.map_size}

    def encode_regions(self, image: Image.Image, boxes: Sequence[Box]) -> np.ndarray:
        """One vector per box of ``image``, from one pass at ``map_size``; unit float32 rows ``(len(boxes), dim)``.

        Raises:
            ConfigurationError: a box does not lie inside the image.
        """
        import torch

        check_boxes_inside(image, boxes)
        if len(boxes) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = self._grid_pixels(image)
        rows, cols = pixels.shape[2] // self.patch_size, pixels.shape[3] // self.patch_size
        c0, r0, c1, r1 = box_cells(boxes, (cols / image.width, rows / image.height), rows, cols)
        r = torch.arange(rows)[None, :, None]
        c = torch.arange(cols)[None, None, :]
        inside = (r >= r0[:, None, None]) & (r < r1[:, None, None]) & (c >= c0[:, None, None]) & (c < c1[:, None, None])
        patches = inside.flatten(1).to(self.device)  # (boxes, rows * cols), row-major as the ViT orders patches
        with torch.inference_mode():
            if self.model_type == "clip":
                feats = self._clip_regions(pixels, patches)
            else:
                feats = self._siglip_regions(pixels, patches)
        return l2_normalize(feats.float().cpu().numpy())

    def _clip_regions(self, pixels: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """CLIP: the last layer for the class token alone, attending to itself and each box's patches."""
        import torch

        vision = self.model.vision_model
        last = vision.encoder.layers[-1]
        captured: list[torch.Tensor] = []

        def capture(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Captured

        handle = last.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            _tower(vision, pixels)
        except _Captured:
            pass
        finally:
            handle.remove()
        hidden = captured[0][0]  # (1 + patches, width): the last layer's input
        allowed = torch.cat([torch.ones_like(patches[:, :1]), patches], dim=1)  # the class token sees itself
        attention = last.self_attn
        x = last.layer_norm1(hidden)
        query = attention.q_proj(x[:1])
        mixed = _masked_attention(
            query, attention.k_proj(x), attention.v_proj(x), allowed, attention.num_heads, float(attention.scale)
        )
        token = hidden[:1] + attention.out_proj(mixed)  # (boxes, width): the residual of the class token
        token = token + last.mlp(last.layer_norm2(token))
        projected: torch.Tensor = self.model.visual_projection(vision.post_layernorm(token))
        return projected

    def _siglip_regions(self, pixels: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """SigLIP: the pooling head's probe attending to each box's patches."""
        vision = self.model.vision_model
        hidden = _tower(vision, pixels).last_hidden_state[0]  # after the post-layernorm
        head = vision.head
        mha = head.attention
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
        heads = int(mha.num_heads)
        query = head.probe[0] @ w_q.T + b_q
        mixed = _masked_attention(
            query, hidden @ w_k.T + b_k, hidden @ w_v.T + b_v, patches, heads, (hidden.shape[1] // heads) ** -0.5
        )
        pooled = mha.out_proj(mixed)
        out: torch.Tensor = pooled + head.mlp(head.layernorm(pooled))
        return out


def _tower(vision: Any, pixels: torch.Tensor) -> Any:
    """The vision tower over ``pixels`` of any size (position encodings interpolated)."""
    try:
        return vision(pixel_values=pixels, interpolate_pos_encoding=True)
    except TypeError as exc:  # transformers before 4.45 could not interpolate them
        if "interpolate_pos_encoding" not in str(exc):
            raise
        message = f"region vectors need a transformers that interpolates position encodings (>= 4.45): {exc}"
        raise CapabilityError(message) from exc


def _masked_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor, heads: int, scale: float
) -> torch.Tensor:
    """One query row attending, once per row of ``allowed`` (``boxes x tokens``), to the allowed tokens only;
    multi-head, heads concatenated: ``(boxes, width)``."""
    import torch

    tokens, width = keys.shape
    head_dim = width // heads
    q = query.reshape(heads, head_dim).float()
    k = keys.reshape(tokens, heads, head_dim).float()
    v = values.reshape(tokens, heads, head_dim).float()
    logits = torch.einsum("hd,thd->ht", q, k) * scale  # the same for every box; the mask differs
    masked = logits[None].masked_fill(~allowed[:, None, :], float("-inf"))
    weights = masked.softmax(dim=-1)
    mixed = torch.einsum("bht,thd->bhd", weights, v).reshape(len(allowed), width)
    return mixed.to(values.dtype)


def siglip_regions(
    name_or_path: str | os.PathLike[str] = "google/siglip-base-patch16-224", **kwargs: Any
) -> CLIPRegionEncoder:
    """A SigLIP checkpoint as a :class:`CLIPRegionEncoder` (the ``"siglip-regions"`` name of ``create_encoder``)."""
    return CLIPRegionEncoder(name_or_path, **kwargs)
