"""Vector helpers shared by the encoders and the chunk index."""

from __future__ import annotations

import numpy as np

from crossscale.errors import VectorError

__all__ = ["l2_normalize"]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32.

    Raises:
        VectorError: the array is not 2-D, holds NaN/inf, or has an all-zero row.
    """
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise VectorError(f"expected a 2-D array of vectors, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise VectorError("vectors contain NaN or inf")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if arr.shape[0] and (norms <= 1e-12).any():
        raise VectorError(f"{int((norms <= 1e-12).sum())} vector(s) have zero norm and cannot be normalised")
    if np.abs(norms - 1.0).max(initial=0.0) <= 1e-6:
        return arr  # already unit rows (e.g. from an encoder): skip a copy of the whole batch
    out: np.ndarray = arr / norms
    return out
