"""The built-in EfficientNet-Lite0 encoders as they ran before 2026-12-05's changes, for side-by-side benchmarks."""

from __future__ import annotations

import functools
from typing import Any
from unittest import mock

from crossscale.encode import create_encoder


def lite0_as_before(
    name: str, *, precision: str = "auto", fold_batch_norms: bool = True, channels_last: bool = True
) -> Any:
    """The built-in encoder ``name`` (``"efficientnet-lite0"`` or ``"efficientnet-lite0-regions"``) on the CPU as its
    factory builds it, or as it was before: the package's model with its batch norms (``fold_batch_norms=False``),
    its weights in NCHW (``channels_last=False``). Everything else is the factory's."""
    import torch

    from crossscale.encode import backbone, feature_map

    load = functools.partial(backbone.load_efficientnet_lite0, fold_batch_norms=fold_batch_norms)
    with (
        mock.patch.object(backbone, "load_efficientnet_lite0", load),
        mock.patch.object(feature_map, "load_efficientnet_lite0", load),
    ):
        encoder = create_encoder(name, device="cpu", precision=precision)
    if not channels_last:
        encoder.model.to(memory_format=torch.contiguous_format)
    return encoder
