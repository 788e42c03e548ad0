"""Test configuration: offline, isolated, fail-fast on any network access."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Before anything imports transformers, huggingface_hub or ultralytics.
_YOLO_DIR = tempfile.mkdtemp(prefix="crossscale-yolo-cfg-")
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": _YOLO_DIR,
        "TQDM_DISABLE": "1",
    }
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from tests import photos as photo_data  # noqa: E402


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach the network."""


_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family == socket.AF_UNIX:
        return _real_connect(self, address)  # type: ignore[arg-type]
    raise NetworkAccessError(f"test tried to reach the network: {address!r}")


@pytest.fixture(autouse=True, scope="session")
def _no_network() -> Iterator[None]:
    """Any socket connection other than AF_UNIX fails at once instead of hanging."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect = _real_connect  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photographs: ../shared/photos when present, else scikit-image's."""
    return photo_data.load_photos()


@pytest.fixture(scope="session")
def lite0():  # type: ignore[no-untyped-def]
    """The real pretrained EfficientNet-Lite0 encoder (CPU), built once."""
    from crossscale.encode import create_encoder

    return create_encoder("efficientnet-lite0", device="cpu", batch_size=32)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP checkpoint saved with save_pretrained (no download)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 64,
        "max_position_embeddings": 16,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    path = tmp_path_factory.mktemp("tiny-clip")
    import torch

    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
