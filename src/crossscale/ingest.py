"""The ingest path: ``inputs → loaded images → chunks → vectors → records``, one bad image never losing the others.

:func:`ingest` drives it for a workspace; its steps are plain functions over batches (:func:`iter_inputs`,
:func:`load_batch`, :func:`segment_batch`, :func:`encode_batch`) so that another driver (a process pool, a Ray
pipeline) can run them elsewhere and hand the finished :class:`~crossscale.index.root_store.NewParent` objects
to the one writer.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from crossscale._checks import int_at_least
from crossscale._images import ImageInput, LoadedImage, describe, iter_image_files, load_image
from crossscale._vectors import embed, embed_regions
from crossscale.errors import ConfigurationError, CrossScaleError
from crossscale.index.root_store import NewParent, validate_parent_id
from crossscale.protocols import Encoder, RegionEncoder, Segmenter, Verifier
from crossscale.types import Box, Chunk, IndexFailure, IndexReport
from crossscale.workspace import Workspace

logger = logging.getLogger(__name__)

__all__ = [
    "InputItem",
    "Segmented",
    "encode_batch",
    "extract_local",
    "ingest",
    "ingest_report",
    "iter_inputs",
    "json_ready",
    "load_batch",
    "save_after_ingest",
    "segment_batch",
    "store_batch",
]


@dataclass(frozen=True)
class InputItem:
    """One input as the caller gave it, with the id and metadata it will be stored under.

    Attributes:
        source: a description for reports (the path, ``"<PIL.Image RGB 640x480>"``, ``"id (path)"``).
        item: the image input itself (path, bytes, PIL image, array).
        parent_id: the id asked for, or ``None`` for a content hash.
        metadata: what to store with it.
        error: why the input is unusable before it is even read (a malformed tuple), else ``None``.
    """

    source: str
    item: Any
    parent_id: str | None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Loaded:
    """An input read and checked: its id, image and metadata."""

    parent_id: str
    image: LoadedImage
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class Segmented:
    """A loaded input and its chunks (never empty: the whole image stands in when the segmenter finds none).

    ``local``: what a verifier extracted of the image, when that was done before encoding (see :func:`ingest`).
    """

    loaded: Loaded
    chunks: Sequence[Chunk]
    local: bytes | None = None


def json_ready(value: Any, what: str) -> Any:
    """``value`` as JSON would give it back, or a :class:`ConfigurationError` naming ``what``."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what} must be JSON-serialisable: {exc}") from exc


# ====================================================================== inputs
def iter_inputs(
    inputs: ImageInput | Iterable[Any], ids: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None
) -> list[InputItem] | Iterator[InputItem]:
    """Normalise what ``index()`` accepts to :class:`InputItem` s: a list when the count is known, else a generator.

    ``inputs``: a folder (searched recursively for image files), a path, bytes, a PIL image, a numpy array, or
    an iterable of those or of ``(id, image)`` / ``(id, image, metadata)`` tuples. A generator stays lazy.

    Raises:
        ConfigurationError: a mapping was passed, or ``ids`` does not match the inputs one to one.
    """
    base_meta = dict(metadata or {})
    if isinstance(inputs, str | os.PathLike) and Path(inputs).is_dir():
        files = iter_image_files(Path(inputs))
        if not files:
            logger.warning("no image files under %s", inputs)
        inputs = files
    elif isinstance(inputs, str | os.PathLike | bytes | Image.Image | np.ndarray):
        inputs = [inputs]
    elif isinstance(inputs, Mapping):
        raise ConfigurationError("inputs must be images or an iterable of them, not a mapping; use ids= or tuples")
    if ids is not None:
        inputs = list(inputs)
        if isinstance(ids, str) or len(ids) != len(inputs):
            raise ConfigurationError(f"ids must be a sequence of {len(inputs)} ids, one per input")

    def items() -> Iterator[InputItem]:
        for n, entry in enumerate(inputs):
            pid: str | None = ids[n] if ids is not None else None
            meta = dict(base_meta)
            item = entry
            if isinstance(entry, tuple):
                if len(entry) not in (2, 3):
                    yield InputItem(
                        describe(entry), entry, None, meta, "tuple inputs must be (id, image) or (id, image, metadata)"
                    )
                    continue
                pid, item = entry[0], entry[1]
                if len(entry) == 3:
                    meta.update(entry[2] or {})
            if isinstance(item, str | os.PathLike):
                meta.setdefault("source", os.fspath(item))
            source = describe(item) if pid is None else f"{pid} ({describe(item)})"
            yield InputItem(source, item, pid, meta)

    return list(items()) if isinstance(inputs, list) else items()


# ====================================================================== the steps, over one batch
def load_batch(
    batch: Sequence[InputItem], *, max_pixels: int, is_known: Callable[[str], bool]
) -> tuple[list[Loaded], list[str], list[IndexFailure]]:
    """Read a batch: ``(loaded, ids already known, failures)``.

    ``is_known(parent_id)`` says whether a parent is stored already or earlier in the run; such inputs are
    reported as present, not read twice.
    """
    loaded, present, failed = _load(batch, max_pixels=max_pixels, is_known=is_known)
    return loaded, [parent_id for parent_id, _ in present], failed


def _load(
    batch: Sequence[InputItem], *, max_pixels: int, is_known: Callable[[str], bool]
) -> tuple[list[Loaded], list[tuple[str, InputItem]], list[IndexFailure]]:
    """:func:`load_batch`, with each present id's input (the driver may need to read it after all)."""
    loaded: list[Loaded] = []
    present: list[tuple[str, InputItem]] = []
    failed: list[IndexFailure] = []
    for entry in batch:
        if entry.error is not None:
            failed.append(IndexFailure(entry.source, entry.error, "ConfigurationError"))
            continue
        try:
            image = load_image(entry.item, max_pixels=max_pixels)
            parent_id = validate_parent_id(entry.parent_id) if entry.parent_id is not None else image.content_id()
            meta = json_ready(dict(entry.metadata), f"metadata of {entry.source}")
        except CrossScaleError as exc:
            failed.append(IndexFailure(entry.source, str(exc), type(exc).__name__))
            continue
        if is_known(parent_id) or any(x.parent_id == parent_id for x in loaded):
            present.append((parent_id, entry))
            continue
        loaded.append(Loaded(parent_id, image, meta))
    return loaded, present, failed


def _segment_all(segmenter: Segmenter, images: list[Image.Image]) -> list[list[Chunk] | Exception]:
    """Segment a batch; if the batch fails, one image at a time so that the bad one alone fails."""
    try:
        result: list[list[Chunk] | Exception] = list(segmenter.segment(images))
        if len(result) != len(images):
            raise ConfigurationError(f"segmenter returned {len(result)} results for {len(images)} images")
        return result
    except Exception as exc:  # noqa: BLE001 - isolated below
        if len(images) == 1:
            return [exc]
    out: list[list[Chunk] | Exception] = []
    for im in images:
        try:
            out.append(next(iter(segmenter.segment([im]))))
        except Exception as exc:  # noqa: BLE001 - reported per image
            out.append(exc)
    return out


def _fits(chunk: object, image: Image.Image) -> bool:
    return isinstance(chunk, Chunk) and chunk.box.x1 <= image.width and chunk.box.y1 <= image.height


def segment_batch(segmenter: Segmenter, batch: Sequence[Loaded]) -> tuple[list[Segmented], list[IndexFailure]]:
    """Cut each loaded image into chunks. An image the segmenter fails on, or gives a box outside it, fails alone."""
    if not batch:
        return [], []
    results = _segment_all(segmenter, [x.image.image for x in batch])
    done: list[Segmented] = []
    failed: list[IndexFailure] = []
    for x, chunks in zip(batch, results, strict=True):
        image = x.image.image
        if isinstance(chunks, Exception):
            failed.append(
                IndexFailure(x.image.source, f"segmenter failed: {chunks}", type(chunks).__name__, x.parent_id)
            )
            continue
        if not chunks:  # every parent stays findable: fall back to the whole image
            chunks = [Chunk(Box(0, 0, image.width, image.height), image, "whole")]
        bad = next((c for c in chunks if not _fits(c, image)), None)
        if bad is not None:
            reason = f"segmenter returned {bad!r}: not a Chunk inside the {image.width}x{image.height} image"
            failed.append(IndexFailure(x.image.source, reason, "ConfigurationError", x.parent_id))
            continue
        done.append(Segmented(x, chunks))
    return done, failed


def _crops(segmented: Segmented) -> list[Image.Image]:
    image = segmented.loaded.image.image
    return [c.image if c.image is not None else image.crop(c.box.as_tuple()) for c in segmented.chunks]


def _embed_each(encoder: Encoder, batch: Sequence[Segmented]) -> list[np.ndarray | Exception]:
    """The chunk vectors of each image, one encoder call per image; an image that fails gets its exception."""
    vectors: list[np.ndarray | Exception] = []
    for s in batch:
        try:
            if isinstance(encoder, RegionEncoder):  # one pass over the image for all its boxes
                vectors.append(embed_regions(encoder, s.loaded.image.image, [c.box for c in s.chunks]))
            else:
                vectors.append(embed(encoder, _crops(s)))
        except Exception as exc:  # noqa: BLE001 - reported per image
            vectors.append(exc)
    return vectors


def extract_local(verifier: Verifier, loaded: Loaded) -> bytes | None:
    """What ``verifier`` keeps of the image, or ``None`` (logged) if it fails: the parent is indexed all the same,
    it just cannot be verified."""
    try:
        data = verifier.extract(loaded.image.image)
        if not isinstance(data, bytes):
            raise TypeError(f"extract() returned {type(data).__name__}, not bytes")
        return data
    except Exception as exc:  # noqa: BLE001 - verification fails soft
        logger.warning(
            "%s: no local features (%s: %s); it will not be verified", loaded.image.source, type(exc).__name__, exc
        )
        return None


def encode_batch(
    encoder: Encoder, batch: Sequence[Segmented], verifier: Verifier | None = None
) -> tuple[list[NewParent], list[IndexFailure]]:
    """Embed every chunk of the batch, and keep what ``verifier`` extracts of each image; a bad image fails alone.

    A :class:`~crossscale.protocols.RegionEncoder` embeds each image's boxes in one call (one forward pass);
    any other encoder gets the crops of the whole batch in one call (retried image by image if it fails).
    Without a ``verifier``, each parent keeps the ``local`` features its :class:`Segmented` carries.
    """
    vectors: list[np.ndarray | Exception] = []
    if isinstance(encoder, RegionEncoder):
        vectors = _embed_each(encoder, batch)
    else:
        try:
            flat = embed(encoder, [crop for s in batch for crop in _crops(s)])
            offset = 0
            for s in batch:
                vectors.append(flat[offset : offset + len(s.chunks)])
                offset += len(s.chunks)
        except Exception:  # noqa: BLE001 - retried per image to isolate the bad one
            vectors = _embed_each(encoder, batch)
    parents: list[NewParent] = []
    failed: list[IndexFailure] = []
    for s, vecs in zip(batch, vectors, strict=True):
        x = s.loaded
        if isinstance(vecs, Exception):
            failed.append(IndexFailure(x.image.source, f"encoder failed: {vecs}", type(vecs).__name__, x.parent_id))
            continue
        parents.append(
            NewParent(
                parent_id=x.parent_id,
                data=x.image.data,
                format=x.image.format,
                width=x.image.image.width,
                height=x.image.image.height,
                chunks=s.chunks,
                vectors=vecs,
                source=x.image.source,
                metadata=x.metadata,
                local=extract_local(verifier, x) if verifier is not None else s.local,
            )
        )
    return parents, failed


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ====================================================================== the writer
def store_batch(workspace: Workspace, parents: Sequence[NewParent]) -> tuple[list[list[int]], list[IndexFailure]]:
    """Store ``parents`` in one transaction: ``(chunk ids of each, [])``, or ``([], a failure for each)`` when the
    store refuses the batch (nothing of it is then stored)."""
    try:
        return workspace.add(parents), []
    except CrossScaleError as exc:
        reason, kind = str(exc), type(exc).__name__
        return [], [IndexFailure(p.source or p.parent_id, reason, kind, p.parent_id) for p in parents]


def save_after_ingest(workspace: Workspace, chunks_added: int, seconds: float) -> None:
    """Save the index if the run (of ``seconds``) added chunks and a write is due
    (:meth:`Workspace.save_if_due`); a failed save is logged, not raised (the store has committed, and the index
    is caught up from it on the next open)."""
    if not chunks_added:
        return
    try:
        workspace.save_if_due(seconds)
    except CrossScaleError as exc:
        logger.error("%s", exc)


def ingest_report(
    added: Sequence[str],
    present: Sequence[str],
    failed: Sequence[IndexFailure],
    chunks_added: int,
    started: float,
    *,
    how: str = "",
) -> IndexReport:
    """The run's :class:`~crossscale.types.IndexReport` (``started``: its ``time.perf_counter()``), logged: each
    failure as a warning, the summary (followed by ``how``) as info."""
    report = IndexReport(tuple(added), tuple(present), tuple(failed), chunks_added, time.perf_counter() - started)
    for failure in failed:
        logger.warning("not indexed: %s: %s", failure.source, failure.reason)
    logger.info("%s%s", report, how)
    return report


# ====================================================================== the driver
@dataclass(frozen=True)
class _Prepared:
    """A batch read, segmented and (with a verifier) its local features extracted: all but the encoder's work.

    ``present``: inputs whose id was known when read, with the input (its earlier copy may fail after all).
    """

    size: int
    segmented: list[Segmented]
    present: list[tuple[str, InputItem]]
    failed: list[IndexFailure]


def _prepare(
    batch: Sequence[InputItem],
    *,
    segmenter: Segmenter,
    verifier: Verifier | None,
    max_pixels: int,
    is_known: Callable[[str], bool],
    seen: set[str],
) -> _Prepared:
    loaded, present, failed = _load(batch, max_pixels=max_pixels, is_known=is_known)
    seen.update(x.parent_id for x in loaded)
    segmented, seg_errors = segment_batch(segmenter, loaded)
    if verifier is not None:
        segmented = [Segmented(s.loaded, s.chunks, extract_local(verifier, s.loaded)) for s in segmented]
    return _Prepared(len(batch), segmented, present, failed + seg_errors)


class _Raised:
    """An exception of the preparing thread, handed to the driver to raise."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


def _prepared_ahead(
    batches: Iterator[list[InputItem]], prepare: Callable[[list[InputItem]], _Prepared], prefetch: int
) -> Generator[_Prepared, None, None]:
    """``prepare(batch)`` of each batch in order, up to ``prefetch`` batches ahead in one background thread.

    Decoding, segmenting and feature extraction of the next batches then overlap the encoder's work on this one
    (PIL, OpenCV and torch release the GIL); at most ``prefetch + 2`` batches are in memory, whatever the input
    size. ``prefetch=0`` prepares each batch in the caller's thread. An exception of the thread (e.g. from the
    caller's input generator) is raised here, in order; closing this generator stops the thread and waits for it.
    """
    if prefetch == 0:
        for batch in batches:
            yield prepare(batch)
        return
    ready: queue.Queue[object] = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not put(prepare(batch)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the driver, which raises it
            put(_Raised(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=work, name="crossscale-ingest-prepare", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, _Raised):
                raise item.exc
            yield cast(_Prepared, item)
    finally:
        stop.set()
        thread.join()


def ingest(
    workspace: Workspace,
    items: list[InputItem] | Iterator[InputItem],
    *,
    segmenter: Segmenter,
    encoder: Encoder,
    batch_size: int,
    max_pixels: int,
    progress: bool,
    verifier: Verifier | None = None,
    prefetch: int = 1,
) -> IndexReport:
    """Load, segment, encode and store ``items`` in batches of ``batch_size``; the index is saved at the end.

    Each batch is one store transaction, written by the calling thread. While the encoder works on one batch, a
    background thread reads, segments and extracts local features of up to ``prefetch`` next batches
    (``prefetch=0``: none; the result is the same). A failure of one input (unreadable, a segmenter or encoder
    error on it) is reported and never stops the others; a failed store write reports its whole batch. A
    generator of inputs is consumed lazily: memory stays bounded whatever its length.
    """
    from tqdm.auto import tqdm

    prefetch = int_at_least("prefetch", prefetch, 0)
    started = time.perf_counter()
    added: list[str] = []
    present: list[str] = []
    failed: list[IndexFailure] = []
    failed_ids: set[str] = set()  # ids whose every copy so far failed: a later copy is read after all
    chunks_added = 0
    seen: set[str] = set()  # ids read in this run and not failed (the preparing thread reads it)
    one_at_a_time = threading.Lock()  # segmenters and verifiers need not be thread-safe (SIFT, YOLO are not)

    def prepare(batch: Sequence[InputItem]) -> _Prepared:
        with one_at_a_time:  # a retry in this thread waits for the preparing thread's batch
            return _prepare(
                batch,
                segmenter=segmenter,
                verifier=verifier,
                max_pixels=max_pixels,
                is_known=lambda p: p in seen or p in workspace,
                seen=seen,
            )

    total = len(items) if isinstance(items, list) else None
    bar = tqdm(total=total, unit="img", disable=not progress, desc="indexing", smoothing=0.1)
    prepared = _prepared_ahead(_batched(items, batch_size), prepare, prefetch)
    try:
        for batch in prepared:
            segmented, errors = list(batch.segmented), list(batch.failed)
            retry = [entry for pid, entry in batch.present if pid in failed_ids]
            present += [pid for pid, _ in batch.present if pid not in failed_ids]
            if retry:  # read while an earlier copy was still to fail
                again = prepare(retry)
                segmented += again.segmented
                errors += again.failed
                present += [pid for pid, _ in again.present]
            new, enc_errors = encode_batch(encoder, segmented)  # local features were extracted with the batch
            errors += enc_errors
            if new:
                assigned, refused = store_batch(workspace, new)
                errors += refused
                if not refused:
                    added += [p.parent_id for p in new]
                    failed_ids.difference_update(p.parent_id for p in new)
                    chunks_added += sum(len(ids) for ids in assigned)
            failed += errors
            lost = {f.parent_id for f in errors if f.parent_id}
            failed_ids.update(lost)
            seen.difference_update(lost)  # a later copy may succeed
            bar.update(batch.size)
    finally:
        prepared.close()  # stops the preparing thread before anything else touches the workspace
        bar.close()
        save_after_ingest(workspace, chunks_added, time.perf_counter() - started)
    return ingest_report(added, present, failed, chunks_added, started)
