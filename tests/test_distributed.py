"""Ray ingest on a 2-node local cluster gives the workspace ``index()`` gives (issue #13, item 1).

Each test starts the cluster in a subprocess inside a private network namespace (``unshare -n``, loopback up), so
that Ray binds no interface reachable from outside; where that is not possible the tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from crossscale import ConfigurationError, CrossScaleSearch, MissingDependencyError
from tests.reliability.conftest import make_images

ROOT = Path(__file__).resolve().parents[1]


def _namespace_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2) to run Ray in a private network namespace"
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a private network namespace here: {probe.stderr.strip()}"
    return None


def _kw() -> dict[str, object]:
    return {
        "encoder": "color-histogram",
        "segmenter": "whole+tiles",
        "segmenter_kwargs": {"tiles": {"scales": [0.5]}},
        "verifier": "sift",
        "verifier_kwargs": {"max_keypoints": 200},
        "batch_size": 4,
        "progress": False,
        "device": "cpu",
    }


def run_on_ray(workspace: Path, images: Path, tmp: Path, *extra: str) -> dict[str, object]:
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    pytest.importorskip("ray", reason="the ray extra is not installed")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_AUTH_MODE": "disabled",  # no token file in $HOME
        "RAY_TMPDIR": ray_tmp,
        "HOME": str(tmp / "home"),  # anything Ray writes in $HOME stays in the test's folder
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    (tmp / "home").mkdir(exist_ok=True)
    command = f"ip link set lo up && exec {sys.executable} -m tests.ray_worker {workspace} {images} {' '.join(extra)}"
    try:
        done = subprocess.run(
            ["unshare", "-n", "sh", "-c", command], capture_output=True, text=True, env=env, cwd=ROOT, timeout=400
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def assert_same_workspace(ray_ws: Path, plain_ws: Path) -> None:
    """The same parents, each with the same chunks, vectors (float tolerance) and local features."""
    with (
        CrossScaleSearch.open(ray_ws, readonly=True, progress=False) as got,
        CrossScaleSearch.open(plain_ws, readonly=True, progress=False) as want,
    ):
        assert got.verify().ok, got.verify().problems
        assert sorted(got.parent_ids()) == sorted(want.parent_ids())
        for pid in want.parent_ids():
            a, b = got.record(pid), want.record(pid)
            assert (a.width, a.height, a.format, a.metadata) == (b.width, b.height, b.format, b.metadata)
            ra, rb = got.workspace.records(a.chunk_ids), want.workspace.records(b.chunk_ids)
            assert [(r.box, r.kind) for r in ra.values()] == [(r.box, r.kind) for r in rb.values()]
            _, va = got.store.vectors(a.chunk_ids)
            _, vb = want.store.vectors(b.chunk_ids)
            np.testing.assert_allclose(va, vb, atol=1e-3)
            assert got.workspace.local_features(pid) == want.workspace.local_features(pid)
            assert got.store.image_bytes(pid) == want.store.image_bytes(pid)


@pytest.fixture(scope="module")
def fifty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """50 images, and the workspace plain ``index()`` makes of them."""
    root = tmp_path_factory.mktemp("fifty")
    make_images(root / "images", 50)
    with CrossScaleSearch.open(root / "plain", **_kw()) as cs:  # type: ignore[arg-type]
        assert len(cs.index(root / "images").added) == 50
    return root / "images", root / "plain"


@pytest.mark.timeout(420)
def test_two_nodes_give_the_workspace_index_gives(fifty: tuple[Path, Path], tmp_path: Path) -> None:
    images, plain = fifty
    out = run_on_ray(tmp_path / "ws", images, tmp_path)
    report = out["report"]
    assert isinstance(report, dict) and len(report["added"]) == 50 and not report["failed"]
    assert_same_workspace(tmp_path / "ws", plain)
    # local search (on by default) kept its keypoint index after Ray's ingest, as after index()
    assert (tmp_path / "ws" / "keypoints.index").exists() and (plain / "keypoints.index").exists()
    # a rerun adds nothing: every parent is present (given as bytes this time: the same content-hash ids)
    again = run_on_ray(tmp_path / "ws", images, tmp_path, "--as-bytes")
    assert isinstance(again["report"], dict) and len(again["report"]["present"]) == 50
    assert not again["report"]["added"]


@pytest.mark.timeout(420)
def test_a_killed_encoder_is_restarted_and_nothing_is_lost_from_a_dataset_of_paths(
    fifty: tuple[Path, Path], tmp_path: Path
) -> None:
    images, plain = fifty
    out = run_on_ray(tmp_path / "ws", images, tmp_path, "--kill-encoder-after", "0.05", "--dataset")
    assert out["killed"], "the encode actor was not killed: the run ended first"
    report = out["report"]
    assert isinstance(report, dict) and len(report["added"]) == 50 and not report["failed"]
    assert_same_workspace(tmp_path / "ws", plain)


def test_components_passed_as_objects_or_no_ray_init_are_refused_before_ray_starts(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    import ray

    from crossscale.distributed import index_with_ray
    from crossscale.encode import ColorHistogramEncoder

    assert not ray.is_initialized()
    objects = {"encoder": ColorHistogramEncoder(), "segmenter": "whole", "verifier": False, "progress": False}
    with (
        CrossScaleSearch.open(tmp_path / "objects", **objects) as cs,  # type: ignore[arg-type]
        pytest.raises(ConfigurationError, match="passed as an object"),
    ):
        index_with_ray(cs, tmp_path)
    named = {"encoder": "color-histogram", "segmenter": "whole", "progress": False}
    with (
        CrossScaleSearch.open(tmp_path / "named", **named) as cs,  # type: ignore[arg-type]
        pytest.raises(ConfigurationError, match=r"ray\.init"),
    ):
        index_with_ray(cs, tmp_path)
    assert not ray.is_initialized()  # nothing started Ray


def test_without_ray_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args: object, **kwargs: object) -> object:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from crossscale.distributed import index_with_ray

    with (
        CrossScaleSearch.open(tmp_path / "ws", encoder="color-histogram", segmenter="whole", progress=False) as cs,
        pytest.raises(MissingDependencyError, match=r'pip install "crossscale\[ray\]"'),
    ):
        index_with_ray(cs, tmp_path)


def test_actor_pools_that_would_take_every_cpu_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Data stalls without a word when its actors reserve every CPU: refused before anything runs."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from crossscale.distributed import index_with_ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with CrossScaleSearch.open(tmp_path / "ws", encoder="color-histogram", segmenter="whole", progress=False) as cs:
        for kw in ({"prepare_actors": 2, "encode_actors": 2}, {"encode_num_cpus": 1.5}):
            with pytest.raises(ConfigurationError, match=r"reserve \d(\.\d+)? of the cluster's 2 CPUs"):
                index_with_ray(cs, tmp_path, **kw)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="encode_num_gpus must be a number >= 0"):
            index_with_ray(cs, tmp_path, encode_num_gpus=-1)


def test_inputs_become_rows_of_paths_or_bytes_and_decoded_images_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    from crossscale.distributed import _input_rows

    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    rows = _input_rows([path, ("b", path.read_bytes()), Image.new("RGB", (4, 4))], None, {"batch": 1})
    assert rows[0]["path"] == str(path) and json.loads(rows[0]["metadata"]) == {"batch": 1, "source": str(path)}
    assert rows[1]["bytes"] == path.read_bytes() and rows[1]["parent_id"] == "b" and not rows[1]["error"]
    assert "not decoded images" in rows[2]["error"]
