"""Benchmark fixtures: synthetic chunk vectors and a workspace holding them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossscale import CrossScaleSearch
from crossscale.index.root_store import NewParent, RootStore
from crossscale.segment import create_segmenter
from crossscale.types import Box, Chunk

DIM = 512
PARENTS = 2000
CHUNKS_PER_PARENT = 50
N_QUERIES = 64


class LookupEncoder:
    """Returns a precomputed vector per query image (keyed by its pixels): encoding costs nothing.

    Lets the benchmarks time what crossscale adds around FAISS, not the model.
    """

    name = "lookup"
    dim = DIM

    def __init__(self) -> None:
        self.table: dict[bytes, np.ndarray] = {}

    def key_image(self, n: int, vector: np.ndarray) -> Image.Image:
        im = Image.fromarray(np.array([[[n % 256, n // 256 % 256, 7]] * 2] * 2, dtype=np.uint8))
        self.table[im.tobytes()] = vector
        return im

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([self.table[im.tobytes()] for im in images]).astype(np.float32)


def max_per_parent(scores: np.ndarray, ids: np.ndarray, parent_of: np.ndarray, k: int) -> list[list[int]]:
    """The raw baselines' fold: per query row of a faiss result, the ``k`` parents with the best chunks, best
    first (numpy max-per-parent; padding ids of -1 left out)."""
    out = []
    for s, i in zip(scores, ids, strict=True):
        keep = i >= 0
        parents, s = parent_of[i[keep]], s[keep]
        _, first = np.unique(parents, return_index=True)  # first = best chunk of each parent (sorted input)
        best = first[np.argsort(-s[first], kind="stable")][:k]
        out.append(parents[best].tolist())
    return out


def unit(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    rows: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return rows


@pytest.fixture(scope="session")
def corpus() -> dict[str, np.ndarray]:
    """100k chunk vectors in 2,000 parents, and 64 queries near some of them."""
    rng = np.random.default_rng(42)
    x = unit(rng, PARENTS * CHUNKS_PER_PARENT)
    parent_of = np.repeat(np.arange(PARENTS), CHUNKS_PER_PARENT)
    targets = rng.choice(len(x), N_QUERIES, replace=False)
    q = x[targets] + 0.05 * unit(rng, N_QUERIES)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return {"x": x, "parent_of": parent_of, "q": q.astype(np.float32), "targets": targets}


@pytest.fixture(scope="session")
def facade(
    corpus: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CrossScaleSearch, list[Image.Image]]]:
    """A workspace holding the corpus (written straight to the store; the facade builds the index)."""
    path: Path = tmp_path_factory.mktemp("bench") / "ws"
    encoder = LookupEncoder()
    CrossScaleSearch.open(  # exact Flat and no verifier: the raw baselines do neither
        path, encoder=encoder, segmenter="whole", progress=False, device="cpu", index_factory="Flat", verifier=False
    ).close()
    store = RootStore(path / "store", dim=DIM)
    x = corpus["x"]
    box = Box(0, 0, 8, 8)
    batch = []
    for p in range(PARENTS):
        rows = x[p * CHUNKS_PER_PARENT : (p + 1) * CHUNKS_PER_PARENT]
        batch.append(NewParent(f"p{p:05d}", b"\x89PNG", "PNG", 8, 8, [Chunk(box, None, "tile")] * len(rows), rows))
        if len(batch) == 200:
            store.add_parents(batch)
            batch = []
    store.close()
    # refine=False: these benchmarks time the search path around FAISS, not extra encoder passes
    cs = CrossScaleSearch.open(path, encoder=encoder, segmenter="whole", progress=False, device="cpu", refine=False)
    queries = [encoder.key_image(i, v) for i, v in enumerate(corpus["q"])]
    yield cs, queries
    cs.close()


@pytest.fixture(scope="session")
def scene() -> tuple[Image.Image, list[Chunk]]:
    """One parent for the encoding benchmarks: skimage's astronaut at 1024x768, and the default segmenter's boxes
    of it (``whole+tiles``, ~140)."""
    from skimage import data

    image = Image.fromarray(data.astronaut()).convert("RGB").resize((1024, 768))
    return image, create_segmenter("whole+tiles").segment([image])[0]


@pytest.fixture(scope="session")
def vit_b32_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CLIP ViT-B/32's image tower (transformers' CLIPConfig defaults), random weights, a tiny text tower."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    path = tmp_path_factory.mktemp("vit-b32")
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, projection_dim=512)).save_pretrained(path)
    CLIPImageProcessor().save_pretrained(path)
    return path
