"""A hypothesis state machine over index / index again / delete / delete_many / search / close+reopen, against a
model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule
from PIL import Image

from crossscale import CrossScaleSearch, ParentNotFoundError

POOL = 12


def _pool() -> list[Image.Image]:
    """Images whose colour histograms differ: each is noise around its own base colour."""
    rng = np.random.default_rng(7)
    images = []
    for i in range(POOL):
        base = np.array([(i * 53) % 256, (i * 97 + 40) % 256, (i * 31 + 90) % 256])
        arr = np.clip(base + rng.integers(-12, 12, (48, 64, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(arr))
    return images


IMAGES = _pool()


class WorkspaceMachine(RuleBasedStateMachine):
    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="crossscale-stateful-"))
        self.cs = self._open()
        self.model: dict[str, int] = {}  # parent id -> image index in IMAGES

    #: the chunk index's structure (``None``: the default, ``"auto"``)
    index_factory: str | None = None

    def _open(self) -> CrossScaleSearch:
        extra = {} if self.index_factory is None else {"index_factory": self.index_factory}
        return CrossScaleSearch.open(
            self.dir / "ws",
            encoder="color-histogram",
            segmenter="whole+tiles",
            segmenter_kwargs={"tiles": {"scales": [0.5]}},
            progress=False,
            device="cpu",
            **extra,
        )

    @rule(target=ids, n=st.integers(0, POOL - 1))
    def index_new(self, n: int) -> str:
        pid = f"img-{n}"
        report = self.cs.index([(pid, IMAGES[n])])
        if pid in self.model:
            assert report.present == (pid,) and not report.added
        else:
            assert report.added == (pid,)
            self.model[pid] = n
        return pid

    @rule(pid=ids)
    def index_same_again(self, pid: str) -> None:
        n = int(pid.split("-")[1])
        report = self.cs.index([(pid, IMAGES[n])])
        assert (report.present == (pid,)) == (pid in self.model)
        self.model.setdefault(pid, n)

    @rule(pid=ids)
    def delete(self, pid: str) -> None:
        if pid in self.model:
            self.cs.delete(pid)
            del self.model[pid]
        else:
            with pytest.raises(ParentNotFoundError):
                self.cs.delete(pid)

    @rule(pids=st.lists(ids, max_size=4), extra=st.booleans())
    def delete_many(self, pids: list[str], extra: bool) -> None:
        asked = [*pids, "never-indexed"] if extra else pids
        expected_missing = [p for p in dict.fromkeys(asked) if p not in self.model]
        assert self.cs.delete_many(asked) == expected_missing
        for pid in pids:
            self.model.pop(pid, None)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def search(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(sorted(self.model)))
        matches = self.cs.search(IMAGES[self.model[pid]], top_k=3)
        assert matches[0].parent_id == pid and matches[0].score > 0.999
        assert len(matches) == min(3, len(self.model))
        assert {m.parent_id for m in matches} <= set(self.model)

    @rule()
    def reopen(self) -> None:
        self.cs.close()
        self.cs = self._open()

    @invariant()
    def matches_model(self) -> None:
        assert set(self.cs.parent_ids()) == set(self.model)
        assert len(self.cs) == len(self.model)
        assert len(self.cs.chunk_index) == self.cs.store.chunk_count()

    def teardown(self) -> None:
        self.cs.close()
        with CrossScaleSearch.open(self.dir / "ws", readonly=True, progress=False, device="cpu") as reader:
            report = reader.verify()
            assert report.ok, report.problems
        shutil.rmtree(self.dir, ignore_errors=True)


TestWorkspace = WorkspaceMachine.TestCase
TestWorkspace.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)


class HnswWorkspaceMachine(WorkspaceMachine):
    """The same steps on an HNSW chunk index, which cannot delete: deleted parents' vectors stay as tombstones
    until a save rebuilds the index from the store (once they outnumber a tenth of the live ones), and a reopened
    writer or reader replays the store's log into it."""

    index_factory = "HNSW16"

    @invariant()
    def is_a_graph_of_the_stored_chunks(self) -> None:
        index = self.cs.chunk_index
        assert index.factory == "HNSW16"
        assert len(index) == self.cs.store.chunk_count()
        np.testing.assert_array_equal(index.ids(), np.sort(self.cs.store.vector_ids()))


TestHnswWorkspace = HnswWorkspaceMachine.TestCase
TestHnswWorkspace.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
