"""Vector helpers: the one L2 normalisation, and the one check of what an encoder returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from crossscale.errors import VectorError

if TYPE_CHECKING:
    from PIL import Image

    from crossscale.protocols import Encoder, RegionEncoder, TextEncoder
    from crossscale.types import Box

__all__ = ["cosines", "embed", "embed_regions", "embed_text", "l2_normalize", "row_norms", "unit_rows"]


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


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """The L2 norm of each row of a 2-D array, as float32, in one pass (no normalised copy of the rows).

    Raises:
        VectorError: the array is not 2-D, a row holds NaN/inf, or a row is all zero.
    """
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise VectorError(f"expected a 2-D array of vectors, got shape {arr.shape}")
    norms: np.ndarray = np.sqrt(np.einsum("ij,ij->i", arr, arr))
    if not np.isfinite(norms).all():
        raise VectorError("vectors contain NaN or inf")
    if (norms <= 1e-12).any():
        raise VectorError(f"{int((norms <= 1e-12).sum())} vector(s) have zero norm and cannot be normalised")
    return norms


def cosines(rows: np.ndarray, norms: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The cosine of each of ``rows`` (whose :func:`row_norms` are ``norms``) with a unit ``query``, float32: the
    one way stored vectors are scored exactly, so that a (query, chunk) pair scores the same on every path. Each
    row is summed on its own (not by a BLAS product, whose sums depend on the rows beside it), so that these are
    :func:`pair_cosines`' bits for the same pairs."""
    out: np.ndarray = np.einsum("ij,j->i", np.asarray(rows, dtype=np.float32), query) / norms
    return out


def pair_cosines(rows: np.ndarray, norms: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The cosine of each of ``rows`` (whose :func:`row_norms` are ``norms``) with the unit query in the same row of
    ``queries``, float32: :func:`cosines` for many queries, one pair per row, with the same bits."""
    out: np.ndarray = np.einsum("ij,ij->i", np.asarray(rows, dtype=np.float32), queries) / norms
    return out


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32, where an all-zero row stays zero (scores 0) instead of being refused:
    for boxes pooled from a feature map, where a region of dead cells is possible and not the encoder's fault."""
    arr = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    out: np.ndarray = np.divide(arr, norms, out=np.zeros_like(arr), where=norms > 1e-12)
    return out


def embed(encoder: Encoder, images: Sequence[Image.Image]) -> np.ndarray:
    """``encoder.encode(images)`` as unit float32 rows of shape ``(len(images), encoder.dim)``.

    Every path that turns pixels into vectors (indexing, queries, the refiner's crops) goes through here, so
    a user's encoder need not normalise, and a wrong shape is reported as the encoder's fault.

    Raises:
        VectorError: the encoder returned the wrong shape, NaN/inf or a zero row.
    """
    return _checked(encoder, encoder.encode(list(images)), len(images), "images")


def embed_regions(encoder: RegionEncoder, image: Image.Image, boxes: Sequence[Box]) -> np.ndarray:
    """``encoder.encode_regions(image, boxes)`` as unit float32 rows, checked as :func:`embed` checks images."""
    return _checked(encoder, encoder.encode_regions(image, list(boxes)), len(boxes), "regions")


def embed_text(encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
    """``encoder.encode_text(texts)`` as unit float32 rows, checked as :func:`embed` checks images."""
    return _checked(encoder, encoder.encode_text(list(texts)), len(texts), "texts")


def _checked(encoder: Encoder, output: object, n: int, what: str) -> np.ndarray:
    vectors = np.asarray(output)
    if vectors.shape != (n, encoder.dim):
        raise VectorError(
            f"encoder {encoder.name!r} returned shape {vectors.shape} for {n} {what} of dim {encoder.dim}"
        )
    return l2_normalize(vectors)
