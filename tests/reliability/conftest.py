"""Fixtures for the reliability tests: image folders and a worker process runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def make_images(folder: Path, n: int, *, seed: int = 0, size: tuple[int, int] = (160, 120)) -> list[Path]:
    """``n`` distinct PNG files; every fifth is named ``*-del*`` (the worker deletes those)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, 3)
        noise = rng.integers(-40, 40, (size[1], size[0], 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        path = folder / f"img{i:03d}{'-del' if i % 5 == 4 else ''}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


_STARTED: list[subprocess.Popen[str]] = []


def start_worker(workspace: Path, images: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "tests.reliability.worker", str(workspace), str(images), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    _STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _reap_workers() -> Iterator[None]:
    """No worker outlives its test, whatever way the test ends."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def run_worker(workspace: Path, images: Path, *extra: str, timeout: float = 120) -> str:
    proc = start_worker(workspace, images, *extra)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


@pytest.fixture
def images(tmp_path: Path) -> Path:
    make_images(tmp_path / "images", 48)
    return tmp_path / "images"
