"""Frozen config dataclasses from mappings (YAML, keyword overrides) with typed, located errors.

Every concern has one frozen dataclass (``RewardConfig``, ``ScorerConfig``, ``TaskSpec`` ...). Their
``__post_init__`` checks values with :func:`check`; :func:`from_mapping` builds one from a dict,
rejecting unknown keys (with a "did you mean") and wrong types, and prefixes every message with the
source (a file path or "overrides").
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from repro_env.errors import ConfigError

T = TypeVar("T")


MIN_YAML_VALUES = 100_000
"""Aliases may expand a document to at most max(this, its length in characters) values."""


class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when installed
    """A safe loader (no arbitrary objects) that reads ``1e-6`` as a float and refuses duplicate keys.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-6``), so ``lr: 1e-6`` would load as
    the string '1e-6' and fail the type check; learning rates are almost always written that way.
    YAML leaves a repeated key to the loader, and PyYAML keeps the last one without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(problem=f"duplicate key {key!r} (first at line {first}); "
                                                        "keep one", problem_mark=key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep)


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                  list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """One YAML document: safe, YAML 1.2 exponent floats, no duplicate keys, aliases bounded.

    An alias shares its anchor's value, so a few hundred bytes of nested anchors can stand for
    billions of values that anything walking the data (copies, dumps, checks) would expand; a
    document whose aliases expand to more than ``max(MIN_YAML_VALUES, len(text))`` values is refused.
    """
    data = yaml.load(text, Loader=_YamlLoader)
    if "&" in text:  # no anchor, no alias
        limit = max(MIN_YAML_VALUES, len(text))
        if _expanded_size(data, limit, {}, set()) > limit:
            raise yaml.constructor.ConstructorError(
                problem=f"its aliases (*name) expand it to more than {limit} values; write the repeated "
                        "values out, or reuse fewer nested anchors (&name)")
    return data


def _expanded_size(value: Any, limit: int, sizes: dict[int, int], open_ids: set[int]) -> int:
    """Values in ``value`` with each alias counted at every use; stops counting past ``limit``."""
    if not isinstance(value, dict | list):
        return 1
    key = id(value)
    if key in open_ids:
        raise yaml.constructor.ConstructorError(problem="an alias refers to a value that contains it (a "
                                                        "recursive anchor), which expands without end")
    if key not in sizes:
        open_ids.add(key)
        children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        total = 1
        for child in children:
            total += _expanded_size(child, limit, sizes, open_ids)
            if total > limit:
                break
        open_ids.discard(key)
        sizes[key] = total
    return sizes[key]


def read_yaml_file(path: Path, error: type[ConfigError] = ConfigError) -> Any:
    """The YAML document in ``path``; bad YAML or a file that is not UTF-8 text raises ``error``
    naming the file (and the line, when there is one)."""
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); expected a YAML file") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise error(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from e


def describe(value: Any, limit: int | None = None) -> str:
    """``'-3' (str)``: a value as messages show it; its repr cut to ``limit`` characters (then ``...``)."""
    text = repr(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return f"{text} ({type(value).__name__})"


SEED_MAX = 2**32 - 1
"""Largest seed accepted: numpy's legacy generators take seeds below 2**32 (torch's up to 2**64)."""
SEED_RANGE = "an int in [0, 2**32 - 1] (a seed numpy and torch accept)"


def is_seed(value: Any) -> bool:
    """An int (not a bool) in [0, ``SEED_MAX``]."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX


def check(ok: bool, field: str, value: Any, expected: str, error: type[ConfigError] = ConfigError) -> None:
    """Raise ``error`` "field 'F' must be EXPECTED, got VALUE (type)" unless ``ok``."""
    if not ok:
        raise error(f"field '{field}' must be {expected}, got {describe(value)}")


def check_device(device: Any, field: str = "device", error: type[ConfigError] = ConfigError, *,
                 present: bool = False) -> None:
    """Raise ``error`` unless ``device`` names a torch device (``cpu``, ``cuda:1``) and, with
    ``present``, one this machine has. Configs check the name (a GPU config still loads on a CPU
    machine); whatever moves a model checks presence first.

    torch is imported only for devices other than ``cpu``, so checking a default config stays cheap.
    """
    expected = "a torch device such as 'cpu', 'cuda' or 'cuda:1'"
    check(isinstance(device, str) and device != "", field, device, expected, error)
    if device == "cpu":
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise error(f"field '{field}' must be {expected}, got {describe(device)}: {e}") from e
    if not present or parsed.type == "cpu":
        return
    backend = getattr(torch, parsed.type, None)
    count = backend.device_count() if hasattr(backend, "device_count") else 0
    check((parsed.index or 0) < count, field, device,
          f"a device this machine has (torch {torch.__version__} sees {count} {parsed.type} device(s); "
          "'cpu' always works)", error)


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for a close match, else an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def from_mapping(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    source: str = "config",
    error: type[ConfigError] = ConfigError,
    prefix: str = "",
) -> T:
    """Build the dataclass ``cls`` from ``data``; nested dataclass fields take nested mappings.

    Unknown keys, wrong types and values that ``__post_init__`` rejects raise ``error`` with the
    message prefixed by ``source`` and the dotted field path. A class may define a classmethod
    ``normalise_mapping(data) -> data`` that rewrites the mapping first (e.g. to gather a plugin's
    flat keys into its ``options``, see :func:`options_from_mapping`).
    """
    if not isinstance(data, Mapping):
        raise error(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {describe(data)}")
    if hasattr(cls, "normalise_mapping"):
        try:
            data = cls.normalise_mapping(data)
        except ConfigError as e:
            raise error(f"{source}: {_prefixed(str(e), prefix)}") from e
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise error(
                f"{source}: unknown key '{prefix}{key}'.{suggest(str(key), fields)} "
                f"Valid keys: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", source, error)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise error(f"{source}: {_prefixed(str(e), prefix)}") from e
    except TypeError as e:  # a required field is missing
        raise error(f"{source}: {prefix.rstrip('.') or cls.__name__}: {e}") from e


def _prefixed(message: str, prefix: str) -> str:
    """A ``field 'x' …`` / ``unknown key 'x' …`` message with the dotted path ``prefix`` put before x."""
    return re.sub(r"^(field|unknown key) '", rf"\1 '{prefix}", message, count=1) if prefix else message


def options_from_mapping(cls: type[T], data: Any, field: str = "",
                         error: type[ConfigError] = ConfigError) -> T:
    """Build a plugin's options dataclass inside a ``__post_init__`` (a backend's, a source kind's).

    Errors are ``error`` messages that start with ``field 'FIELD.key'`` or ``unknown key
    'FIELD.key'`` (just ``key`` when ``field`` is empty: options written flat), so that the
    enclosing :func:`from_mapping` prefixes the file and the outer path.
    """
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if data is None:
        data = {}
    try:
        return from_mapping(cls, data, source="", error=error, prefix=f"{field}." if field else "")
    except ConfigError as e:
        raise error(str(e).removeprefix(": ")) from e


def replace(obj: T, overrides: Mapping[str, Any], *, source: str = "overrides",
            error: type[ConfigError] = ConfigError, prefix: str = "") -> T:
    """``dataclasses.replace`` with the checks of :func:`from_mapping`; nested mappings merge."""
    data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
    hints = typing.get_type_hints(type(obj))
    for key, value in overrides.items():
        old = data.get(key)
        if dataclasses.is_dataclass(old) and isinstance(value, Mapping):
            if dataclasses.is_dataclass(hints.get(key)):
                value = replace(old, value, source=source, error=error, prefix=f"{prefix}{key}.")
            else:  # e.g. a plugin's options (typed Any): its class may change with the other fields
                value = {**set_fields(old), **value}
        data[key] = value
    return from_mapping(type(obj), data, source=source, error=error, prefix=prefix)


def set_fields(obj: Any) -> dict[str, Any]:
    """The fields of dataclass ``obj`` that differ from its class's defaults."""
    defaults = type(obj)()
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if getattr(obj, f.name) != getattr(defaults, f.name)}


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain dicts/lists (for YAML/JSON dumps)."""
    return dataclasses.asdict(obj)


def _coerce(value: Any, hint: Any, field: str, source: str, error: type[ConfigError]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    def fail(expected: str) -> typing.NoReturn:
        raise error(f"{source}: field '{field}' must be {expected}, got {describe(value)}")

    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            try:
                return _coerce(value, a, field, source, error)
            except ConfigError:
                continue
        fail(" or ".join(_name(a) for a in args))
    if origin is Literal:
        if value not in args:
            raise error(f"{source}: field '{field}' must be one of {', '.join(repr(a) for a in args)}, "
                        f"got {describe(value)}.{suggest(str(value), [str(a) for a in args])}")
        return value
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value):
            return value
        return from_mapping(hint, value, source=source, error=error, prefix=f"{field}.")
    if hint is bool:
        if not isinstance(value, bool):
            fail("a bool (true/false)")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an int")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            fail(f"a list ({_name(hint)})")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{field}[{i}]", source, error) for i, v in enumerate(value))
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            fail("a mapping")
        return dict(value)
    return value


def _name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
