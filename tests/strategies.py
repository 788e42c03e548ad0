"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from hypothesis import strategies as st

from crossscale.types import Box, ChunkKind, ChunkRecord, Hit

MAX_SIDE = 4096
UNIT_BOX = Box(0, 0, 10, 10)


def hit(chunk_id: int, score: float, parent_id: str, box: Box = UNIT_BOX, kind: ChunkKind = "tile") -> Hit:
    """A hit as an index search returns it."""
    return Hit(ChunkRecord(chunk_id, parent_id, box, kind), score)


@st.composite
def boxes(draw: st.DrawFn, max_side: int = MAX_SIDE) -> Box:
    x0 = draw(st.integers(0, max_side - 1))
    y0 = draw(st.integers(0, max_side - 1))
    x1 = draw(st.integers(x0 + 1, max_side))
    y1 = draw(st.integers(y0 + 1, max_side))
    return Box(x0, y0, x1, y1)


@st.composite
def hit_lists(draw: st.DrawFn, max_parents: int = 12, max_hits: int = 60) -> list[Hit]:
    """Hits sorted by score (desc), unique chunk ids, scores in [-1, 1], as an index returns them."""
    n = draw(st.integers(0, max_hits))
    parents = draw(st.lists(st.sampled_from([f"p{i}" for i in range(max_parents)]), min_size=n, max_size=n))
    scores = sorted(
        draw(st.lists(st.floats(-1.0, 1.0, allow_nan=False, width=32), min_size=n, max_size=n)), reverse=True
    )
    return [hit(i, float(s), p) for i, (s, p) in enumerate(zip(scores, parents, strict=True))]


@st.composite
def tied_hit_lists(draw: st.DrawFn, max_parents: int = 10, max_hits: int = 50) -> list[Hit]:
    """Like :func:`hit_lists`, but with scores on a 1/8 grid (many ties, exact sums), random boxes, and chunk ids
    in no particular order: what stresses a fold's tie-breaks and box fusion."""
    n = draw(st.integers(0, max_hits))
    parents = draw(st.lists(st.sampled_from([f"p{i}" for i in range(max_parents)]), min_size=n, max_size=n))
    scores = sorted(draw(st.lists(st.integers(-8, 8), min_size=n, max_size=n)), reverse=True)
    ids = draw(st.permutations(range(n)))
    found = [draw(boxes(max_side=64)) for _ in range(n)]
    return [hit(cid, s / 8, p, box) for cid, s, p, box in zip(ids, scores, parents, found, strict=True)]
