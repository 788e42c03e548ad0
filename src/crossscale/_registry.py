"""Build components by name, as timm's ``create_model`` does."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Generic, TypeVar

from crossscale.errors import ConfigurationError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """A name → factory table for one kind of component (encoders, segmenters)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``factory`` under ``name``."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            key = name.lower()
            if key in self._factories:
                raise ConfigurationError(f"{self.kind} {name!r} is already registered")
            self._factories[key] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def factory(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name`` (case-insensitive).

        Raises:
            ConfigurationError: no such name; the message lists the known ones.
        """
        if not isinstance(name, str):
            raise ConfigurationError(f"{self.kind} name must be a str, got {name!r}")
        key = name.strip().lower()
        if key not in self._factories:
            close = difflib.get_close_matches(key, self._factories, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"unknown {self.kind} {name!r}{hint} Known: {', '.join(self.names())}")
        return self._factories[key]

    def keywords(self, name: str) -> frozenset[str] | None:
        """The keyword arguments the factory registered as ``name`` takes; ``None`` if it takes any (``**kwargs``)
        or its signature cannot be read."""
        try:
            parameters = inspect.signature(self.factory(name)).parameters.values()
        except ValueError:
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        return frozenset(p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))

    def create(self, name: str, **kwargs: object) -> T:
        """Build the component registered as ``name`` with ``kwargs``."""
        factory = self.factory(name)
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"bad arguments for {self.kind} {name!r}: {exc}") from exc
        except ValueError:  # no signature available (C callables): let the call decide
            pass
        return factory(**kwargs)
