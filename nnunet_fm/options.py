"""Declared options: every plans key a trainer hook or a network reads, declared once where it is read.

A hook mixin (or trainer) declares the keys it reads in ``fm_options``; a trainer family changes a default in
``fm_defaults`` and a trainer variant pins a value in ``fm_fixed``. A network declares its constructor keys in
``fm_options`` with ``default=SIGNATURE`` (the constructor's default is the one source). Trainer keys live at
the top level of the plans configuration, network keys in ``architecture.arch_kwargs`` (nnU-Net's place for
them), so each key has one meaning and one place.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nnunet_fm.errors import UserInputError


class _Signature:
    def __repr__(self) -> str:
        return "SIGNATURE"


SIGNATURE: Any = _Signature()
"""Default of a network option: the network constructor's default for the same-named parameter."""

_KINDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "int_list": "a JSON list of integers",
    "list": "a JSON list",
    "dict": "a JSON object",
    "any": "any JSON value",
}


@dataclass(frozen=True)
class Option:
    """One plans key: name, default, one-line help and the values it accepts."""

    name: str
    default: Any
    help: str
    kind: str = "any"
    nullable: bool = False
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    validate: Callable[[Any], bool] | None = None  # for values the kinds cannot express; ``values`` describes them
    values: str | None = None
    length: int | None = None  # int_list: the number of entries (minimum / maximum then bound each entry)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Option {self.name}: unknown kind {self.kind!r}; one of {sorted(_KINDS)}.")

    def describe_values(self) -> str:
        """The accepted values, in words (for error messages and ``plans list``)."""
        if self.values:
            return self.values
        text = " or ".join(json.dumps(c) for c in self.choices) if self.choices else _KINDS[self.kind]
        if self.kind == "int_list" and self.length is not None:
            text = f"a JSON list of {self.length} integers"
        if self.minimum is not None or self.maximum is not None:
            text += f" in [{self.minimum if self.minimum is not None else '-inf'}, "
            text += f"{self.maximum if self.maximum is not None else 'inf'}]"
        return text + (" or null" if self.nullable and not self.choices else "")

    def check(self, value: Any, where: str = "") -> Any:
        """``value`` when it is acceptable, else a UserInputError naming the key, the value and what is accepted."""
        if self._accepts(value):
            return value
        place = f" ({where})" if where else ""
        raise UserInputError(
            f"{self.name}={json.dumps(value) if _jsonable(value) else repr(value)}{place} is not valid: expected "
            f"{self.describe_values()}. {self.help}"
        )

    def _accepts(self, value: Any) -> bool:
        if self.validate is not None:
            return self.validate(value)
        if value is None:
            return self.nullable or (self.choices is not None and None in self.choices)
        if self.choices is not None:
            return any(value == choice and type(value) is type(choice) for choice in self.choices)
        if self.kind == "any":
            return True
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "int":
            return _is_int(value) and self._in_range(value)
        if self.kind == "float":
            return isinstance(value, (int, float)) and not isinstance(value, bool) and self._in_range(value)
        if self.kind == "str":
            return isinstance(value, str)
        if self.kind == "int_list":
            return (
                isinstance(value, list)
                and (self.length is None or len(value) == self.length)
                and all(_is_int(v) and self._in_range(v) for v in value)
            )
        if self.kind == "list":
            return isinstance(value, list)
        return isinstance(value, dict)

    def _in_range(self, value: float) -> bool:
        return (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _merged(cls: type, attribute: str) -> dict[str, Any]:
    """``attribute`` dicts over the MRO, the most derived class winning."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get(attribute, {}))
    return merged


def declared_options(cls: type) -> dict[str, Option]:
    """Options a trainer or network class reads, with the class's own defaults applied.

    Collected from ``fm_options`` over the MRO, less the names a class lists in ``fm_unread`` (options of a
    hook it overrides); ``fm_defaults`` (merged, subclass wins) replaces declared
    defaults. A default or an ``fm_fixed`` value for an undeclared key, or one its declaration does not accept,
    is a programming error (TypeError); plans values are checked when read (:func:`resolve_options`).
    """
    options: dict[str, Option] = {}
    for klass in reversed(cls.__mro__):
        for option in vars(klass).get("fm_options", ()):
            options[option.name] = option
    for klass in cls.__mro__:
        for name in vars(klass).get("fm_unread", ()):
            options.pop(name, None)
    defaults, fixed = _merged(cls, "fm_defaults"), _merged(cls, "fm_fixed")
    for attribute, values in (("fm_defaults", defaults), ("fm_fixed", fixed)):
        unknown = sorted(set(values) - set(options))
        if unknown:
            raise TypeError(f"{cls.__name__}.{attribute} sets undeclared option(s) {unknown}.")
        bad = [f"{k}={v!r} ({options[k].describe_values()})" for k, v in values.items() if not options[k]._accepts(v)]
        if bad:
            raise TypeError(
                f"{cls.__name__}.{attribute} sets values their declarations do not accept: {'; '.join(bad)}."
            )
    for name, default in defaults.items():
        options[name] = dataclasses.replace(options[name], default=default)
    return options


def fixed_options(cls: type) -> dict[str, Any]:
    """Values a trainer variant pins (``fm_fixed``, merged over the MRO)."""
    return _merged(cls, "fm_fixed")


@dataclass(frozen=True)
class EffectiveOption:
    """An option's value for one configuration and where that value came from."""

    option: Option
    value: Any
    source: str  # "fixed by <trainer>", "plans", "<trainer> default"


def resolve_options(
    options: dict[str, Option], stored: dict[str, Any], owner: str, fixed: dict[str, Any] | None = None
) -> dict[str, EffectiveOption]:
    """Effective value and source of each option, given the values ``stored`` in the plans and pinned ones."""
    fixed = fixed or {}
    resolved = {}
    for name, option in options.items():
        if name in fixed:
            resolved[name] = EffectiveOption(option, fixed[name], f"fixed by {owner}")
        elif name in stored:
            resolved[name] = EffectiveOption(option, option.check(stored[name], "plans"), "plans")
        else:
            resolved[name] = EffectiveOption(option, option.default, f"{owner} default")
    return resolved


#: constructor parameters nnU-Net or the trainer fill in; never plans keys
NETWORK_RUNTIME_PARAMETERS = frozenset({"self", "input_channels", "num_classes", "patch_size", "deep_supervision"})


def _kind_of(default: Any) -> tuple[str, bool]:
    if isinstance(default, bool):
        return "bool", False
    if isinstance(default, int):
        return "int", False
    if isinstance(default, float):
        return "float", False
    if isinstance(default, str):
        return "str", False
    if isinstance(default, (list, tuple)) and all(isinstance(v, int) for v in default):
        return "int_list", False
    if isinstance(default, (list, tuple)):
        return "list", False
    return "any", True


def _allows_none(annotation: Any) -> bool:
    """Whether a constructor annotation (a string under ``from __future__ import annotations``) admits None."""
    if annotation is inspect.Parameter.empty:
        return False
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "None" in {part.strip() for part in text.replace("Optional[", "None|").split("|")}


def network_options(network_class: type) -> dict[str, Option]:
    """Options of a network: its keyword constructor parameters (kind from the default) and ``fm_options``."""
    declared = {o.name: o for o in vars(network_class).get("fm_options", ())}
    options = {}
    for name, parameter in inspect.signature(network_class).parameters.items():
        if name in NETWORK_RUNTIME_PARAMETERS or parameter.default is inspect.Parameter.empty:
            continue
        default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
        if name in declared:
            options[name] = dataclasses.replace(declared[name], default=default)
        else:
            kind, nullable = _kind_of(default)
            help_text = f"{network_class.__name__}({name}=...), see its docstring."
            nullable = nullable or default is None or _allows_none(parameter.annotation)
            options[name] = Option(name, default, help_text, kind=kind, nullable=nullable)
    missing = sorted(set(declared) - set(options))
    if missing:
        raise TypeError(f"{network_class.__name__}.fm_options declares {missing} but its constructor has no default.")
    return options
