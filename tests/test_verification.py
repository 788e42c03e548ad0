"""A workspace with a verifier: local features stored with each parent, verified matches with exact boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossscale import (
    Box,
    ConfigurationError,
    CrossScaleSearch,
    WorkspaceMismatchError,
)
from crossscale.encode import ColorHistogramEncoder
from crossscale.rank import VERIFIED_BONUS, GeometricVerifier, list_verifiers
from crossscale.workspace import Workspace


def _open(path: Path, **kw: object) -> CrossScaleSearch:
    kw.setdefault("encoder", "color-histogram")
    kw.setdefault("segmenter", "whole+tiles")
    kw.setdefault("refine", False)
    return CrossScaleSearch.open(path, progress=False, device="cpu", **kw)  # type: ignore[arg-type]


@pytest.fixture
def scenes(photos: dict[str, Image.Image]) -> tuple[dict[str, Image.Image], Image.Image, Box]:
    """Three parents; the astronaut photo pasted into one of them; the query is a rescaled part of it."""
    scene = photos["coffee"].resize((1200, 900))
    scene.paste(photos["astronaut"].resize((400, 400)), (650, 300))
    region = Box(700, 350, 950, 600)
    parents = {"scene": scene, "rocket": photos["rocket"], "chelsea": photos["chelsea"]}
    return parents, scene.crop(region.as_tuple()).resize((160, 160)), region


def test_verified_matches_come_first_with_exact_boxes(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    parents, query, region = scenes
    with _open(tmp_path / "ws", verifier="sift", verifier_kwargs={"max_keypoints": 800}) as cs:
        cs.index(list(parents.items()))
        assert cs.store.local_count() == 3 and cs.info()["verifier"] == "sift(keypoints=800,side=1600)"
        [best, *rest] = cs.search(query, top_k=3)
        assert best.parent_id == "scene" and best.inliers is not None and best.score > VERIFIED_BONUS
        assert best.box.iou(region) > 0.9 and all(m.inliers is None and m.score <= 1 for m in rest)
        assert [m.parent_id for m in cs.search(query, top_k=3, min_score=VERIFIED_BONUS)] == ["scene"]
        assert best.to_dict()["inliers"] == best.inliers
        assert cs.verify().ok
        cs.delete("scene")
        assert cs.store.local_count() == 2 and cs.verify().ok
    config = json.loads((tmp_path / "ws" / "workspace.json").read_text())
    assert config["format"] == 2 and config["verifier"]["spec"] == {
        "name": "sift",
        "kwargs": {"max_keypoints": 800, "max_side": 1600},  # what was asked, and the defaults the features depend on
    }


def test_reopening_rebuilds_the_recorded_settings_after_the_defaults_change(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    with _open(tmp_path / "ws", encoder="color-histogram", verifier="sift") as cs:
        cs.index([("c", photos["coffee"])])
        built_with = cs.verifier.name if cs.verifier is not None else None
    assert built_with == "sift(keypoints=4000,side=1600)"
    # a later crossscale with other defaults, for the verifier and for the encoder
    monkeypatch.setitem(GeometricVerifier.__init__.__kwdefaults__, "max_keypoints", 2500)
    monkeypatch.setattr(ColorHistogramEncoder.__init__, "__defaults__", (4, 64, 256, "cpu"))
    assert GeometricVerifier().name != built_with and ColorHistogramEncoder().name != "color-histogram(8)"
    with CrossScaleSearch.open(tmp_path / "ws", progress=False, device="cpu", refine=False) as cs:
        assert cs.verifier is not None and cs.verifier.name == built_with and cs.encoder.name == "color-histogram(8)"
        assert cs.search(photos["coffee"], top_k=1)[0].inliers is not None
    # naming the recorded stages again (no kwargs) means the same stages
    with _open(tmp_path / "ws", encoder="color-histogram", verifier="sift", readonly=True) as cs:
        assert cs.verifier is not None and cs.verifier.name == built_with and cs.encoder.name == "color-histogram(8)"
    with pytest.raises(WorkspaceMismatchError, match="local features of verifier"):
        _open(tmp_path / "ws", verifier="sift", verifier_kwargs={"max_keypoints": 10})


def test_settings_a_factory_does_not_take_are_not_recorded(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    """A factory registered by a user that builds a GeometricVerifier with fixed arguments: reopening must call it
    with nothing it does not take."""
    from crossscale.rank import register_verifier, verifier_keywords

    name = "sift-fixed-for-test"
    if name not in list_verifiers():
        register_verifier(name)(lambda: GeometricVerifier(max_keypoints=500))
    assert verifier_keywords(name) == frozenset() and verifier_keywords("sift") is not None
    with _open(tmp_path / "ws", verifier=name) as cs:
        cs.index([("c", photos["coffee"])])
    config = json.loads((tmp_path / "ws" / "workspace.json").read_text())
    assert config["verifier"]["spec"] == {"name": name, "kwargs": {}}
    with CrossScaleSearch.open(tmp_path / "ws", progress=False, device="cpu", refine=False, readonly=True) as cs:
        assert cs.verifier is not None and cs.verifier.name == "sift(keypoints=500,side=1600)"


def test_reopening_rebuilds_the_recorded_verifier_and_verification_can_be_skipped(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    parents, query, _ = scenes
    with _open(tmp_path / "ws", verifier="sift") as cs:
        cs.index(list(parents.items()))
    with CrossScaleSearch.open(tmp_path / "ws", readonly=True, progress=False, device="cpu", refine=False) as reader:
        assert isinstance(reader.verifier, GeometricVerifier)
        assert reader.search(query, top_k=1)[0].inliers is not None
    with CrossScaleSearch.open(tmp_path / "ws", progress=False, device="cpu", verify_matches=False) as cs:
        assert all(m.inliers is None for m in cs.search(query, top_k=3))
        cs.verify_matches = True
        assert cs.search(query, top_k=1)[0].inliers is not None
    with pytest.raises(WorkspaceMismatchError, match="local features of verifier"):
        _open(tmp_path / "ws", verifier="sift", verifier_kwargs={"max_keypoints": 10})


def test_new_workspaces_verify_with_sift_by_default(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with _open(tmp_path / "ws") as cs:
        cs.index([("c", photos["coffee"])])
        assert isinstance(cs.verifier, GeometricVerifier) and cs.store.local_count() == 1
    config = json.loads((tmp_path / "ws" / "workspace.json").read_text())
    assert config["format"] == 2 and config["verifier"]["name"].startswith("sift(")
    with _open(tmp_path / "ws") as cs:  # reopened: the recorded one
        assert isinstance(cs.verifier, GeometricVerifier)
    with pytest.raises(ConfigurationError, match="verify_matches=False"):
        _open(tmp_path / "ws", verifier=False)


def test_a_verifier_only_applies_to_new_workspaces(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    with _open(tmp_path / "ws", verifier=False, index_factory="Flat", vector_dtype="float32") as cs:  # format 1
        cs.index([("c", photos["coffee"])])
        assert cs.verifier is None and cs.store.local_count() == 0
    with pytest.raises(ConfigurationError, match="keeps no local features"):
        _open(tmp_path / "ws", verifier="sift")
    with _open(tmp_path / "ws") as cs, _open(tmp_path / "ws2", verifier=False) as other:  # None or False: none
        assert cs.verifier is None and other.verifier is None
    config = json.loads((tmp_path / "ws" / "workspace.json").read_text())
    assert config["format"] == 1 and "verifier" not in config  # readable by crossscale 0.1


def test_a_failed_extraction_indexes_the_parent_unverifiable(tmp_path: Path, scenes, caplog) -> None:  # type: ignore[no-untyped-def]
    parents, query, _ = scenes

    class Picky(GeometricVerifier):
        def extract(self, image: Image.Image) -> bytes:
            if image.size == (1200, 900):
                raise RuntimeError("cannot read this one")
            return super().extract(image)

    with _open(tmp_path / "ws", verifier=Picky()) as cs:
        report = cs.index(list(parents.items()))
        assert report.ok and len(report.added) == 3 and "cannot read this one" in caplog.text
        assert cs.store.local_count() == 2
        [best] = cs.search(query, top_k=1)
        assert best.parent_id == "scene" and best.inliers is None  # found by its vectors, just not verified
        report_v = cs.verify()
        assert report_v.ok and any("no local features" in n for n in report_v.notes)
    with pytest.raises(ConfigurationError, match="passed as an object"):
        _open(tmp_path / "ws")


def test_a_verifier_object_must_have_its_members(tmp_path: Path) -> None:
    class NoExtract:
        name = "half"

        def verify(self, query, matches, features):  # type: ignore[no-untyped-def]
            return list(matches)

    with pytest.raises(ConfigurationError, match="lacks 'extract'"):
        _open(tmp_path / "ws", verifier=NoExtract())
    with pytest.raises(ConfigurationError, match="unknown verifier 'orb'"):
        _open(tmp_path / "ws2", verifier="orb")


def test_verified_matches_are_not_refined_but_the_rest_are_when_asked(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    parents, query, _ = scenes
    refined: list[list[str]] = []

    class Spy:
        def refine(self, q, matches, load):  # type: ignore[no-untyped-def]
            refined.append([m.parent_id for m in matches])
            return list(matches)

    with _open(tmp_path / "ws", verifier="sift", refine=Spy(), refine_verified=True) as cs:
        cs.index(list(parents.items()))
        out = cs.search(query, top_k=3)
    assert out[0].parent_id == "scene" and refined == [[m.parent_id for m in out[1:]]]
    assert np.isfinite([m.score for m in out]).all()


class _CountingRefiner:
    def __init__(self) -> None:
        self.calls = 0

    def refine(self, query: object, matches: list[object], load: object) -> list[object]:
        self.calls += 1
        return list(matches)


def test_a_verified_search_skips_the_refiner_unless_asked(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    parents, query, region = scenes
    with _open(tmp_path / "ws", verifier="sift") as cs:
        cs.index(list(parents.items()))
    refiner = _CountingRefiner()
    with _open(tmp_path / "ws", refine=refiner, refine_verified=False, readonly=True) as cs:
        best = cs.search(query, top_k=3)[0]
        assert best.inliers is not None and best.box.iou(region) > 0.9 and refiner.calls == 0
        flat = Image.new("RGB", (90, 60), (200, 30, 30))  # no keypoints: nothing verified, so it is refined
        assert all(m.inliers is None for m in cs.search(flat, top_k=3)) and refiner.calls == 1
        cs.refine_verified = True
        cs.search(query, top_k=3)
        assert refiner.calls == 2
    with pytest.raises(ConfigurationError, match="refine_verified must be True or False"):
        _open(tmp_path / "ws", refine_verified="yes")


@pytest.fixture
def hidden(photos: dict[str, Image.Image]) -> tuple[list[tuple[str, Image.Image]], Image.Image, Box]:
    """Six parents; a small astronaut pasted into the widest one, the query the whole astronaut photo."""
    scene = photos["coffee"].resize((1200, 900))
    box = Box(820, 80, 1020, 280)
    scene.paste(photos["astronaut"].resize((200, 200)), (820, 80))
    names = ("rocket", "chelsea", "retina", "immunohistochemistry", "hubble_deep_field")
    parents = [("scene", scene), *((n, photos[n]) for n in names)]
    return parents, photos["astronaut"].resize((256, 256)), box


class WidthEncoder:
    """Sees nothing but an image's width: a vector search that cannot find a small object in a wide scene."""

    name = "width"
    dim = 2

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        return np.array([[1.0, im.width / 1000] for im in images], dtype=np.float32)


def test_local_search_finds_the_parent_the_vector_search_misses(tmp_path: Path, hidden) -> None:  # type: ignore[no-untyped-def]
    parents, query, box = hidden
    with _open(tmp_path / "ws", encoder=WidthEncoder(), segmenter="whole", verifier="sift", local_search=False) as cs:
        cs.index(parents)
        plain = cs.search(query, top_k=2)
        assert "scene" not in [m.parent_id for m in plain]  # 1,200 px wide, the query 256
    with _open(tmp_path / "ws", encoder=WidthEncoder(), local_search=True) as cs:
        assert cs.local is not None and cs.local.index is None  # built at the first search
        [best, second] = cs.search(query, top_k=2)
        assert best.parent_id == "scene" and best.inliers is not None and best.box.iou(box) > 0.8
        assert second.parent_id == plain[0].parent_id and second.inliers is None  # the rest: the vector search's
        assert best.chunk_id in cs.store.parent("scene").chunk_ids  # a real match of the scene's chunks
        assert cs.local.index is not None and len(cs.local.index) == 6
        cs.delete("scene")  # the keypoint index follows the store
        assert "scene" not in [m.parent_id for m in cs.search(query, top_k=2)]
        assert len(cs.local.index) == 5
        cs.index([("again", parents[0][1])])
        assert cs.search(query, top_k=1)[0].parent_id == "again"
        verifier = cs.verifier
        assert isinstance(verifier, GeometricVerifier)
        scene_n = len(verifier.descriptors(cs.store.local_features("again") or b""))
        held = cs.local.index.descriptor_count
        cs.delete("again")
        cs.index([("again", parents[1][1])])  # the same id, other pixels: its old keypoints must go
        assert all(m.inliers is None for m in cs.search(query, top_k=2))  # the astronaut is in no parent now
        other_n = len(verifier.descriptors(cs.store.local_features("again") or b""))
        assert scene_n != other_n and cs.local.index.descriptor_count == held - scene_n + other_n
        assert cs.verify().ok


def _found(result: list) -> list[tuple[str, int | None, float]]:  # type: ignore[type-arg]
    return [(m.parent_id, m.inliers, round(m.score, 6)) for m in result]


def test_the_keypoint_index_is_kept_with_the_workspace(  # type: ignore[no-untyped-def]
    tmp_path: Path, hidden, monkeypatch: pytest.MonkeyPatch
) -> None:
    parents, query, _ = hidden
    ws = tmp_path / "ws"
    with _open(ws, encoder=WidthEncoder(), segmenter="whole", verifier="sift", local_search=True) as cs:
        cs.index(parents[:4])
        assert (ws / "keypoints.index").exists()  # built and written with what was indexed
        info = cs.info()
        assert info["local_search"] and info["keypoint_file_bytes"] == (ws / "keypoints.index").stat().st_size
        first = _found(cs.search(query, top_k=2))
        assert first[0][0] == "scene" and first[0][1] is not None
    read: list[int] = []
    descriptors = GeometricVerifier.descriptors
    monkeypatch.setattr(GeometricVerifier, "descriptors", lambda self, raw: read.append(1) or descriptors(self, raw))
    with _open(ws, encoder=WidthEncoder(), local_search=True, readonly=True) as cs:
        assert _found(cs.search(query, top_k=2)) == first
        assert read == []  # loaded from the file: no parent's features read again
    with _open(ws, encoder=WidthEncoder(), local_search=False) as cs:  # a session without local search adds and deletes
        cs.index(parents[4:])
        cs.delete("rocket")
        report = cs.verify()
        assert report.ok and "keypoint index file is 3 parent change(s) behind" in " ".join(report.notes)
        assert len(read) == 3  # verify compared the 3 parents the file reflects with their stored features
    read.clear()
    with _open(ws, encoder=WidthEncoder(), local_search=True) as cs:
        assert cs.search(query, top_k=1)[0].parent_id == "scene"
        assert len(read) == 2  # caught up: only the two new parents' features were read
        assert cs.local is not None and cs.local.index is not None
        assert set(cs.local.index.parent_ids()) == set(cs.parent_ids())
    with _open(ws, encoder=WidthEncoder(), readonly=True) as cs:  # saved at close
        report = cs.verify()
        assert report.ok and not [n for n in report.notes if "keypoint" in n], report.notes
    with _open(ws, encoder=WidthEncoder(), local_search=True) as cs:  # nothing changed: nothing written at close
        before = (ws / "keypoints.index").stat().st_mtime_ns
        cs.search(query, top_k=1)
    assert (ws / "keypoints.index").stat().st_mtime_ns == before


def test_an_interrupted_keypoint_index_update_is_never_saved_half_done(  # type: ignore[no-untyped-def]
    tmp_path: Path, hidden, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the keypoint index catches up (a parent marked, its descriptors not yet added) must not leave
    that index to be saved at close: seen as a random-kill failure ("holds other descriptors than the stored
    features") when a SIGINT landed there."""
    parents, query, _ = hidden
    ws = tmp_path / "ws"
    with _open(ws, encoder=WidthEncoder(), segmenter="whole", verifier="sift", local_search=True) as cs:
        cs.index(parents[:3])
    with _open(ws, encoder=WidthEncoder(), local_search=False) as cs:  # the file falls 3 parents behind
        cs.index(parents[3:])
    descriptors = GeometricVerifier.descriptors
    calls: list[int] = []

    def interrupted(self, raw):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second new parent: the first is in, the second marked
        return descriptors(self, raw)

    cs = _open(ws, encoder=WidthEncoder(), local_search=True)
    assert cs.local is not None
    monkeypatch.setattr(GeometricVerifier, "descriptors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cs.local.update()
    monkeypatch.undo()
    assert cs.local.index is None  # let go
    cs.close()  # saves nothing half-done
    with _open(ws, encoder=WidthEncoder(), readonly=True) as reader:
        report = reader.verify()
        assert report.ok, report.problems
    with _open(ws, encoder=WidthEncoder(), local_search=True) as cs:
        assert cs.local is not None
        index = cs.local.update()  # loaded from the file and caught up
        assert set(index.parent_ids()) == set(cs.parent_ids())
        assert cs.search(query, top_k=1)[0].parent_id == "scene"
    with _open(ws, encoder=WidthEncoder(), readonly=True) as reader:
        report = reader.verify()
        assert report.ok and not [n for n in report.notes if "keypoint" in n], (report.problems, report.notes)


def test_a_damaged_keypoint_index_is_reported_rebuilt_and_repaired(  # type: ignore[no-untyped-def]
    tmp_path: Path, hidden, caplog: pytest.LogCaptureFixture
) -> None:
    parents, query, _ = hidden
    ws = tmp_path / "ws"
    with _open(ws, encoder=WidthEncoder(), segmenter="whole", verifier="sift", local_search=True) as cs:
        cs.index(parents)
    file = ws / "keypoints.index"
    good = file.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    file.write_bytes(bytes(damaged))
    # verify checks it without local search too
    with _open(ws, encoder=WidthEncoder(), readonly=True, local_search=False) as cs:
        report = cs.verify()
    assert not report.ok and any("keypoint index file is unreadable" in p and "repair" in p for p in report.problems)
    with _open(ws, encoder=WidthEncoder(), local_search=True) as cs:  # searching rebuilds it, with a warning
        assert cs.search(query, top_k=1)[0].parent_id == "scene"
    assert any("keypoints.index is unreadable" in r.getMessage() for r in caplog.records)
    with _open(ws, encoder=WidthEncoder(), readonly=True) as cs:
        assert cs.verify().ok  # written again at close
    # a file whose descriptors disagree with the stored features: verify names it, repair rebuilds it
    from crossscale.index import KeypointIndex

    index, meta = KeypointIndex.load(file)
    index.add("scene", np.zeros((3, 128), np.uint8))
    index.save(file, meta)
    with _open(ws, encoder=WidthEncoder(), local_search=False) as cs:
        report = cs.verify()
        assert not report.ok and any("stored features of 1 parent(s), e.g. 'scene'" in p for p in report.problems)
        cs.rebuild_index()  # what `crossscale repair` runs
        assert cs.verify().ok
    with _open(ws, encoder=WidthEncoder(), local_search=True, readonly=True) as cs:
        assert cs.search(query, top_k=1)[0].parent_id == "scene"


def test_local_search_is_on_by_default_up_to_a_size(  # type: ignore[no-untyped-def]
    tmp_path: Path, hidden, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import crossscale.search

    parents, query, _ = hidden
    ws = tmp_path / "ws"
    with _open(ws, encoder=WidthEncoder(), segmenter="whole", verifier="sift") as cs:
        assert cs.local is not None and cs.info()["local_search"]  # a "sift" workspace, 0 parents
        cs.index(parents[:3])
        assert (ws / "keypoints.index").exists()
        assert cs.search(query, top_k=1)[0].parent_id == "scene"  # found by its keypoints, as above
    with _open(ws, encoder=WidthEncoder(), verify_matches=False) as cs:
        assert cs.local is None  # local search only proposes what the verifier confirms
    with _open(ws, encoder=WidthEncoder(), local_search=False) as cs:
        assert cs.local is None and cs.search(query, top_k=1)[0].parent_id != "scene"
    monkeypatch.setattr(crossscale.search, "LOCAL_SEARCH_MAX_PARENTS", 3)
    with _open(ws, encoder=WidthEncoder()) as cs:  # 3 parents: still on; an index() that outgrows it turns it off
        assert cs.local is not None
        cs.index(parents[3:4])
        assert cs.local is None and "local search is off: on by default for up to 3 parents" in caplog.text
    caplog.clear()
    with _open(ws, encoder=WidthEncoder(), readonly=True) as cs:
        assert cs.local is None and "this workspace has 4" in caplog.text
    with _open(ws, encoder=WidthEncoder(), readonly=True, local_search=True) as cs:  # asked for: on whatever the size
        assert cs.local is not None and cs.search(query, top_k=1)[0].parent_id == "scene"
    with pytest.raises(ConfigurationError, match=r"local_search must be True, False or None \(the default\)"):
        _open(ws, local_search=1)


def test_a_parent_without_keypoints_is_looked_at_not_held(tmp_path: Path, hidden) -> None:  # type: ignore[no-untyped-def]
    """A flat image has no keypoints (its stored features hold 0 descriptors, of no dimension): first in the
    collection, it must not decide the keypoint index's shape."""
    parents, query, _ = hidden
    flat = Image.new("RGB", (300, 200), (90, 140, 200))
    ws = tmp_path / "ws"
    with _open(ws, encoder=WidthEncoder(), segmenter="whole", verifier="sift") as cs:
        cs.index([("flat", flat)])
        assert cs.local is not None and cs.local.index is not None and len(cs.local.index) == 0
        assert [m.parent_id for m in cs.search(query, top_k=1)] == ["flat"]
        cs.index(parents)
        assert "flat" not in cs.local.index and len(cs.local.index) == len(parents)
        assert cs.search(query, top_k=1)[0].parent_id == "scene" and cs.verify().ok


def test_local_search_needs_a_verifier_with_descriptors(
    tmp_path: Path, photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[Path] = []
    close = Workspace.close
    monkeypatch.setattr(Workspace, "close", lambda self: closed.append(self.path) or close(self))
    with pytest.raises(ConfigurationError, match="local_search needs a verifier"):
        _open(tmp_path / "none", verifier=False, local_search=True)
    assert closed == [tmp_path / "none"]  # the refused open let the workspace (its lock, its LMDB) go
    with _open(tmp_path / "none") as cs:
        assert cs.verifier is None and cs.local is None
    with pytest.raises(ConfigurationError, match=r"local_search must be True, False or None \(the default\)"):
        _open(tmp_path / "bad", local_search="yes")
    with _open(tmp_path / "ws", verifier="sift", local_search=True, verify_matches=False) as cs:
        cs.index([("c", photos["coffee"])])
        assert cs.local is not None and cs.local.index is not None  # built with what was indexed
        monkeypatch.setattr(cs.local, "candidates", lambda *a: pytest.fail("voted while not verifying"))
        assert cs.search(photos["coffee"].crop((100, 100, 300, 300)), top_k=1)[0].inliers is None  # not verifying
