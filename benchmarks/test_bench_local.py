"""Local search's vote: ``KeypointIndex`` (an inverted file, a few lists per query descriptor) vs an exhaustive
faiss search with the same vote, on the same real SIFT descriptors.

Parents: 60 views (random crops of 50-90% of the area, some flipped, shrunk to 1,024 px) of the scikit-image
photographs, RootSIFT descriptors as the SIFT verifier gives them (2,000 per parent at most). Queries: 20 small
crops of parents (4-9% of their area), each rotated a little and shrunk, their descriptors as a query's. Each
test reports ``agreement``: the share of queries whose best-voted parent is the exhaustive vote's (views of one
photo overlap, so the exhaustive vote, not a pasted box, is the reference); ours is checked against a floor.

Run: ``python -m pytest benchmarks/test_bench_local.py --benchmark-enable``. Results: docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pytest
from PIL import Image

from crossscale.index import KeypointIndex
from crossscale.index.keypoint_index import ratio_votes
from crossscale.rank import GeometricVerifier
from crossscale.rank.verify import root_sift

SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
PARENTS = 60
QUERIES = 20
RATIO = 0.8


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    from skimage import data as skdata

    photos = [Image.fromarray(getattr(skdata, name)()).convert("RGB") for name in SKIMAGE]
    rng = np.random.default_rng(0)
    verifier = GeometricVerifier(max_keypoints=2000, max_side=1024)
    parents: dict[str, np.ndarray] = {}
    stored: dict[str, bytes] = {}
    views: dict[str, Image.Image] = {}
    for i in range(PARENTS):
        photo = photos[i % len(photos)]
        share = rng.uniform(0.5, 0.9)
        w, h = round(photo.width * np.sqrt(share)), round(photo.height * np.sqrt(share))
        x0, y0 = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        view = photo.crop((x0, y0, x0 + w, y0 + h))
        if rng.random() < 0.3:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views[f"p{i:02d}"] = view
        features = verifier.features(view, 1024)
        parents[f"p{i:02d}"] = root_sift(features.descriptors)
        stored[f"p{i:02d}"] = features.to_bytes()  # what a workspace keeps for the parent
    queries = []
    for _ in range(QUERIES):
        view = views[f"p{int(rng.integers(0, PARENTS)):02d}"]
        share = rng.uniform(0.04, 0.09)
        w, h = round(view.width * np.sqrt(share)), round(view.height * np.sqrt(share))
        x0, y0 = int(rng.integers(0, view.width - w + 1)), int(rng.integers(0, view.height - h + 1))
        crop = view.crop((x0, y0, x0 + w, y0 + h)).rotate(float(rng.uniform(-10, 10)), expand=True)
        crop = crop.resize((max(16, round(crop.width * 0.8)), max(16, round(crop.height * 0.8))))
        queries.append(root_sift(verifier.features(crop, 512).descriptors))
    owner = np.concatenate([np.full(len(rows), i) for i, rows in enumerate(parents.values())])
    exhaustive = faiss.IndexFlatL2(128)
    exhaustive.add(np.concatenate(list(parents.values())).astype(np.float32))
    reference = [_vote(exhaustive, owner, q) for q in queries]
    return {
        "parents": parents,
        "stored": stored,
        "verifier": verifier,
        "queries": queries,
        "owner": owner,
        "exhaustive": exhaustive,
        "reference": reference,
    }


def _vote(index: Any, owner: np.ndarray, query: np.ndarray) -> int:
    """The best-voted parent (-1: no vote) of an exhaustive search, by KeypointIndex's rule (``ratio_votes``)."""
    if not len(query):
        return -1
    distances, ids = index.search(query.astype(np.float32), 8)
    counts = ratio_votes(distances, np.where(ids >= 0, owner[ids.clip(min=0)], -1), RATIO, len(owner))
    return int(np.argmax(counts)) if counts.any() else -1


@pytest.mark.benchmark(group="local-vote")
def test_exhaustive_faiss_vote(benchmark, data) -> None:  # type: ignore[no-untyped-def]
    got = benchmark(lambda: [_vote(data["exhaustive"], data["owner"], q) for q in data["queries"]])
    benchmark.extra_info["agreement"] = float(np.mean([a == b for a, b in zip(got, data["reference"], strict=True)]))
    benchmark.extra_info["descriptors"] = int(data["exhaustive"].ntotal)


@pytest.mark.benchmark(group="local-vote")
@pytest.mark.parametrize("codec", ["sq4", "sq8"], ids=["sq4 (default)", "sq8"])
def test_keypoint_index_vote(benchmark, data, codec: str) -> None:  # type: ignore[no-untyped-def]
    index = KeypointIndex(codec=codec)
    for pid, rows in data["parents"].items():
        index.add(pid, rows)
    index.train()
    names = list(data["parents"])

    def vote() -> list[int]:
        return [names.index(v[0][0]) if (v := index.vote(q, 1)) else -1 for q in data["queries"]]

    got = benchmark(vote)
    agreement = float(np.mean([a == b for a, b in zip(got, data["reference"], strict=True)]))
    benchmark.extra_info["agreement"] = agreement
    benchmark.extra_info["lists"] = int(index._index.nlist)
    assert agreement >= 0.85


@pytest.mark.benchmark(group="local-build")
def test_keypoint_index_build(benchmark, data) -> None:  # type: ignore[no-untyped-def]
    def build() -> KeypointIndex:
        index = KeypointIndex()
        for pid, rows in data["parents"].items():
            index.add(pid, rows)
        index.train()
        return index

    index = benchmark.pedantic(build, rounds=3, iterations=1)
    benchmark.extra_info["descriptors"] = index.descriptor_count
    benchmark.extra_info["mb"] = index.nbytes / 1e6
    assert index.descriptor_count == data["exhaustive"].ntotal


@pytest.mark.benchmark(group="local-build")
def test_raw_faiss_ivf_build(benchmark, data) -> None:  # type: ignore[no-untyped-def]
    from crossscale.index.keypoint_index import _lists_for

    x = np.concatenate(list(data["parents"].values())).astype(np.float32)
    lists = _lists_for(len(x))
    sample = x[np.sort(np.random.default_rng(0).choice(len(x), min(len(x), 64 * lists), replace=False))]

    def build() -> Any:
        index = faiss.IndexIVFScalarQuantizer(  # KeypointIndex's default codec: 4 bits per dimension
            faiss.IndexFlatL2(128), 128, lists, faiss.ScalarQuantizer.QT_4bit, faiss.METRIC_L2
        )
        index.by_residual = False
        index.train(sample)
        index.add(x)
        return index

    index = benchmark.pedantic(build, rounds=3, iterations=1)
    assert index.ntotal == len(x)


@pytest.mark.benchmark(group="local-load")
def test_keypoint_index_built_from_stored_features(benchmark, data) -> None:  # type: ignore[no-untyped-def]
    """What a process without ``keypoints.index`` does at its first local search (LocalCandidates): each parent's
    stored features decoded to RootSIFT, added, the lists trained."""
    verifier = data["verifier"]

    def build() -> KeypointIndex:
        index = KeypointIndex()
        for pid, blob in data["stored"].items():
            index.add(pid, verifier.descriptors(blob))
        index.train()
        return index

    index = benchmark.pedantic(build, rounds=3, iterations=1)
    assert index.descriptor_count == data["exhaustive"].ntotal


@pytest.mark.benchmark(group="local-load")
def test_keypoint_index_loaded_from_its_file(benchmark, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What it does with the file a writer kept: one read (checksum included)."""
    index = KeypointIndex()
    for pid, rows in data["parents"].items():
        index.add(pid, rows)
    index.save(tmp_path / "keypoints.index")
    loaded, _ = benchmark.pedantic(KeypointIndex.load, args=(tmp_path / "keypoints.index",), rounds=5, iterations=1)
    query = data["queries"][0]
    assert loaded.vote(query, 3) == index.vote(query, 3) and loaded.descriptor_count == index.descriptor_count
    benchmark.extra_info["file_mb"] = (tmp_path / "keypoints.index").stat().st_size / 1e6
