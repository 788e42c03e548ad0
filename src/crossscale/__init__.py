"""crossscale: find the large images that contain a small image, and where.

Pipeline: ``image → chunks → vectors → chunk hits → parents``.

- :mod:`crossscale.segment`: segmenters cut images into chunks (YOLO detections, tiles, the whole image).
- :mod:`crossscale.encode`: encoders embed chunks and queries (CLIP, EfficientNet-Lite0, colour histogram).
- :mod:`crossscale.index`: :class:`ChunkIndex` (FAISS) and :class:`RootStore` (LMDB).
- :mod:`crossscale.rank`: :class:`ParentRanker` folds chunk hits into parents; :class:`GeometricVerifier` checks
  the top ones with local features; :class:`RegionRefiner` re-scores the rest.
- :mod:`crossscale.protocols`: the interface of each stage; :mod:`crossscale.types`: the values they pass on.
- :class:`CrossScaleSearch` composes them around a :class:`Workspace` on disk, through :mod:`crossscale.ingest`
  and :mod:`crossscale.query`.
"""

from __future__ import annotations

import logging

from crossscale.display import show
from crossscale.encode import (
    BackboneEncoder,
    CLIPEncoder,
    ColorHistogramEncoder,
    ConvMapEncoder,
    Encoder,
    FeatureMapEncoder,
    create_encoder,
    list_encoders,
    register_encoder,
)
from crossscale.errors import (
    CapabilityError,
    ChunkIndexError,
    ConfigurationError,
    CrossScaleError,
    DeviceError,
    ImageLoadError,
    MissingDependencyError,
    ModelLoadError,
    ParentNotFoundError,
    VectorError,
    WorkspaceError,
    WorkspaceFormatError,
    WorkspaceLockedError,
    WorkspaceMismatchError,
)
from crossscale.index import ChunkIndex, RootStore
from crossscale.protocols import MapEncoder, Refiner, RegionEncoder, TextEncoder, VectorIndex, Verifier
from crossscale.rank import GeometricVerifier, MapRefiner, ParentRanker, Ranker, RegionRefiner
from crossscale.search import CrossScaleSearch
from crossscale.segment import (
    CombinedSegmenter,
    Segmenter,
    TileSegmenter,
    WholeSegmenter,
    YoloSegmenter,
    create_segmenter,
    list_segmenters,
    register_segmenter,
)
from crossscale.types import (
    Box,
    Chunk,
    ChunkRecord,
    Hit,
    IndexFailure,
    IndexReport,
    ParentMatch,
    Query,
    SearchMeasurement,
    SearchParams,
    SearchResult,
    SearchTuning,
)
from crossscale.workspace import VerifyReport, Workspace, WorkspaceConfig

__version__ = "0.2.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BackboneEncoder",
    "Box",
    "CLIPEncoder",
    "CapabilityError",
    "Chunk",
    "ChunkIndex",
    "ChunkIndexError",
    "ChunkRecord",
    "ColorHistogramEncoder",
    "CombinedSegmenter",
    "ConfigurationError",
    "ConvMapEncoder",
    "CrossScaleError",
    "CrossScaleSearch",
    "DeviceError",
    "Encoder",
    "FeatureMapEncoder",
    "GeometricVerifier",
    "Hit",
    "ImageLoadError",
    "IndexFailure",
    "IndexReport",
    "MapEncoder",
    "MapRefiner",
    "MissingDependencyError",
    "ModelLoadError",
    "ParentMatch",
    "ParentNotFoundError",
    "ParentRanker",
    "Query",
    "Ranker",
    "Refiner",
    "RegionEncoder",
    "RegionRefiner",
    "RootStore",
    "SearchMeasurement",
    "SearchParams",
    "SearchResult",
    "SearchTuning",
    "Segmenter",
    "TextEncoder",
    "TileSegmenter",
    "VectorError",
    "VectorIndex",
    "Verifier",
    "VerifyReport",
    "WholeSegmenter",
    "Workspace",
    "WorkspaceConfig",
    "WorkspaceError",
    "WorkspaceFormatError",
    "WorkspaceLockedError",
    "WorkspaceMismatchError",
    "YoloSegmenter",
    "__version__",
    "create_encoder",
    "create_segmenter",
    "list_encoders",
    "list_segmenters",
    "register_encoder",
    "register_segmenter",
    "show",
]
