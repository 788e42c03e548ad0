"""Cross-scale retrieval quality on real photos: data, splits, baselines and crossscale configurations.

    python -m benchmarks.quality [--seed 0] [--scenes 16] [--distractors 0] [--configs "a;b"]

Rebuilds the data from its seed, evaluates every configuration, prints the table (markdown). The data:
large scenes (1000-1600 px) made by pasting 1-6 object photos (Open Images birds, planes and assorted
objects from ../shared/photos) onto background photos with feathered edges, mild rotation, colour and blur
changes, plus natural photos as they are. Query splits:

- ``easy``: the exact region of a pasted object, rescaled and JPEG-compressed;
- ``transformed``: the object photo itself with photometric and geometric changes (brightness, contrast,
  colour, 0-15 degree rotation, a 70-100% partial crop, blur, noise);
- ``hard``: transformed queries of birds and planes pasted at <= 5% of the scene's area, while the
  collection holds ~50 other birds and planes;
- ``absent``: transformed photos of objects that are in no scene (is the score of a miss lower?).

Everything here uses the library's own stages (segmenters, encoders, ChunkIndex, ParentRanker, RegionRefiner)
and its own query path (:func:`crossscale.query.search_parents`, the one ``CrossScaleSearch.search`` runs),
with a cache of chunk vectors, so configurations that share chunks do not re-encode them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import logging
import math
import random
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from benchmarks.lite0 import lite0_as_before
from crossscale.encode import ColorHistogramEncoder, Encoder, RegionEncoder, create_encoder, embed, embed_regions
from crossscale.index import ChunkIndex, KeypointIndex, ParentMap
from crossscale.protocols import DescriptorVerifier
from crossscale.query import search_parents, voted_matches
from crossscale.rank import (
    VERIFIED_BONUS,
    GeometricVerifier,
    MapRefiner,
    ParentRanker,
    Refiner,
    RegionRefiner,
    Verifier,
)
from crossscale.segment import Segmenter, TileSegmenter, WholeSegmenter, create_segmenter
from crossscale.types import Box, ChunkDetails, ChunkRecord, ParentMatch, Query

logger = logging.getLogger(__name__)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "photos"
BACKGROUNDS_CORAL = (
    "kite_and_cold.jpg",
    "cat_1080p.jpg",
    "grace_hopper.png",
    "pets.jpg",
    "hot_dog.jpg",
    "sunflower.png",
    "face.jpg",
    "dragonfly.png",
)
NATURAL_CORAL = ("bird.png", "owl.jpg", "parrot.jpg", "cat.png")
BACKGROUNDS_SKIMAGE = ("astronaut", "coffee", "rocket", "hubble_deep_field", "chelsea", "immunohistochemistry")


#: the verifier's settings until 2026-12-04 (2,000 keypoints of parents shrunk to 1,024 px): the configurations
#: whose names give no keypoint count were measured with them, and keep them
SIFT_2000_1024 = functools.partial(GeometricVerifier, max_keypoints=2000, max_side=1024)


# ====================================================================== data
@dataclass(frozen=True)
class Placement:
    parent_id: str
    object_id: str
    category: str  # bird, plane, assorted
    box: Box
    area_fraction: float


@dataclass(frozen=True)
class LabelledQuery:
    """A query image with the truth: the parent holding it and where (``None`` for absent queries)."""

    query_id: str
    split: str
    image: Image.Image = field(repr=False)
    parent_id: str | None
    box: Box | None


@dataclass
class Dataset:
    parents: dict[str, Image.Image]
    placements: list[Placement]
    queries: list[LabelledQuery]

    def describe(self) -> str:
        sizes = [max(im.size) for im in self.parents.values()]
        splits = {s: sum(q.split == s for q in self.queries) for s in ("easy", "transformed", "hard", "absent")}
        return (
            f"{len(self.parents)} parents (long side {min(sizes)}-{max(sizes)} px), "
            f"{len(self.placements)} pasted objects; queries: " + ", ".join(f"{k} {v}" for k, v in splits.items())
        )


def _object_photos() -> dict[str, tuple[str, Image.Image]]:
    folder = SHARED / "openimages-packt"
    if not folder.is_dir():
        raise SystemExit(f"the quality benchmark needs the object photos in {folder} (see ../shared/README.md)")
    out = {}
    for path in sorted(folder.glob("*.jpg")):
        category = path.name.split("-")[0].rstrip("s")  # birds -> bird, planes -> plane, assorted
        with Image.open(path) as im:
            out[path.stem] = (category, im.convert("RGB"))
    return out


def _backgrounds() -> dict[str, Image.Image]:
    from skimage import data

    out = {}
    for name in BACKGROUNDS_CORAL:
        with Image.open(SHARED / "coral" / name) as im:
            out[f"bg-{Path(name).stem}"] = im.convert("RGB")
    for name in BACKGROUNDS_SKIMAGE:
        out[f"bg-{name}"] = Image.fromarray(getattr(data, name)()).convert("RGB")
    return out


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _photometric(im: Image.Image, rng: random.Random, strength: float = 1.0) -> Image.Image:
    im = ImageEnhance.Brightness(im).enhance(1 + rng.uniform(-0.25, 0.25) * strength)
    im = ImageEnhance.Contrast(im).enhance(1 + rng.uniform(-0.25, 0.25) * strength)
    im = ImageEnhance.Color(im).enhance(1 + rng.uniform(-0.3, 0.3) * strength)
    return im


def transform_query(photo: Image.Image, rng: random.Random) -> Image.Image:
    """The ``transformed`` split's changes: colour, rotation, partial crop, blur, noise, rescale."""
    w, h = photo.size
    keep_w, keep_h = rng.uniform(0.84, 1.0), rng.uniform(0.84, 1.0)  # 70-100% of the area
    x0 = rng.uniform(0, 1 - keep_w) * w
    y0 = rng.uniform(0, 1 - keep_h) * h
    im = photo.crop((round(x0), round(y0), round(x0 + keep_w * w), round(y0 + keep_h * h)))
    im = _photometric(im, rng)
    angle = rng.uniform(-15, 15)
    im = im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(128, 128, 128))
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    arr = np.asarray(im, dtype=np.float32) + np.random.default_rng(rng.randrange(2**32)).normal(
        0, 6, (im.height, im.width, 3)
    )
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    scale = rng.uniform(160, 400) / max(im.size)
    im = im.resize((max(8, round(im.width * scale)), max(8, round(im.height * scale))), Image.Resampling.BICUBIC)
    return _jpeg(im, rng.randint(70, 92))


def _paste(scene: Image.Image, obj: Image.Image, rng: random.Random, long_side: int, taken: list[Box]) -> Box | None:
    """Paste ``obj`` (long side ``long_side``) with feathered edges and mild rotation; returns its box."""
    scale = long_side / max(obj.size)
    obj = obj.resize((max(4, round(obj.width * scale)), max(4, round(obj.height * scale))), Image.Resampling.BICUBIC)
    obj = _photometric(obj, rng, strength=0.6).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    feather = max(1, round(min(obj.size) * 0.04))
    mask = Image.new("L", obj.size, 0)
    mask.paste(255, (feather, feather, obj.width - feather, obj.height - feather))
    mask = mask.filter(ImageFilter.GaussianBlur(feather))
    angle = rng.uniform(-10, 10)
    obj = obj.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    if obj.width >= scene.width or obj.height >= scene.height:
        return None
    for _ in range(60):
        x = rng.randrange(0, scene.width - obj.width)
        y = rng.randrange(0, scene.height - obj.height)
        ys, xs = np.nonzero(np.asarray(mask) > 127)
        box = Box(x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
        if all(box.intersection_area(t) == 0 for t in taken):
            scene.paste(obj, (x, y), mask)
            return box
    return None


def build_dataset(seed: int = 0, scenes: int = 16, distractors: int = 0) -> Dataset:
    """The benchmark data, deterministic from ``seed``.

    ``distractors`` adds that many parents with no pasted object: each a random crop (50-90% of the area), maybe
    flipped, of one of the scenes' backgrounds, at a scene's size. They share the scenes' backgrounds, so they
    compete with the right scene on everything but the object. They are drawn from their own random stream:
    the scenes and queries of a seed are the same with or without them.
    """
    rng = random.Random(seed)
    objects = _object_photos()
    by_cat: dict[str, list[str]] = {}
    for oid, (cat, _) in objects.items():
        by_cat.setdefault(cat, []).append(oid)
    absent = set()
    for cat, n in (("bird", 5), ("plane", 5), ("assorted", 3)):
        absent.update(rng.sample(sorted(by_cat[cat]), n))
    to_place = [oid for oid in sorted(objects) if oid not in absent]
    rng.shuffle(to_place)
    # birds and planes: half small (<= 5% of the area: the hard split), half at any size
    small = {oid for oid in to_place if objects[oid][0] in ("bird", "plane") and rng.random() < 0.5}

    backgrounds = _backgrounds()
    bg_names = sorted(backgrounds)
    parents: dict[str, Image.Image] = {}
    placements: list[Placement] = []
    queue = list(to_place)
    for i in range(scenes):
        bg = backgrounds[bg_names[i % len(bg_names)]]
        long_side = rng.randint(1000, 1600)
        aspect = rng.uniform(1.2, 1.6)
        size = (long_side, round(long_side / aspect)) if rng.random() < 0.75 else (round(long_side / aspect), long_side)
        scene = bg.resize(size, Image.Resampling.BICUBIC)
        if i >= len(bg_names):
            scene = scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pid = f"scene-{i:02d}"
        taken: list[Box] = []
        remaining_scenes = scenes - i
        count = min(len(queue), max(1, min(6, math.ceil(len(queue) / remaining_scenes) + rng.randint(-1, 1))))
        for _ in range(count):
            oid = queue.pop()
            area = scene.width * scene.height
            if oid in small:
                target_area = rng.uniform(0.008, 0.045) * area
            else:
                frac = rng.uniform(0.2, 0.4)
                target_area = (frac * max(scene.size)) ** 2 * 0.6
            photo = objects[oid][1]
            aspect_o = max(photo.size) / min(photo.size)
            long_o = round(math.sqrt(target_area * aspect_o))
            box = _paste(scene, photo, rng, long_o, taken)
            if box is None:
                continue
            taken.append(box)
            placements.append(Placement(pid, oid, objects[oid][0], box, box.area / area))
        parents[pid] = scene
    for name in NATURAL_CORAL:  # natural photos as they are: distractors (birds among them)
        with Image.open(SHARED / "coral" / name) as im:
            parents[f"natural-{Path(name).stem}"] = im.convert("RGB")
    drng = random.Random(seed + 10_000)
    for i in range(distractors):
        bg = backgrounds[drng.choice(bg_names)]
        share = drng.uniform(0.5, 0.9)
        w, h = max(32, round(bg.width * math.sqrt(share))), max(32, round(bg.height * math.sqrt(share)))
        x0, y0 = drng.randint(0, bg.width - w), drng.randint(0, bg.height - h)
        view = bg.crop((x0, y0, x0 + w, y0 + h))
        if drng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        long_side = drng.randint(1000, 1600)
        scale = long_side / max(view.size)
        parents[f"distractor-{i:03d}"] = view.resize(
            (round(view.width * scale), round(view.height * scale)), Image.Resampling.BICUBIC
        )

    queries: list[LabelledQuery] = []
    for n, p in enumerate(placements):
        qrng = random.Random(seed * 1000 + n)
        region = parents[p.parent_id].crop(p.box.as_tuple())
        s = qrng.uniform(0.5, 1.0)
        easy = _jpeg(
            region.resize((max(8, round(region.width * s)), max(8, round(region.height * s)))), qrng.randint(60, 90)
        )
        queries.append(LabelledQuery(f"easy-{p.object_id}", "easy", easy, p.parent_id, p.box))
        tq = transform_query(objects[p.object_id][1], qrng)
        queries.append(LabelledQuery(f"transformed-{p.object_id}", "transformed", tq, p.parent_id, p.box))
        if p.category in ("bird", "plane") and p.area_fraction <= 0.05:
            queries.append(LabelledQuery(f"hard-{p.object_id}", "hard", tq, p.parent_id, p.box))
    for oid in sorted(absent):
        queries.append(
            LabelledQuery(
                f"absent-{oid}",
                "absent",
                transform_query(objects[oid][1], random.Random(zlib.crc32(oid.encode()) + seed)),  # not hash()
                None,
                None,
            )
        )
    return Dataset(parents, placements, queries)


# ====================================================================== evaluation
@dataclass(frozen=True)
class Config:
    name: str
    encoder: str  # key into the encoders given to evaluate()
    segmenter: Callable[[], Segmenter]
    aggregator: str = "max"
    baseline: bool = False
    box: str = "best"
    refiner: Callable[[Encoder], Refiner] | None = None  # re-scores the top parents after ranking
    verifier: Callable[[], Verifier] | None = None  # checks the top parents geometrically, before refining
    vector_dtype: str = "float32"  # as the store keeps them ("float16": rounded, as a float16 workspace reads them)
    reduce_dim: int | None = None  # the index projects vectors to this many dimensions (ChunkIndex(reduce_dim=))
    rescore: bool = True  # hits of an index with approximate scores are re-scored with the exact vectors, as shipped
    refine_verified: bool = True  # refine queries whose best match is verified too (search_parents(refine_verified=))
    local_search: bool = False  # parents voted for by the query's keypoints join when verified (local_search=True)
    query_encoder: str | None = None  # queries and the refiner use this encoder instead (a session whose encoder
    # differs from the one that indexed, e.g. in precision)


class VectorCache:
    """Chunk and query vectors per encoder, so configurations sharing chunks encode them once.

    It also keeps what encoding cost: seconds per encoder call unit (an image for crop encoders, a parent's one
    pass for region encoders), so each configuration is charged for all its chunks, cached or not.
    """

    def __init__(self) -> None:
        self.chunks: dict[tuple[str, str, tuple[int, int, int, int]], np.ndarray] = {}
        self.queries: dict[tuple[str, str], np.ndarray] = {}
        self.encode_seconds: dict[str, float] = {}
        self.encoded: dict[str, int] = {}
        self.local: dict[tuple[str, str], Any] = {}

    def _timed(self, key: str, units: int, run: Callable[[], np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        out = run()
        self.encode_seconds[key] = self.encode_seconds.get(key, 0.0) + time.perf_counter() - start
        self.encoded[key] = self.encoded.get(key, 0) + units
        return out

    def encode(self, key: str, encoder: Encoder, images: Sequence[Image.Image]) -> np.ndarray:
        """Images encoded whole (crops or queries), as indexing and queries do: checked, unit rows."""
        return self._timed(key, len(images), lambda: embed(encoder, images))

    def encode_regions(self, key: str, encoder: RegionEncoder, image: Image.Image, boxes: Sequence[Box]) -> np.ndarray:
        """The boxes of one parent from one pass, as indexing does with a region encoder."""
        return self._timed(key + ":pass", 1, lambda: embed_regions(encoder, image, boxes))

    def seconds_per_image(self, key: str) -> float:
        return self.encode_seconds.get(key, 0.0) / max(1, self.encoded.get(key, 0))

    def local_features(self, verifier: Verifier, parents: dict[str, Image.Image]) -> dict[str, bytes]:
        """What ``verifier`` extracts of each parent, as indexing keeps it (timed per parent under its name)."""
        key = "verifier:" + verifier.name
        for pid, image in parents.items():
            if (key, pid) not in self.local:
                self.local[(key, pid)] = self._timed(key, 1, lambda image=image: verifier.extract(image))
        return {pid: self.local[(key, pid)] for pid in parents}


@dataclass
class Result:
    config: Config
    chunks_per_parent: float
    index_seconds_per_parent: float
    query_ms: float
    metrics: dict[str, dict[str, float]]
    passes_per_parent: float = 0.0  # encoder forward passes per indexed parent (one per crop, or one per parent)
    query_p95_ms: float = float("nan")
    vector_bytes_per_parent: float = 0.0  # float32 chunk vectors, as the store keeps them (the index holds a copy)
    local_bytes_per_parent: float = 0.0  # the verifier's stored local features
    # split -> one (rank of the right parent or None, box IoU at rank 1, top score) per query
    per_query: dict[str, list[tuple[int | None, float, float]]] = field(default_factory=dict)


def _auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def evaluate(dataset: Dataset, config: Config, encoders: dict[str, Encoder], cache: VectorCache) -> Result:
    encoder = encoders[config.encoder]
    segmenter = config.segmenter()
    records: list[ChunkRecord] = []  # chunk id = position
    vectors: list[np.ndarray] = []
    seg_seconds = 0.0
    regions = isinstance(encoder, RegionEncoder)  # as indexing decides: one pass per parent, or a crop per chunk
    for pid, image in dataset.parents.items():
        start = time.perf_counter()
        chunks = segmenter.segment([image])[0]
        seg_seconds += time.perf_counter() - start
        missing = [c for c in chunks if (config.encoder, pid, c.box.as_tuple()) not in cache.chunks]
        if missing:
            if isinstance(encoder, RegionEncoder):
                vecs = cache.encode_regions(config.encoder, encoder, image, [c.box for c in missing])
            else:
                crops = [c.image if c.image is not None else image.crop(c.box.as_tuple()) for c in missing]
                vecs = cache.encode(config.encoder, encoder, crops)
            for c, v in zip(missing, vecs, strict=True):
                cache.chunks[(config.encoder, pid, c.box.as_tuple())] = v
        for c in chunks:
            records.append(ChunkRecord(len(records), pid, c.box, c.kind, c.label, c.confidence))
            vectors.append(cache.chunks[(config.encoder, pid, c.box.as_tuple())])
    if config.vector_dtype != "float32":
        vectors = list(np.stack(vectors).astype(config.vector_dtype).astype(np.float32))
    index = ChunkIndex(encoder.dim, reduce_dim=config.reduce_dim, device="cpu")
    index.add(np.stack(vectors), np.arange(len(vectors)))  # a projection is learned from all of them

    def exact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # the store's RootStore.vectors
        return np.asarray(ids, dtype=np.int64), np.stack([vectors[i] for i in ids]).reshape(len(ids), -1)

    owners: dict[str, list[ChunkRecord]] = {}
    for record in records:
        owners.setdefault(record.parent_id, []).append(record)
    parents = ParentMap.from_parents(  # with each chunk's box, kind and label, as a workspace's
        (pid, [r.chunk_id for r in mine], ChunkDetails.of(mine)) for pid, mine in owners.items()
    )
    ranker = ParentRanker(config.aggregator, box=config.box)
    asker = config.query_encoder or config.encoder  # what encodes queries and refines
    refiner = config.refiner(encoders[asker]) if config.refiner is not None else None
    verifier = config.verifier() if config.verifier is not None else None
    local = cache.local_features(verifier, dataset.parents) if verifier is not None else {}
    extract_seconds = cache.seconds_per_image("verifier:" + verifier.name) if verifier is not None else 0.0
    candidates = None
    keypoint_seconds = 0.0
    if config.local_search and isinstance(verifier, DescriptorVerifier):
        start = time.perf_counter()  # built from the stored features, as a workspace's LocalCandidates does
        keypoints = KeypointIndex()
        for pid, raw in local.items():
            keypoints.add(pid, verifier.descriptors(raw))
        keypoints.train()
        keypoint_seconds = (time.perf_counter() - start) / len(dataset.parents)
        chunk_ids = {pid: [r.chunk_id for r in mine] for pid, mine in owners.items()}

        def candidates(query: Query, ranked: AbstractSet[str]) -> list[ParentMatch]:
            votes = keypoints.vote(verifier.query_descriptors(query), 5 + len(ranked))
            return voted_matches(
                query,
                votes,
                ranked,
                chunk_ids=chunk_ids.get,
                vectors=exact,
                records=lambda ids: {i: records[i] for i in ids},
                ranker=ranker,
            )

    n_parents = len(dataset.parents)
    if regions:
        passes = float(n_parents)
        encode_seconds = cache.seconds_per_image(config.encoder + ":pass") * n_parents
    else:
        passes = float(len(records))
        encode_seconds = cache.seconds_per_image(config.encoder) * len(records)

    todo = [q for q in dataset.queries if (asker, q.query_id) not in cache.queries]
    if todo:
        for q, v in zip(todo, cache.encode(f"{asker}:q", encoders[asker], [q.image for q in todo]), strict=True):
            cache.queries[(asker, q.query_id)] = v
    query_encode = cache.seconds_per_image(f"{asker}:q")
    latencies: list[float] = []
    per_split: dict[str, list[tuple[int | None, float, float]]] = {}
    for q in dataset.queries:
        query = Query(cache.queries[(asker, q.query_id)], q.image)
        start = time.perf_counter()
        [matches] = search_parents(  # the path CrossScaleSearch.search runs, minus the workspace
            [query],
            10,
            index=index,
            records=lambda ids: {i: records[i] for i in ids},
            parents=parents,
            details=parents.details,
            ranker=ranker,
            refiner=refiner,
            load_parent=dataset.parents.get,
            verifier=verifier,
            load_features=local.get,
            exact_vectors=exact if config.rescore and not index.scores_exact else None,
            refine_verified=config.refine_verified,
            candidates=candidates,
        )
        latencies.append(query_encode + time.perf_counter() - start)
        rank = next((r for r, m in enumerate(matches, 1) if m.parent_id == q.parent_id), None)
        iou = matches[0].box.iou(q.box) if q.box is not None and rank == 1 else float("nan")
        per_split.setdefault(q.split, []).append((rank, iou, matches[0].score if matches else float("-inf")))
    metrics: dict[str, dict[str, float]] = {}
    for split, rows in per_split.items():
        if split == "absent":
            continue
        ranks = [r for r, _, _ in rows]
        ious = [i for r, i, _ in rows if r == 1]
        metrics[split] = {
            "n": len(rows),
            "r@1": float(np.mean([r == 1 for r in ranks])),
            "r@5": float(np.mean([r is not None and r <= 5 for r in ranks])),
            "r@10": float(np.mean([r is not None and r <= 10 for r in ranks])),
            "mrr": float(np.mean([1 / r if r else 0.0 for r in ranks])),
            "iou50": float(np.mean([i >= 0.5 for i in ious])) if ious else float("nan"),
            "iou_median": float(np.median(ious)) if ious else float("nan"),
        }
    present = [s for _, _, s in per_split.get("transformed", [])]
    absent = [s for _, _, s in per_split.get("absent", [])]
    metrics["absent"] = {"n": len(absent), "auc": _auc(present, absent)}
    return Result(
        config,
        chunks_per_parent=len(records) / n_parents,
        index_seconds_per_parent=(seg_seconds + encode_seconds) / n_parents + extract_seconds + keypoint_seconds,
        query_ms=1000 * float(np.median(latencies)),
        metrics=metrics,
        per_query=per_split,
        passes_per_parent=passes / n_parents,
        query_p95_ms=1000 * float(np.percentile(latencies, 95)),
        vector_bytes_per_parent=np.dtype(config.vector_dtype).itemsize * encoder.dim * len(records) / n_parents,
        local_bytes_per_parent=float(np.mean([len(b) for b in local.values()])) if local else 0.0,
    )


def default_configs() -> list[Config]:
    """Baselines first, then crossscale configurations."""

    def tiles(scales: Sequence[float], overlap: float = 0.25, whole: bool = True) -> Callable[[], Segmenter]:
        def make() -> Segmenter:
            t = TileSegmenter(scales=scales, overlap=overlap)
            return create_segmenter("whole+tiles", tiles={"scales": scales, "overlap": overlap}) if whole else t

        return make

    def crops_map_refined(*, every: bool, local: bool = False, fp32: bool = False) -> Config:
        """The default (crops, SIFT 4,000 at 1,600 px, the map refiner unless verified, float16 vectors, local
        search), refining ``every`` search instead, or without ``local`` search (the default until 2026-12-05), or
        with the encoder in ``fp32`` where the default precision is bf16 (a CPU with bf16 matrix units)."""
        return Config(
            f"lite0{' fp32' if fp32 else ''}, whole+tiles(.5,.25,.18), box=fusion, verify top 10 (sift, 4000 keypoints "
            f"at 1600 px), map refiner (top 3, one pass per parent){' every search' if every else ' unless verified'}, "
            "float16 vectors"
            + (
                ", local search"
                if local and fp32
                else ", local search (default)"
                if local
                else ""
                if every
                else " (the default until 2026-12-05)"
            ),
            "lite0-fp32" if fp32 else "lite0",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
            verifier=functools.partial(GeometricVerifier, max_keypoints=4000, max_side=1600),
            refiner=MapRefiner,
            vector_dtype="float16",
            refine_verified=every,
            local_search=local,
        )

    return [
        Config("colour histogram, whole image", "hist", WholeSegmenter, baseline=True),
        Config("colour histogram, whole+tiles(.5,.35,.25)", "hist", tiles((0.5, 0.35, 0.25)), baseline=True),
        Config("lite0, whole image", "lite0", WholeSegmenter, baseline=True),
        Config("lite0, tiles(.5,.25)", "lite0", tiles((0.5, 0.25), whole=False)),
        Config("lite0, whole+tiles(.5,.25)", "lite0", tiles((0.5, 0.25))),
        Config("lite0, whole+tiles(.5,.35,.25)", "lite0", tiles((0.5, 0.35, 0.25))),
        Config("lite0, whole+tiles(.5,.35,.25,.18)", "lite0", tiles((0.5, 0.35, 0.25, 0.18))),
        Config("lite0, whole+tiles(.5,.35,.25,.18), box=fusion", "lite0", tiles((0.5, 0.35, 0.25, 0.18)), box="fusion"),
        Config("lite0, whole+tiles(.5,.25,.18)", "lite0", tiles((0.5, 0.25, 0.18))),
        Config("lite0, whole+tiles(.35,.18)", "lite0", tiles((0.35, 0.18))),
        Config("lite0, whole+tiles(.25,.18)", "lite0", tiles((0.25, 0.18))),
        Config("lite0, whole+tiles(.18)", "lite0", tiles((0.18,))),
        Config("lite0, whole+tiles(.18), box=fusion", "lite0", tiles((0.18,)), box="fusion"),
        Config(
            "lite0, whole+tiles(.18), box=fusion, refine top 3: size, position, extent",
            "lite0",
            tiles((0.18,)),
            box="fusion",
            refiner=RegionRefiner,
        ),
        Config("lite0, whole+tiles(.5,.18)", "lite0", tiles((0.5, 0.18))),
        Config("lite0, whole+tiles(.5,.18), box=fusion", "lite0", tiles((0.5, 0.18)), box="fusion"),
        Config("lite0, whole+tiles(.5,.25,.18), box=fusion", "lite0", tiles((0.5, 0.25, 0.18)), box="fusion"),
        Config(
            "lite0, whole+tiles(.5,.25,.18) overlap 0, box=fusion", "lite0", tiles((0.5, 0.25, 0.18), 0.0), box="fusion"
        ),
        Config(
            "lite0, whole+tiles(.5,.25,.18) overlap .5, box=fusion",
            "lite0",
            tiles((0.5, 0.25, 0.18), 0.5),
            box="fusion",
        ),
        Config(
            "lite0, whole+tiles(.5,.25,.18), box=fusion, refine top 3: size, position",
            "lite0",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
            refiner=lambda e: RegionRefiner(e, grow=(), side_steps=()),
        ),
        Config(
            "lite0, whole+tiles(.5,.25,.18), box=fusion, refine top 3: size, position, extent (default)",
            "lite0",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
            refiner=RegionRefiner,
        ),
        Config(
            "lite0 as filed (fp32, batch norms kept, NCHW), whole+tiles(.5,.25,.18), box=fusion, refine top 3 (the "
            "default when issue #11 was filed)",
            "lite0-as-filed",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
            refiner=RegionRefiner,
        ),
        Config("lite0, whole+tiles(.5,.25,.18,.12)", "lite0", tiles((0.5, 0.25, 0.18, 0.12))),
        Config(
            "lite0 regions (one pass, map 1024), whole+tiles(.5,.25,.18), box=fusion",
            "lite0-regions",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
        ),
        Config(
            "lite0 regions (one pass, map 1024), whole+tiles(.5,.25,.18), box=fusion, refine top 3",
            "lite0-regions",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
            refiner=RegionRefiner,
        ),
        Config(
            "lite0 regions (one pass, map 1024), whole+tiles(.5,.25,.18), box=fusion, verify top 10 (sift)",
            "lite0-regions",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
            verifier=SIFT_2000_1024,
        ),
        Config(
            "lite0 regions (one pass, map 1024), whole+tiles(.5,.25,.18), box=fusion, verify top 10, refine top 3",
            "lite0-regions",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
            verifier=SIFT_2000_1024,
            refiner=RegionRefiner,
        ),
        Config(
            "lite0, whole+tiles(.5,.25,.18), box=fusion, verify top 10, refine top 3 (the default + verification)",
            "lite0",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
            verifier=SIFT_2000_1024,
            refiner=RegionRefiner,
        ),
        Config(
            "lite0, whole+tiles(.5,.25,.18), box=fusion, verify top 10 (20 inliers, the 0.2 default until 2026-12-04), "
            "refine top 3, float16 vectors",
            "lite0",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
            verifier=functools.partial(GeometricVerifier, max_keypoints=2000, max_side=1024, min_inliers=20),
            refiner=RegionRefiner,
            vector_dtype="float16",
        ),
        *(
            Config(
                "lite0, whole+tiles(.5,.25,.18), box=fusion, verify top 10"
                + ("" if (kp, side) == (2000, 1024) else f" (sift, {kp} keypoints at {side} px)")
                + f", {refine}, float16 vectors"
                + (
                    " (the default until 2026-12-05)"
                    if (kp, side, refine) == (4000, 1600, "refine top 3 unless verified")
                    else ""
                ),
                "lite0",
                tiles((0.5, 0.25, 0.18)),
                box="fusion",
                verifier=functools.partial(GeometricVerifier, max_keypoints=kp, max_side=side),
                refiner=None if refine == "no refiner" else RegionRefiner,
                vector_dtype="float16",
                refine_verified=refine == "refine top 3",
            )
            for kp, side in ((2000, 1024), (4000, 1024), (4000, 1600), (2000, 1600))
            for refine in ("refine top 3", "refine top 3 unless verified", "no refiner")
        ),
        crops_map_refined(every=False),
        crops_map_refined(every=True),
        crops_map_refined(every=False, local=True),
        crops_map_refined(every=False, local=True, fp32=True),
        dataclasses.replace(
            crops_map_refined(every=False, local=True, fp32=True),
            name="lite0, whole+tiles(.5,.25,.18), box=fusion, verify top 10 (sift, 4000 keypoints at 1600 px), map "
            "refiner (top 3, one pass per parent) unless verified, float16 vectors, local search, indexed in fp32, "
            "queried in the default precision",
            query_encoder="lite0",
        ),
        Config(
            "lite0 regions fp32 (one pass, map 1024), whole+tiles(.5,.25,.18), box=fusion, verify top 10 "
            "(sift, 4000 keypoints at 1280 px), map refiner unless verified, local search",
            "lite0-regions-fp32",
            tiles((0.5, 0.25, 0.18)),
            box="fusion",
            verifier=functools.partial(GeometricVerifier, max_keypoints=4000, max_side=1280),
            refiner=MapRefiner,
            refine_verified=False,
            local_search=True,
        ),
        *(
            Config(
                f"lite0 regions (one pass, map {size}{'' if query == 224 else f', query {query}'}), "
                f"whole+tiles(.5,.25,.18), box=fusion, verify top 10 "
                f"(sift, 4000 keypoints at {side} px), map refiner unless verified, local search",
                "lite0-regions" + ("" if size == 1024 else f"-{size}") + ("" if query == 224 else f"-q{query}"),
                tiles((0.5, 0.25, 0.18)),
                box="fusion",
                verifier=functools.partial(GeometricVerifier, max_keypoints=4000, max_side=side),
                refiner=MapRefiner,
                refine_verified=False,
                local_search=True,
            )
            for size, side, query in (
                (1024, 1600, 224),
                (768, 1600, 224),
                (1024, 1280, 224),
                (768, 1280, 224),
                (640, 1280, 224),
                (896, 1280, 224),
                (896, 1024, 224),
                (1024, 1024, 224),
                # the query at the map's scale: 224 x size / 1024 (FeatureMapEncoder's docstring)
                (896, 1280, 196),
                (768, 1280, 168),
            )
        ),
        *(
            Config(
                "lite0 regions (one pass, map 1024), whole+tiles(.5,.25,.18), box=fusion, verify top 10 "
                f"(sift, 4000 keypoints at 1600 px), {refine}",
                "lite0-regions",
                tiles((0.5, 0.25, 0.18)),
                box="fusion",
                verifier=functools.partial(GeometricVerifier, max_keypoints=4000, max_side=1600),
                refiner={
                    "no refiner": None,
                    "map refiner unless verified": MapRefiner,
                    "map refiner top 10 unless verified": functools.partial(MapRefiner, top_n=10),
                }.get(refine, RegionRefiner),
                refine_verified=False,
            )
            for refine in (
                "refine top 3 unless verified",
                "map refiner unless verified",
                "map refiner top 10 unless verified",
                "no refiner",
            )
        ),
        *(
            Config(
                "lite0, whole+tiles(.5,.25,.18), box=fusion, float16"
                + (f", projected to {d}" if d else "")
                + ("" if rescore else ", not re-scored"),
                "lite0",
                tiles((0.5, 0.25, 0.18)),
                box="fusion",
                vector_dtype="float16",
                reduce_dim=d,
                rescore=rescore,
            )
            for d, rescore in ((None, True), (256, False), (256, True), (128, False), (128, True))
        ),
        *(
            Config(
                f"lite0, whole+tiles(.5,.25,.18), box=fusion, verify top 10, refine top 3, float16, projected to {d}",
                "lite0",
                tiles((0.5, 0.25, 0.18)),
                box="fusion",
                verifier=SIFT_2000_1024,
                refiner=RegionRefiner,
                vector_dtype="float16",
                reduce_dim=d,
            )
            for d in (256, 128)
        ),
        Config("lite0, whole+tiles(.5,.35,.25) mean_top3", "lite0", tiles((0.5, 0.35, 0.25)), aggregator="mean_top3"),
        Config("lite0, whole+tiles(.5,.35,.25) sum", "lite0", tiles((0.5, 0.35, 0.25)), aggregator="sum"),
    ]


def table(results: Sequence[Result]) -> str:
    head = (
        "| configuration | chunks/parent | passes/parent | KB/parent (vectors + local) | index s/parent "
        "| query ms p50 / p95 | easy r@1 | easy IoU "
        "| transformed r@1 | r@5 | MRR | hard r@1 | r@5 | MRR | box IoU>=.5 (hard/transf.) | absent AUC |"
    )
    lines = [head, "|" + " --- |" * 16]
    nan = float("nan")
    for r in results:
        e, t, h, a = (r.metrics.get(k, {}) for k in ("easy", "transformed", "hard", "absent"))
        name = f"*{r.config.name}* (baseline)" if r.config.baseline else r.config.name
        lines.append(
            f"| {name} | {r.chunks_per_parent:.1f} | {r.passes_per_parent:.1f} "
            f"| {r.vector_bytes_per_parent / 1024:.0f} + {r.local_bytes_per_parent / 1024:.0f} "
            f"| {r.index_seconds_per_parent:.2f} "
            f"| {r.query_ms:.0f} / {r.query_p95_ms:.0f} | {e.get('r@1', nan):.2f} | {e.get('iou_median', nan):.2f} "
            f"| {t.get('r@1', nan):.2f} | {t.get('r@5', nan):.2f} | {t.get('mrr', nan):.2f} "
            f"| {h.get('r@1', nan):.2f} | {h.get('r@5', nan):.2f} | {h.get('mrr', nan):.2f} "
            f"| {h.get('iou50', nan):.2f} / {t.get('iou50', nan):.2f} | {a.get('auc', nan):.2f} |"
        )
    return "\n".join(lines)


def operating_points(
    result: Result, thresholds: Sequence[float] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, VERIFIED_BONUS)
) -> str:
    """What a ``min_score`` does: the share of queries still answered right, and of absent queries answered.

    With a verifier, ``min_score=VERIFIED_BONUS`` (1.0) keeps verified matches only.
    """
    lines = [
        f"`min_score` operating points of *{result.config.name}*:",
        "",
        "| min_score | transformed: right parent kept | hard: right parent kept | absent: answered (false hits) |",
        "| --- | --- | --- | --- |",
    ]
    for t in thresholds:
        cells = []
        for split in ("transformed", "hard"):
            rows = result.per_query.get(split, [])
            cells.append(f"{np.mean([rank == 1 and s >= t for rank, _, s in rows]):.2f}" if rows else "nan")
        absent = result.per_query.get("absent", [])
        cells.append(f"{np.mean([s >= t for _, _, s in absent]):.2f}" if absent else "nan")
        lines.append(f"| {t:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lite0_as_filed() -> Encoder:
    """``"efficientnet-lite0"`` as it ran when issue #11 was filed (2026-11-25): the same weights and vectors, in fp32,
    the package's model with its batch norms, weights in NCHW; the factory's other arguments."""
    encoder: Encoder = lite0_as_before(
        "efficientnet-lite0", precision="fp32", fold_batch_norms=False, channels_last=False
    )
    return encoder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument(
        "--distractors", type=int, default=0, help="extra parents with no pasted object (crops of the backgrounds)"
    )
    parser.add_argument("--configs", default="", help="';'-separated substrings: only configurations matching one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dataset = build_dataset(args.seed, args.scenes, args.distractors)
    print(f"data (seed {args.seed}): {dataset.describe()}", flush=True)
    encoders: dict[str, Encoder] = {
        "hist": ColorHistogramEncoder(),
        "lite0": create_encoder("efficientnet-lite0", device="cpu"),
        "lite0-regions": create_encoder("efficientnet-lite0-regions", device="cpu"),
        "lite0-fp32": create_encoder("efficientnet-lite0", device="cpu", precision="fp32"),
        "lite0-as-filed": lite0_as_filed(),
        "lite0-regions-fp32": create_encoder("efficientnet-lite0-regions", device="cpu", precision="fp32"),
        **{
            f"lite0-regions-{size}": create_encoder("efficientnet-lite0-regions", device="cpu", map_size=size)
            for size in (896, 768, 640)
        },
        **{
            f"lite0-regions-{size}-q{query}": create_encoder(
                "efficientnet-lite0-regions", device="cpu", map_size=size, query_size=query
            )
            for size, query in ((896, 196), (768, 168))
        },
    }
    precision = getattr(encoders["lite0"], "dtype", None)
    print(f"the encoders' default precision on this machine: {precision} (the *fp32* rows: torch.float32)", flush=True)
    cache = VectorCache()
    results = []
    for config in default_configs():
        if args.configs and not any(s.strip() in config.name for s in args.configs.split(";")):
            continue
        start = time.perf_counter()
        results.append(evaluate(dataset, config, encoders, cache))
        logger.info("%s: %.0f s", config.name, time.perf_counter() - start)
    print(table(results))
    print()
    for r in results:  # is the right parent among the 10 the verifier checks?
        h, t = (r.metrics.get(split, {}).get("r@10", float("nan")) for split in ("hard", "transformed"))
        print(f"r@10 hard / transformed: {h:.2f} / {t:.2f}: {r.config.name}")
    chosen = [r for r in results if r.config.name.endswith(("(default)", "verification)", "local search"))]
    chosen = chosen or results[-1:]
    for r in chosen:
        print()
        print(operating_points(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
