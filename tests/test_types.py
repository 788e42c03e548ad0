from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossscale import Box, ConfigurationError, ParentMatch
from tests.strategies import boxes


@given(boxes(), boxes())
def test_iou_is_symmetric_and_bounded(a: Box, b: Box) -> None:
    assert a.iou(b) == pytest.approx(b.iou(a))
    assert 0.0 <= a.iou(b) <= 1.0


@given(boxes())
def test_iou_with_itself_is_one(a: Box) -> None:
    assert a.iou(a) == 1.0


@given(boxes(), st.floats(0, 2, allow_nan=False))
def test_pad_contains_original_and_stays_in_image(a: Box, frac: float) -> None:
    width, height = a.x1 + 7, a.y1 + 3
    p = a.pad(frac, width=width, height=height)
    assert p.x0 <= a.x0 and p.y0 <= a.y0 and p.x1 >= a.x1 and p.y1 >= a.y1
    assert p.x1 <= width and p.y1 <= height


@given(st.floats(-50, 150), st.floats(-50, 150), st.floats(1, 100), st.floats(1, 100))
def test_from_floats_clips_outwards(x: float, y: float, w: float, h: float) -> None:
    try:
        b = Box.from_floats(x, y, x + w, y + h, width=100, height=100)
    except ConfigurationError:
        assert x + w <= 0 or y + h <= 0 or x >= 100 or y >= 100  # nothing inside the image
        return
    assert 0 <= b.x0 <= max(0, x) + 1 and b.x1 <= 100 and b.y1 <= 100
    assert b.x0 <= max(x, 0) and b.x1 >= min(x + w, 100) - 1e-9


@pytest.mark.parametrize("coords", [(0, 0, 0, 5), (3, 3, 2, 9), (-1, 0, 4, 4)])
def test_invalid_boxes_are_refused(coords: tuple[int, int, int, int]) -> None:
    with pytest.raises(ConfigurationError, match="Box"):
        Box(*coords)


def test_box_rejects_floats() -> None:
    with pytest.raises(ConfigurationError, match="int"):
        Box(0, 0, 1.5, 2)  # type: ignore[arg-type]


def test_box_json_roundtrip() -> None:
    b = Box(1, 2, 30, 40)
    assert Box.from_json(b.to_json()) == b
    assert b.width == 29 and b.height == 38 and b.area == 29 * 38


def test_unattached_match_image_raises_clearly() -> None:
    m = ParentMatch("p", 0.5, Box(0, 0, 2, 2), "tile", 0.5, 1)
    with pytest.raises(ConfigurationError, match="not attached"):
        m.image()
    assert m.to_dict()["box"] == [0, 0, 2, 2]


def test_a_hit_is_a_record_plus_a_score() -> None:
    from crossscale.types import ChunkRecord, Hit

    record = ChunkRecord(7, "p", Box(0, 0, 4, 4), "detection", "cat", 0.9)
    hit = Hit(record, 0.5)
    assert (hit.chunk_id, hit.parent_id, hit.box, hit.kind, hit.label, hit.confidence) == (
        7,
        "p",
        Box(0, 0, 4, 4),
        "detection",
        "cat",
        0.9,
    )
    assert hit.record is record and hit.score == 0.5
    with pytest.raises(TypeError, match="record, score"):
        Hit(record, 0.5, "extra")  # type: ignore[call-arg]


def test_the_0_1_hit_constructor_still_works_with_a_deprecation_warning() -> None:
    from crossscale.types import ChunkRecord, Hit

    with pytest.warns(DeprecationWarning, match=r"Hit\(ChunkRecord"):
        old = Hit(7, 0.5, "p", Box(0, 0, 4, 4), "tile")  # type: ignore[arg-type]
    assert old == Hit(ChunkRecord(7, "p", Box(0, 0, 4, 4), "tile"), 0.5)


def test_chunk_records_round_trip_through_their_stored_form() -> None:
    from crossscale.types import ChunkRecord

    record = ChunkRecord(3, "p", Box(1, 2, 3, 4), "detection", "dog", 0.25)
    assert ChunkRecord.from_json(3, record.to_json(), validate=True) == record
    bad = record.to_json().replace(b'"detection"', b'"blob"')
    with pytest.raises(ValueError, match="blob"):
        ChunkRecord.from_json(3, bad, validate=True)


def test_the_hot_path_constructors_build_what_the_dataclass_builds() -> None:
    """``Box._trusted`` and ``ParentMatch._trusted`` set the slots directly (a search builds one per match); a field
    added to either dataclass must be added there too, or this fails."""
    box = Box._trusted(1, 2, 3, 4)
    assert box == Box(1, 2, 3, 4) and hash(box) == hash(Box(1, 2, 3, 4))
    fast = ParentMatch._trusted("p", 0.5, box, "detection", 0.25, 7, 3, "cat")
    slow = ParentMatch("p", 0.5, Box(1, 2, 3, 4), "detection", 0.25, 7, 3, "cat")
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert fast.inliers is None and fast.to_dict() == slow.to_dict()


def test_a_match_is_attached_to_a_loader_in_place_once_and_copied_after() -> None:
    def one(parent_id: str) -> Any:
        return f"one:{parent_id}"

    def two(parent_id: str) -> Any:
        return f"two:{parent_id}"

    match = ParentMatch("p", 0.5, Box(0, 0, 1, 1), "tile", 0.5, 1)
    assert match._attached(one) is match and match.image() == "one:p"
    moved = match._attached(two)
    assert moved is not match and moved == match
    assert moved.image() == "two:p" and match.image() == "one:p"  # the first stays attached where it was


@given(st.lists(st.one_of(st.none(), st.sampled_from(["cat", "dog", "kite"])), max_size=12))
def test_label_names_are_each_chunks_label(labels: list[str | None]) -> None:
    from crossscale.types import Chunk, ChunkDetails

    details = ChunkDetails.of([Chunk(Box(0, 0, 2, 2), None, "detection", label) for label in labels])
    assert details.label_names() == [details.label(i) for i in range(len(details))] == labels
    back = ChunkDetails.from_bytes(details.to_bytes())
    assert back.label_names() == labels
