"""Read-only attributes forwarded from a member object: one typed line each instead of a property each."""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

__all__ = ["Forward"]

T = TypeVar("T")


class Forward(Generic[T]):
    """``owner.name`` reads ``owner.<via>.<source>`` (``source`` defaults to the attribute's own name).

    ::

        class Hit:
            record: ChunkRecord
            parent_id = Forward[str]("record")     # hit.parent_id is hit.record.parent_id
    """

    def __init__(self, via: str, source: str | None = None) -> None:
        self.via = via
        self.source = source or ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.source = self.source or name
        self.__doc__ = f"``{self.via}.{self.source}`` (read-only)."

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Forward[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Forward[T] | T:
        if obj is None:
            return self
        value: T = getattr(getattr(obj, self.via), self.source)
        return value

    def __set__(self, obj: object, value: Any) -> None:
        raise AttributeError(f"{self.source} is read-only here; it belongs to {type(obj).__name__}.{self.via}")
