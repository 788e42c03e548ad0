"""Building the stages a workspace records: from names, objects, or the workspace's own record.

:class:`StageRequest` is what ``CrossScaleSearch.open()`` was asked for; :meth:`StageRequest.configure` is called by
:meth:`~crossscale.workspace.Workspace.open` under the writer's lock with the stored config, and returns the config
to use, building the encoder, segmenter and verifier on the way (``request.built``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossscale.encode import create_encoder, encoder_keywords
from crossscale.errors import ConfigurationError, WorkspaceMismatchError
from crossscale.index import is_milvus_factory, parse_memory, parse_milvus_factory
from crossscale.index.choose import check_reduce_dim
from crossscale.ingest import json_ready
from crossscale.protocols import Encoder, Segmenter, Verifier, check_stage
from crossscale.rank import create_verifier, verifier_keywords
from crossscale.segment import create_segmenter
from crossscale.workspace import AUTO_INDEX, ComponentSpec, WorkspaceConfig, new_config

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "clip"
#: new workspaces keep SIFT features of each parent and verify the top matches (docs/benchmarks.md)
DEFAULT_VERIFIER = "sift"
DEFAULT_SEGMENTER = "whole+yolo+tiles"
#: new workspaces store vectors as float16: half the bytes, the same quality benchmark figures on both seeds
DEFAULT_VECTOR_DTYPE = "float16"


@dataclass(frozen=True)
class StageKind:
    """A kind of stage a workspace records: its name in arguments, its default, how to build it, its protocol."""

    what: str
    default: str | None
    create: Callable[[str, str, Mapping[str, Any]], Any]  # (name, device, kwargs) -> stage
    protocol: type
    keywords: Callable[[str], frozenset[str] | None]  # the keyword arguments the factory of a name takes (None: any)


ENCODERS = StageKind(
    "encoder", DEFAULT_ENCODER, lambda n, d, kw: create_encoder(n, device=d, **kw), Encoder, encoder_keywords
)
SEGMENTERS = StageKind(
    "segmenter",
    DEFAULT_SEGMENTER,
    lambda n, d, kw: create_segmenter(n, device=d, **kw),
    Segmenter,
    lambda n: frozenset(),  # segmenters record no settings: new images may use another segmenter anyway
)
VERIFIERS = StageKind(
    "verifier", DEFAULT_VERIFIER, lambda n, d, kw: create_verifier(n, **kw), Verifier, verifier_keywords
)


class StageRequest:
    """What ``open()`` was asked for; :meth:`configure` turns it, and the stored config, into stages and a config."""

    def __init__(
        self,
        given: dict[StageKind, Any],
        kwargs: dict[StageKind, Mapping[str, Any] | None],
        index_factory: str | None,
        max_memory: str | int | None,
        vector_dtype: str | None,
        reduce_dim: int | None,
        readonly: bool,
        device: str,
        path: Path,
    ) -> None:
        for kind, stage in given.items():  # refused before anything touches the disk
            if stage is not None and stage is not False and not isinstance(stage, str):
                check_stage(stage, kind.protocol, kind.what)
        self.given, self.kwargs = given, kwargs
        self.index_factory, self.readonly, self.device, self.path = index_factory, readonly, device, path
        self.max_memory = parse_memory(max_memory) if max_memory is not None else None
        self.vector_dtype = vector_dtype
        check_reduce_dim(reduce_dim, None)  # the encoder's dim is checked against once it is built
        self.reduce_dim = reduce_dim
        self.built: dict[StageKind, Any] = {}

    def _stage(self, kind: StageKind, recorded: ComponentSpec | None, reopening: bool, build_now: bool) -> Any:
        stage, spec = _resolve_stage(
            kind,
            self.given[kind],
            self.kwargs[kind],
            recorded,
            reopening=reopening,
            build_now=build_now,
            device=self.device,
        )
        self.built[kind] = stage
        return spec

    def configure(self, stored: WorkspaceConfig | None) -> WorkspaceConfig:
        """Called by :meth:`Workspace.open` under the lock with the stored config (``None``: a new workspace)."""
        reopening = stored is not None
        vectors_only = self.given[ENCODERS] is False  # reopened to search by vectors: no encoder built
        if vectors_only and stored is None:
            raise ConfigurationError(
                f"{self.path}: encoder=False only reopens a workspace, to search it by vectors; a new workspace "
                "needs an encoder"
            )
        asked = self.given[VERIFIERS]
        if stored is not None and stored.verifier_name is None and asked not in (None, False):
            raise ConfigurationError(
                f"{self.path}: this workspace keeps no local features; verifier= only applies to new workspaces"
            )
        if stored is not None and stored.verifier_name is not None and asked is False:
            raise ConfigurationError(
                f"{self.path}: this workspace keeps the local features of verifier {stored.verifier_name!r} and "
                "needs it to index; pass verify_matches=False to search without verifying"
            )
        enc_spec = self._stage(ENCODERS, stored.encoder_spec if stored else None, reopening, True)
        seg_spec = self._stage(SEGMENTERS, stored.segmenter_spec if stored else None, reopening, not self.readonly)
        ver_spec = self._stage(VERIFIERS, stored.verifier_spec if stored else None, reopening, True)
        enc, seg, ver = (self.built[k] for k in (ENCODERS, SEGMENTERS, VERIFIERS))
        for kind, stage in ((ENCODERS, enc), (VERIFIERS, ver)):
            recorded_name = (
                None if stored is None else stored.encoder_name if kind is ENCODERS else stored.verifier_name
            )
            if stage is None and recorded_name is not None and not (kind is ENCODERS and vectors_only):
                raise ConfigurationError(
                    f"this workspace was built with {kind.what} {recorded_name!r} passed as an object; pass the "
                    f"same {kind.what}= to reopen it"
                )
        if stored is None:
            return new_config(
                encoder_name=enc.name,
                dim=int(enc.dim),
                encoder_spec=enc_spec,
                segmenter_name=seg.name if seg is not None else None,
                segmenter_spec=seg_spec,
                index_factory=self.index_factory or AUTO_INDEX,
                verifier_name=ver.name if ver is not None else None,
                verifier_spec=ver_spec,
                max_memory=self.max_memory,
                vector_dtype=self.vector_dtype or DEFAULT_VECTOR_DTYPE,
                reduce_dim=self.reduce_dim,
            )
        _check_compatible(self.path, stored, enc, seg, ver, self.index_factory)
        if self.vector_dtype is not None and self.vector_dtype != stored.vector_dtype:
            raise ConfigurationError(
                f"{self.path}: the store keeps {stored.vector_dtype} vectors; vector_dtype={self.vector_dtype!r} "
                "only applies to new workspaces"
            )
        if self.reduce_dim is not None and self.reduce_dim != stored.reduce_dim:
            kept = "whole vectors" if stored.reduce_dim is None else f"vectors projected to {stored.reduce_dim}"
            raise ConfigurationError(
                f"{self.path}: this workspace's index keeps {kept}; reduce_dim={self.reduce_dim!r} only applies to "
                "new workspaces"
            )
        if self.max_memory is not None and self.max_memory != stored.max_memory:
            if stored.index_factory != AUTO_INDEX:
                raise ConfigurationError(
                    f"{self.path}: max_memory only applies to an 'auto' index; this one is {stored.index_factory!r}"
                )
            return dataclasses.replace(stored, max_memory=self.max_memory)  # recorded by Workspace.open
        return stored


def _resolve_stage(
    kind: StageKind,
    given: object,
    kwargs: Mapping[str, Any] | None,
    recorded: ComponentSpec | None,
    *,
    reopening: bool,
    build_now: bool,
    device: str,
) -> tuple[Any, ComponentSpec | None]:
    """A stage and how to rebuild it: from a name, an object, or (``given`` None, ``reopening``) the workspace's
    record. ``(None, recorded)`` when reopening without one and it is not to be built now, or cannot be; and
    ``(None, None)`` for a new workspace asked for none of a kind that has no default."""
    if given is False:  # "none of this kind": refused by configure() where it is recorded, but for an encoder when
        return None, None  # reopening to search by vectors
    if given is None and reopening:
        if recorded is None or not build_now:
            return None, recorded
        return kind.create(recorded.name, device, recorded.kwargs), recorded
    as_recorded = isinstance(given, str) and not kwargs and recorded is not None and _same_name(given, recorded.name)
    if reopening and as_recorded and recorded is not None:  # the name it was built with, no kwargs: as built
        return kind.create(recorded.name, device, recorded.kwargs), recorded
    if given is None and kind.default is None:
        return None, None
    if given is None or isinstance(given, str):
        name = given or kind.default
        spec = ComponentSpec(str(name), json_ready(dict(kwargs or {}), f"{kind.what}_kwargs"))
        stage = kind.create(spec.name, device, spec.kwargs)
        return stage, _with_settings(kind, spec, stage)
    if kwargs:
        raise ConfigurationError(f"{kind.what}_kwargs only applies when {kind.what} is given by name")
    return given, None  # checked against kind.protocol by StageRequest


def _same_name(given: str, recorded: str) -> bool:
    """Registry names are case-insensitive and stripped."""
    return given.strip().lower() == recorded.strip().lower()


def _with_settings(kind: StageKind, spec: ComponentSpec, stage: object) -> ComponentSpec:
    """``spec`` with the stage's own ``settings`` (the arguments its identity depends on, defaults included) that
    its factory takes, so that reopening rebuilds the same stage even after a default changes."""
    settings = getattr(stage, "settings", None)
    if not isinstance(settings, Mapping) or not settings:
        return spec
    takes = kind.keywords(spec.name)
    kept = {k: v for k, v in settings.items() if takes is None or k in takes}
    if not kept:
        return spec
    return ComponentSpec(spec.name, {**spec.kwargs, **json_ready(kept, f"{kind.what} settings")})


def _check_compatible(
    root: Path,
    config: WorkspaceConfig,
    enc: Encoder | None,
    seg: Segmenter | None,
    ver: Verifier | None,
    index_factory: str | None,
) -> None:
    if enc is not None and (enc.name != config.encoder_name or int(enc.dim) != config.dim):
        raise WorkspaceMismatchError(
            f"{root}: built with encoder {config.encoder_name!r} (dim {config.dim}), "
            f"opened with {enc.name!r} (dim {enc.dim}); vectors of different encoders cannot be compared. "
            "Open it with the same encoder, or index into a new workspace"
        )
    if ver is not None and ver.name != config.verifier_name:
        raise WorkspaceMismatchError(
            f"{root}: its parents keep the local features of verifier {config.verifier_name!r}; "
            f"{ver.name!r} cannot read them. Open it with the same verifier"
        )
    if index_factory is not None and not _same_index(index_factory, config.index_factory):
        raise ConfigurationError(
            f"{root}: the index is {config.index_factory!r}; index_factory={index_factory!r} "
            "only applies to new workspaces"
        )
    if seg is not None and seg.name != config.segmenter_name:
        logger.info("workspace %s was segmented with %s; new images use %s", root, config.segmenter_name, seg.name)


def _same_index(given: str, recorded: str) -> bool:
    """``index_factory=given`` names the recorded index: the same string, or the same Milvus URI (a new workspace
    records the collection name it picked, which the caller need not repeat)."""
    if given == recorded:
        return True
    if not (is_milvus_factory(given) and is_milvus_factory(recorded)):
        return False
    ours, theirs = parse_milvus_factory(given), parse_milvus_factory(recorded)
    return ours.uri == theirs.uri and ours.collection in (None, theirs.collection)
