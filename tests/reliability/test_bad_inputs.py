"""A corpus of hostile and odd inputs: each bad one is reported by name, the good ones are indexed."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossscale import (
    ConfigurationError,
    CrossScaleSearch,
    DeviceError,
    ImageLoadError,
    VectorError,
    WorkspaceMismatchError,
)


def _bytes(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


#: name -> (file bytes or a maker of the path, expected: "ok" or a phrase of the failure reason)
def build_corpus(folder: Path) -> dict[str, str]:
    folder.mkdir()
    expect: dict[str, str] = {}

    def put(name: str, data: bytes, outcome: str) -> None:
        (folder / name).write_bytes(data)
        expect[name] = outcome

    jpeg = _bytes(_photo(1, (256, 256)), "JPEG")
    png = _bytes(_photo(2, (128, 96)), "PNG")
    put("empty.jpg", b"", "empty")
    put("truncated.jpg", jpeg[: len(jpeg) // 3], "decode")
    put("truncated.png", png[: len(png) // 2], "decode")
    put("text-as.jpg", b"this is not an image at all\n" * 20, "not a recognised image")
    put("page.png", b"<!doctype html><html><body><img src=x></body></html>", "not a recognised image")
    put("cmyk.jpg", _bytes(_photo(3).convert("CMYK"), "JPEG"), "ok")
    put("gray16.png", _bytes(Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)), "PNG"), "ok")
    put("palette.png", _bytes(_photo(4).convert("P"), "PNG"), "ok")
    pal = _photo(5).convert("P")
    pal.info["transparency"] = 0
    put("palette-transparent.png", _bytes(pal, "PNG", transparency=0), "ok")
    put("rgba.png", _bytes(_photo(6).convert("RGBA"), "PNG"), "ok")
    put("gray-alpha.png", _bytes(_photo(7).convert("LA"), "PNG"), "ok")
    put("gray.jpg", _bytes(_photo(8).convert("L"), "JPEG"), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif-rotated.jpg", _bytes(_photo(9, (80, 40)), "JPEG", exif=exif.tobytes()), "ok")
    put("one-pixel.png", _bytes(Image.new("RGB", (1, 1)), "PNG"), ">= 2 px")
    put("very-wide.png", _bytes(_photo(10, (4000, 3)), "PNG"), "ok")
    put("very-tall.png", _bytes(_photo(11, (3, 4000)), "PNG"), "ok")
    frames = [_photo(12 + i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    put("animated.gif", buf.getvalue(), "ok")
    put("bomb.png", _bytes(Image.new("1", (6000, 6000)), "PNG"), "max_pixels")
    put(
        "float.tif", _bytes(Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)), "TIFF"), "ok"
    )
    put("webp.webp", _bytes(_photo(13), "WEBP"), "ok")
    put("bitmap.bmp", _bytes(_photo(14), "BMP"), "ok")
    put("png-named.jpg", png, "ok")
    put("ünïcode név with spaces.png", _bytes(_photo(15), "PNG"), "ok")
    (folder / "not-an-image.txt").write_text("skipped: not an image suffix")
    (folder / "directory.jpg").mkdir()  # a directory with an image suffix is walked into, not read
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    expect["dangling.png"] = "not found"
    os.symlink(folder / "loop-b.png", folder / "loop-a.png")
    os.symlink(folder / "loop-a.png", folder / "loop-b.png")
    expect["loop-a.png"] = "symbolic links"
    expect["loop-b.png"] = "symbolic links"
    os.mkfifo(folder / "fifo.png")
    expect["fifo.png"] = "not a regular file"
    return expect


def test_corpus_of_bad_inputs(tmp_path: Path) -> None:
    expect = build_corpus(tmp_path / "in")
    assert len(expect) >= 20
    with CrossScaleSearch.open(
        tmp_path / "ws",
        encoder="color-histogram",
        segmenter="whole+tiles",
        progress=False,
        device="cpu",
        max_pixels=20_000_000,
    ) as cs:
        report = cs.index(tmp_path / "in")
        failed = {Path(f.source).name: f for f in report.failed}
        added_sources = {Path(cs.record(pid).source or "").name for pid in report.added}
        for name, outcome in expect.items():
            if outcome == "ok":
                assert name in added_sources, f"{name} should be indexed: {failed.get(name)}"
            else:
                assert name in failed, f"{name} should fail with {outcome!r}"
                assert outcome in failed[name].reason, (name, failed[name].reason)
                assert failed[name].error_type == "ImageLoadError"
                assert name in failed[name].reason  # the message names the input
        assert len(report.added) + len(report.failed) == len(expect)
        assert cs.verify().ok
        rotated = next(pid for pid in report.added if cs.record(pid).source.endswith("exif-rotated.jpg"))
        assert cs.image(rotated).size == (40, 80)  # stored as given, served upright


def test_query_side_bad_input_raises_clearly(tmp_path: Path) -> None:
    with CrossScaleSearch.open(tmp_path / "ws", encoder="color-histogram", segmenter="whole", progress=False) as cs:
        cs.index([("a", _photo(1))])
        for bad, phrase in [
            (b"", "empty"),
            (b"GIF89a\x00", "decode|recognised"),
            (tmp_path, "directory"),
            (np.zeros((3, 3, 7)), "array"),
            ("missing.png", "not found"),
        ]:
            with pytest.raises(ImageLoadError, match=phrase):
                cs.search(bad)  # type: ignore[arg-type]


def test_bad_parameters_raise_clearly(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="device"):
        CrossScaleSearch.open(tmp_path / "a", encoder="color-histogram", device="gpu0")
    with pytest.raises(ConfigurationError, match="unknown encoder"):
        CrossScaleSearch.open(tmp_path / "b", encoder="resnet-9000")
    with pytest.raises(ConfigurationError, match="batch_size"):
        CrossScaleSearch.open(tmp_path / "c", encoder="color-histogram", batch_size=0)
    with pytest.raises(ConfigurationError, match="faiss factory"):
        CrossScaleSearch.open(tmp_path / "d", encoder="color-histogram", segmenter="whole", index_factory="Nope")
    with (
        CrossScaleSearch.open(tmp_path / "e", encoder="color-histogram", segmenter="whole", progress=False) as cs,
        pytest.raises(ConfigurationError, match="top_k"),
    ):
        cs.search(_photo(1), top_k=-3)
    with pytest.raises(WorkspaceMismatchError, match="dim"):
        CrossScaleSearch.open(tmp_path / "e", encoder="color-histogram", encoder_kwargs={"bins": 4})


def test_encoder_returning_wrong_dimension(tmp_path: Path) -> None:
    class Liar:
        name = "liar"
        dim = 8

        def encode(self, images: list[Image.Image]) -> np.ndarray:
            return np.ones((len(images), 5), np.float32)

    with CrossScaleSearch.open(tmp_path / "ws", encoder=Liar(), segmenter="whole", progress=False) as cs:
        report = cs.index([_photo(1), _photo(2)])
        assert not report.added and all("shape" in f.reason for f in report.failed)
        with pytest.raises(VectorError, match="shape"):
            cs.search(_photo(1))
        assert cs.verify().ok
