"""Typed parameters for workloads and backends, parsed from `-p name=value` on the command line.

A parameter belongs to the workload or to a backend. `-p mode=aggregate` sets `mode` on every
selected plugin that declares it; `-p tracepoint.mode=aggregate` only on the `tracepoint` backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .errors import UsageError


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error message, or None

    def parse(self, text: str, owner: str) -> Any:
        where = f"parameter {self.name!r} of {owner}"
        if self.type is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise UsageError(f"{where} takes a boolean (true/false), not {text!r}")
        try:
            value = self.type(text)
        except ValueError:
            raise UsageError(f"{where} takes {self.type.__name__}, not {text!r}") from None
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{where} must be one of {', '.join(self.choices)}, not {text!r}")
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"{where} must be >= {self.minimum:g}, not {text}")
        if self.maximum is not None and value > self.maximum:
            raise UsageError(f"{where} must be <= {self.maximum:g}, not {text}")
        problem = self.check(value) if self.check else None
        if problem:
            raise UsageError(f"{where}: {problem}")
        return value

    def describe(self) -> str:
        bounds = []
        if self.choices:
            bounds.append("|".join(self.choices))
        if self.minimum is not None:
            bounds.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            bounds.append(f"<= {self.maximum:g}")
        extra = f" ({', '.join(bounds)})" if bounds else ""
        return f"{self.name}={self.default!r}: {self.help}{extra}"


def parse_names(text: str, valid: Iterable[str], what: str = "hook") -> tuple[str, ...]:
    """`all`, or names joined by '+' (a comma already separates parameters): each must be valid."""
    valid = tuple(valid)
    if text == "all":
        return valid
    names = tuple(dict.fromkeys(text.split("+")))
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(f"unknown {what} {', '.join(unknown) if unknown else repr(text)}")
    return names


def names_check(valid: Iterable[str], what: str = "hook") -> Callable[[str], str | None]:
    """A Param check for parse_names: the error names every valid choice."""
    valid = tuple(valid)

    def check(text: str) -> str | None:
        try:
            parse_names(text, valid, what)
        except ValueError as exc:
            return f"{exc}; valid: all, or names joined by '+': {'+'.join(valid)}"
        return None

    return check


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """`-p a=1 -p b=2,c=3` -> {'a': '1', 'b': '2', 'c': '3'}; a repeated name is an error."""
    result: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name or not value:
                raise UsageError(f"malformed parameter {part!r}: expected name=value")
            if name in result:
                raise UsageError(f"parameter {name!r} given twice")
            result[name] = value
    return result


def split_settings(text: str) -> list[str]:
    """`kprobe,tracepoint[flavour=tp,mode=aggregate]` -> ['kprobe', 'tracepoint[flavour=tp,mode=aggregate]']:
    commas split the list only outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "[]":
            depth += 1 if char == "[" else -1
            if depth not in (0, 1):
                raise UsageError(f"unbalanced brackets in {text!r}")
        elif char == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    if depth:
        raise UsageError(f"unbalanced brackets in {text!r}")
    items.append(text[start:].strip())
    if not all(items):
        raise UsageError(f"empty name in {text!r}")
    return items


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    """`tracepoint[flavour=tp,mode=aggregate]` -> ('tracepoint', {'flavour': 'tp', 'mode': 'aggregate'}):
    a backend with parameters of its own, written as the record labels it; `kprobe` -> ('kprobe', {})."""
    name, bracket, rest = text.partition("[")
    name = name.strip()
    if not name:
        raise UsageError(f"malformed backend {text!r}: expected name or name[param=value,...]")
    if not bracket:
        return name, {}
    if not rest.endswith("]") or "[" in rest or "]" in rest[:-1] or not rest[:-1].strip():
        raise UsageError(f"malformed backend {text!r}: expected name[param=value,...]")
    return name, parse_assignments([rest[:-1]])


def resolve(
    owner: str,
    specs: Iterable[Param],
    given: Mapping[str, str],
) -> dict[str, Any]:
    """Defaults overlaid with the given values, each parsed and range-checked."""
    values = {spec.name: spec.default for spec in specs}
    by_name = {spec.name: spec for spec in specs}
    for name, text in given.items():
        if name not in by_name:
            raise UsageError(f"{owner} has no parameter {name!r}")
        values[name] = by_name[name].parse(text, owner)
    return values


def resolve_plugin(plugin: Any, given: Mapping[str, str]) -> dict[str, Any]:
    """A backend's or workload's parameters: each parsed and range-checked (`resolve`), then the
    constraints between them (the plugin's `check_params`, part of both protocols)."""
    values = resolve(plugin.name, plugin.params, given)
    plugin.check_params(values)
    return values


def split_for_plugins(
    given: Mapping[str, str],
    plugins: Mapping[str, Iterable[Param]],
) -> dict[str, dict[str, str]]:
    """Route each `name=value` (or `plugin.name=value`) to the plugins that declare `name`.

    An assignment nobody declares is an error naming the valid parameters.
    """
    routed: dict[str, dict[str, str]] = {plugin: {} for plugin in plugins}
    declared = {plugin: {spec.name for spec in specs} for plugin, specs in plugins.items()}
    for key, value in given.items():
        plugin, dot, name = key.rpartition(".")
        if dot:
            if plugin not in declared:
                raise UsageError(
                    f"parameter {key!r} names {plugin!r}, which is not selected "
                    f"(selected: {', '.join(sorted(declared))})"
                )
            if name not in declared[plugin]:
                valid = ", ".join(sorted(declared[plugin])) or "none"
                raise UsageError(f"{plugin} has no parameter {name!r} (valid: {valid})")
            routed[plugin][name] = value
            continue
        owners = [p for p, names in declared.items() if key in names]
        if not owners:
            valid = sorted({f"{n}" for names in declared.values() for n in names})
            raise UsageError(
                f"unknown parameter {key!r} (valid for this selection: {', '.join(valid) or 'none'})"
            )
        for owner in owners:
            routed[owner][key] = value
    return routed
