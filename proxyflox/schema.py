"""What every settings model shares: base class, field types, YAML reader, one-line errors.

The field types also take the strings of a command line or an environment; pydantic's errors
become one-line ConfigErrors.

It imports nothing of ours but :mod:`proxyflox.errors`, so the leaf packages (stores, strategies)
define their own settings sections with it.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
)
from pydantic.fields import FieldInfo

from proxyflox.errors import ConfigError, did_you_mean, short_repr, unknown_value

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class Settings(BaseModel):
    """Base of every settings model: immutable, picklable, no unknown keys, no NaN or infinity."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, in the shape of the YAML file."""
        return self.model_dump()


# ----------------------------------------------------------------------------------------------
# Field types


def _parsed(parse: Callable[[str], Any]) -> BeforeValidator:
    """A validator: a string that ``parse`` reads becomes its value.

    Anything else is left to the strict check after it, whose error names the value as given.
    """

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return parse(value)
            except ValueError:
                pass
        return value

    return BeforeValidator(convert)


def _yes_no(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise ValueError(text)


def _number_as_text(value: Any) -> Any:
    # YAML reads `account: 1234` as a number; it is still a name.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _null(value: Any) -> Any:
    return None if isinstance(value, str) and value.lower() in ("null", "none", "") else value


# Strict, so that a YAML bool is no integer, 2.5 no integer and 1 no bool; the before-validators
# take the strings a command line or an environment variable gives ("3", "0.5", "yes").
Bool = Annotated[bool, Strict(), _parsed(_yes_no)]
Int = Annotated[int, Strict(), _parsed(int)]
Float = Annotated[float, Strict(), _parsed(float)]
Str = Annotated[str, Strict(), BeforeValidator(_number_as_text)]
#: ``Maybe[Int]``: also ``None``, which a string "null", "none" or "" stands for.
Maybe = Annotated[T | None, BeforeValidator(_null)]


def _comma_separated(value: Any) -> Any:
    return (
        [name.strip() for name in value.split(",") if name.strip()]
        if isinstance(value, str)
        else value
    )


#: A list of names; a command line gives them as one comma-separated string (``lan,wan``).
Names = Annotated[list[Str], BeforeValidator(_comma_separated)]
#: The bounds most settings have.
Count = Annotated[Int, Field(ge=1)]
Positive = Annotated[Float, Field(gt=0)]
NonNegative = Annotated[Float, Field(ge=0)]
Decay = Annotated[Float, Field(ge=0, lt=1)]
Share = Annotated[Float, Field(gt=0, le=1)]

DEVICES = ("cpu", "cuda", "mps")


def _device(value: str) -> str:
    kind, has_index, index = value.partition(":")
    if kind not in DEVICES:
        raise ValueError(unknown_value(value, DEVICES))
    if has_index and (kind != "cuda" or not index.isdigit()):
        raise ValueError(f"must be cpu, mps, cuda or cuda:N (N a GPU number), got {value!r}")
    return value


#: A torch device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
Device = Annotated[Str, AfterValidator(_device)]


def one_of(names: Collection[str]) -> AfterValidator:
    """The value must be one of ``names`` (a registry, read when a value is checked)."""

    def check(value: str) -> str:
        if value not in names:
            raise ValueError(unknown_value(value, names))
        return value

    return AfterValidator(check)


@dataclass(frozen=True)
class Must:
    """Field metadata: what its value must be, in messages, where its bounds would not say it.

    For example ``Must("a TCP port (1-65535)")``.
    """

    be: str


# ----------------------------------------------------------------------------------------------
# Validation errors as one line


def validated(model: type[M], data: Any, where: str | Callable[[str], str] = "") -> M:
    """``model`` built from plain data (parsed YAML, strings from a command line).

    Args:
        model: The settings class.
        data: Its values; an instance of ``model`` is taken as it is.
        where: How messages name a setting: a prefix that its dotted key is joined to with a
            dot (``"site_options.pi-1"``), or a function of the dotted key.

    Raises:
        ConfigError: the first thing wrong, in one line naming the key and the value.
    """
    name = where if callable(where) else lambda key: ".".join(part for part in (where, key) if part)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _config_error(err, model, name) from None


def replace(settings: M, **changes: Any) -> M:
    """A copy with ``changes``, validated again (:func:`dataclasses.replace` for settings)."""
    return validated(type(settings), {**dict(settings), **changes})


#: Messages of pydantic's type errors.
_TYPES = {
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "model_type": "must be a section (mapping)",
    "dict_type": "must be a section (mapping)",
}
#: A field's bounds (sorted names) -> what its value must be.
_RANGES = {
    ("ge",): "at least {ge}",
    ("gt",): "greater than {gt}",
    ("le",): "at most {le}",
    ("lt",): "less than {lt}",
    ("ge", "le"): "between {ge} and {le}",
    ("gt", "lt"): "between {gt} and {lt} (exclusive)",
    ("ge", "lt"): "in [{ge}, {lt})",
    ("gt", "le"): "in ({gt}, {le}]",
}
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _config_error(
    err: ValidationError, model: type[BaseModel], name: Callable[[str], str]
) -> ConfigError:
    """The first of pydantic's errors as the project's one-line message.

    Validators raise a :class:`ConfigError` with a whole message, or a ``ValueError`` saying
    what is wrong with the value, which gets the setting's name in front.
    """
    error = err.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx", {})
    holder, field = _field_at(model, loc)
    key = name(".".join(loc))
    if kind == "extra_forbidden":
        parent = name(".".join(loc[:-1]))
        lead = f"{parent}." if parent else ""
        hint = did_you_mean(loc[-1], holder.model_fields if holder else [])
        hint = hint.replace("'", f"'{lead}", 1)  # the suggestion named like the key
        return ConfigError(f"unknown key '{lead}{loc[-1]}'{hint}")
    if kind == "value_error":
        cause = ctx["error"]
        return cause if isinstance(cause, ConfigError) else ConfigError(f"{key}: {cause}")
    if kind == "missing":
        return ConfigError(f"{key}: required")
    if kind == "finite_number":
        return ConfigError(f"{key}: must be a finite number, got {float(value)}")
    if kind in _TYPES:
        return ConfigError(f"{key}: {_TYPES[kind]}, got {short_repr(value)}")
    if kind in _BOUND_ERRORS and field is not None:
        number, metadata = _bounded(field)
        # The input is the value as given ("0"): shown as its field's type makes it (0.0).
        return ConfigError(f"{key}: must be {_must_be(metadata)}, got {number(value)}")
    return ConfigError(f"{key}: {error['msg']}, got {short_repr(value)}")


def _field_at(
    model: type[BaseModel], loc: tuple[str, ...]
) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model that holds the setting at ``loc``, and its field (``None`` where unknown)."""
    kind: Any = model
    holder: type[BaseModel] | None = None
    field: FieldInfo | None = None
    for part in loc:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            holder, field = kind, kind.model_fields.get(part)
            kind = field.annotation if field else None
        else:  # the label of a ``dict[str, Model]``: on to the model
            holder = field = None
            kind = (typing.get_args(kind) or [None])[-1]
    return holder, field


def _bounded(field: FieldInfo) -> tuple[type, list[Any]]:
    """A bounded field's number type and metadata (its bounds), also through ``Maybe[...]``."""
    number: Any = field.annotation
    items = list(field.metadata)
    for arg in typing.get_args(number):  # Maybe: Annotated[int | float, ...] | None
        if arg is not type(None):
            number, items = arg.__origin__, [*items, *arg.__metadata__]
    # Bounds nested in an alias stay in their Field there.
    flat = [
        one for item in items for one in (item.metadata if isinstance(item, FieldInfo) else [item])
    ]
    return number, flat


def _must_be(metadata: list[Any]) -> str:
    for item in metadata:
        if isinstance(item, Must):
            return item.be
    bounds = {
        bound: getattr(item, bound)
        for item in metadata
        for bound in ("ge", "gt", "le", "lt")
        if hasattr(item, bound)
    }
    return _RANGES[tuple(sorted(bounds))].format(**bounds)


# ----------------------------------------------------------------------------------------------
# YAML files


class _DuplicateKeyError(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error.

    PyYAML would silently keep the last one.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # unhashable: SafeLoader's own error names it
                continue
            if repeated:
                line = key_node.start_mark.line + 1
                raise _DuplicateKeyError(f"duplicate key {short_repr(key)} at line {line}")
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(
    path: Path, what: str, *, missing: str = "", holds: str = "of keys"
) -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file holds an empty one).

    Args:
        path: The file.
        what: Names the file in messages, e.g. ``"experiment file x.yaml"``.
        missing: The message when the file does not exist (default: ``WHAT does not exist``).
        holds: What the mapping is of, for the message when the file holds something else.

    Raises:
        ConfigError: the file is missing, is not valid YAML (naming line and column), repeats
            a key in one mapping, or does not hold a mapping.
    """
    if not path.is_file():
        raise ConfigError(missing or f"{what} does not exist")
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{what} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})"
        ) from None
    except OSError as err:
        raise ConfigError(f"{what} cannot be read: {err.strerror or err}") from None
    except _DuplicateKeyError as err:
        raise ConfigError(f"{what}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{what} is not valid YAML{at}: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} must hold a mapping {holds}, got {type(loaded).__name__}")
    return loaded
