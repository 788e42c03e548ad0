"""Geometric verification: local features matched between the query and each top parent, fitted with RANSAC.

The standard re-ranking of instance retrieval (SIFT + RANSAC; DELG's re-ranking). A match that enough inliers
agree on is *verified*: its box becomes the outline of the query projected into the parent, and its score rises
above every unverified one. Anything short of that (no texture, no consistent geometry, a flipped or collapsed
projection, a text query) leaves the match as the embedding ranked it: verification only ever adds.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from crossscale._checks import int_at_least, number_in, positive_int
from crossscale.errors import ConfigurationError, MissingDependencyError
from crossscale.protocols import FeatureLoader
from crossscale.types import Box, ParentMatch, Query

logger = logging.getLogger(__name__)

__all__ = ["VERIFIED_BONUS", "GeometricVerifier", "LocalFeatures", "root_sift"]

#: added to the score of a verified match: verified matches rank above all others (cosine scores are <= 1), and a
#: ``min_score`` of 1.0 keeps verified matches only.
VERIFIED_BONUS = 1.0
_MAGIC = b"CSLF\x01"
_HEADER = struct.Struct("<5sIIII")  # magic, keypoint count, descriptor length, image width and height


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - a core dependency (and ultralytics')
        raise MissingDependencyError("geometric verification needs OpenCV: pip install opencv-python") from exc
    return cv2


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """SIFT descriptors as RootSIFT (Arandjelovic & Zisserman, 2012: L1-normalised, square-rooted, so that L2
    distances compare them as the Hellinger kernel does), scaled to 0-255 and rounded to uint8. All-zero rows stay
    zero."""
    rows = np.asarray(descriptors, dtype=np.float32)
    rows = rows / np.maximum(rows.sum(axis=1, keepdims=True), 1e-12)
    scaled: np.ndarray = np.clip(np.round(255.0 * np.sqrt(np.maximum(rows, 0.0))), 0, 255).astype(np.uint8)
    return scaled


@dataclasses.dataclass(frozen=True, eq=False)
class LocalFeatures:
    """Keypoints of one image: ``points`` (n, 2) float32 in the image's pixels, ``descriptors`` (n, d) uint8, and
    the image's ``size`` (width, height)."""

    points: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.points)

    def to_bytes(self) -> bytes:
        """The stored form: a small header, the points, then the descriptors."""
        n, d = self.descriptors.shape if len(self) else (0, 0)
        return (
            _HEADER.pack(_MAGIC, n, d, *self.size)
            + np.ascontiguousarray(self.points, dtype="<f4").tobytes()
            + np.ascontiguousarray(self.descriptors, dtype=np.uint8).tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LocalFeatures:
        """Read :meth:`to_bytes`' output.

        Raises:
            ValueError: not local features, or truncated.
        """
        if len(data) < _HEADER.size:
            raise ValueError("local features: truncated header")
        magic, n, d, width, height = _HEADER.unpack_from(data)
        if magic != _MAGIC or len(data) != _HEADER.size + n * 8 + n * d:
            raise ValueError(f"local features: bad magic or size ({len(data)} bytes for {n} keypoints of {d})")
        points = np.frombuffer(data, dtype="<f4", count=2 * n, offset=_HEADER.size).reshape(n, 2)
        descriptors = np.frombuffer(data, dtype=np.uint8, count=n * d, offset=_HEADER.size + 8 * n).reshape(n, d)
        return cls(points.astype(np.float32), descriptors, (width, height))


class GeometricVerifier:
    """SIFT keypoints matched with Lowe's ratio test, a homography fitted by MAGSAC++ (OpenCV), checked for sense.

    Index time (:meth:`extract`): each parent's keypoints, on its grey image shrunk to ``max_side`` at most,
    kept in the parent's own pixels; stored with the parent. Query time (:meth:`verify`): the query's keypoints
    (shrunk to ``query_max_side``) against those of each of the ``top_n`` best matches. A match is verified when
    at least ``min_inliers`` correspondences fit one homography whose projection of the query is a convex,
    unflipped quadrilateral of sensible size that overlaps the parent.

    Args:
        max_keypoints: keypoints kept per parent (the strongest); each costs 136 bytes stored (~340 KB per parent
            on the quality benchmark's photos at the defaults).
        max_side: parents are shrunk to this long side before extraction. The defaults (4,000 at 1,600 px; they
            were 2,000 at 1,024) found 1-2 more small objects per seed on the quality benchmark, and lost none
            (docs/benchmarks.md); a workspace records the settings it was built with.
        query_max_side: queries are shrunk to this long side.
        top_n: how many of the best matches are checked per query.
        min_inliers: correspondences a verified match needs. Unrelated pairs reached 10-14 by chance in the
            measurements of issue #11; 15 (it was 20) verified 1.5-1.7x as many small-object queries on the quality
            benchmark with no absent query verified (docs/benchmarks.md).
        ratio: Lowe's ratio test threshold.
        reprojection_error: the RANSAC inlier threshold, in parent pixels.
    """

    def __init__(
        self,
        *,
        max_keypoints: int = 4000,
        max_side: int = 1600,
        query_max_side: int = 512,
        top_n: int = 10,
        min_inliers: int = 15,
        ratio: float = 0.8,
        reprojection_error: float = 8.0,
    ) -> None:
        self.max_keypoints = positive_int("max_keypoints", max_keypoints)
        self.max_side = int_at_least("max_side", max_side, 64)
        self.query_max_side = int_at_least("query_max_side", query_max_side, 32)
        self.top_n = positive_int("top_n", top_n)
        self.min_inliers = int_at_least("min_inliers", min_inliers, 4)
        self.ratio = number_in("ratio", ratio, 0.0, 1.0, low_open=True)
        self.reprojection_error = number_in("reprojection_error", reprojection_error, 0.0, 100.0, low_open=True)
        self._sift: Any = None
        self._last_query: tuple[Query, LocalFeatures] | None = None

    @property
    def name(self) -> str:
        """Identity recorded in a workspace: the stored keypoints depend on these settings."""
        return f"sift(keypoints={self.max_keypoints},side={self.max_side})"

    @property
    def settings(self) -> dict[str, int]:
        """The arguments the stored keypoints depend on; a workspace records them, so that reopening it rebuilds this
        verifier even if the defaults change."""
        return {"max_keypoints": self.max_keypoints, "max_side": self.max_side}

    def __repr__(self) -> str:
        return (
            f"GeometricVerifier(max_keypoints={self.max_keypoints}, max_side={self.max_side}, "
            f"query_max_side={self.query_max_side}, top_n={self.top_n}, min_inliers={self.min_inliers}, "
            f"ratio={self.ratio}, reprojection_error={self.reprojection_error})"
        )

    def _detector(self) -> Any:
        if self._sift is None:
            self._sift = _cv2().SIFT_create(nfeatures=self.max_keypoints)
        return self._sift

    def features(self, image: Image.Image, max_side: int) -> LocalFeatures:
        """SIFT keypoints of ``image`` shrunk to ``max_side``, in ``image``'s own pixels."""
        cv2 = _cv2()
        grey = np.asarray(image.convert("L"))
        scale = min(1.0, max_side / max(image.size))
        if scale < 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        keypoints, descriptors = self._detector().detectAndCompute(grey, None)
        if descriptors is None or not keypoints:
            return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), image.size)
        points = np.array([k.pt for k in keypoints], dtype=np.float32) / scale
        finite = np.isfinite(points).all(axis=1) & np.isfinite(descriptors).all(axis=1)
        descriptors = np.clip(np.round(descriptors[finite]), 0, 255).astype(np.uint8)  # SIFT's values are 0-255
        return LocalFeatures(points[finite], descriptors, image.size)

    def extract(self, image: Image.Image) -> bytes:
        """A parent's keypoints, serialised for the store (:class:`LocalFeatures`)."""
        return self.features(image, self.max_side).to_bytes()

    def query_features(self, query: Query) -> LocalFeatures:
        """The query's keypoints (shrunk to ``query_max_side``); none for a text query. The last query's are kept
        (for that :class:`Query` object, which a search makes afresh), so that finding candidates and verifying them
        extract them once."""
        if query.image is None:
            return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), (0, 0))
        last = self._last_query
        if last is not None and last[0] is query:
            return last[1]
        mine = self.features(query.image, self.query_max_side)
        self._last_query = (query, mine)
        return mine

    def descriptors(self, features: bytes) -> np.ndarray:
        """A parent's stored features (:meth:`extract`'s bytes) as RootSIFT descriptors scaled to 0-255, uint8:
        what a :class:`~crossscale.index.KeypointIndex` holds.

        Raises:
            ValueError: ``features`` is not :meth:`extract`'s output.
        """
        return root_sift(LocalFeatures.from_bytes(features).descriptors)

    def query_descriptors(self, query: Query) -> np.ndarray:
        """The query's descriptors, as :meth:`descriptors` gives a parent's."""
        return root_sift(self.query_features(query).descriptors)

    def verify(self, query: Query, matches: Sequence[ParentMatch], features: FeatureLoader) -> list[ParentMatch]:
        """``matches`` with each of the first ``top_n`` verified where the geometry agrees, re-sorted.

        A verified match gets the projected query outline as its box, ``inliers`` set, and ``VERIFIED_BONUS`` plus
        its inlier share (so verified matches order by how much of the query they explain) as its score.
        Queries with no image (text) and parents with no stored keypoints are left as they are.
        """
        if query.image is None or not matches:
            return list(matches)
        mine = self.query_features(query)
        if len(mine) < 4:
            logger.debug("query has %d keypoints: too few to verify anything", len(mine))
            return list(matches)
        checked = [self._verify_one(mine, query.image.size, m, features) for m in matches[: self.top_n]]
        out = checked + list(matches[self.top_n :])
        return sorted(out, key=lambda m: (-m.score, m.parent_id))

    def _verify_one(
        self, mine: LocalFeatures, size: tuple[int, int], match: ParentMatch, features: FeatureLoader
    ) -> ParentMatch:
        raw = features(match.parent_id)
        if raw is None:
            return match
        try:
            theirs = LocalFeatures.from_bytes(raw)
        except ValueError as exc:
            logger.warning("parent %r: unreadable local features (%s); not verified", match.parent_id, exc)
            return match
        fit = self._fit(mine, theirs)
        if fit is None:
            return match
        homography, inliers = fit
        box = self._outline(homography, size, theirs.size)
        if box is None:
            return match
        share = min(1.0, inliers / max(1, len(mine)))
        return dataclasses.replace(match, score=VERIFIED_BONUS + share, box=box, inliers=inliers)

    def _fit(self, mine: LocalFeatures, theirs: LocalFeatures) -> tuple[np.ndarray, int] | None:
        """The homography from query to parent and its inlier count, or None below ``min_inliers``."""
        cv2 = _cv2()
        if len(theirs) < 4 or theirs.descriptors.shape[1] != mine.descriptors.shape[1]:
            return None
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(
            mine.descriptors.astype(np.float32), theirs.descriptors.astype(np.float32), k=2
        )
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        if len(good) < self.min_inliers:
            return None
        src = mine.points[[m.queryIdx for m in good]].reshape(-1, 1, 2)
        dst = theirs.points[[m.trainIdx for m in good]].reshape(-1, 1, 2)
        try:
            homography, mask = cv2.findHomography(
                src, dst, cv2.USAC_MAGSAC, self.reprojection_error, maxIters=2000, confidence=0.999
            )
        except cv2.error as exc:  # degenerate point sets
            logger.debug("homography fit failed: %s", exc)
            return None
        if homography is None or mask is None or not np.isfinite(homography).all():
            return None
        inliers = int(mask.sum())
        return (homography, inliers) if inliers >= self.min_inliers else None

    @staticmethod
    def _outline(homography: np.ndarray, size: tuple[int, int], parent: tuple[int, int]) -> Box | None:
        """Where the query lies in the parent, from its projected outline, or None if the projection makes no sense."""
        cv2 = _cv2()
        w, h = size
        corners = np.array([[[0, 0], [w, 0], [w, h], [0, h]]], dtype=np.float32)
        quad = cv2.perspectiveTransform(corners, homography)[0].astype(np.float64)
        if not np.isfinite(quad).all():
            return None
        edges = np.roll(quad, -1, axis=0) - quad
        turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
        if not (turns > 0).all():  # not convex, or mirrored (image y points down: clockwise corners turn > 0)
            return None
        area = 0.5 * abs(
            float(np.dot(quad[:, 0], np.roll(quad[:, 1], -1)) - np.dot(quad[:, 1], np.roll(quad[:, 0], -1)))
        )
        parent_w, parent_h = parent
        if area < 64 or area > 4.0 * parent_w * parent_h:  # collapsed, or blown up far past the parent
            return None
        # the box through the midpoints of the quadrilateral's sides: the outline itself for an upright query, and
        # for a rotated one the object rather than the corners its frame adds (a 15-degree turn: 0.97 of the side)
        middles = (quad + np.roll(quad, -1, axis=0)) / 2
        x0, y0 = middles.min(axis=0)
        x1, y1 = middles.max(axis=0)
        try:
            box = Box.from_floats(x0, y0, x1, y1, width=parent_w, height=parent_h)
        except ConfigurationError:  # entirely outside the parent
            return None
        return box if box.area >= 16 else None
