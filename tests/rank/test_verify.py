"""Geometric verification (SIFT + MAGSAC): exact boxes where the geometry agrees, the match untouched otherwise."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from crossscale.errors import ConfigurationError
from crossscale.rank import VERIFIED_BONUS, GeometricVerifier, LocalFeatures, Verifier, create_verifier
from crossscale.rank.verify import root_sift
from crossscale.types import Box, ParentMatch, Query


def _match(pid: str, box: Box | None = None, score: float = 0.5) -> ParentMatch:
    return ParentMatch(pid, score, box or Box(0, 0, 10, 10), "tile", score, 0)


@pytest.fixture(scope="module")
def verifier() -> GeometricVerifier:
    return GeometricVerifier()


@pytest.fixture(scope="module")
def scene(photos: dict[str, Image.Image]) -> tuple[Image.Image, Box]:
    """A 1200x900 scene with the astronaut photo pasted at a known box."""
    background = photos["coffee"].resize((1200, 900))
    background.paste(photos["astronaut"].resize((400, 400)), (650, 300))
    return background, Box(650, 300, 1050, 700)


def _features(verifier: GeometricVerifier, **parents: Image.Image) -> dict[str, bytes]:
    return {pid: verifier.extract(image) for pid, image in parents.items()}


def test_a_rescaled_crop_is_verified_with_its_exact_box(verifier: GeometricVerifier, scene) -> None:  # type: ignore[no-untyped-def]
    image, _ = scene
    region = Box(700, 350, 950, 600)  # a part of the pasted photo
    query = image.crop(region.as_tuple()).resize((150, 150))
    stored = _features(verifier, scene=image, other=Image.open(_noise_png()).convert("RGB"))
    matches = [_match("other", score=0.9), _match("scene", Box(600, 300, 1100, 800), 0.8)]
    out = verifier.verify(Query(np.zeros(4, np.float32), query), matches, stored.get)
    assert [m.parent_id for m in out] == ["scene", "other"]  # verified first, whatever the embedding said
    best = out[0]
    assert best.inliers is not None and best.inliers >= verifier.min_inliers
    assert VERIFIED_BONUS < best.score <= VERIFIED_BONUS + 1 and best.chunk_score == 0.8
    assert best.box.iou(region) > 0.9, best.box
    assert out[1].inliers is None and out[1].score == 0.9  # the unrelated parent is left as it was


def test_a_rotated_photometrically_changed_query_is_verified(verifier: GeometricVerifier, scene) -> None:  # type: ignore[no-untyped-def]
    from PIL import ImageEnhance

    image, truth = scene
    query = image.crop(truth.as_tuple()).rotate(12, expand=True, fillcolor=(128, 128, 128)).resize((260, 260))
    query = ImageEnhance.Brightness(query).enhance(1.25)
    [out] = verifier.verify(
        Query(np.zeros(4, np.float32), query), [_match("scene")], _features(verifier, scene=image).get
    )
    assert out.inliers is not None and out.box.iou(truth) > 0.7, out.box


def test_photos_of_other_things_are_not_verified(verifier: GeometricVerifier, photos: dict[str, Image.Image]) -> None:
    """At the default threshold, crops of one photo never verify against another: every pair of the skimage
    photos, crops at three sizes (chance matches between unrelated images reach 10-14 inliers)."""
    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
    stored = _features(verifier, **{n: photos[n] for n in names})
    own_verified = 0
    for name in names:
        image = photos[name]
        w, h = image.size
        for side in (0.25, 0.4, 0.6):
            box = (int(w * 0.2), int(h * 0.2), int(w * (0.2 + side)), int(h * (0.2 + side)))
            query = Query(np.zeros(4, np.float32), image.crop(box))
            others = [_match(n) for n in names if n != name]
            out = verifier.verify(query, others, stored.get)
            assert all(m.inliers is None for m in out), [(m.parent_id, m.inliers) for m in out]
            [own] = verifier.verify(query, [_match(name)], stored.get)
            own_verified += own.inliers is not None
    assert own_verified >= 2 * len(names)  # while most crops do verify against their own photo


@pytest.mark.parametrize(
    "query",
    [
        Image.new("RGB", (200, 200), (90, 90, 90)),  # no texture, no keypoints
        Image.new("RGB", (8, 8), (10, 200, 10)),  # far too small
    ],
)
def test_queries_with_nothing_to_match_leave_the_matches_alone(verifier: GeometricVerifier, scene, query) -> None:  # type: ignore[no-untyped-def]
    matches = [_match("scene")]
    assert (
        verifier.verify(Query(np.zeros(4, np.float32), query), matches, _features(verifier, scene=scene[0]).get)
        == matches
    )


def test_text_queries_and_parents_without_features_are_left_alone(verifier: GeometricVerifier, scene, caplog) -> None:  # type: ignore[no-untyped-def]
    image, truth = scene
    query = image.crop(truth.as_tuple())
    matches = [_match("a"), _match("b"), _match("flat")]
    stored = {"b": b"not local features", "flat": verifier.extract(Image.new("RGB", (300, 300), (5, 5, 5)))}
    with caplog.at_level(logging.WARNING, logger="crossscale"):
        out = verifier.verify(Query(np.zeros(4, np.float32), query), matches, stored.get)
    assert [m.inliers for m in out] == [None, None, None] and "unreadable local features" in caplog.text
    assert verifier.verify(Query(np.zeros(4, np.float32), None, "a cat"), matches, stored.get) == matches


def test_only_the_top_n_are_checked(scene) -> None:  # type: ignore[no-untyped-def]
    image, truth = scene
    verifier = GeometricVerifier(top_n=1)
    asked: list[str] = []

    def features(pid: str) -> bytes | None:
        asked.append(pid)
        return None

    verifier.verify(Query(np.zeros(4, np.float32), image.crop(truth.as_tuple())), [_match("x"), _match("y")], features)
    assert asked == ["x"]


@pytest.mark.parametrize(
    ("homography", "why"),
    [
        (np.diag([-1.0, 1.0, 1.0]) @ np.array([[1, 0, -300], [0, 1, 0], [0, 0, 1.0]]), "mirrored"),
        (np.array([[1.0, 0, 100], [1.0, 0, 100], [0, 0, 1]]), "collapsed to a line"),
        (np.array([[0.001, 0, 10], [0, 0.001, 10], [0, 0, 1]]), "collapsed to a point"),
        (np.array([[1.0, 0, 5000], [0, 1, 5000], [0, 0, 1]]), "outside the parent"),
        (np.array([[50.0, 0, 0], [0, 50, 0], [0, 0, 1]]), "far larger than the parent"),
        (np.array([[1.0, 0, 0], [0, 1, 0], [0.01, 0.01, -1]]), "through the horizon"),
        (np.full((3, 3), np.nan), "not finite"),
    ],
)
def test_projections_that_make_no_sense_give_no_box(homography: np.ndarray, why: str) -> None:
    assert GeometricVerifier._outline(homography, (100, 100), (1000, 800)) is None, why


def test_a_sensible_projection_gives_a_box_inside_the_parent() -> None:
    shift = np.array([[2.0, 0, 900], [0, 2, 700], [0, 0, 1]])  # the query doubled, partly past the corner
    box = GeometricVerifier._outline(shift, (100, 100), (1000, 800))
    assert box == Box(900, 700, 1000, 800)


def test_local_features_round_trip_and_refuse_garbage() -> None:
    rng = np.random.default_rng(0)
    lf = LocalFeatures(rng.random((5, 2), np.float32) * 100, rng.integers(0, 255, (5, 128), np.uint8), (640, 480))
    back = LocalFeatures.from_bytes(lf.to_bytes())
    assert np.array_equal(back.points, lf.points) and np.array_equal(back.descriptors, lf.descriptors)
    assert back.size == (640, 480) and len(back) == 5
    for bad in (b"", b"CSLF\x01" + b"\x00" * 3, lf.to_bytes()[:-1], b"XXXXX" + lf.to_bytes()[5:]):
        with pytest.raises(ValueError, match="local features"):
            LocalFeatures.from_bytes(bad)


def test_extraction_keeps_points_in_the_parents_own_pixels(photos: dict[str, Image.Image]) -> None:
    big = photos["astronaut"].resize((2048, 2048))
    lf = LocalFeatures.from_bytes(GeometricVerifier(max_side=512, max_keypoints=300).extract(big))
    assert 0 < len(lf) <= 300 and lf.size == (2048, 2048)
    assert lf.points.max() > 1024  # found on the 512-pixel copy, reported in the 2048-pixel frame
    assert lf.descriptors.dtype == np.uint8 and lf.descriptors.shape[1] == 128


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"min_inliers": 2}, "min_inliers"),
        ({"ratio": 1.5}, "ratio"),
        ({"top_n": 0}, "top_n"),
        ({"max_side": 10}, "max_side"),
    ],
)
def test_bad_settings_are_named(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        GeometricVerifier(**kw)  # type: ignore[arg-type]


def test_built_by_name_and_satisfies_the_protocol() -> None:
    verifier = create_verifier("sift", max_keypoints=500)
    assert isinstance(verifier, Verifier) and verifier.name == "sift(keypoints=500,side=1600)"
    assert "top_n=10" in repr(verifier)


def _noise_png():  # type: ignore[no-untyped-def]
    import io

    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(buf, format="PNG")
    buf.seek(0)
    return buf


def test_root_sift_is_the_hellinger_embedding_scaled_to_bytes() -> None:
    rng = np.random.default_rng(0)
    sift = rng.integers(0, 256, size=(50, 128)).astype(np.uint8)
    sift[3] = 0
    rows = root_sift(sift)
    assert rows.dtype == np.uint8 and rows.shape == (50, 128) and not rows[3].any()
    unit = rows[np.arange(50) != 3].astype(np.float64) / 255
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=0.02)  # L2 unit, up to the rounding
    a, b = sift[0].astype(np.float64), sift[1].astype(np.float64)
    hellinger = np.sum(np.sqrt(a / a.sum() * b / b.sum()))
    assert float(unit[0] @ unit[1]) == pytest.approx(hellinger, abs=0.02)


def test_descriptors_read_what_extract_stored_and_the_query_is_extracted_once(
    photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = GeometricVerifier(max_keypoints=300)
    stored = verifier.extract(photos["astronaut"])
    np.testing.assert_array_equal(verifier.descriptors(stored), root_sift(LocalFeatures.from_bytes(stored).descriptors))
    with pytest.raises(ValueError, match="local features"):
        verifier.descriptors(b"nonsense")
    calls: list[int] = []
    features = verifier.features
    monkeypatch.setattr(verifier, "features", lambda im, side: calls.append(side) or features(im, side))
    query = Query(np.ones(4, np.float32), photos["astronaut"].crop((100, 100, 300, 300)))
    first = verifier.query_descriptors(query)
    assert verifier.query_descriptors(query) is not None and calls == [verifier.query_max_side]
    np.testing.assert_array_equal(verifier.query_descriptors(query), first)
    other = Query(query.vector, photos["coffee"])
    verifier.query_descriptors(other)
    assert len(calls) == 2
    verifier.query_descriptors(Query(other.vector, other.image))  # a new search's query, the same pixels: again
    assert len(calls) == 3
    assert verifier.query_descriptors(Query(query.vector, None, "text")).shape == (0, 128)
