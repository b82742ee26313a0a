"""What a config field is and which values it takes, declared on the field and read by the core.

    steps: int = field(default=1_000_000, metadata=spec(">= 1"))
    tau: float = field(default=0.005, metadata=spec("(0, 1]"))
    seed: int = field(default=0, metadata=spec(">= 0", roles=("per_seed", "set_by_sweep")))
    hidden: tuple[int, ...] = field(default=(256, 256), metadata=spec("widths"))
    precision: Literal["fp32", "bf16"] = "fp32"

Ranges: "> x", ">= x", the intervals "[a, b]", "(a, b]", "[a, b)", "(a, b)", and "widths" (a
non-empty tuple of positive integers); None passes where the field allows None. Choices are
`Literal` annotations (tyro lists them in --help and refuses others). `check_fields(config)`
applies both with one message format; `TrainConfig.validate` calls it, so an algorithm's own
`validate` keeps only the checks that relate fields to each other. Roles (FIELD_ROLES) tell the
core how a field behaves across resumption, batched seeds, sweeps and checkpoints. A subclass that
redeclares a field only to change its default keeps the base declaration's range and roles.

Shared names across algorithms: `actor_lr` / `critic_lr` (and `value_lr`, `entropy_lr`) where
networks have rates of their own, `lr` where one rate drives every network (BC, BCQ); `hidden`
is the tuple of hidden-layer widths. A class that renames a field lists the old name in
`RENAMED_FIELDS`, and `upgrade_saved_fields` reads older runs under the new one.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from dql.errors import ConfigError

FIELD_ROLES = {
    "resumable": "may differ between a run and its resumption (where it runs, how it reports)",
    "per_seed": "may differ between the seeds of one batched group",
    "set_by_sweep": "set by a sweep itself, refused in a sweep file",
    "architecture": "fixes the shapes or meaning of trained weights",
}
_BOUND = re.compile(r"(>=|>)\s*(-?[\d.e+-]+)")
_INTERVAL = re.compile(r"([\[(])\s*(-?[\d.e+-]+),\s*(-?[\d.e+-]+)\s*([\])])")


def spec(allowed: str | None = None, *, roles: Sequence[str] = ()) -> dict[str, Any]:
    """Field metadata: the field's allowed range (see the module docstring) and its roles."""
    unknown = set(roles) - set(FIELD_ROLES)
    assert not unknown, f"unknown field roles {unknown}"
    assert allowed is None or allowed == "widths" or _parse(allowed), f"bad range {allowed!r}"
    meta: dict[str, Any] = {"roles": frozenset(roles)} if roles else {}
    return {**meta, "range": allowed} if allowed else meta


def roles(*names: str) -> dict[str, Any]:
    """Field metadata declaring only roles."""
    return spec(roles=names)


def _declared(config_class: type) -> dict[str, dict[str, Any]]:
    """Field name -> its metadata, merged from the base class down (later declarations add)."""
    merged: dict[str, dict[str, Any]] = {f.name: {} for f in dataclasses.fields(config_class)}
    for cls in reversed(config_class.__mro__):
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                if f.name in merged:
                    merged[f.name].update(f.metadata)
    return merged


def fields_with_role(config_class: type, role: str) -> frozenset[str]:
    """Names of the fields of a config dataclass that declare `role`."""
    assert role in FIELD_ROLES, role
    return frozenset(
        name for name, meta in _declared(config_class).items() if role in meta.get("roles", ())
    )


def result_neutral_fields(config_class: type) -> frozenset[str]:
    """Fields that do not change what a run computes: runs differing only there are seeds of
    one configuration."""
    return fields_with_role(config_class, "resumable") | fields_with_role(config_class, "per_seed")


def upgrade_saved_fields(config_class: type, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config (a run's config.json "config") in today's field names. A config class that
    renamed fields declares `RENAMED_FIELDS = {old: (new, convert or None)}`; runs written
    before the rename then load, resume and tabulate as the same configuration as runs after."""
    upgraded = dict(saved)
    for old, (new, convert) in getattr(config_class, "RENAMED_FIELDS", {}).items():
        if old in upgraded and new not in upgraded:
            value = upgraded.pop(old)
            upgraded[new] = convert(value) if convert else value
    return upgraded


def literal_choices(config_class: type) -> dict[str, tuple[Any, ...]]:
    """The allowed values of each `Literal`-typed field of a config dataclass."""
    hints = typing.get_type_hints(config_class)
    return {
        f.name: typing.get_args(hints[f.name])
        for f in dataclasses.fields(config_class)
        if typing.get_origin(hints[f.name]) is typing.Literal
    }


def kind_errors(config_class: type, values: dict[str, Any]) -> dict[str, str]:
    """Field name -> the kind it takes, for each value (from a TOML file: a sweep, a
    hyperparameter table) that does not fit its field's annotation; unknown names are left to
    the caller. The annotation is the one tyro parses flags into, so a file and a flag agree."""
    hints = typing.get_type_hints(config_class)
    return {
        name: _kind_text(hints[name])
        for name, value in values.items()
        if name in hints and not _fits(hints[name], value)
    }


def _fits(annotation: Any, value: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list, Sequence):  # TOML arrays; tuple[int, ...] or fixed length
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], v) for v in value)
        return not args or (len(args) == len(value) and all(map(_fits, args, value)))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True  # other kinds (paths, ...) are checked where they are used


def _kind_text(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def field_ranges(config_class: type) -> dict[str, str]:
    """Field name -> its declared range."""
    return {n: m["range"] for n, m in _declared(config_class).items() if m.get("range")}


def check_fields(config: Any) -> None:
    """Refuse, in one line naming the flag, a value outside its field's range or choices."""
    config_class = type(config)
    hints = typing.get_type_hints(config_class)
    for name, allowed in field_ranges(config_class).items():
        value = getattr(config, name)
        if value is None and _allows_none(hints[name]):
            continue
        if not _within(value, allowed, integer=int in _base_types(hints[name])):
            raise ConfigError(
                f"--{_flag(name)} must be {_describe(allowed, hints[name])}, got {value!r}"
            )
    for name, choices in literal_choices(config_class).items():
        if getattr(config, name) not in choices:
            raise ConfigError(
                f"--{_flag(name)} must be one of {', '.join(map(str, choices))}, "
                f"got {getattr(config, name)!r}"
            )


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _parse(allowed: str) -> tuple[float, float, bool, bool] | None:
    """(low, high, low inclusive, high inclusive) of a range text."""
    if m := _BOUND.fullmatch(allowed.strip()):
        return float(m[2]), float("inf"), m[1] == ">=", False
    if m := _INTERVAL.fullmatch(allowed.strip()):
        return float(m[2]), float(m[3]), m[1] == "[", m[4] == "]"
    return None


def _within(value: Any, allowed: str, integer: bool) -> bool:
    if allowed == "widths":
        return (
            isinstance(value, (tuple, list))
            and len(value) > 0
            and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in value)
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if integer and not isinstance(value, int):
        return False
    low, high, low_in, high_in = _parse(allowed)  # type: ignore[misc]
    above = value >= low if low_in else value > low
    below = value <= high if high_in else value < high
    return above and below


def _describe(allowed: str, annotation: Any) -> str:
    if allowed == "widths":
        return "positive widths"
    if allowed.replace(" ", "") == ">=1" and int in _base_types(annotation):
        return "a positive integer"
    return allowed if allowed[0] in "<>" else f"in {allowed}"


def _base_types(annotation: Any) -> set[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set(typing.get_args(annotation))
    return {annotation}


def _allows_none(annotation: Any) -> bool:
    return type(None) in _base_types(annotation)
