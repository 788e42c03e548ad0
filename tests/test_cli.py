from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from crossscale.cli import main


def _photo_folder(tmp_path: Path, photos: dict[str, Image.Image], names: tuple[str, ...]) -> Path:
    """``names`` saved as PNGs in ``tmp_path / "imgs"``."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in names:
        photos[name].save(folder / f"{name}.png")
    return folder


def _index_photos(
    tmp_path: Path, photos: dict[str, Image.Image], names: tuple[str, ...], segmenter: str, *extra: str
) -> str:
    """Save ``names`` as PNGs in a folder and index it through the CLI (``extra``: more flags); returns the
    workspace path."""
    folder = _photo_folder(tmp_path, photos, names)
    ws = str(tmp_path / "ws")
    argv = ["index", str(folder), "-w", ws, "--encoder", "color-histogram", "--segmenter", segmenter, *extra]
    assert main([*argv, "--no-progress", "--device", "cpu"]) == 0
    return ws


def test_index_search_info(tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str]) -> None:
    ws = _index_photos(tmp_path, photos, ("coffee", "rocket", "astronaut"), "whole+tiles")
    folder = tmp_path / "imgs"
    assert "added 3" in capsys.readouterr().out
    photos["rocket"].crop((100, 100, 300, 300)).save(tmp_path / "q.png")
    assert main(["search", str(tmp_path / "q.png"), "-w", ws, "--top-k", "2", "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and rows[0]["source"] == str(folder / "rocket.png") and len(rows[0]["box"]) == 4
    assert main(["search", str(tmp_path / "q.png"), "-w", ws, "--device", "cpu"]) == 0
    assert "rocket.png" in capsys.readouterr().out.splitlines()[0]
    assert rows[0]["score"] > rows[0]["chunk_score"]  # refined: a crop at the query's scale beat every chunk
    assert main(["search", str(tmp_path / "q.png"), "-w", ws, "--json", "--no-refine", "--device", "cpu"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain[0]["parent_id"] == rows[0]["parent_id"]
    assert all(r["score"] == r["chunk_score"] for r in plain)  # max of the chunks, untouched
    assert main(["info", "-w", ws]) == 0
    assert json.loads(capsys.readouterr().out)["parents"] == 3


def test_errors_exit_nonzero_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "-w", str(tmp_path / "nope")]) == 2
    assert "no workspace" in capsys.readouterr().err
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    ws = str(tmp_path / "ws")
    assert (
        main(
            [
                "index",
                str(tmp_path / "bad.jpg"),
                "-w",
                ws,
                "--encoder",
                "color-histogram",
                "--segmenter",
                "whole",
                "--no-progress",
            ]
        )
        == 3
    )
    assert "failed" in capsys.readouterr().out
    assert main(["search", str(tmp_path / "bad.jpg"), "-w", ws]) == 2
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_verify_and_repair(tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str]) -> None:
    ws = _index_photos(tmp_path, photos, ("coffee", "rocket"), "whole")
    capsys.readouterr()  # the index report
    assert main(["verify", "-w", ws]) == 0
    assert capsys.readouterr().out.startswith("ok: 2 parents, 2 chunks, 2 indexed vectors")
    (tmp_path / "ws" / "chunks.index").write_bytes(b"corrupted")
    assert main(["verify", "-w", ws, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and "unreadable" in report["problems"][0]
    assert main(["repair", "-w", ws]) == 0
    assert main(["verify", "-w", ws]) == 0
    assert "ok: 2 parents" in capsys.readouterr().out
    keypoints = tmp_path / "ws" / "keypoints.index"  # local search (on by default) kept it at `index`
    keypoints.write_bytes(keypoints.read_bytes()[:-9])
    assert main(["verify", "-w", ws, "--json"]) == 1
    assert any("keypoint index file is unreadable" in p for p in json.loads(capsys.readouterr().out)["problems"])
    assert main(["repair", "-w", ws]) == 0 and "ok: 2 parents" in capsys.readouterr().out


def test_preload_reads_the_store_without_opening_the_rest(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _index_photos(tmp_path, photos, ("coffee", "rocket"), "whole")
    capsys.readouterr()
    store_bytes = (tmp_path / "ws" / "store" / "data.mdb").stat().st_size
    monkeypatch.setattr("crossscale.search.CrossScaleSearch.open", None)  # nothing but the store is opened
    assert main(["preload", "-w", ws, "-q"]) == 0
    read = int(capsys.readouterr().out.split()[1])
    assert 0 < read <= store_bytes
    assert main(["preload", "-w", str(tmp_path / "nope")]) == 2
    assert "not a crossscale workspace" in capsys.readouterr().err


def test_search_show_writes_the_grid_and_text_queries_need_a_text_tower(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str]
) -> None:
    ws = _index_photos(tmp_path, photos, ("coffee", "rocket"), "whole+tiles")
    photos["rocket"].crop((100, 100, 300, 300)).save(tmp_path / "q.png")
    argv = ["search", str(tmp_path / "q.png"), "-w", ws, "-k", "2", "--no-refine", "--device", "cpu"]
    assert main([*argv, "--show", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.width > grid.height > 0  # the query and two parents, side by side
    capsys.readouterr()
    assert main([*argv, "--show", str(tmp_path / "grid.nope")]) == 2
    assert "--show" in capsys.readouterr().err
    assert main(["search", "--text", "a rocket", "-w", ws, "--device", "cpu"]) == 2
    assert "embeds images only" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "q.png"), "--text", "a rocket", "-w", ws]) == 2
    assert "not both" in capsys.readouterr().err


def test_text_search_from_the_command_line(
    tmp_path: Path, tiny_clip_dir: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _photo_folder(tmp_path, photos, ("coffee", "rocket"))
    ws = str(tmp_path / "ws")
    base = ["-w", ws, "--no-progress", "--device", "cpu"]
    clip = ["--encoder", "clip", "--encoder-path", str(tiny_clip_dir), "--segmenter", "whole+tiles"]
    assert main(["index", str(folder), *clip, *base]) == 0
    capsys.readouterr()
    assert main(["search", "--text", "a rocket", "--json", "-k", "2", *base[:2], "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["parent_id"] for r in rows} and len(rows) == 2


def test_a_workspace_with_a_verifier_from_the_command_line(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str]
) -> None:
    ws = _index_photos(
        tmp_path, photos, ("astronaut", "rocket"), "whole+tiles", "--verifier", "sift", "--max-memory", "1G"
    )
    assert json.loads((tmp_path / "ws" / "workspace.json").read_text())["max_memory"] == 1 << 30
    photos["astronaut"].crop((150, 40, 330, 220)).resize((120, 120)).save(tmp_path / "q.png")
    capsys.readouterr()
    assert main(["search", str(tmp_path / "q.png"), "-w", ws, "-k", "2", "--no-refine", "--device", "cpu"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "astronaut.png" in first and "verified (" in first
    assert main(["search", str(tmp_path / "q.png"), "-w", ws, "--json", "--no-verify", "--device", "cpu"]) == 0
    assert all(r["inliers"] is None for r in json.loads(capsys.readouterr().out))
    assert main(["search", str(tmp_path / "q.png"), "-w", ws, "--json", "--refine-verified", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["inliers"] is not None
    search = ["search", str(tmp_path / "q.png"), "-w", ws, "--json", "-k", "1", "--local-search", "--device", "cpu"]
    assert main(search) == 0
    [only] = json.loads(capsys.readouterr().out)
    assert only["source"].endswith("astronaut.png") and only["inliers"] is not None
    assert (tmp_path / "ws" / "keypoints.index").exists()  # `index` kept it: local search is on by default
    assert main([*search[:-3], "--no-local-search", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["source"].endswith("astronaut.png")
    with pytest.raises(SystemExit):
        main([*search, "--no-local-search"])  # one or the other


def test_index_structure_and_budget_from_the_command_line(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _photo_folder(tmp_path, photos, ("coffee",))
    opts = ["--encoder", "color-histogram", "--segmenter", "whole", "--no-progress", "--device", "cpu"]
    assert (
        main(
            [
                "index",
                str(folder),
                "-w",
                str(tmp_path / "flat"),
                *opts,
                "--index",
                "Flat",
                "--verifier",
                "none",
                "--vector-dtype",
                "float32",
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "flat" / "workspace.json").read_text())
    assert doc["format"] == 1 and doc["index_factory"] == "Flat" and "verifier" not in doc  # as 0.1 wrote them
    assert main(["index", str(folder), "-w", str(tmp_path / "bad"), *opts, "--max-memory", "plenty"]) == 2
    assert "max_memory must be a size" in capsys.readouterr().err
    assert main(["index", str(folder), "-w", str(tmp_path / "auto"), *opts, "--reduce-dim", "64"]) == 0
    assert json.loads((tmp_path / "auto" / "workspace.json").read_text())["reduce_dim"] == 64
    assert main(["index", str(folder), "-w", str(tmp_path / "wide"), *opts, "--reduce-dim", "4096"]) == 2
    assert "reduce_dim must be less than the vectors' dimension (512)" in capsys.readouterr().err


def test_search_settings_from_the_command_line(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--nprobe`` / ``--ef-search`` reach the index's searches for that search only: the index set to them gives
    the same rows; a bad value is refused, naming it; ``--no-rescore`` and ``--rescore-per-parent`` reach the
    facade, not the index."""
    from crossscale import ChunkIndex, CrossScaleSearch, SearchParams

    names = ("coffee", "rocket", "astronaut", "chelsea")
    ws = _index_photos(tmp_path, photos, names, "whole+tiles", "--index", "IVF4,Flat")
    capsys.readouterr()
    photos["rocket"].crop((100, 100, 300, 300)).save(tmp_path / "q.png")
    given: list[object] = []
    real = ChunkIndex.search

    def spy(self: ChunkIndex, vectors: object, k: int, *, params: SearchParams | None = None) -> object:
        given.append(params)
        return real(self, vectors, k, params=params)

    monkeypatch.setattr(ChunkIndex, "search", spy)
    argv = ["search", str(tmp_path / "q.png"), "-w", ws, "-k", "3", "--json", "--no-refine", "--device", "cpu"]
    assert main([*argv, "--nprobe", "3", "--ef-search", "8"]) == 0
    assert given and all(p == SearchParams(nprobe=3, ef_search=8) for p in given)
    got = json.loads(capsys.readouterr().out)
    with CrossScaleSearch.open(ws, device="cpu", progress=False, refine=False) as cs:
        cs.chunk_index.set_search_params("nprobe=3")
        want = [m.to_dict() for m in cs.search(tmp_path / "q.png", top_k=3)]
    assert [{k: v for k, v in row.items() if k != "source"} for row in got] == json.loads(json.dumps(want))
    given.clear()
    assert main(argv) == 0 and given and all(p is None for p in given)
    assert main([*argv, "--nprobe", "0"]) == 2
    assert "SearchParams.nprobe must be a positive int, got 0" in capsys.readouterr().err
    rescores: list[object] = []
    real_rescores = CrossScaleSearch._rescores
    monkeypatch.setattr(
        CrossScaleSearch,
        "_rescores",
        lambda self, index, params: rescores.append(params) or real_rescores(self, index, params),
    )
    given.clear()
    assert main([*argv, "--no-rescore"]) == 0 and all(p is None for p in given)  # nothing of it for the index
    assert rescores == [SearchParams(rescore=False)]
    rescores.clear()
    assert main(argv) == 0 and rescores == [SearchParams()]  # none given: the saved setting, here none
    rescores.clear()
    assert main([*argv, "--rescore-per-parent", "2"]) == 0 and rescores == [SearchParams(rescore_per_parent=2)]
    assert main([*argv, "--rescore-per-parent", "0"]) == 2
    assert "SearchParams.rescore_per_parent must be a positive int, got 0" in capsys.readouterr().err


def test_measure_from_the_command_line(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``crossscale measure`` gives measure_search's rows for query images or a .npy of vectors, one per --nprobe
    and --rescore; with --min-recall, tune_search's choice (exit 1 if none reached it); bad input exits 2 with a
    message."""
    import numpy as np

    from crossscale import CrossScaleSearch, SearchMeasurement, SearchParams, SearchTuning

    names = ("coffee", "rocket", "astronaut", "chelsea")
    ws = _index_photos(tmp_path, photos, names, "whole+tiles", "--index", "IVF4,Flat")
    capsys.readouterr()
    queries = []
    for i, name in enumerate(names):
        queries.append(tmp_path / f"q{i}.png")
        photos[name].crop((40 + 10 * i, 60, 260, 240)).save(queries[-1])
    base = ["measure", "-w", ws, "-k", "2", "--device", "cpu", "--no-progress"]
    assert main([*base, *map(str, queries), "--nprobe", "own,1,4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["nprobe"] for r in rows] == [None, 1, 4] and all(r["queries"] == 4 for r in rows)
    assert rows[2]["recall"] == 1.0 and all(r["queries_per_second"] > 0 for r in rows)
    with CrossScaleSearch.open(ws, device="cpu", progress=False, refine=False) as cs:
        vectors = cs.encoder.encode([Image.open(q).convert("RGB") for q in queries])
        want = cs.measure_search(vectors, [SearchParams(nprobe=1)], top_k=2)[0].recall
    np.save(tmp_path / "q.npy", vectors)
    assert main([*base, "--vectors", str(tmp_path / "q.npy"), "--nprobe", "1", "--singles", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("  nprobe=1 ") and f"recall@2 {want:.4f}" in out and "one query p50 " in out
    assert main([*base, str(queries[0]), "--nprobe", "own,2", "--rescore", "both", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["nprobe"], r["rescore"]) for r in rows] == [(None, True), (2, True), (None, False), (2, False)]
    assert main([*base, *map(str, queries), "--nprobe", "1,4", "--min-recall", "1", "--json"]) == 0
    tuning = json.loads(capsys.readouterr().out)
    reached = [m for m in tuning["measurements"] if m["recall"] >= 1.0]
    assert tuning["min_recall"] == 1.0 and reached and tuning["chosen"] in reached
    assert tuning["chosen"]["queries_per_second"] == max(m["queries_per_second"] for m in reached)
    assert main([*base, *map(str, queries), "--nprobe", "4", "--min-recall", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("* nprobe=4 ") and lines[-1] == "fastest with recall@2 >= 1: nprobe=4"
    measured = SearchMeasurement(SearchParams(nprobe=1), 0.5, 1.0, 4)
    monkeypatch.setattr(CrossScaleSearch, "tune_search", lambda self, v, **kw: SearchTuning(0.9, (measured,), None))
    assert main([*base, str(queries[0]), "--min-recall", "0.9"]) == 1  # no setting reached it
    assert capsys.readouterr().out.splitlines()[-1] == "no setting reached recall@2 0.9"
    long = SearchMeasurement(SearchParams(nprobe=128, rescore=True, rescore_per_parent=2), 0.5, 1.0, 4)
    monkeypatch.setattr(
        CrossScaleSearch, "tune_search", lambda self, v, **kw: SearchTuning(0.9, (measured, long), None)
    )
    assert main([*base, str(queries[0]), "--min-recall", "0.9"]) == 1
    lines = capsys.readouterr().out.splitlines()[:2]
    assert "rescore_per_parent=2" in lines[1] and len({line.index("recall@") for line in lines}) == 1  # aligned
    assert main([*base, "--nprobe", "1"]) == 2
    assert "give query images, --vectors FILE.npy or --sample N: one of them" in capsys.readouterr().err
    assert main([*base, str(queries[0]), "--nprobe", "1,x"]) == 2
    assert "--nprobe takes 'own' or numbers of lists" in capsys.readouterr().err
    (tmp_path / "bad.npy").write_bytes(b"junk")
    assert main([*base, "--vectors", str(tmp_path / "bad.npy")]) == 2
    assert "not a readable .npy array" in capsys.readouterr().err
    np.save(tmp_path / "wide.npy", np.ones((2, 7), np.float32))
    assert main([*base, "--vectors", str(tmp_path / "wide.npy")]) == 2
    assert "query vectors have dimension 7" in capsys.readouterr().err


def test_measure_saves_its_choice_with_the_workspace(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str]
) -> None:
    """``measure --min-recall R --save`` keeps the chosen setting with the workspace: ``info`` shows it and later
    searches start from it; --save without --min-recall exits 2."""
    names = ("coffee", "rocket", "astronaut")
    ws = _index_photos(tmp_path, photos, names, "whole+tiles", "--index", "IVF4,Flat")
    query = tmp_path / "q.png"
    photos["rocket"].crop((40, 60, 260, 240)).save(query)
    base = ["measure", "-w", ws, str(query), "-k", "2", "--device", "cpu", "--no-progress"]
    capsys.readouterr()
    assert main([*base, "--save"]) == 2
    assert "--save keeps the setting --min-recall chooses" in capsys.readouterr().err
    assert main([*base, "--nprobe", "4", "--min-recall", "1", "--save"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "saved with the workspace: its searches start from it"
    assert main(["info", "-w", ws]) == 0
    saved = json.loads(capsys.readouterr().out)["saved_search_params"]
    assert (saved["nprobe"], saved["rescore"], saved["structure"]) == (4, None, "IVF4,Flat")
    from crossscale import CrossScaleSearch, SearchParams

    with CrossScaleSearch.open(ws, readonly=True, progress=False) as cs:
        assert cs.search_params == SearchParams(nprobe=4)


def test_measure_by_vectors_needs_no_encoder(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str]
) -> None:
    """``crossscale measure --vectors`` opens the workspace without its encoder: one built with an encoder object
    (which the command line cannot rebuild) is measured all the same."""
    import numpy as np

    from crossscale import CrossScaleSearch
    from crossscale.encode import ColorHistogramEncoder

    names = sorted(photos)[:3]
    ws = str(tmp_path / "ws")
    opts = {"segmenter": "whole+tiles", "verifier": False, "refine": False, "progress": False, "device": "cpu"}
    with CrossScaleSearch.open(ws, encoder=ColorHistogramEncoder(), **opts) as cs:  # type: ignore[arg-type]
        cs.index([(n, photos[n]) for n in names])
        np.save(tmp_path / "q.npy", cs.encoder.encode([photos[n].crop((10, 10, 200, 200)) for n in names]))
    base = ["measure", "-w", ws, "-k", "2", "--device", "cpu", "--no-progress"]
    assert main([*base, "--vectors", str(tmp_path / "q.npy"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["recall"] == 1.0  # a Flat index: the exhaustive search's parents
    assert main([*base, str(tmp_path / "q.npy")]) == 2  # images need the encoder, which it cannot rebuild
    assert "passed as an object" in capsys.readouterr().err
    assert main([*base, "--sample", "4", "--seed", "2", "--json"]) == 0  # stored regions: no encoder either
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["queries"] == 4 and rows[0]["recall"] == 1.0
    assert main([*base, "--sample", "3", "--vectors", str(tmp_path / "q.npy")]) == 2
    assert "give query images, --vectors FILE.npy or --sample N: one of them" in capsys.readouterr().err
    assert main([*base, "--vectors", str(tmp_path / "q.npy"), "--seed", "1"]) == 2
    assert "--seed is for --sample's draw" in capsys.readouterr().err
    assert main([*base, "--sample", "0"]) == 2
    assert "--sample takes a positive number of stored regions, got 0" in capsys.readouterr().err
    assert main([*base, "--sample", "2", "--seed", "-1"]) == 2
    assert "--seed takes an int >= 0, got -1" in capsys.readouterr().err


def test_measure_tunes_and_saves_on_a_sample_of_stored_regions(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``measure --sample N --min-recall R --save``: tune_search on cs.sample_vectors(N, seed=...) (the same draw as
    the method's), its choice saved with the workspace."""
    import numpy as np

    from crossscale import CrossScaleSearch, SearchParams

    ws = _index_photos(tmp_path, photos, ("coffee", "rocket", "astronaut"), "whole+tiles", "--index", "IVF4,Flat")
    with CrossScaleSearch.open(ws, encoder=False, readonly=True, progress=False) as cs:
        want = cs.sample_vectors(5, seed=7)
    tuned: list[np.ndarray] = []
    real = CrossScaleSearch.tune_search
    monkeypatch.setattr(
        CrossScaleSearch, "tune_search", lambda self, v, **kw: tuned.append(np.array(v)) or real(self, v, **kw)
    )
    capsys.readouterr()
    argv = ["measure", "-w", ws, "--sample", "5", "--seed", "7", "-k", "2", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--nprobe", "4", "--min-recall", "1", "--save"]) == 0
    assert np.array_equal(tuned[0], want)
    assert capsys.readouterr().out.splitlines()[-1] == "saved with the workspace: its searches start from it"
    with CrossScaleSearch.open(ws, encoder=False, readonly=True, progress=False) as cs:
        assert cs.search_params == SearchParams(nprobe=4)


def test_info_verify_and_repair_need_no_encoder(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str]
) -> None:
    """They encode nothing, so they open the workspace without its encoder: one built with an encoder object
    (which the command line cannot rebuild) is described, verified and repaired all the same."""
    from crossscale import CrossScaleSearch
    from crossscale.encode import ColorHistogramEncoder

    ws = str(tmp_path / "ws")
    opts = {"segmenter": "whole+tiles", "verifier": False, "refine": False, "progress": False, "device": "cpu"}
    with CrossScaleSearch.open(ws, encoder=ColorHistogramEncoder(), **opts) as cs:  # type: ignore[arg-type]
        cs.index([(n, photos[n]) for n in sorted(photos)[:2]])
    capsys.readouterr()
    assert main(["info", "-w", ws]) == 0
    assert json.loads(capsys.readouterr().out)["parents"] == 2
    assert main(["verify", "-w", ws]) == 0
    assert capsys.readouterr().out.startswith("ok: 2 parents")
    (tmp_path / "ws" / "chunks.index").unlink()
    assert main(["repair", "-w", ws]) == 0
    assert capsys.readouterr().out.startswith("ok: 2 parents") and (tmp_path / "ws" / "chunks.index").exists()


def test_delete_from_the_command_line(
    tmp_path: Path, photos: dict[str, Image.Image], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``crossscale delete ID... [--ids-file FILE|-]``: one delete_many; ids not stored go to stderr and exit 1
    (0 with --missing-ok); no ids, or a file it cannot read, exit 2."""
    import io

    from crossscale import CrossScaleSearch

    ws = _index_photos(tmp_path, photos, ("coffee", "rocket", "astronaut", "chelsea"), "whole")
    with CrossScaleSearch.open(ws, encoder=False, readonly=True, progress=False) as cs:
        first, second, third, fourth = sorted(cs.parent_ids())
    capsys.readouterr()
    assert main(["delete", first, "nope", "-w", ws]) == 1
    out = capsys.readouterr()
    assert out.out == "deleted 1 parent(s)\n" and out.err == "not stored: nope\n"
    (tmp_path / "ids.txt").write_text(f"{second}\n\n  {first}  \nnope\n", encoding="utf-8")
    assert main(["delete", "--ids-file", str(tmp_path / "ids.txt"), "--missing-ok", "-w", ws]) == 0
    assert capsys.readouterr().out == "deleted 1 parent(s)\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{third}\n"))
    assert main(["delete", fourth, "--ids-file", "-", "-w", ws]) == 0
    assert capsys.readouterr().out == "deleted 2 parent(s)\n"
    with CrossScaleSearch.open(ws, encoder=False, readonly=True, progress=False) as cs:
        assert len(cs) == 0 and cs.verify().ok
    assert main(["delete", "-w", ws]) == 2
    assert "give the parent ids to delete" in capsys.readouterr().err
    assert main(["delete", "--ids-file", str(tmp_path / "none.txt"), "-w", ws]) == 2
    assert "--ids-file" in capsys.readouterr().err
