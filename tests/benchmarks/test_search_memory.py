"""benchmarks/search_memory.py: the settings it parses, the model bytes it counts, and a run over a small workspace
(a serving process's phases, each with its memory peaks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from crossscale import CrossScaleSearch, SearchParams
from crossscale.errors import ConfigurationError

bench = pytest.importorskip("benchmarks.search_memory")


def test_settings_parse_into_search_params() -> None:
    assert bench.parse_setting("default") is None
    assert bench.parse_setting("nprobe=128,rescore=off") == SearchParams(nprobe=128, rescore=False)
    assert bench.parse_setting(" nprobe = 8 , rescore=on, rescore_per_parent=2,ef_search=64") == SearchParams(
        nprobe=8, ef_search=64, rescore=True, rescore_per_parent=2
    )
    with pytest.raises(ValueError, match="'k=3' is not nprobe="):
        bench.parse_setting("nprobe=8,k=3")
    with pytest.raises(ValueError, match="'nprobe' is not nprobe="):
        bench.parse_setting("nprobe")
    with pytest.raises(ValueError, match="rescore is on or off, not 'yes'"):
        bench.parse_setting("rescore=yes")
    with pytest.raises(ValueError, match="nprobe takes a whole number, not 'lots'"):
        bench.parse_setting("nprobe=lots")
    with pytest.raises(ConfigurationError):  # SearchParams' own check
        bench.parse_setting("nprobe=0")


def test_model_bytes_count_each_tensor_of_the_encoders_modules_once() -> None:
    class Holder:
        def __init__(self) -> None:
            self.model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
            self.same = self.model[0]  # shared: counted once
            self.other = torch.nn.Linear(2, 2, dtype=torch.float16)
            self.not_a_module = torch.zeros(1000)

    # Linear 8x4 + 4, BatchNorm: weight, bias, running mean, running var (float32) and its count (int64)
    expected = (8 * 4 + 4) * 4 + 4 * 4 * 4 + 8 + (2 * 2 + 2) * 2
    assert bench.model_bytes(Holder()) == expected
    assert bench.model_bytes(object()) == 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Image.Image]) -> Path:
    ws = tmp_path_factory.mktemp("search_memory") / "ws"
    with CrossScaleSearch.open(
        ws,
        encoder="color-histogram",
        segmenter="whole+tiles",
        index_factory="IVF4,SQ8",
        verifier=False,
        refine=False,
        progress=False,
        device="cpu",
    ) as cs:
        assert cs.index(sorted(photos.items())).ok
    return ws


def test_a_run_reports_each_phase_against_the_budget(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "memory.json"
    argv = ["--workspace", str(workspace), "--encoder", "color-histogram", "--queries", "3", "--batch", "4,2"]
    argv += ["--setting", "default", "--setting", "nprobe=1,rescore=off", "--out", str(out_file)]
    assert bench.main(argv) == 0
    out = json.loads(out_file.read_text())
    assert out["queries_are"] == "encoded images"  # the encoder made the workspace: its vectors are queries
    index_bytes = (workspace / "chunks.index").stat().st_size
    assert out["index_bytes"] == index_bytes and out["model_bytes"] == 0  # a histogram: no torch module
    assert out["budget_mb"] == pytest.approx(1.2 * index_bytes / 2**20)
    assert [row["setting"] for row in out["settings"]] == ["default", "nprobe=1,rescore=off"]
    for row in out["settings"]:
        assert row["single"]["queries"] == 3 and 0 < row["single"]["p50_ms"] <= row["single"]["p95_ms"]
        assert [b["batch"] for b in row["batches"]] == [4, 2] and all(b["qps"] > 0 for b in row["batches"])
        for peak in [row["single"]["peak"], *(b["peak"] for b in row["batches"])]:
            assert (
                peak["VmRSS"] >= peak["RssAnon"] >= out["after_imports"]["RssAnon"] > 0
            )  # a peak never below its start
    printed = capsys.readouterr().out
    assert "| default | one at a time |" in printed and "| nprobe=1,rescore=off | batch of 4 |" in printed
    assert "budget" in printed and "queries: encoded images" in printed


def test_without_a_model_stored_regions_are_the_queries(workspace: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "memory.json"
    argv = ["--workspace", str(workspace), "--encoder", "none", "--queries", "2", "--batch", "", "--out", str(out_file)]
    assert bench.main(argv) == 0
    out = json.loads(out_file.read_text())
    assert out["queries_are"] == "stored regions" and out["model_bytes"] == 0 and "torch" not in out
    assert out["unmapped_after_drawing_mb"] >= 0 and out["settings"][0]["batches"] == []


def test_an_onnx_file_is_served_without_torch_and_counted_by_its_size(workspace: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from crossscale.encode import BackboneEncoder, export_onnx

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model = export_onnx(BackboneEncoder(net, net, name="tiny", dim=4, image_size=16, device="cpu"), tmp_path / "m.onnx")
    out_file = tmp_path / "memory.json"
    argv = [
        "--workspace",
        str(workspace),
        "--encoder",
        str(model),
        "--queries",
        "2",
        "--batch",
        "3",
        "--out",
        str(out_file),
    ]
    assert bench.main(argv) == 0
    out = json.loads(out_file.read_text())
    assert out["model_bytes"] == model.stat().st_size and out["torch"].startswith("none (onnxruntime ")
    assert out["queries_are"] == "stored regions"  # 4-d images against the histograms' workspace
    assert out["encoding_peak"]["VmRSS"] > 0 and [b["batch"] for b in out["settings"][0]["batches"]] == [3]


@pytest.mark.parametrize("bad", [["--queries", "0"], ["--batch", "5,-1"], ["--setting", "nprobe=2,k=1"]])
def test_bad_arguments_are_refused(workspace: Path, bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.main(["--workspace", str(workspace), "--encoder", "none", *bad])
    assert exited.value.code == 2 and "error:" in capsys.readouterr().err
