"""Pictures of results: the grid, its boxes, and everything that may go wrong inside a notebook's repr."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossscale import Box, ConfigurationError, CrossScaleSearch, ParentMatch, ParentNotFoundError, SearchResult, show
from crossscale.display import BOX_COLOUR


def _match(pid: str, box: Box, image: Image.Image | None, score: float = 0.9) -> ParentMatch:
    def load(parent_id: str) -> Image.Image:
        if image is None:
            raise ParentNotFoundError(parent_id)
        return image

    return ParentMatch(pid, score, box, "tile", score, 0, _loader=load)


def _is_box_colour(pixel: np.ndarray) -> bool:
    return bool(np.abs(pixel.astype(int) - BOX_COLOUR).max() <= 40)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_the_grid_shows_the_query_then_each_parent_with_its_box_where_it_is() -> None:
    parent = Image.new("RGB", (400, 200), (90, 90, 90))
    box = Box(200, 100, 300, 200)  # the bottom middle quarter
    query = Image.new("RGB", (50, 50), (0, 128, 0))
    picture = show([_match("p", box, parent)], query=query, cell=200)
    grid = np.asarray(picture).astype(int)
    assert picture.width == 2 * show([], cell=200).width and picture.height > 200  # two cells, with captions
    left, right = grid[:, : picture.width // 2], grid[:, picture.width // 2 :]
    qx0, qy0, qx1, qy1 = _bbox((left == (0, 128, 0)).all(axis=2))
    assert (qx1 - qx0, qy1 - qy0) == (200, 200)  # the 50x50 query enlarged to the cell
    # the parent, shrunk by half to 200x100: its grey (and the box over it) fill that area of the second cell
    is_box = (np.abs(right - BOX_COLOUR) <= 40).all(axis=2)
    px0, py0, px1, py1 = _bbox((right == (90, 90, 90)).all(axis=2) | is_box)
    assert (px1 - px0, py1 - py0) == (200, 100)
    bx0, by0, bx1, by1 = _bbox(is_box)  # the outline, in the thumbnail's frame
    assert (bx0 - px0, by0 - py0, bx1 - px0, by1 - py0) == (100, 50, 150, 100)
    inside = right[(by0 + by1) // 2, (bx0 + bx1) // 2]
    assert inside.tolist() == [90, 90, 90]  # an outline, not a filled box


def test_columns_wrap_the_grid_and_the_query_comes_from_the_result() -> None:
    parent = Image.new("RGB", (64, 64), (200, 200, 200))
    result = SearchResult([_match(f"p{i}", Box(0, 0, 8, 8), parent) for i in range(5)], Image.new("RGB", (9, 9)))
    wide, wrapped = result.show(cell=64), show(result, cell=64, columns=2)
    assert wide.width == 3 * wrapped.width and wrapped.height == 3 * wide.height  # 6 cells: 1 row, or 3 of 2


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((1, 1), Box(0, 0, 1, 1)),
        ((2, 2), Box(0, 0, 1, 1)),
        ((20_000, 200), Box(19_000, 50, 19_400, 150)),
        ((200, 20_000), Box(0, 0, 200, 10)),
    ],
)
def test_extreme_parents_give_a_picture(size: tuple[int, int], box: Box) -> None:
    parent = Image.new("RGB", size, (50, 60, 70))
    picture = show([_match("p", box, parent)], cell=128)
    assert picture.size[0] >= 128 and np.asarray(picture).any()
    assert any(_is_box_colour(p) for p in np.asarray(picture).reshape(-1, 3))  # the box is still drawn


def test_empty_results_deleted_and_detached_parents_say_why() -> None:
    one_cell = show([], cell=96)
    assert show([], query="a red kite", cell=96).width == 2 * one_cell.width  # the query's text, "no matches"
    assert 'alt="no matches"' in SearchResult([], "a red kite")._repr_html_()
    detached = ParentMatch("lost", 0.5, Box(0, 0, 4, 4), "tile", 0.5, 0)  # made by hand: no workspace behind it
    result = SearchResult([_match("gone", Box(0, 0, 4, 4), None), detached])
    assert result.show(cell=96).width == 2 * one_cell.width
    text = result._repr_html_()
    assert 'alt="gone: no image, deleted since the search"' in text
    assert 'alt="lost: no image, not from a workspace"' in text


def test_html_escapes_ids_and_never_raises() -> None:
    parent = Image.new("RGB", (32, 32))
    evil = "<script>alert(1)</script>"
    text = SearchResult([_match(evil, Box(0, 0, 8, 8), parent)], "kite")._repr_html_()
    assert evil not in text and html.escape(evil) in text and text.count("<img") == 2

    class Broken(ParentMatch):  # a repr must survive anything: here the score itself cannot be formatted
        pass

    bad = SearchResult([Broken("p", "not a number", Box(0, 0, 1, 1), "tile", 0.0, 0)])  # type: ignore[arg-type]
    assert bad._repr_html_().startswith("<pre>crossscale: cannot draw")
    assert "<img" in _match("p", Box(0, 0, 8, 8), parent)._repr_html_()


@pytest.mark.parametrize(("kw", "message"), [({"cell": 4}, "cell must be an int >= 32"), ({"columns": 0}, "columns")])
def test_bad_arguments_are_named(kw: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        show([], **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="query must be a PIL image, a text or None"):
        show([], query=np.zeros((4, 4, 3)))  # type: ignore[arg-type]


def test_rendering_loads_each_parent_once(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    loads: list[str] = []
    with CrossScaleSearch.open(
        tmp_path / "ws", encoder="color-histogram", segmenter="whole+tiles", progress=False, device="cpu", refine=False
    ) as cs:
        cs.index([(n, photos[n]) for n in ("coffee", "rocket", "chelsea")])
        result = cs.search(photos["coffee"], top_k=2)
        original = cs.workspace.image

        def counting(pid: str) -> Image.Image:
            loads.append(pid)
            return original(pid)

        cs.workspace.image = counting  # type: ignore[method-assign]
        assert isinstance(result, SearchResult) and result.query is not None and len(result) == 2
        result._repr_html_()
        assert sorted(loads) == sorted(m.parent_id for m in result)  # N results: N images read, no more
        cs.workspace.image = original  # type: ignore[method-assign]
        cs.delete(result[0].parent_id)
        assert f'alt="{result[0].parent_id}: no image, deleted since the search"' in result._repr_html_()
