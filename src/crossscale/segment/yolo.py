"""Object detection chunks from an ultralytics YOLO model.

ultralytics is imported lazily, here only: importing it patches
``PIL.Image.open`` and ``OMP_NUM_THREADS`` process-wide and turns OpenCV's threads
off (``cv2.setNumThreads(0)``: SIFT extraction at 1,280 px then took 1.5x as long on
2 cores), and its first predict drops torch to one thread. This module undoes all four.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from crossscale._checks import int_at_least, number_in, positive_int
from crossscale._device import preserved_torch_threads, resolve_torch_device
from crossscale.errors import ConfigurationError, MissingDependencyError, ModelLoadError
from crossscale.types import Box, Chunk

logger = logging.getLogger(__name__)

__all__ = ["YoloSegmenter"]

_OFFLINE_VARS = ("YOLO_OFFLINE", "HF_HUB_OFFLINE")


def _import_yolo() -> Any:
    """Import ``ultralytics.YOLO`` while keeping the process-wide state it changes."""
    import cv2  # ultralytics' own dependency

    pil_open = Image.open
    cv2_threads = cv2.getNumThreads()
    try:
        with preserved_torch_threads():
            from ultralytics import YOLO  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - ultralytics is a core dependency
        raise MissingDependencyError("YoloSegmenter needs ultralytics: pip install ultralytics") from exc
    finally:
        Image.open = pil_open  # type: ignore[method-assign]
        cv2.setNumThreads(cv2_threads)
    return YOLO


def _is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


class YoloSegmenter:
    """Chunks from the boxes an ultralytics YOLO detector finds.

    Args:
        model: an ultralytics model name (``"yolo11n.pt"``, ``"yolo11n.yaml"``) or a local path.
        confidence_threshold: detections below this confidence are dropped.
        classes: keep only these classes (names or ids); ``None`` keeps all.
        padding: grow each box by this fraction of its size on every side (context helps matching).
        min_size: drop boxes whose width or height (after padding) is under this many pixels.
        max_detections: at most this many detections per image.
        imgsz: inference size passed to ultralytics.
        batch_size: images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Raises:
        ModelLoadError: the model cannot be loaded (with no network, pass a local path).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = "yolo11n.pt",
        *,
        confidence_threshold: float = 0.3,
        classes: Sequence[str | int] | None = None,
        padding: float = 0.1,
        min_size: int = 16,
        max_detections: int = 50,
        imgsz: int = 640,
        batch_size: int = 8,
        device: str = "auto",
    ) -> None:
        self.confidence_threshold = number_in("confidence_threshold", confidence_threshold, 0.0, 1.0)
        self.padding = number_in("padding", padding, 0.0, 10.0)
        self.min_size = positive_int("min_size", min_size)
        self.max_detections = positive_int("max_detections", max_detections)
        self.imgsz = int_at_least("imgsz", imgsz, 32)
        self.batch_size = positive_int("batch_size", batch_size)
        self.model_ref = os.fspath(model)
        self.device = resolve_torch_device(device)
        self._model = self._load(self.model_ref)
        self.names: dict[int, str] = {int(k): str(v) for k, v in dict(self._model.names).items()}
        self.class_ids = self._resolve_classes(classes)

    def _load(self, ref: str) -> Any:
        is_file = Path(ref).is_file()
        if not is_file and not ref.endswith((".yaml", ".yml")) and _is_offline():
            raise ModelLoadError(
                f"YOLO weights {ref!r} are not a local file and downloads are off (offline mode); "
                "pass a local path, e.g. YoloSegmenter('/models/yolo11n.pt')"
            )
        yolo_cls = _import_yolo()
        try:
            with preserved_torch_threads():
                return yolo_cls(ref)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load YOLO model {ref!r}: {exc}. With no network, pass a local path to the weights"
            ) from exc

    def _resolve_classes(self, classes: Sequence[str | int] | None) -> frozenset[int] | None:
        if classes is None:
            return None
        by_name = {v: k for k, v in self.names.items()}
        ids: set[int] = set()
        for c in classes:
            if isinstance(c, int) and c in self.names:
                ids.add(c)
            elif isinstance(c, str) and c in by_name:
                ids.add(by_name[c])
            else:
                raise ConfigurationError(f"unknown class {c!r} for this YOLO model")
        return frozenset(ids)

    @property
    def name(self) -> str:
        return f"yolo({Path(self.model_ref).name};conf={self.confidence_threshold:g};pad={self.padding:g})"

    def segment(self, images: Sequence[Image.Image]) -> list[list[Chunk]]:
        """Detect objects in each image and return their (padded) crops."""
        out: list[list[Chunk]] = []
        for start in range(0, len(images), self.batch_size):
            batch = [im if im.mode == "RGB" else im.convert("RGB") for im in images[start : start + self.batch_size]]
            with preserved_torch_threads():
                results = self._model.predict(
                    batch,
                    conf=self.confidence_threshold,
                    imgsz=self.imgsz,
                    device=str(self.device),
                    half=self.device.type == "cuda",
                    max_det=self.max_detections,
                    verbose=False,
                )
            for im, result in zip(batch, results, strict=True):
                out.append(self._chunks(im, result))
        return out

    def _chunks(self, im: Image.Image, result: Any) -> list[Chunk]:
        boxes = result.boxes
        xyxy = boxes.xyxy.detach().float().cpu().numpy()
        conf = boxes.conf.detach().float().cpu().numpy()
        cls = boxes.cls.detach().cpu().numpy().astype(int)
        chunks: list[Chunk] = []
        for (x0, y0, x1, y1), c, k in zip(xyxy, conf, cls, strict=True):
            if self.class_ids is not None and int(k) not in self.class_ids:
                continue
            try:
                box = Box.from_floats(float(x0), float(y0), float(x1), float(y1), width=im.width, height=im.height)
                box = box.pad(self.padding, width=im.width, height=im.height)
            except ConfigurationError:
                continue  # degenerate box outside the image
            if box.width < self.min_size or box.height < self.min_size:
                continue
            chunks.append(
                Chunk(
                    box=box,
                    image=im.crop(box.as_tuple()),
                    kind="detection",
                    label=self.names.get(int(k), str(int(k))),
                    confidence=float(c),
                )
            )
        return chunks

    def __repr__(self) -> str:
        return f"YoloSegmenter(model={self.model_ref!r}, device={str(self.device)!r})"
