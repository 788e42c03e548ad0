"""Pictures of search results: the query beside the ranked parents, each with the box where it was found.

:func:`show` returns a PIL image (for scripts, docs and ``crossscale search --show``); :func:`results_html` is
what a notebook displays for a :class:`~crossscale.types.SearchResult` or a
:class:`~crossscale.types.ParentMatch`. Only Pillow draws: no matplotlib. Each parent is loaded once, through
its match's ``image()``, and shrunk to a thumbnail at once. A parent that cannot be shown (deleted since the
search, not attached to a workspace, unreadable) gets a grey cell that says why; nothing here raises for a bad
match, and a notebook repr never raises at all.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from crossscale._checks import int_at_least
from crossscale.errors import ConfigurationError, ParentNotFoundError

if TYPE_CHECKING:
    from crossscale.types import ParentMatch

logger = logging.getLogger(__name__)

__all__ = ["BOX_COLOUR", "check_query", "results_html", "show"]

#: the colour of the drawn match boxes.
BOX_COLOUR = (255, 32, 32)
_BACKGROUND = (255, 255, 255)
_PLACEHOLDER = (224, 224, 224)
_TEXT = (20, 20, 20)
_CAPTION_LINES = 2


@dataclass(frozen=True)
class _Cell:
    """One picture of the grid, its caption lines, and what it shows in words (the HTML's ``alt``)."""

    image: Image.Image
    caption: tuple[str, ...]
    alt: str


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _placeholder(side: int, why: str) -> Image.Image:
    cell = Image.new("RGB", (side, side), _PLACEHOLDER)
    ImageDraw.Draw(cell).text((8, side // 2 - 8), why, fill=_TEXT, font=_font(max(10, side // 18)))
    return cell


def _thumbnail(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    """``image`` scaled to fit ``side`` x ``side`` (small images are enlarged), and the scale used."""
    scale = min(side / image.width, side / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
    return image.convert("RGB").resize(size, resample, reducing_gap=None if scale > 1 else 3.0), scale


def _parent_cell(match: ParentMatch, rank: int, side: int) -> _Cell:
    caption = (f"#{rank}  {match.score:.3f}", match.parent_id)
    try:
        parent = match.image()
    except Exception as exc:  # noqa: BLE001 - a picture must say why, never raise
        if isinstance(exc, ParentNotFoundError):
            reason = "deleted since the search"
        elif isinstance(exc, ConfigurationError):
            reason = "not from a workspace"
        else:
            reason = f"unreadable ({type(exc).__name__})"
        logger.debug("cannot show parent %r: %s", match.parent_id, exc)
        return _Cell(_placeholder(side, f"no image: {reason}"), caption, f"{match.parent_id}: no image, {reason}")
    thumb, scale = _thumbnail(parent, side)
    draw = ImageDraw.Draw(thumb)
    width = max(2, side // 96)
    b = match.box
    x0, y0 = min(b.x0 * scale, thumb.width - 1), min(b.y0 * scale, thumb.height - 1)
    x1, y1 = max(x0 + 1, min(b.x1 * scale, thumb.width) - 1), max(y0 + 1, min(b.y1 * scale, thumb.height) - 1)
    draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR, width=width)
    return _Cell(thumb, caption, f"{match.parent_id}, the match boxed at {b.as_tuple()}")


def _query_cell(query: Image.Image | str | None, side: int) -> _Cell | None:
    if query is None:
        return None
    if isinstance(query, str):
        cell = Image.new("RGB", (side, side), _BACKGROUND)
        ImageDraw.Draw(cell).multiline_text(
            (8, 8), _wrap(query, 24), fill=_TEXT, font=_font(max(12, side // 14)), spacing=4
        )
        return _Cell(cell, ("query (text)", ""), f"query: {query}")
    thumb, _ = _thumbnail(query, side)
    return _Cell(thumb, ("query", f"{query.width}x{query.height}"), "the query image")


def _wrap(text: str, width: int) -> str:
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word[:width])
    return "\n".join(lines[:8])


def _cells(matches: Sequence[ParentMatch], query: Image.Image | str | None, side: int) -> list[_Cell]:
    cells = [c for c in [_query_cell(query, side)] if c is not None]
    cells += [_parent_cell(m, rank, side) for rank, m in enumerate(matches, 1)]
    if not matches:
        cells.append(_Cell(_placeholder(side, "no matches"), ("", ""), "no matches"))
    return cells


def _query_of(matches: Sequence[ParentMatch], query: Image.Image | str | None) -> Image.Image | str | None:
    return query if query is not None else getattr(matches, "query", None)


def show(
    matches: Sequence[ParentMatch],
    query: Image.Image | str | None = None,
    *,
    cell: int = 256,
    columns: int | None = None,
) -> Image.Image:
    """A picture of the results: the query (if given, or the :class:`SearchResult`'s own), then each parent with
    its box drawn in :data:`BOX_COLOUR`, and under each its rank, score and id.

    Args:
        matches: the ranked parents, e.g. what :meth:`CrossScaleSearch.search` returned.
        query: the query image or text; default: ``matches.query`` when ``matches`` is a search result.
        cell: the side of each square picture cell in pixels (parents are shrunk, or small ones enlarged, to fit).
        columns: cells per row (default: all in one row, up to 6).

    Returns:
        An RGB image. An empty result gives the query and a "no matches" cell; a parent that cannot be read gives
        a grey cell that says why.
    """
    side = int_at_least("cell", cell, 32)
    cells = _cells(matches, check_query(_query_of(matches, query)), side)
    per_row = min(len(cells), 6) if columns is None else int_at_least("columns", columns, 1)
    font = _font(max(11, side // 20))
    line = int(font.getbbox("Ag")[3]) + 4
    pad = max(4, side // 32)
    width, height = side + 2 * pad, side + 2 * pad + _CAPTION_LINES * line
    rows = -(-len(cells) // per_row)
    canvas = Image.new("RGB", (per_row * width, rows * height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for n, c in enumerate(cells):
        left, top = (n % per_row) * width + pad, (n // per_row) * height + pad
        canvas.paste(c.image, (left + (side - c.image.width) // 2, top + (side - c.image.height) // 2))
        for k, text in enumerate(c.caption):
            draw.text((left, top + side + 2 + k * line), _fit(text, font, side), fill=_TEXT, font=font)
    return canvas


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def results_html(matches: Sequence[ParentMatch], query: Image.Image | str | None = None, *, cell: int = 192) -> str:
    """The results as HTML for a notebook: the same cells as :func:`show`, as images with text captions.

    Never raises: whatever goes wrong is said in the HTML itself.
    """
    try:
        side = int_at_least("cell", cell, 32)
        figures = []
        for c in _cells(matches, check_query(_query_of(matches, query)), side):
            text = "<br>".join(html.escape(t) for t in c.caption if t)
            figures.append(
                f'<figure style="margin:4px;width:{side}px;text-align:left">'
                f'<div style="height:{side}px;display:flex;align-items:center;justify-content:center">'
                f'<img src="{_data_uri(c.image)}" alt="{html.escape(c.alt)}" '
                f'style="max-width:{side}px;max-height:{side}px"></div>'
                f'<figcaption style="font:12px monospace;word-break:break-all">{text}</figcaption></figure>'
            )
        return '<div style="display:flex;flex-wrap:wrap;align-items:flex-start">' + "".join(figures) + "</div>"
    except Exception as exc:  # a notebook repr must not raise
        logger.debug("cannot render results", exc_info=True)
        return f"<pre>crossscale: cannot draw these results ({html.escape(repr(exc))})</pre>"


def check_query(query: object) -> Image.Image | str | None:
    """``query`` if it is something :func:`show` can draw (a PIL image, a text, or None)."""
    if query is None or isinstance(query, Image.Image | str):
        return query
    raise ConfigurationError(f"query must be a PIL image, a text or None, got {type(query).__name__}")
