"""Typed, validated configs: defaults < file < command line.

All configs derive from :class:`Config`, a pydantic model that forbids unknown keys. Overrides
are ``dotted.key=value`` strings whose values are parsed as YAML 1.2 scalars/lists, so ``k=16``,
``k=[4,8]``, ``sigma=1e-1`` and ``sigma=null`` all work. One parser, :func:`parse_value` (YAML 1.2
core schema: ``1e-1`` is a number, only ``true``/``false`` are booleans, ``yes``/``on`` are
strings, dates stay strings), reads ``--set`` values, ``results --filter`` values, sweep files and
config files alike; :func:`same_value` is how a stored value is compared with a parsed one
(floats within :data:`FLOAT_REL_TOL`). Validation errors become one-line
:class:`~granularity.errors.GranularityError` messages that name the parameter, the value and
what is allowed.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
import yamlcore
from pydantic import BaseModel, ConfigDict, ValidationError

from granularity.errors import GranularityError, suggest

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every config: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @classmethod
    def build(cls: type[C], data: Mapping[str, Any] | None = None, *, where: str = "") -> C:
        """Validate ``data`` into this config, raising a one-line :class:`GranularityError`."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            raise GranularityError(format_validation_error(exc, cls, where)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at the parent of ``loc`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        current = next((a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")), ann)
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def format_validation_error(exc: ValidationError, model: type[BaseModel], where: str = "") -> str:
    """One line for the first error of a pydantic ``ValidationError``."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not isinstance(p, int) or True)
    # pydantic puts union branch names ("int", "list[int]") in loc; keep only real field names.
    # (exact type names only: a prefix test also dropped fields such as 'strength' or 'interval')
    names = [str(p) for p in loc if not (str(p) in ("int", "float", "str", "bool") or str(p).startswith(("list[", "tuple[")))]
    key = ".".join(names) or "<config>"
    prefix = f"{where}: " if where else ""
    if err["type"] == "extra_forbidden":
        valid = _field_names(model, tuple(names))
        hint = suggest(names[-1], valid)
        return (
            f"{prefix}Unknown config key {key!r}{hint}; valid keys here are: {', '.join(valid)}."
        )
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err.get("input")
    got_s = repr(got) if not isinstance(got, dict) else "{...}"
    if len(got_s) > 80:
        got_s = got_s[:77] + "..."
    return f"{prefix}Invalid value for {key!r}: {msg}. Got {got_s} instead."


def load_yaml(text: str) -> Any:
    """YAML 1.2 (core schema): the one reading of values for --set, --filter, sweep and config files."""
    return yaml.load(text, Loader=yamlcore.CoreLoader)  # noqa: S506 - CoreLoader builds plain data only


def parse_value(text: str) -> Any:
    """Parse a command-line value as YAML 1.2 (``16`` -> int, ``5e-1`` -> 0.5, ``[1,2]`` -> list,
    ``null`` -> None, ``false`` -> False, ``no`` -> the string 'no'); unparsable text stays text."""
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


# Two floats are the same value when they differ by at most this fraction of the larger: a value
# typed with the 10 significant digits `granularity results` shows selects the stored float, and
# sums like 0.1 + 0.2 equal 0.3. Ints and bools compare exactly (True is not 1).
FLOAT_REL_TOL = 1e-9


def same_value(a: Any, b: Any) -> bool:
    """Equality of parsed values: numbers by value (floats within :data:`FLOAT_REL_TOL`), bools
    only with bools, lists element by element, None only with None (or a missing NaN)."""
    if is_missing(a) or is_missing(b):
        return is_missing(a) and is_missing(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_number(a) and is_number(b):
        return math.isclose(a, b, rel_tol=FLOAT_REL_TOL, abs_tol=0.0) or a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def is_number(v: Any) -> bool:
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_missing(v: Any) -> bool:
    """None or a float NaN: a value that is not there."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def get_dotted(tree: Mapping[str, Any] | None, dotted: str) -> Any:
    """``get_dotted({"data": {"k": 4}}, "data.k")`` -> 4; None where the path is absent."""
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def undot(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1, "data": {"k": 2}}`` -> ``{"train": {"lr": 1}, "data": {"k": 2}}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        value = undot(value) if isinstance(value, Mapping) else value
        parts = str(key).split(".")
        if any(not p for p in parts):
            raise GranularityError(f"Config key {key!r} has an empty part; use dotted names like data.k.")
        if len(parts) == 1:
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = value
        else:
            node = out
            for p in parts[:-1]:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise GranularityError(f"Config key {key!r} sets a field inside {p!r}, which is not a mapping.")
            node[parts[-1]] = value
    return out


def flatten(tree: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """``{"data": {"k": 4}}`` -> ``{"data.k": 4}`` (lists stay values); the inverse of :func:`undot`."""
    out: dict[str, Any] = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def apply_overrides(base: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (dotted keys) to a nested dict, returning a new dict."""
    out = copy.deepcopy(dict(base))
    for item in overrides:
        if "=" not in item:
            raise GranularityError(
                f"The '--set' option must look like key=value (for example data.k=16). Got {item!r} instead."
            )
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise GranularityError(f"The '--set' option has an empty key in {item!r}; use key=value.")
        set_dotted(out, key, parse_value(text))
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise GranularityError(f"Config file {str(path)!r} does not exist or is not a file.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise GranularityError(f"Config file {str(path)!r} cannot be read: {exc}.") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise GranularityError(f"Config file {str(path)!r} is not valid YAML/JSON: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GranularityError(
            f"Config file {str(path)!r} must hold a mapping of keys to values, not a {type(data).__name__}."
        )
    return data


def dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every settable leaf key of a config class as a dotted path (``data.k``, ``train.lr``...)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += dotted_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys
