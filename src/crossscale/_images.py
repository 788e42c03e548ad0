"""Reading user inputs into RGB images, with the original bytes kept for storage.

Accepts paths, ``bytes``, ``PIL.Image.Image`` and ``numpy`` arrays. Always
returns an RGB image, upright (EXIF orientation applied), and the bytes to
store: the original file bytes for files and bytes, a PNG encoding otherwise.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from crossscale._checks import positive_int
from crossscale.errors import ImageLoadError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageInput",
    "LoadedImage",
    "decode_stored",
    "describe",
    "iter_image_files",
    "load_image",
]

ImageInput = Union[str, "os.PathLike[str]", bytes, Image.Image, np.ndarray]
"""Anything crossscale accepts as an image."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 100_000_000
MIN_SIDE = 2
#: zlib level for in-memory images stored as PNG: far faster than Pillow's default 6 for a few percent more
#: bytes (docs/benchmarks.md has the measurement).
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class LoadedImage:
    """An input read into memory.

    Attributes:
        image: the RGB image, EXIF orientation applied.
        data: bytes to store (the original file bytes, or PNG for in-memory images; empty for an in-memory
            image loaded with ``to_store=False``).
        format: format of ``data`` (``"JPEG"``, ``"PNG"``, ...).
        source: a description of the input for messages (a path, ``"<array>"``...).
        path: the file path, when the input was one.
    """

    image: Image.Image
    data: bytes
    format: str
    source: str
    path: str | None = None

    def content_id(self) -> str:
        """A content hash of the stored bytes: the default parent id."""
        return hashlib.sha256(self.data).hexdigest()[:32]


def describe(item: Any) -> str:
    """A short, safe description of an input for error messages."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, bytes):
        return f"<bytes len={len(item)}>"
    if isinstance(item, Image.Image):
        return f"<PIL.Image {item.mode} {item.width}x{item.height}>"
    if isinstance(item, np.ndarray):
        return f"<ndarray {item.dtype} shape={item.shape}>"
    return f"<{type(item).__name__}>"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; alpha is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_image(arr: np.ndarray, source: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageLoadError(source, "array must be HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA)")
    if arr.size == 0:
        raise ImageLoadError(source, "array is empty")
    if arr.dtype == np.uint8:
        pass
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageLoadError(source, "array contains NaN or inf")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageLoadError(source, "float arrays must hold values in [0, 1]")
        arr = (arr * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr // 257).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    else:
        raise ImageLoadError(
            source, f"unsupported array dtype {arr.dtype} (use uint8, uint16, bool or float in [0, 1])"
        )
    return Image.fromarray(np.ascontiguousarray(arr))


def _decode(data: bytes, source: str, max_pixels: int) -> tuple[Image.Image, str]:
    if not data:
        raise ImageLoadError(source, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or "unknown"
            if image.width * image.height > max_pixels:
                raise ImageLoadError(
                    source,
                    f"image is {image.width}x{image.height} = {image.width * image.height} pixels, "
                    f"over max_pixels={max_pixels}",
                )
            image.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(source, f"refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(source, "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(source, f"cannot decode image: {exc}") from exc
    return image, fmt


def load_image(item: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS, to_store: bool = True) -> LoadedImage:
    """Read one input into a :class:`LoadedImage`.

    ``to_store=False`` (queries): an in-memory image is not encoded as PNG for storing; ``data`` is then empty.

    Raises:
        ImageLoadError: the input cannot be read or decoded, is too small, or is too large.
    """
    positive_int("max_pixels", max_pixels)
    source = describe(item)
    path: str | None = None
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            mode = os.stat(path).st_mode  # before reading: a FIFO or device would block or never end
            if stat.S_ISDIR(mode):
                raise ImageLoadError(source, "is a directory, not an image file")
            if not stat.S_ISREG(mode):
                raise ImageLoadError(source, "is not a regular file (FIFO, socket or device)")
            data = Path(path).read_bytes()
        except FileNotFoundError as exc:
            raise ImageLoadError(source, "file not found (or a dangling symlink)") from exc
        except OSError as exc:
            raise ImageLoadError(source, f"cannot read file: {exc.strerror or exc}") from exc
        image, fmt = _decode(data, source, max_pixels)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        image, fmt = _decode(data, source, max_pixels)
    elif isinstance(item, Image.Image):
        if item.width * item.height > max_pixels:
            raise ImageLoadError(source, f"image has more than max_pixels={max_pixels} pixels")
        image, data, fmt = item, b"", "PNG"
    elif isinstance(item, np.ndarray):
        image, data, fmt = _array_to_image(item, source), b"", "PNG"
        if image.width * image.height > max_pixels:
            raise ImageLoadError(source, f"image has more than max_pixels={max_pixels} pixels")
    else:
        raise ImageLoadError(source, "unsupported input type; pass a path, bytes, a PIL image or a numpy array")

    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        upright = ImageOps.exif_transpose(image) or image
        rgb = _to_rgb(upright)
        rgb.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(source, f"cannot decode image: {exc}") from exc
    if rgb.width < MIN_SIDE or rgb.height < MIN_SIDE:
        raise ImageLoadError(source, f"image is {rgb.width}x{rgb.height}; both sides must be >= {MIN_SIDE} px")
    if not data and to_store:
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        data = buffer.getvalue()
    return LoadedImage(image=rgb, data=data, format=fmt, source=source, path=path)


def decode_stored(data: bytes, source: str = "<stored image>") -> Image.Image:
    """The RGB image of bytes that :func:`load_image` once accepted: the same pixels it gave then.

    Stored parents are decoded by the very function that read them at indexing time, so boxes, crops and the
    refiner see exactly the pixels that were indexed (alpha on white, 16-bit scaled, EXIF orientation applied).
    They passed the ``max_pixels`` guard when indexed, so no limit is applied again.
    """
    return load_image(data, max_pixels=sys.maxsize, to_store=False).image


def iter_image_files(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted, by suffix), symlink loops skipped."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
    return found
