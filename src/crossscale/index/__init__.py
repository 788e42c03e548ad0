"""Storage: the chunk vector index (FAISS) and the root store (LMDB)."""

from crossscale.index.chunk_index import ChunkIndex
from crossscale.index.root_store import ChunkRecord, ParentRecord, RootStore

__all__ = ["ChunkIndex", "ChunkRecord", "ParentRecord", "RootStore"]
