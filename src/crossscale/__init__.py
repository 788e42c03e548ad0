"""crossscale: find the large images that contain a small image, and where.

Pipeline: ``image → chunks → vectors → chunk hits → parents``.

- :mod:`crossscale.segment`: segmenters cut images into chunks (YOLO detections, tiles, the whole image).
- :mod:`crossscale.encode`: encoders embed chunks and queries (CLIP, EfficientNet-Lite0, colour histogram).
- :mod:`crossscale.index`: :class:`ChunkIndex` (FAISS) and :class:`RootStore` (LMDB).
- :mod:`crossscale.rank`: :class:`ParentRanker` folds chunk hits into parents.
- :class:`CrossScaleSearch` composes them and owns a workspace on disk.
"""

from __future__ import annotations

import logging

from crossscale.encode import (
    BackboneEncoder,
    CLIPEncoder,
    ColorHistogramEncoder,
    Encoder,
    create_encoder,
    list_encoders,
    register_encoder,
)
from crossscale.errors import (
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
from crossscale.rank import ParentRanker, Ranker
from crossscale.search import CrossScaleSearch, VerifyReport
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
from crossscale.types import Box, Chunk, Hit, IndexFailure, IndexReport, ParentMatch

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BackboneEncoder",
    "Box",
    "CLIPEncoder",
    "Chunk",
    "ChunkIndex",
    "ChunkIndexError",
    "ColorHistogramEncoder",
    "CombinedSegmenter",
    "ConfigurationError",
    "CrossScaleError",
    "CrossScaleSearch",
    "DeviceError",
    "Encoder",
    "Hit",
    "ImageLoadError",
    "IndexFailure",
    "IndexReport",
    "MissingDependencyError",
    "ModelLoadError",
    "ParentMatch",
    "ParentNotFoundError",
    "ParentRanker",
    "Ranker",
    "RootStore",
    "Segmenter",
    "TileSegmenter",
    "VectorError",
    "VerifyReport",
    "WholeSegmenter",
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
]
