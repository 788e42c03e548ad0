"""Storage: the chunk vector index (FAISS, or Milvus with the ``milvus`` extra) and the root store (LMDB)."""

from crossscale.index.choose import DEFAULT_MAX_MEMORY, IndexPlan, choose_index, parse_memory, search_params
from crossscale.index.chunk_index import ChunkIndex
from crossscale.index.keypoint_index import KeypointIndex
from crossscale.index.milvus import MilvusChunkIndex, MilvusTarget, is_milvus_factory, parse_milvus_factory
from crossscale.index.parent_map import ParentMap
from crossscale.index.root_store import ChunkRecord, ParentRecord, RootStore

__all__ = [
    "ChunkIndex",
    "ChunkRecord",
    "DEFAULT_MAX_MEMORY",
    "IndexPlan",
    "KeypointIndex",
    "MilvusChunkIndex",
    "MilvusTarget",
    "ParentMap",
    "ParentRecord",
    "RootStore",
    "choose_index",
    "is_milvus_factory",
    "parse_memory",
    "parse_milvus_factory",
    "search_params",
]
