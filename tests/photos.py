"""Real photographs for tests: ../shared/photos when present, scikit-image's otherwise."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "photos"
SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")


def load_photos(limit: int = 12) -> dict[str, Image.Image]:
    """Up to ``limit`` distinct RGB photos, keyed by name; always includes the scikit-image ones."""
    from skimage import data

    out: dict[str, Image.Image] = {}
    for name in SKIMAGE:
        out[name] = Image.fromarray(getattr(data, name)()).convert("RGB")
    if SHARED.is_dir():
        for path in sorted((SHARED / "coral").glob("*.jpg"))[: max(0, limit - len(out))]:
            with Image.open(path) as im:
                out[f"coral-{path.stem}"] = im.convert("RGB")
    return out


def paste_scene(
    background: Image.Image, obj: Image.Image, *, at: tuple[int, int], size: tuple[int, int]
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """``obj`` resized to ``size`` and pasted on a copy of ``background`` at ``at``; returns (scene, box)."""
    scene = background.copy()
    scene.paste(obj.resize(size, Image.Resampling.BICUBIC), at)
    return scene, (at[0], at[1], at[0] + size[0], at[1] + size[1])
