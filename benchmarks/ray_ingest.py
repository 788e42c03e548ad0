"""Ray ingest on one node against the plain loop, same images, one run (issue #13: overhead per image).

    unshare -n sh -c 'ip link set lo up && RAY_AUTH_MODE=disabled python -m benchmarks.ray_ingest [--images 48]'

Writes JPEGs of real photos (scikit-image, ../shared when present) at 1024x768, indexes them with
``cs.index()`` (the plain loop, ``prefetch=0``), then with :func:`crossscale.distributed.index_with_ray` on a local
Ray of 2 CPUs (one prepare and one encode actor), each into a fresh workspace, and prints seconds per image for
both, their ratio, and the per-stage costs measured in the plain run that the scaling model in docs/scaling.md
uses. Configuration: the one-pass encoder ``efficientnet-lite0-regions``, ``whole+tiles`` boxes, SIFT features.
Run it inside a private network namespace: ``ray.init`` binds every interface otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def write_images(folder: Path, n: int) -> list[Path]:
    from tests.photos import load_photos

    photos = list(load_photos(limit=max(12, n)).values())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        im = photos[i % len(photos)].resize((1024, 768)).rotate(7 * (i // len(photos)), expand=False)
        path = folder / f"img{i:03d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def stage_seconds(cs: Any, files: list[Path]) -> dict[str, float]:
    """Each ingest stage alone over ``files`` (in batches of 4): read, segment + local features, encode."""
    from crossscale.ingest import Segmented, encode_batch, extract_local, iter_inputs, load_batch, segment_batch

    took = {"read": 0.0, "segment + SIFT": 0.0, "encode": 0.0}
    items = list(iter_inputs(files))
    for i in range(0, len(items), 4):
        t = time.perf_counter()
        loaded, _, _ = load_batch(items[i : i + 4], max_pixels=cs.max_pixels, is_known=lambda _: False)
        took["read"] += time.perf_counter() - t
        t = time.perf_counter()
        segmented, _ = segment_batch(cs.segmenter, loaded)
        segmented = [Segmented(s.loaded, s.chunks, extract_local(cs.verifier, s.loaded)) for s in segmented]
        took["segment + SIFT"] += time.perf_counter() - t
        t = time.perf_counter()
        encode_batch(cs.encoder, segmented)
        took["encode"] += time.perf_counter() - t
    return took


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--encode-num-cpus", type=float, default=1.0)
    parser.add_argument("--prepare-num-cpus", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import ray

    from crossscale import CrossScaleSearch
    from crossscale.distributed import index_with_ray

    kw = {
        "encoder": "efficientnet-lite0-regions",
        "segmenter": "whole+tiles",
        "verifier": "sift",
        "local_search": False,  # Ray's ingest does not build the keypoint index either: both sides the same work
        "batch_size": 4,
        "progress": False,
        "device": "cpu",
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images", args.images)
        with CrossScaleSearch.open(root / "plain", **kw) as cs:  # type: ignore[arg-type]
            start = time.perf_counter()
            plain = cs.index(root / "images", prefetch=0)
            plain_s = time.perf_counter() - start
            stages = stage_seconds(cs, sorted((root / "images").glob("*.jpg")))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            with CrossScaleSearch.open(root / "ray", **kw) as cs:  # type: ignore[arg-type]
                start = time.perf_counter()
                on_ray = index_with_ray(
                    cs,
                    root / "images",
                    prepare_num_cpus=args.prepare_num_cpus,
                    encode_num_cpus=args.encode_num_cpus,
                )
                ray_s = time.perf_counter() - start
        finally:
            ray.shutdown()
    n = args.images
    assert len(plain.added) == len(on_ray.added) == n, (plain, on_ray)
    print(f"{n} JPEGs of 1024x768, efficientnet-lite0-regions + whole+tiles + SIFT, batches of 4, 2 CPUs")
    print("| run | seconds | s per image | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| plain `cs.index()` | {plain_s:.1f} | {plain_s / n:.3f} | 1.00x |")
    print(
        f"| `index_with_ray`, 1 node (prepare {args.prepare_num_cpus} CPU, encode {args.encode_num_cpus} CPU, "
        f"actor start-up included) | {ray_s:.1f} | {ray_s / n:.3f} | {ray_s / plain_s:.2f}x |"
    )
    for stage, seconds in stages.items():
        print(f"| stage alone: {stage} | {seconds:.1f} | {seconds / n:.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
