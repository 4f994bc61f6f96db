"""Named extension points: scorer backends, problem sources, learners (one module plus one line).

A :class:`Registry` maps a name to a ``"package.module:Name"`` string (imported on first use) or
to an object. Third-party packages add names without touching this package through an entry-point
group, read once on the first lookup::

    # pyproject.toml of a plugin
    [project.entry-points."repro_env.scorers"]
    my-backend = "my_plugin.scorer:MyScorer"

A lookup also accepts a literal ``"package.module:Name"``; an unknown name is a ``ConfigError``
with a did-you-mean.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

from repro_env.config import describe, suggest
from repro_env.errors import ConfigError


def import_object(target: str, what: str) -> Any:
    """The object a ``"package.module:Name"`` string names; ``ConfigError`` if it cannot be imported."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise ConfigError(f"{what} must be a registered name or 'package.module:Name', got {describe(target)}")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # a plugin module may raise anything on import
        raise ConfigError(f"{what}: cannot import {name!r} from {module!r} ({type(e).__name__}: {e})") from e
    return obj


class Registry:
    """Name → object, imported lazily; the entry-point group ``group`` adds installed plugins."""

    def __init__(self, kind: str, group: str, *, accepts: Callable[[Any], bool] = callable,
                 expected: str = "a class or a function") -> None:
        self.kind = kind
        """What the names are, for messages (``scorer backend``)."""
        self.group = group
        self.accepts, self.expected = accepts, expected
        """What a target must be (checked at registration, and once imported), and its description."""
        self._targets: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}
        self._origins: dict[str, str] = {}
        self._plugins_read = False

    def register(self, name: str, target: Any, *, replace: bool = False) -> None:
        """Register ``target`` (an object or a ``"package.module:Name"`` string) under ``name``."""
        if not isinstance(name, str) or not name or ":" in name:
            raise ConfigError(f"a {self.kind} name must be a non-empty string without ':', got {describe(name)}")
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            valid = bool(module and attr)
        else:
            valid = self.accepts(target)
        if not valid:
            raise ConfigError(f"{self.kind} {name!r}: the target must be {self.expected} or its "
                              f"'package.module:Name' path, got {describe(target)}")
        if name in self._targets and not replace and self._targets[name] != target:
            raise ConfigError(f"{self.kind} {name!r} is already registered ({self._targets[name]!r}); "
                              "pass replace=True to override it")
        self._targets[name] = target
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        self._read_plugins()
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.names() or ":" in name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def check(self, name: Any, field: str) -> None:
        """``ConfigError`` naming ``field`` unless ``name`` is registered or a ``pkg.mod:Name`` path."""
        if name not in self:
            raise ConfigError(f"field '{field}' must be one of {', '.join(repr(n) for n in self.names())} "
                              f"or 'package.module:Name', got {describe(name)}.{suggest(str(name), self.names())}")

    def get(self, name: str, field: str = "name") -> Any:
        """The object registered as ``name`` (imported now if needed), or the one a path names."""
        self.check(name, field)
        if name in self._loaded:
            return self._loaded[name]
        target = self._targets.get(name, name)
        what = f"{self.kind} {name!r}" + (f" ({self._origins[name]})" if name in self._origins else
                                          f" (registered as {target!r})" if target != name else "")
        obj = import_object(target, what) if isinstance(target, str) else target
        if not self.accepts(obj):
            raise ConfigError(f"{what} is {describe(obj)}, not {self.expected}")
        self._loaded[name] = obj
        return obj

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True
        for point in entry_points(group=self.group):
            if point.name not in self._targets:
                self._targets[point.name] = point.value
                dist = getattr(point.dist, "name", None) or "an unknown distribution"
                self._origins[point.name] = f"entry point {point.value!r} of {dist}, group {self.group!r}"
