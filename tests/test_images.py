from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossscale._images import load_image
from crossscale.errors import ConfigurationError, ImageLoadError


def _encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_file_keeps_original_bytes(tmp_path: Path) -> None:
    raw = _encode(Image.new("RGB", (40, 30), (10, 200, 30)), "JPEG")
    (tmp_path / "a.jpg").write_bytes(raw)
    li = load_image(tmp_path / "a.jpg")
    assert li.data == raw and li.format == "JPEG" and li.image.size == (40, 30) and li.image.mode == "RGB"
    assert li.path == str(tmp_path / "a.jpg")


def test_in_memory_images_are_stored_as_png_and_hash_stably() -> None:
    arr = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    a, b = load_image(arr), load_image(Image.fromarray(arr))
    assert a.format == "PNG" and a.data.startswith(b"\x89PNG")
    assert a.content_id() == b.content_id()
    assert np.array_equal(np.asarray(a.image), arr)


@pytest.mark.parametrize(
    ("mode", "fill"),
    [("L", 128), ("CMYK", (0, 255, 0, 0)), ("RGBA", (255, 0, 0, 0)), ("P", 3), ("I;16", 65535), ("1", 1)],
)
def test_any_mode_becomes_rgb(mode: str, fill: object) -> None:
    li = load_image(_encode(Image.new(mode, (8, 8), fill), "TIFF" if mode in ("CMYK", "I;16") else "PNG"))
    assert li.image.mode == "RGB" and li.image.size == (8, 8)


def test_transparent_pixels_become_white() -> None:
    li = load_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    assert li.image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    im = Image.new("RGB", (60, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    li = load_image(_encode(im, "JPEG", exif=exif.tobytes()))
    assert li.image.size == (20, 60)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"<html><body>not an image</body></html>", "not a recognised image"),
        (_encode(Image.new("RGB", (64, 64)), "PNG")[:60], "decode|recognised"),
        (_encode(Image.new("RGB", (1, 1)), "PNG"), ">= 2 px"),
    ],
)
def test_bad_bytes_raise_image_load_error(data: bytes, match: str) -> None:
    with pytest.raises(ImageLoadError, match=match):
        load_image(data)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = _encode(Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)), "JPEG")
    (tmp_path / "t.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageLoadError, match=r"t\.jpg"):
        load_image(tmp_path / "t.jpg")


def test_max_pixels_guard() -> None:
    with pytest.raises(ImageLoadError, match="max_pixels"):
        load_image(_encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)
    with pytest.raises(ConfigurationError):
        load_image(b"x", max_pixels=0)


def test_paths_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.full((4, 4), np.nan),
        np.full((4, 4), 3.0),
        np.zeros((4, 4), np.complex64),
    ],
)
def test_bad_arrays(arr: np.ndarray) -> None:
    with pytest.raises(ImageLoadError):
        load_image(arr)


def test_unsupported_type() -> None:
    with pytest.raises(ImageLoadError, match="unsupported input type"):
        load_image(12345)  # type: ignore[arg-type]


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("P", (10, 10), i) for i in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue()).image.size == (10, 10)
