"""Ingest on Ray Data: read+segment and encode as ``map_batches`` stages on actor pools, one writer.

Install the extra: ``pip install "crossscale[ray]"``. :func:`index_with_ray` runs the same steps as
:meth:`CrossScaleSearch.index <crossscale.CrossScaleSearch.index>` (:mod:`crossscale.ingest`'s
:func:`~crossscale.ingest.load_batch`, :func:`~crossscale.ingest.segment_batch` and
:func:`~crossscale.ingest.encode_batch`), spread over a Ray cluster: a pool of *prepare* actors reads, checks and
segments images (and extracts the verifier's local features), a pool of *encode* actors embeds the chunks (each
loads the model once, on a GPU if given a fraction of one), and the calling process, the workspace's one writer,
stores each finished batch in one transaction. The result is the workspace ``index()`` would build from the same
inputs: the same parents, chunks and vectors.

Ray must be initialised by the caller (``ray.init()`` locally, ``ray.init(address="ray://head:10001")`` on a
cluster); see docs/scaling.md. Every actor reads the images itself, so paths must be readable on every node
(a shared filesystem), or pass a ``ray.data.Dataset`` with the image bytes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from crossscale._checks import int_at_least, positive_int
from crossscale._images import DEFAULT_MAX_PIXELS, LoadedImage, decode_stored
from crossscale._stages import ENCODERS, SEGMENTERS, VERIFIERS
from crossscale.errors import ConfigurationError, CrossScaleError, MissingDependencyError
from crossscale.index.root_store import NewParent
from crossscale.ingest import (
    InputItem,
    Loaded,
    Segmented,
    encode_batch,
    extract_local,
    ingest_report,
    iter_inputs,
    load_batch,
    save_after_ingest,
    segment_batch,
    store_batch,
)
from crossscale.types import Box, Chunk, IndexFailure, IndexReport
from crossscale.workspace import ComponentSpec

if TYPE_CHECKING:
    from crossscale.search import CrossScaleSearch

logger = logging.getLogger(__name__)

__all__ = ["EncodeActor", "PrepareActor", "index_with_ray"]

_OK, _PRESENT, _FAILED = "ok", "present", "failed"
_TASK_CPUS = 0.1  # what the reading of a user's dataset reserves per task
_COLUMNS = (
    "status", "source", "parent_id", "metadata", "data", "format", "width", "height", "chunks", "local",
    "vectors", "error", "error_type",
)  # fmt: skip


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingDependencyError('Ray ingest needs Ray Data: pip install "crossscale[ray]"') from exc
    return ray


def _row(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: "" for c in _COLUMNS}
    row.update(data=b"", local=b"", vectors=b"", width=0, height=0, metadata="{}", chunks="[]")
    row.update(values)
    return row


def _columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    return {c: [r[c] for r in rows] for c in _COLUMNS}


def _rows(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    n = len(batch[_COLUMNS[0]])
    return [{c: _plain(batch[c][i]) for c in _COLUMNS} for i in range(n)]


def _plain(value: Any) -> Any:
    """A numpy scalar or bytes object of a Ray batch as plain Python."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _failure_row(failure: IndexFailure) -> dict[str, Any]:
    return _row(
        status=_FAILED,
        source=failure.source,
        parent_id=failure.parent_id or "",
        error=failure.reason,
        error_type=failure.error_type,
    )


def _chunks_json(chunks: Sequence[Chunk]) -> str:
    return json.dumps([[*c.box.as_tuple(), c.kind, c.label, c.confidence] for c in chunks])


def _chunks_of(text: str) -> list[Chunk]:
    return [Chunk(Box(x0, y0, x1, y1), None, kind, label, c) for x0, y0, x1, y1, kind, label, c in json.loads(text)]


class PrepareActor:
    """A Ray actor (``map_batches`` callable): reads, checks and segments a batch of inputs, and extracts the
    verifier's local features. Built once per actor from the workspace's recorded components."""

    def __init__(
        self,
        segmenter: ComponentSpec,
        verifier: ComponentSpec | None,
        device: str,
        max_pixels: int,
    ) -> None:
        self.segmenter = SEGMENTERS.create(segmenter.name, device, segmenter.kwargs)
        self.verifier = None if verifier is None else VERIFIERS.create(verifier.name, device, verifier.kwargs)
        self.max_pixels = max_pixels

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        items = [
            InputItem(str(s), str(p) if str(p) else bytes(b), (str(i) or None), json.loads(str(m)))
            for s, p, b, i, m in zip(
                batch["source"], batch["path"], batch["bytes"], batch["parent_id"], batch["metadata"], strict=True
            )
        ]
        loaded, present, failed = load_batch(items, max_pixels=self.max_pixels, is_known=lambda _: False)
        segmented, seg_failed = segment_batch(self.segmenter, loaded)
        rows = [_failure_row(f) for f in failed + seg_failed]
        rows += [_row(status=_PRESENT, parent_id=pid, source=pid) for pid in present]
        for s in segmented:
            x = s.loaded
            local = extract_local(self.verifier, x) if self.verifier is not None else None
            rows.append(
                _row(
                    status=_OK,
                    source=x.image.source,
                    parent_id=x.parent_id,
                    metadata=json.dumps(dict(x.metadata)),
                    data=x.image.data,
                    format=x.image.format,
                    width=x.image.image.width,
                    height=x.image.image.height,
                    chunks=_chunks_json(s.chunks),
                    local=local if local is not None else b"",  # a failed extraction was logged: not verifiable
                )
            )
        return _columns(rows)


class EncodeActor:
    """A Ray actor (``map_batches`` callable): embeds the chunks of prepared images. The encoder is built once per
    actor, on its ``device`` (a GPU when the actor was given one)."""

    def __init__(self, encoder: ComponentSpec, device: str) -> None:
        self.encoder = ENCODERS.create(encoder.name, device, encoder.kwargs)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        rows = _rows(batch)
        todo: list[Segmented] = []
        lost: dict[str | None, IndexFailure] = {}
        for r in rows:
            if r["status"] != _OK:
                continue
            try:
                image = decode_stored(r["data"], r["source"])  # the pixels the prepare actor segmented
            except CrossScaleError as exc:  # read once already: a failure here is the transfer's, report it
                lost[r["parent_id"]] = IndexFailure(r["source"], str(exc), type(exc).__name__, r["parent_id"])
                continue
            loaded = Loaded(r["parent_id"], LoadedImage(image, r["data"], r["format"], r["source"]), {})
            todo.append(Segmented(loaded, _chunks_of(r["chunks"])))
        parents, failed = encode_batch(self.encoder, todo)
        vectors = {p.parent_id: np.ascontiguousarray(p.vectors, dtype=np.float32).tobytes() for p in parents}
        lost.update((f.parent_id, f) for f in failed)
        out = []
        for r in rows:
            if r["status"] == _OK and r["parent_id"] in lost:
                out.append(_failure_row(lost[r["parent_id"]]))
            elif r["status"] == _OK:
                out.append({**r, "vectors": vectors[r["parent_id"]]})
            else:
                out.append(r)
        return _columns(out)


def _new_parent(row: Mapping[str, Any], dim: int) -> NewParent:
    chunks = _chunks_of(row["chunks"])
    vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(chunks), dim)
    return NewParent(
        parent_id=row["parent_id"],
        data=row["data"],
        format=row["format"],
        width=int(row["width"]),
        height=int(row["height"]),
        chunks=chunks,
        vectors=vectors,
        source=row["source"],
        metadata=json.loads(row["metadata"]),
        local=row["local"] or None,
    )


def _input_rows(inputs: Any, ids: Sequence[str] | None, metadata: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for item in iter_inputs(inputs, ids, metadata):
        if item.error is None and not isinstance(item.item, str | os.PathLike | bytes):
            reason = "Ray ingest takes image files (paths) or their bytes, not decoded images"
            item = InputItem(item.source, item.item, item.parent_id, item.metadata, reason)
        rows.append(
            {
                "source": item.source,
                "path": os.fspath(item.item) if isinstance(item.item, str | os.PathLike) else "",
                "bytes": item.item if isinstance(item.item, bytes) else b"",
                "parent_id": item.parent_id or "",
                "metadata": json.dumps(dict(item.metadata), default=str),
                "error": item.error or "",
            }
        )
    return rows


def _dataset_rows(batch: Mapping[str, Any]) -> dict[str, list[Any]]:
    """A ``map_batches`` function: a user's dataset rows (``path`` or ``bytes``, optional ``parent_id`` and
    ``metadata``) as the prepare actors' input columns."""
    n = len(next(iter(batch.values())))
    paths = [str(p) for p in batch["path"]] if "path" in batch else [""] * n
    data = [bytes(b) for b in batch["bytes"]] if "bytes" in batch else [b""] * n
    ids = [str(i) if i is not None else "" for i in batch["parent_id"]] if "parent_id" in batch else [""] * n
    metas = [_metadata_json(m) for m in batch["metadata"]] if "metadata" in batch else ["{}"] * n
    metas = [_with_source(m, p) for m, p in zip(metas, paths, strict=True)]  # as index() records a path
    sources = [p or (f"{i} (<bytes>)" if i else "<bytes>") for p, i in zip(paths, ids, strict=True)]
    return {"source": sources, "path": paths, "bytes": data, "parent_id": ids, "metadata": metas}


def _with_source(meta: str, path: str) -> str:
    if not path:
        return meta
    value = json.loads(meta)
    value.setdefault("source", path)
    return json.dumps(value)


def _metadata_json(value: Any) -> str:
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value if value.strip() else "{}"
    return json.dumps(dict(value), default=str)


def index_with_ray(
    cs: CrossScaleSearch,
    inputs: str | os.PathLike[str] | Iterable[Any] | Any,
    *,
    ids: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    prepare_actors: int = 1,
    prepare_num_cpus: float = 0.5,
    encode_actors: int = 1,
    encode_num_cpus: float = 0.5,
    encode_num_gpus: float = 0.0,
    device: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> IndexReport:
    """Index ``inputs`` into the workspace of ``cs`` (a writable :class:`~crossscale.CrossScaleSearch`) on Ray.

    The workspace's recorded components are rebuilt by name in each actor: a workspace built with a component
    passed as an object cannot be indexed on Ray. Ray must be initialised (``ray.init(...)``).

    Args:
        cs: the open, writable facade; it stores each finished batch (one transaction each) and saves at the end.
        inputs: a folder, a path, or an iterable of paths (or image files' bytes) or of ``(id, path)`` /
            ``(id, path, metadata)`` tuples; or a ``ray.data.Dataset`` whose rows have ``path`` (a file every
            node can read) or ``bytes`` (an image file's bytes), and optionally ``parent_id`` and ``metadata``
            (a dict or a JSON string).
        ids, metadata: as for :meth:`~crossscale.CrossScaleSearch.index`.
        batch_size: images per Ray batch and per store transaction (default: the facade's).
        prepare_actors, prepare_num_cpus: size of the read+segment actor pool, and the CPUs each reserves.
        encode_actors, encode_num_cpus, encode_num_gpus: size of the encoder pool and what each reserves. The
            pools together must leave 0.1 of the cluster's CPUs free: a pool whose actors reserve every CPU stalls
            Ray Data without an error, so that is refused.
        device: where actors run their models (default: the facade's; ``"auto"`` picks a GPU an actor was given).
        max_pixels: images with more pixels fail (decompression-bomb guard).

    Returns:
        The :class:`~crossscale.types.IndexReport`, as ``index()`` gives it: a bad image fails alone.

    Raises:
        MissingDependencyError: Ray Data is not installed.
        ConfigurationError: bad arguments, a component not recorded by name, Ray not initialised, actor pools
            that reserve every CPU of the cluster.
    """
    ray = _ray()
    workspace = cs.workspace
    workspace.check_open(write=True)
    config = workspace.config
    if config.encoder_spec is None or config.segmenter_spec is None:
        raise ConfigurationError(
            "Ray ingest rebuilds the workspace's encoder and segmenter by name in each actor; this workspace "
            "records one passed as an object"
        )
    if config.verifier_name is not None and config.verifier_spec is None:
        raise ConfigurationError("this workspace's verifier was passed as an object; Ray actors cannot rebuild it")
    batch_size = positive_int("batch_size", batch_size if batch_size is not None else cs.batch_size)
    prepare_actors = int_at_least("prepare_actors", prepare_actors, 1)
    encode_actors = int_at_least("encode_actors", encode_actors, 1)
    for name, value in (
        ("prepare_num_cpus", prepare_num_cpus),
        ("encode_num_cpus", encode_num_cpus),
        ("encode_num_gpus", encode_num_gpus),
    ):
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}")
    if not ray.is_initialized():
        raise ConfigurationError("Ray is not initialised: call ray.init() (or ray.init(address=...)) first")
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    reserved = prepare_actors * prepare_num_cpus + encode_actors * encode_num_cpus
    if reserved + _TASK_CPUS > cpus:  # Ray Data then waits for a CPU that never frees, without a word
        raise ConfigurationError(
            f"the actor pools reserve {reserved:g} of the cluster's {cpus:g} CPUs; leave at least {_TASK_CPUS:g} "
            "free for Ray Data's own tasks (fewer actors, or smaller prepare_num_cpus / encode_num_cpus)"
        )
    device = device or cs.device
    started = time.perf_counter()
    added: list[str] = []
    present: list[str] = []
    failed: list[IndexFailure] = []
    chunks_added = 0
    rows = []
    given: Any = inputs if isinstance(inputs, ray.data.Dataset) else None
    given_dataset = given is not None
    if given is not None:
        columns = set(given.columns() or ())
        if not columns & {"path", "bytes"}:
            raise ConfigurationError(
                f"a Ray dataset to index needs a 'path' or 'bytes' column, it has {sorted(columns)}"
            )
        if ids is not None or metadata is not None:
            raise ConfigurationError("with a Ray dataset, give ids and metadata as its parent_id and metadata columns")
    for row in [] if given_dataset else _input_rows(inputs, ids, metadata):
        if row["error"]:
            failed.append(IndexFailure(row["source"], row["error"], "ConfigurationError"))
        elif row["parent_id"] and row["parent_id"] in workspace:
            present.append(row["parent_id"])  # known ids are not even read again (a rerun resumes cheaply)
        else:
            rows.append({k: v for k, v in row.items() if k != "error"})
    if rows or given_dataset:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # batches are stored in input order, as index() does
        if given_dataset:
            dataset = given.map_batches(_dataset_rows, batch_size=batch_size, num_cpus=_TASK_CPUS, batch_format="numpy")
        else:
            dataset = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
        prepared = dataset.map_batches(
            PrepareActor,
            fn_constructor_kwargs={
                "segmenter": config.segmenter_spec,
                "verifier": config.verifier_spec,
                "device": device,
                "max_pixels": max_pixels,
            },
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=prepare_actors),
            num_cpus=prepare_num_cpus,
        )
        encoded = prepared.map_batches(
            EncodeActor,
            fn_constructor_kwargs={"encoder": config.encoder_spec, "device": device},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=encode_actors),
            num_cpus=encode_num_cpus,
            num_gpus=encode_num_gpus,
        )
        run_ids: set[str] = set()
        for batch in encoded.iter_batches(batch_size=batch_size, batch_format="numpy"):
            new = []
            for r in _rows(batch):
                if r["status"] == _FAILED:
                    failed.append(IndexFailure(r["source"], r["error"], r["error_type"], r["parent_id"] or None))
                elif r["status"] == _PRESENT or r["parent_id"] in workspace or r["parent_id"] in run_ids:
                    present.append(r["parent_id"])
                else:
                    new.append(_new_parent(r, config.dim))
                    run_ids.add(r["parent_id"])
            if not new:
                continue
            assigned, refused = store_batch(workspace, new)
            failed += refused
            if refused:
                run_ids.difference_update(p.parent_id for p in new)
            else:
                added += [p.parent_id for p in new]
                chunks_added += sum(len(a) for a in assigned)
    save_after_ingest(workspace, chunks_added, time.perf_counter() - started)
    report = ingest_report(added, present, failed, chunks_added, started, how=" (Ray)")
    return cs._after_ingest(report)  # local search's keypoint index, as CrossScaleSearch.index keeps it
