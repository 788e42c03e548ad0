"""Indexing through the facade vs the same work straight into FAISS (no store, no bookkeeping).

Both sides run the same segmenter (whole + tiles) and encoder (colour histogram, cheap, so that what
crossscale adds is visible: image loading, LMDB writes of bytes + records + vectors, the index file).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from crossscale import CrossScaleSearch
from crossscale.encode import ColorHistogramEncoder
from crossscale.segment import create_segmenter

N_IMAGES = 48


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
    base = [Image.fromarray(getattr(data, n)()).convert("RGB").resize((640, 480)) for n in names]
    out = []
    for i, im in zip(range(N_IMAGES), itertools.cycle(base), strict=False):
        out.append(im.rotate(i * 7, expand=False))  # distinct pixels: no dedup
    return out


@pytest.mark.benchmark(group="index-48-images")
def raw_index(load: Callable[[int, int], list[Image.Image]], n: int) -> int:
    """The raw pipeline: segment, encode and add to FAISS, 16 images at a time, with nothing stored."""
    seg, enc = create_segmenter("whole+tiles"), ColorHistogramEncoder()
    index = faiss.IndexIDMap(faiss.IndexFlatIP(enc.dim))
    next_id = 0
    for start in range(0, n, 16):
        batch = load(start, start + 16)
        for image, chunks in zip(batch, seg.segment(batch), strict=True):
            vecs = enc.encode([image.crop(c.box.as_tuple()) if c.image is None else c.image for c in chunks])
            index.add_with_ids(vecs, np.arange(next_id, next_id + len(vecs)))
            next_id += len(vecs)
    return int(index.ntotal)


def test_raw_segment_encode_faiss_add(benchmark, images) -> None:  # type: ignore[no-untyped-def]
    assert benchmark.pedantic(raw_index, args=(lambda a, b: images[a:b], len(images)), rounds=3) > N_IMAGES


@pytest.mark.benchmark(group="index-48-images")
def facade_index(root: Path, inputs: object) -> int:
    """Index ``inputs`` into a new workspace under ``root`` through the facade; returns the chunks indexed."""
    with CrossScaleSearch.open(  # no verifier: the raw side extracts no SIFT features (test_bench_encode times them)
        root / f"ws{next(_RUNS)}",
        encoder="color-histogram",
        segmenter="whole+tiles",
        verifier=False,
        progress=False,
        device="cpu",
    ) as cs:
        assert len(cs.index(inputs).added) == N_IMAGES
        return len(cs.chunk_index)


_RUNS = itertools.count()


def test_facade_index(benchmark, images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert benchmark.pedantic(facade_index, args=(tmp_path, images), rounds=3) > N_IMAGES


@pytest.fixture(scope="module")
def image_files(images: list[Image.Image], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jpegs")
    for i, im in enumerate(images):
        im.save(folder / f"{i:03d}.jpg", quality=90)
    return folder


@pytest.mark.benchmark(group="index-48-jpeg-files")
def test_raw_files_segment_encode_faiss_add(benchmark, image_files: Path) -> None:  # type: ignore[no-untyped-def]
    paths = sorted(image_files.glob("*.jpg"))

    def load(a: int, b: int) -> list[Image.Image]:
        return [Image.open(p).convert("RGB") for p in paths[a:b]]

    assert benchmark.pedantic(raw_index, args=(load, len(paths)), rounds=3) > N_IMAGES


@pytest.mark.benchmark(group="index-48-jpeg-files")
def test_facade_index_files(benchmark, image_files: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert benchmark.pedantic(facade_index, args=(tmp_path, image_files), rounds=3) > N_IMAGES
