"""Workspace copies for tests that compare one store under two chunk indexes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def milvus_copy(source: Path, target: Path, collection: str = "copied") -> Path:
    """A copy of the (closed) workspace ``source`` whose chunk index is a Milvus Lite collection: the collection is
    derived from the copied store when the copy is first opened for writing."""
    shutil.copytree(source, target)
    (target / "chunks.index").unlink(missing_ok=True)
    config = json.loads((target / "workspace.json").read_text())
    config.update(index_factory=f"milvus#{collection}", format=2)
    (target / "workspace.json").write_text(json.dumps(config))
    return target
