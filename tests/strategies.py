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


@st.composite
def chunk_records(draw: st.DrawFn, max_chunks: int = 40, max_parents: int = 8) -> list[ChunkRecord]:
    """Records of chunks ``0..n-1`` of a few parents, with boxes on a small grid (so that they overlap), every
    kind, and labels from a small set (or none)."""
    n = draw(st.integers(0, max_chunks))
    kinds: list[ChunkKind] = ["whole", "detection", "tile"]
    return [
        ChunkRecord(
            cid,
            draw(st.sampled_from([f"p{i}" for i in range(max_parents)])),
            draw(boxes(max_side=64)),
            draw(st.sampled_from(kinds)),
            draw(st.sampled_from([None, "cat", "dog"])),
        )
        for cid in range(n)
    ]


@st.composite
def hit_rows(draw: st.DrawFn, n_chunks: int, width: int, max_rows: int = 5) -> list[list[tuple[int, float]]]:
    """A batch's hits over chunks ``0..n_chunks-1``: per query, at most ``width`` distinct ``(chunk id, score)``,
    best first; scores either on a 1/8 grid (ties) or any float32 (mostly distinct)."""
    grid = draw(st.booleans())
    score = st.integers(-8, 8).map(lambda s: s / 8) if grid else st.floats(-1.0, 1.0, allow_nan=False, width=32)
    rows = []
    for _ in range(draw(st.integers(1, max_rows))):
        size = draw(st.integers(0, min(width, n_chunks)))
        ids = draw(st.permutations(range(n_chunks)))[:size]
        scores = sorted((draw(score) for _ in ids), reverse=True)
        rows.append(list(zip(ids, scores, strict=True)))
    return rows
