"""The exception tree of crossscale.

Every error the library raises on purpose derives from :class:`CrossScaleError`,
so ``except crossscale.CrossScaleError`` catches them all. Where a built-in
category fits, the error also derives from it (``ValueError``, ``LookupError``,
``ImportError``) so generic handlers keep working; no class shadows a built-in
name.

::

    CrossScaleError
    ├── ConfigurationError (ValueError)     bad parameter, unknown component name
    │   ├── DeviceError                     device string invalid or not available
    │   └── CapabilityError                 a stage cannot do what was asked (text queries, image-only encoder)
    ├── MissingDependencyError (ImportError) an optional extra is not installed
    ├── ModelLoadError                      weights/config cannot be loaded
    ├── ImageLoadError (ValueError)         an input image cannot be read or decoded
    ├── VectorError (ValueError)            vectors of wrong shape, dtype or values
    ├── ChunkIndexError                     the FAISS index refused an operation
    ├── ParentNotFoundError (LookupError)   no parent with that id
    └── WorkspaceError                      workspace-level problems
        ├── WorkspaceMismatchError          reopened with an incompatible encoder
        ├── WorkspaceFormatError            unknown/newer format, corrupt files
        └── WorkspaceLockedError            another writer holds the workspace
"""

from __future__ import annotations

__all__ = [
    "CapabilityError",
    "ChunkIndexError",
    "ConfigurationError",
    "CrossScaleError",
    "DeviceError",
    "ImageLoadError",
    "MissingDependencyError",
    "ModelLoadError",
    "ParentNotFoundError",
    "VectorError",
    "WorkspaceError",
    "WorkspaceFormatError",
    "WorkspaceLockedError",
    "WorkspaceMismatchError",
]


class CrossScaleError(Exception):
    """Base class of every error raised by crossscale on purpose."""


class ConfigurationError(CrossScaleError, ValueError):
    """A parameter has an invalid value, or a component name is unknown."""


class DeviceError(ConfigurationError):
    """A ``device=`` string is invalid, or names hardware that is not present."""


class CapabilityError(ConfigurationError):
    """The configured stage cannot do what was asked, e.g. a text query with an encoder that has no text tower."""


class MissingDependencyError(CrossScaleError, ImportError):
    """An optional dependency is missing; the message says what to install."""


class ModelLoadError(CrossScaleError):
    """Model weights or configuration could not be loaded."""


class ImageLoadError(CrossScaleError, ValueError):
    """An input could not be read or decoded as an image.

    Attributes:
        source: a short description of the input (path, ``"<bytes>"``, ...).
        reason: what is wrong with it.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class VectorError(CrossScaleError, ValueError):
    """Vectors have the wrong shape or dtype, or contain NaN/inf or zero rows."""


class ChunkIndexError(CrossScaleError):
    """The chunk index cannot perform the operation (e.g. untrained IVF index)."""


class ParentNotFoundError(CrossScaleError, LookupError):
    """No parent with the given id is stored."""

    def __init__(self, parent_id: str) -> None:
        super().__init__(f"no parent with id {parent_id!r}")
        self.parent_id = parent_id

    def __str__(self) -> str:  # LookupError/KeyError would repr() the message
        return str(self.args[0])


class WorkspaceError(CrossScaleError):
    """A workspace cannot be opened or used."""


class WorkspaceMismatchError(WorkspaceError):
    """The workspace was built with a different, incompatible encoder."""


class WorkspaceFormatError(WorkspaceError):
    """The workspace files are of an unknown or newer format, or corrupt."""


class WorkspaceLockedError(WorkspaceError):
    """Another process holds the workspace open for writing."""
