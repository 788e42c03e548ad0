"""The ingest path: region encoders get one call per image, crop encoders the crops, bad images fail alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossscale import Box, Chunk, ConfigurationError, CrossScaleSearch
from crossscale.encode import ColorHistogramEncoder
from crossscale.ingest import encode_batch, iter_inputs, load_batch, segment_batch
from crossscale.segment import TileSegmenter, create_segmenter


class CropSpy(ColorHistogramEncoder):
    """A crop encoder (no encode_regions) that records what it was given."""

    encode_regions = None  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__(bins=4)
        self.calls: list[list[tuple[int, int]]] = []

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.calls.append([im.size for im in images])
        return super().encode(images)


class RegionSpy(ColorHistogramEncoder):
    """A region encoder that records each call, fails on images 77 pixels wide and returns NaN for 78."""

    def __init__(self) -> None:
        super().__init__(bins=4)
        self.calls: list[tuple[tuple[int, int], list[Box]]] = []

    def encode_regions(self, image: Image.Image, boxes: Sequence[Box]) -> np.ndarray:
        if image.width == 77:
            raise RuntimeError("cannot do width 77")
        if image.width == 78:
            return np.full((len(boxes), self.dim), np.nan, np.float32)
        self.calls.append((image.size, list(boxes)))
        return super().encode_regions(image, boxes)


def _segmented(images: list[Image.Image]):  # type: ignore[no-untyped-def]
    loaded, _, failed = load_batch(list(iter_inputs(images)), max_pixels=10**8, is_known=lambda _: False)
    assert not failed
    done, failed = segment_batch(TileSegmenter(scales=(0.5,)), loaded)
    assert not failed
    return done


def test_a_region_encoder_is_called_once_per_image_with_the_segmenter_boxes(photos: dict[str, Image.Image]) -> None:
    images = [photos["coffee"], photos["rocket"]]
    segmented = _segmented(images)
    spy = RegionSpy()
    parents, failed = encode_batch(spy, segmented)
    assert not failed and len(parents) == 2
    assert [size for size, _ in spy.calls] == [im.size for im in images]
    for (_, boxes), s, parent in zip(spy.calls, segmented, parents, strict=True):
        assert boxes == [c.box for c in s.chunks] and parent.vectors.shape == (len(boxes), spy.dim)


def test_a_crop_encoder_gets_every_crop_of_the_batch_at_once(photos: dict[str, Image.Image]) -> None:
    images = [photos["coffee"], photos["rocket"]]
    segmented = _segmented(images)
    spy = CropSpy()
    parents, failed = encode_batch(spy, segmented)
    assert not failed and len(spy.calls) == 1
    assert spy.calls[0] == [c.box.as_tuple()[2:] and (c.box.width, c.box.height) for s in segmented for c in s.chunks]
    image, chunk = images[0], segmented[0].chunks[1]
    expected = ColorHistogramEncoder(bins=4).encode([image.crop(chunk.box.as_tuple())])[0]
    np.testing.assert_allclose(parents[0].vectors[1], expected, atol=1e-6)  # the crop of the box, made lazily


def test_a_region_encoder_failing_on_one_image_fails_it_alone(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with CrossScaleSearch.open(
        tmp_path / "ws", encoder=RegionSpy(), segmenter="whole+tiles", progress=False, device="cpu"
    ) as cs:
        report = cs.index([("good", photos["coffee"]), ("bad", Image.new("RGB", (77, 60))), ("also", photos["rocket"])])
        assert report.added == ("good", "also") and len(report.failed) == 1
        assert "encoder failed: cannot do width 77" in report.failed[0].reason
        assert cs.verify().ok


def test_nan_region_vectors_fail_their_image_alone(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with CrossScaleSearch.open(
        tmp_path / "ws", encoder=RegionSpy(), segmenter="whole+tiles", progress=False, device="cpu"
    ) as cs:
        report = cs.index([("good", photos["coffee"]), ("nan", Image.new("RGB", (78, 60)))])
        assert report.added == ("good",) and [f.parent_id for f in report.failed] == ["nan"]
        assert "NaN" in report.failed[0].reason
        assert cs.verify().ok and len(cs.chunk_index) == cs.store.chunk_count()


def test_region_and_crop_paths_index_the_same_histograms(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    vectors = {}
    for name, encoder in (("regions", RegionSpy()), ("crops", CropSpy())):
        encoder.name  # noqa: B018 - both are "color-histogram(4)"
        with CrossScaleSearch.open(
            tmp_path / name, encoder=encoder, segmenter="whole+tiles", progress=False, device="cpu"
        ) as cs:
            cs.index([("c", photos["coffee"])])
            vectors[name] = cs.store.vectors(cs.record("c").chunk_ids)[1]
    np.testing.assert_allclose(vectors["regions"], vectors["crops"], atol=1e-6)


def test_tile_chunks_carry_no_crop_and_are_found(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    scene = photos["astronaut"].resize((600, 600))
    scene.paste(photos["coffee"].resize((150, 150)), (400, 400))
    tiles = TileSegmenter(scales=(0.25,))
    with CrossScaleSearch.open(
        tmp_path / "ws", encoder="color-histogram", segmenter=tiles, progress=False, device="cpu", refine=False
    ) as cs:
        cs.index([("scene", scene), ("rocket", photos["rocket"])])
        best = cs.search(photos["coffee"], top_k=1)[0]
        assert best.parent_id == "scene" and best.box.iou(Box(400, 400, 550, 550)) > 0.3


# ------------------------------------------------------------------ the overlapped driver (prefetch)
class FlakyEncoder(ColorHistogramEncoder):
    """Fails the first time it sees an image 79 pixels wide (after a pause that lets the preparing thread run
    ahead), and checks that the driver never read more than ``bound`` inputs ahead of it."""

    def __init__(self, pulled: list[int] | None = None, bound: int = 0, delay: float = 0.0) -> None:
        super().__init__(bins=4)
        self.failed_once = False
        self.pulled, self.bound, self.delay, self.images = pulled, bound, delay, 0

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        time.sleep(self.delay)
        if self.pulled is not None:  # streaming: the driver never reads far ahead of the encoder
            assert self.pulled[0] - self.images <= self.bound, (self.pulled[0], self.images)
        if any(im.width == 79 for im in images) and not self.failed_once:
            self.failed_once = True
            time.sleep(0.5)  # the preparing thread reads the copy meanwhile (prefetch 3)
            raise RuntimeError("first 79 fails")
        self.images += 1
        return super().encode(images)


def _inputs(photos: dict[str, Image.Image]) -> list[object]:
    """Good photos, copies, an unreadable input, a tuple of the wrong shape and a copy after a failure."""
    names = sorted(photos)
    odd = Image.new("RGB", (79, 60), "teal")
    return [
        photos[names[0]],
        b"not an image",
        (names[1], photos[names[1]]),
        photos[names[0]],  # a copy: present
        odd,  # the encoder fails on it the first time...
        ("x", "y", "z", "w"),
        photos[names[2]].rotate(90, expand=True),
        odd.copy(),  # ...and takes this copy: read while the first was still to fail
        photos[names[3]],
    ]


def _snapshot(cs: CrossScaleSearch) -> dict[str, object]:
    store = cs.store
    parents = {pid: store.parent(pid) for pid in store.parent_ids()}
    ids = sorted(c for p in parents.values() for c in p.chunk_ids)
    return {
        "parents": {pid: (p.chunk_ids, p.width, p.height) for pid, p in parents.items()},
        "records": store.chunk_records(ids),
        "vectors": store.vectors(ids)[1].tolist(),
    }


class OneAtATimeSegmenter:
    """``whole+tiles`` that fails an image if two threads segment at once (segmenters need not be thread-safe),
    slowly enough that the preparing thread is busy when the driver retries a copy."""

    name = "whole+tiles"

    def __init__(self) -> None:
        self.inner, self.busy = create_segmenter("whole+tiles"), threading.Lock()

    def segment(self, images: Sequence[Image.Image]) -> list[list[Chunk]]:
        if not self.busy.acquire(blocking=False):
            raise RuntimeError("segmented by two threads at once")
        try:
            time.sleep(0.05)
            return self.inner.segment(images)
        finally:
            self.busy.release()


def test_prefetch_gives_the_same_workspace_and_report_as_no_thread(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    more = [photos[n].rotate(angle, expand=True) for n in sorted(photos)[:3] for angle in (30, 60)]
    results = []
    for prefetch in (0, 1, 3):
        with CrossScaleSearch.open(
            tmp_path / f"ws{prefetch}",
            encoder=FlakyEncoder(),
            segmenter=OneAtATimeSegmenter(),
            progress=False,
            device="cpu",
            batch_size=1,
        ) as cs:
            report = cs.index(iter(_inputs(photos) + more), prefetch=prefetch)  # a generator: no length
            assert cs.verify().ok
            results.append((report.added, report.present, [(f.source, f.reason) for f in report.failed], _snapshot(cs)))
    assert results[0] == results[1] == results[2]
    added, present, failed, _ = results[0]
    assert len(added) == 5 + len(more) and len(present) == 1 and len(failed) == 3  # the 79-wide one: at its copy
    assert any("first 79 fails" in reason for _, reason in failed)


def test_a_long_generator_is_read_only_a_few_batches_ahead(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    pulled = [0]
    image = photos[sorted(photos)[0]].resize((64, 48))

    def many():  # type: ignore[no-untyped-def]
        for n in range(60):
            pulled[0] += 1
            yield (f"p{n}", image)

    prefetch, batch_size = 2, 3
    encoder = FlakyEncoder(pulled, bound=(prefetch + 2) * batch_size, delay=0.01)
    with CrossScaleSearch.open(
        tmp_path / "ws", encoder=encoder, segmenter="whole", progress=False, device="cpu", batch_size=batch_size
    ) as cs:
        report = cs.index(many(), prefetch=prefetch)
    assert len(report.added) == 60 and report.ok


def test_an_input_generator_that_raises_stops_the_thread_and_keeps_what_was_added(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:

    def broken():  # type: ignore[no-untyped-def]
        yield ("a", photos[sorted(photos)[0]])
        yield ("b", photos[sorted(photos)[1]])
        raise OSError("the source went away")

    with CrossScaleSearch.open(
        tmp_path / "ws", encoder="color-histogram", segmenter="whole", progress=False, device="cpu", batch_size=1
    ) as cs:
        with pytest.raises(OSError, match="went away"):
            cs.index(broken(), prefetch=2)
        assert not [t for t in threading.enumerate() if t.name == "crossscale-ingest-prepare"]
        assert sorted(cs.workspace.parent_ids()) == ["a", "b"] and cs.verify().ok
        with pytest.raises(ConfigurationError, match="prefetch"):
            cs.index([photos[sorted(photos)[2]]], prefetch=-1)
