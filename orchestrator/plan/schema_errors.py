"""A JSON Schema error about a plan → what the operator is told, at which line.

The plan's rules live in :mod:`orchestrator.plan.schema`; this module only
words their failures. Each schema part carries a ``title`` naming what is
expected ("a campaign id (1 to 20 digits)"), so most messages read
"expected <title>, got <what was written>". The few that deserve their own
words (an empty list, a NUL in a path, a filter written alone) are below.
Lines come from the YAML node at the error's path.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jsonschema_rs

from orchestrator.plan.loader import Node, join, line_of, node_at
from orchestrator.plan.model import ALL, RESULT_FILTERS
from orchestrator.plan.schema import PLAN_VERSION

__all__ = ["Finding", "explain", "hint", "shown"]

#: What the whole plan should be, for a plan that is no mapping.
_ROOT: Final = "a mapping with version, settings, defaults and campaigns"

_EMPTY: Final = {
    "campaigns": "the list is empty: a plan clears at least one campaign",
    "results": f"the list is empty: name at least one filter, or write results: {ALL}",
}

Path = tuple[str | int, ...]
Kind = jsonschema_rs.ValidationErrorKind


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: the path it concerns, its message, and its line."""

    path: Path
    message: str
    line: int

    @property
    def where(self) -> str:
        """The path as messages show it: ``campaigns[0].results``."""
        text = ""
        for step in self.path:
            text = join(text, step)
        return text


def shown(text: str) -> str:
    """``text`` quoted for a message, cut short when long."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def hint(text: str, allowed: Collection[str]) -> str:
    """A "did you mean" for a near miss, else the list of what is allowed."""
    # difflib is quadratic: a huge value is no typo of a short name anyway.
    close = difflib.get_close_matches(text, allowed, n=1) if len(text) <= 64 else []
    return f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(allowed)}"


def explain(
    error: jsonschema_rs.ValidationError,
    schema: dict[str, object],
    root: Node,
    url_check: Callable[[Path, str], bool],
) -> Iterator[Finding]:
    """What ``error`` tells the operator; ``url_check`` says whether code words a URL's fault."""
    path: Path = tuple(error.instance_path)
    where = _Where(root, path)
    parent = _at(schema, error.schema_path[:-1])
    # The root's title names the format; a plan that is no mapping is told the shape.
    title = _ROOT if not path else str(parent.get("title", "a valid value"))
    instance = error.instance
    match error.kind:
        case Kind.Required(property=name):
            yield where.value(_missing(name, error.schema_path))
        case Kind.AnyOf() if "allOf" in error.schema_path:
            yield where.value("missing a token: set token_env or token_file here or in defaults")
        case Kind.AdditionalProperties(unexpected=names):
            allowed = list(_properties(parent))
            for name in names:
                yield where.key(name, _unknown(path, name, allowed, _homes(schema)))
        case Kind.Not():
            yield where.key("token_file", "set token_env or token_file, not both")
        case Kind.AnyOf(context=branches) if isinstance(instance, list | dict):
            yield from _the_branch_of_its_kind(error, branches, schema, root, url_check, title)
        case Kind.UniqueItems() if isinstance(instance, list):
            yield _repeated(where, instance, _at(parent, ["items"]))
        case Kind.MinItems():
            yield where.value(_EMPTY.get(str(path[-1]) if path else "", "the list is empty"))
        case Kind.Pattern() if path[-2:] in (("settings", "base_url"), ("settings", "lock_url")):
            if not url_check(path, str(instance)):
                yield where.value(f"expected {title}, got {shown(str(instance))}")
        case _:
            yield where.value(_wrong_value(path, instance, title, parent, error.kind))


def _the_branch_of_its_kind(
    error: jsonschema_rs.ValidationError,
    branches: list[list[jsonschema_rs.ValidationError]],
    schema: dict[str, object],
    root: Node,
    url_check: Callable[[Path, str], bool],
    title: str,
) -> Iterator[Finding]:
    """A list or mapping failing every choice: the faults of the choice of its kind."""
    depth = len(error.schema_path)
    for branch in branches:
        if not any(_wrong_kind(sub, depth) for sub in branch):
            for sub in branch:
                yield from explain(sub, schema, root, url_check)
            return
    got = _kind_of(error.instance)
    yield _Where(root, tuple(error.instance_path)).value(f"expected {title}, got {got}")


def _wrong_kind(sub: jsonschema_rs.ValidationError, depth: int) -> bool:
    """A branch's own type or const check failed: the value is not of its kind."""
    own = len(sub.schema_path) == depth + 2
    return own and isinstance(sub.kind, Kind.Type | Kind.Constant)


def _missing(name: str, schema_path: Sequence[str | int]) -> str:
    if name == "version":
        return f"missing required key 'version' (write version: {PLAN_VERSION})"
    if "allOf" in schema_path:
        return f"missing required key {name!r} (set it here or in defaults)"
    return f"missing required key {name!r}"


def _unknown(path: Path, name: str, allowed: list[str], homes: dict[str, list[str]]) -> str:
    if path == ("defaults",) and name == "campaign_id":
        return "campaign_id cannot have a default: each campaign names its own"
    if name in homes:  # a known key, indented (or outdented) into the wrong block
        return f"{name} belongs {' or '.join(homes[name]).replace(' or under ', ' or ')}"
    return f"unknown key {shown(name)} ({hint(name, allowed)})"


def _homes(schema: dict[str, object]) -> dict[str, list[str]]:
    """Where each key of a plan belongs: ``type_campaign`` → under defaults: or a campaign."""
    places = {
        "at the top level": _properties(schema),
        "under settings:": _properties(_at(schema, ["properties", "settings"])),
        "under defaults:": _properties(_at(schema, ["properties", "defaults"])),
        "under a campaign": _properties(_at(schema, ["properties", "campaigns", "items"])),
    }
    homes: dict[str, list[str]] = {}
    for place, names in places.items():
        for name in names:
            homes.setdefault(name, []).append(place)
    return homes


def _repeated(where: _Where, items: list[Any], schema: dict[str, object]) -> Finding:
    what = str(schema.get("title", "an item")).removeprefix("an ").removeprefix("a ")
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        if isinstance(item, str):
            if item in first:
                also = f"{where.text}[{first[item]}]"
                return where.item(index, f"duplicate {what} {item!r} (also {also})")
            first[item] = index
    return where.value(f"a {what} is written twice")


def _wrong_value(
    path: Path, instance: object, title: str, schema: dict[str, object], kind: Kind
) -> str:
    if instance is None:
        return f"expected {title}, got null"
    if isinstance(kind, Kind.Type) or not isinstance(instance, str):
        return f"expected {title}, got {_kind_of(instance)}"
    field = next((step for step in reversed(path) if isinstance(step, str)), "")
    if path == ("version",):
        return f"unsupported plan format version {shown(instance)} (expected {PLAN_VERSION})"
    if field == "token_file":
        return "a file path cannot contain a NUL character"
    if field == "tags" and instance == "":
        return "a tag cannot be empty"
    if field == "results" and isinstance(path[-1], int) and instance == ALL:
        return f"{ALL!r} cannot be in a list: write results: {ALL}"
    if field == "results" and isinstance(path[-1], str):
        one = f" (for one filter write [{instance}])" if instance in RESULT_FILTERS else ""
        return f"expected {title}, got {shown(instance)}{one}"
    if isinstance(kind, Kind.Enum):
        allowed = [str(choice) for choice in _list(schema.get("enum"))]
        return f"{shown(instance)} is not {title} ({hint(instance, allowed)})"
    return f"expected {title}, got {shown(instance)}"


class _Where:
    """Findings at one instance path, with lines from the YAML nodes."""

    def __init__(self, root: Node, path: Path) -> None:
        self.root = root
        self.path = path
        self.text = Finding(path, "", 0).where

    def value(self, message: str) -> Finding:
        _, node = node_at(self.root, self.path)
        return Finding(self.path, message, line_of(node))

    def key(self, name: str, message: str) -> Finding:
        key_node, node = node_at(self.root, (*self.path, name))
        return Finding(self.path, message, line_of(key_node or node))

    def item(self, index: int, message: str) -> Finding:
        path = (*self.path, index)
        _, node = node_at(self.root, path)
        return Finding(path, message, line_of(node))


def _kind_of(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    return "a list" if isinstance(value, list) else "a string"


def _at(schema: dict[str, object], steps: Sequence[str | int]) -> dict[str, object]:
    """The part of ``schema`` at ``steps`` (keywords, names and indexes)."""
    part: object = schema
    for step in steps:
        if isinstance(part, dict):
            part = part.get(step, {})
        elif isinstance(part, list) and isinstance(step, int) and step < len(part):
            part = part[step]
        else:
            return {}
    return part if isinstance(part, dict) else {}


def _properties(schema: dict[str, object]) -> dict[str, object]:
    properties = schema.get("properties", {})
    return properties if isinstance(properties, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []
