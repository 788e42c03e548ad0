"""YoloSegmenter on a model built offline from the yaml that ultralytics ships (random weights)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from crossscale.errors import ConfigurationError, ModelLoadError
from crossscale.segment import YoloSegmenter, create_segmenter


@pytest.fixture(scope="module")
def yolo() -> YoloSegmenter:
    return YoloSegmenter("yolo11n.yaml", device="cpu", imgsz=160, confidence_threshold=0.0, min_size=1, padding=0.0)


def test_import_and_predict_leave_process_state_alone(photos: dict[str, Image.Image]) -> None:
    open_before, threads_before = Image.open, torch.get_num_threads()
    seg = YoloSegmenter("yolo11n.yaml", device="cpu", imgsz=128)
    seg.segment([photos["coffee"]])
    assert Image.open is open_before, "ultralytics' PIL.Image.open patch leaked"
    assert torch.get_num_threads() == threads_before, "ultralytics lowered torch's thread count"


def test_importing_ultralytics_leaves_opencv_threads_alone() -> None:
    """ultralytics' import turns OpenCV's threads off (``cv2.setNumThreads(0)``), which slowed SIFT extraction 1.5x
    on 2 cores; in a fresh process, since this one may have imported it already."""
    import subprocess
    import sys

    code = (
        "import cv2; cv2.setNumThreads(2); before = cv2.getNumThreads()\n"
        "from crossscale.segment.yolo import _import_yolo; _import_yolo()\n"
        "import sys; assert 'ultralytics' in sys.modules\n"
        "print(before, cv2.getNumThreads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[-2:] == ["2", "2"], out.stdout + out.stderr  # ultralytics may print before


def test_segments_any_size_and_mode(yolo: YoloSegmenter, photos: dict[str, Image.Image]) -> None:
    images = [photos["astronaut"], photos["rocket"].convert("L"), Image.new("RGB", (37, 500))]
    out = yolo.segment(images)
    assert len(out) == 3
    for im, chunks in zip(images, out, strict=True):
        for c in chunks:
            assert c.kind == "detection" and c.label in yolo.names.values()
            assert 0 <= c.box.x0 < c.box.x1 <= im.width and 0 <= c.box.y0 < c.box.y1 <= im.height
            assert c.image.size == (c.box.width, c.box.height)
            assert c.confidence is not None and 0.0 <= c.confidence <= 1.0


def _fake_result(boxes: list[list[float]], conf: list[float], cls: list[int]) -> SimpleNamespace:
    return SimpleNamespace(
        boxes=SimpleNamespace(xyxy=torch.tensor(boxes), conf=torch.tensor(conf), cls=torch.tensor(cls))
    )


def test_detections_become_padded_filtered_chunks(yolo: YoloSegmenter) -> None:
    im = Image.new("RGB", (200, 100))
    seg = YoloSegmenter.__new__(YoloSegmenter)
    seg.__dict__.update(yolo.__dict__)
    seg.padding, seg.min_size, seg.class_ids = 0.5, 10, frozenset({0, 2})
    res = _fake_result(
        [[10, 10, 30, 30], [150, 50, 190, 90], [0, 0, 4, 4], [50, 50, 60, 60]], [0.9, 0.8, 0.7, 0.6], [0, 2, 0, 1]
    )
    chunks = seg._chunks(im, res)
    # padded by half the size on each side, then clipped to the 200x100 image
    assert [c.box.as_tuple() for c in chunks] == [(0, 0, 40, 40), (130, 30, 200, 100)]
    assert [c.label for c in chunks] == [yolo.names[0], yolo.names[2]]  # class 1 filtered, tiny box dropped
    assert chunks[0].confidence == pytest.approx(0.9)


def test_class_filter_by_name_and_unknown_class() -> None:
    names = YoloSegmenter("yolo11n.yaml", device="cpu").names
    seg = YoloSegmenter("yolo11n.yaml", device="cpu", classes=[names[5], 2])
    assert seg.class_ids == frozenset({5, 2})
    with pytest.raises(ConfigurationError, match="unknown class"):
        YoloSegmenter("yolo11n.yaml", device="cpu", classes=["unicorn"])


def test_missing_weights_fail_fast_offline(tmp_path: object) -> None:
    with pytest.raises(ModelLoadError, match="local path"):
        YoloSegmenter("yolo11n.pt", device="cpu")
    with pytest.raises(ModelLoadError):
        create_segmenter("whole+yolo+tiles", device="cpu")


@pytest.mark.parametrize("kw", [{"confidence_threshold": 1.5}, {"padding": -1}, {"batch_size": 0}])
def test_validates_arguments(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        YoloSegmenter("yolo11n.yaml", device="cpu", **kw)  # type: ignore[arg-type]


def test_same_image_same_chunks_across_batches(yolo: YoloSegmenter, photos: dict[str, Image.Image]) -> None:
    # ultralytics letterboxes a batch to one shape, so only same-size images are comparable across batches
    yolo.batch_size = 2
    together = yolo.segment([photos["chelsea"]] * 3)  # batches [a, a] and [a]
    assert [c.box for c in together[0]] == [c.box for c in together[1]] == [c.box for c in together[2]]
    assert np.isfinite([c.confidence for cs in together for c in cs if c.confidence is not None]).all()


@pytest.mark.gpu
def test_cuda_predict(photos: dict[str, Image.Image]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    seg = YoloSegmenter("yolo11n.yaml", device="cuda", imgsz=160, confidence_threshold=0.0)
    assert len(seg.segment([photos["coffee"]])) == 1
