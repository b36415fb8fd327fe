"""YAML text → a node tree read as the text written, with lines and field paths.

A plan must mean what it says: ``server: 0014`` is the text ``"0014"``, not the
YAML 1.1 octal 12, and ``campaign_id: 1:20`` is not the sexagesimal 80. So no
YAML constructor ever runs here. :func:`compose` builds PyYAML's node graph
(libyaml's composer when available) with implicit typing switched off, and a
:class:`Reader` turns it into plain data (texts, lists, mappings, None) for
the plan's schema to judge, checking on the way what PyYAML lets through:

* explicit tags other than the standard str/int/float/null/seq/map ones;
* duplicate keys (PyYAML keeps the last one silently);
* keys that are not text.

Merge keys are supported: ``<<: *shared`` or ``<<: [*a, *b]`` copy the keys of
the merged mappings that the mapping does not write itself; earlier merged
mappings win over later ones.

Hostile files are bounded twice. Composing stops after :data:`MAX_NODES`
nodes, so a huge flat file cannot fill memory; reading counts every node each
time it is read, so aliases that share one node many times ("billion laughs")
stop at the same budget instead of being expanded. Recursive aliases compose
into cycles, but nothing here follows a node without counting it.

Problems that leave the tree usable (a duplicate key, a bad tag) are collected
in :attr:`Reader.problems` with the validator's own; those that leave nothing
to read (unreadable file, invalid YAML) raise :class:`PlanError` at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.errors import PlanError, Problem, TooManyItems, TooManyNodes
from orchestrator.plan.model import MAX_CLEARS

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_NODES",
    "MAX_PROBLEMS",
    "Data",
    "MappingNode",
    "Node",
    "Reader",
    "ScalarNode",
    "SequenceNode",
    "compose",
    "join",
    "kind",
    "line_of",
    "node_at",
    "read_file",
]

#: The largest plan file read, in bytes.
MAX_BYTES: Final = 64 * 1024 * 1024

#: The most nodes (keys included) composed, and the most read, aliases counted
#: each time they are read. A 100,000-clear plan with every field written out
#: on every campaign stays below it.
MAX_NODES: Final = 3_000_000

#: The most entries of one list, or keys of one mapping. No plan needs more: it
#: has at most 100,000 clears and every campaign gives at least one. Stopping
#: here refuses a huge flat list long before :data:`MAX_NODES`.
MAX_ITEMS: Final = MAX_CLEARS

#: Past this many problems, reading stops: more would not help anyone.
MAX_PROBLEMS: Final = 1000

#: How deep ``<<`` merges may chain (a mapping merging one that merges...).
MAX_MERGE_DEPTH: Final = 16

#: How deep lists and mappings are read; a plan needs 4 levels. It also stops
#: an alias that contains itself.
MAX_DEPTH: Final = 32

#: A plan read as plain values: dicts, lists, texts, and None for a null.
Data = dict[str, "Data"] | list["Data"] | str | None

#: Plain scalars that mean "no value"; quoted ones are text.
NULL_TEXTS: Final = frozenset({"", "~", "null", "Null", "NULL"})

_STD = "tag:yaml.org,2002:"
_STR: Final = _STD + "str"
_NULL: Final = _STD + "null"
_SEQ: Final = _STD + "seq"
_MAP: Final = _STD + "map"
#: The tag composing gives an untagged plain scalar (no YAML tag has a NUL).
_PLAIN: Final = "\0plain"
_TEXT_TAGS: Final = frozenset({_PLAIN, _STR, _STD + "int", _STD + "float", _NULL})


class _Untyped:
    """Loader hooks: no implicit typing, and a count of the nodes composed."""

    composed = 0

    def resolve(
        self, kind: type[Node], value: str | None, implicit: tuple[bool, bool] | bool
    ) -> str:
        # Called only for nodes without an explicit tag (or with "!"). A scalar
        # is plain and untagged exactly when implicit[0] is true; its text may
        # then be a null, nothing else is ever inferred from it.
        if isinstance(implicit, tuple):
            return _PLAIN if implicit[0] else _STR
        return _SEQ if kind is SequenceNode else _MAP

    def descend_resolver(self, current_node: Node | None, current_index: object) -> None:
        # The composer calls this once before each node it creates, with its parent and
        # its index there: a position in a list, None for a key, the key for a value.
        self.composed += 1
        if self.composed > MAX_NODES:
            raise TooManyNodes
        if isinstance(current_node, MappingNode) and current_index is None:
            finished = current_node.value[-1] if current_node.value else ()
        elif isinstance(current_node, SequenceNode) and isinstance(current_index, int):
            finished = current_node.value[-1:]
        else:
            return  # a mapping's value, or the document's root
        _forget_end(*finished)
        if len(current_node.value) >= MAX_ITEMS:
            shape = "list" if isinstance(current_node, SequenceNode) else "mapping"
            raise TooManyItems(shape, line_of(current_node))

    def ascend_resolver(self) -> None:
        """Nothing to undo: :meth:`descend_resolver` keeps no path."""


def _forget_end(*nodes: Node) -> None:
    # Only a node's first line is ever reported: dropping the end mark of each
    # finished node keeps a large plan within its memory budget.
    for node in nodes:
        node.end_mark = None


class _PyLoader(_Untyped, yaml.SafeLoader):
    """The pure-Python composer, used when PyYAML was built without libyaml."""


_Loader: type[yaml.SafeLoader | yaml.CSafeLoader] = _PyLoader
if yaml.__with_libyaml__:

    class _CLoader(_Untyped, yaml.CSafeLoader):
        """libyaml's composer: several times faster."""

    _Loader = _CLoader


def read_file(path: str | os.PathLike[str], source: str) -> bytes:
    """Read a plan file; what cannot be a plan raises a one-problem PlanError."""
    try:
        with open(path, "rb") as stream:
            if os.fstat(stream.fileno()).st_size > MAX_BYTES:
                raise _too_large(source)
            # Bounded even where the size lies (a pipe, /dev/zero).
            data = stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise _whole_file(source, "no such file") from None
    except IsADirectoryError:
        raise _whole_file(source, "is a directory, not a plan file") from None
    except PermissionError:
        raise _whole_file(source, "permission denied: cannot read the plan") from None
    except OSError as exc:
        raise _whole_file(source, f"cannot read the plan: {exc.strerror or exc}") from exc
    if len(data) > MAX_BYTES:
        raise _too_large(source)
    return data


def compose(text: str | bytes, source: str) -> Node | None:
    """Compose one YAML document (bytes must be UTF-8); ``None`` when there is none.

    Raises :class:`PlanError` when there is nothing to read: bad encoding, too
    large, invalid YAML, more than one document, too many nodes.
    """
    if len(text) > MAX_BYTES:
        raise _too_large(source)
    if isinstance(text, bytes):
        text = _decode(text, source)
    loader: yaml.SafeLoader | yaml.CSafeLoader | None = None
    try:
        loader = _Loader(text)
        return loader.get_single_node()
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise _whole_file(source, "the plan is not valid Unicode text", line) from None
    except TooManyNodes:
        raise _whole_file(source, f"the plan has more than {MAX_NODES} YAML nodes") from None
    except TooManyItems as exc:
        message = (
            f"a {exc.shape} of more than {MAX_ITEMS} entries; a plan has at most "
            f"{MAX_CLEARS} clears: split it up"
        )
        raise _whole_file(source, message, exc.line) from None
    except RecursionError:
        # Only the pure-Python composer recurses; libyaml stops at depth 1000.
        raise _whole_file(source, "the plan is nested too deeply") from None
    except yaml.reader.ReaderError as exc:
        # libyaml reports a byte offset, the pure-Python reader a character one.
        in_bytes = loader is not None and not isinstance(loader, yaml.SafeLoader)
        raise _reader_error(exc, text.encode() if in_bytes else text, source) from exc
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, source, text) from exc
    finally:
        if loader is not None:
            loader.dispose()


def node_at(root: Node, path: Sequence[str | int]) -> tuple[Node | None, Node]:
    """(key node or None, value node) at ``path`` below ``root``, as far as it leads.

    Follows merges the way :class:`Reader` does; problems found on the way
    were reported when the plan was read.
    """
    key_node: Node | None = None
    node = root
    quiet = Reader("")
    for step in path:
        if isinstance(step, int) and type(node) is SequenceNode and step < len(node.value):
            key_node, node = None, node.value[step]
        elif isinstance(step, str) and type(node) is MappingNode:
            pair = (quiet.entries(node, "", "", "") or {}).get(step)
            if pair is None:
                break
            key_node, node = pair
        else:
            break
    return key_node, node


def line_of(node: Node) -> int:
    """The 1-based line a node starts on."""
    return int(node.start_mark.line) + 1


def join(parent: str, key: str | int) -> str:
    """The field path of ``key`` (a mapping key or a list index) under ``parent``."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def kind(node: Node) -> str:
    """What a node is, in words, for "expected X, got Y" messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL or (node.tag == _PLAIN and node.value in NULL_TEXTS):
        return "null"
    return "a string"


class Reader:
    """Reads a composed plan node by node, collecting problems and counting reads.

    Each accessor takes the node, the field path of its parent and its key or
    index there (the path is only built when there is a problem to report).
    ``expected`` says in words what :meth:`items` and :meth:`entries` want,
    for the problem when the node is of another kind.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self._reads = 0
        #: (node, message) of problems that belong to a node, not to the path
        #: it was reached by: reported once however many aliases share it.
        self._reported: set[tuple[int, str]] = set()

    def problem(self, line: int | None, path: str, message: str) -> None:
        """Record a problem; past :data:`MAX_PROBLEMS`, stop with all of them."""
        self.problems.append(Problem(self.source, line, path, message))
        if len(self.problems) >= MAX_PROBLEMS:
            stop = f"stopped after {MAX_PROBLEMS} problems; fix these first"
            raise PlanError([*self.problems, Problem(self.source, None, "", stop)])

    def data(self, node: Node, parent: str = "", key: str | int = "", depth: int = 0) -> Data:
        """The value of ``node`` as plain data: texts as written, nulls as None.

        Problems (tags, keys, merges) are recorded; what they concern is left
        out (None for a value, no entry for a key). Past :data:`MAX_DEPTH` a
        list or mapping reads as None: a plan's schema refuses nesting long
        before that depth, at the level where it goes wrong.
        """
        if type(node) is ScalarNode:
            return self.value(node, parent, key)
        if depth >= MAX_DEPTH:
            return None
        path = join(parent, key)
        if type(node) is SequenceNode:
            items = self.items(node, parent, key, "a list")
            return [self.data(item, path, i, depth + 1) for i, item in enumerate(items or ())]
        entries = self.entries(node, parent, key, "a mapping") or {}
        return {name: self.data(pair[1], path, name, depth + 1) for name, pair in entries.items()}

    def value(self, node: Node, parent: str, key: str | int) -> str | None:
        """A scalar's text exactly as written, or None for a null or a bad tag."""
        self._count(1)
        tag = node.tag
        if tag == _PLAIN:
            text: str = node.value
            return None if text in NULL_TEXTS else text
        if tag not in _TEXT_TAGS:
            self._bad_tag(node, parent, key)
            return None
        return None if tag == _NULL else str(node.value)

    def items(self, node: Node, parent: str, key: str | int, expected: str) -> list[Node] | None:
        """A list's items, not read yet (each is read with :meth:`data`)."""
        self._count(1)
        if type(node) is not SequenceNode:
            self.problem(line_of(node), join(parent, key), f"expected {expected}, got {kind(node)}")
            return None
        if node.tag != _SEQ:
            self._bad_tag(node, parent, key)
        items: list[Node] = node.value
        return items

    def entries(
        self, node: Node, parent: str, key: str | int, expected: str
    ) -> dict[str, tuple[Node, Node]] | None:
        """A mapping's entries, key text → (key node, value node), merges applied."""
        if type(node) is not MappingNode:
            self._reads += 1
            self.problem(line_of(node), join(parent, key), f"expected {expected}, got {kind(node)}")
            return None
        return self._flatten(node, parent, key, 0)

    def _flatten(
        self, node: MappingNode, parent: str, key: str | int, depth: int
    ) -> dict[str, tuple[Node, Node]]:
        pairs: list[tuple[Node, Node]] = node.value
        self._count(1 + len(pairs))
        if node.tag != _MAP:
            self._bad_tag(node, parent, key)
        entries: dict[str, tuple[Node, Node]] = {}
        merge: tuple[Node, Node] | None = None
        for pair in pairs:
            key_node = pair[0]
            if type(key_node) is ScalarNode and key_node.tag == _PLAIN:
                name: str = key_node.value
                if name not in entries and name != "<<":
                    entries[name] = pair
                    continue
            merge = self._odd_key(entries, pair, merge, parent, key)
        if merge is not None:
            self._merge(entries, merge[1], parent, key, depth)
        return entries

    def _odd_key(
        self,
        entries: dict[str, tuple[Node, Node]],
        pair: tuple[Node, Node],
        merge: tuple[Node, Node] | None,
        parent: str,
        key: str | int,
    ) -> tuple[Node, Node] | None:
        """Enter a key that is tagged, not text, a merge or a duplicate; return the merge."""
        key_node = pair[0]
        path = join(parent, key)
        if type(key_node) is not ScalarNode:
            self._node_problem(key_node, path, f"a mapping key must be text, got {kind(key_node)}")
            return merge
        name: str = key_node.value
        if key_node.tag not in _TEXT_TAGS:
            self._bad_tag(key_node, parent, key)
        is_merge = name == "<<" and key_node.tag == _PLAIN
        previous = merge if is_merge else entries.get(name)
        if previous is not None:
            message = f"duplicate key {name!r} (first at line {line_of(previous[0])})"
            self._node_problem(key_node, path, message)
        elif is_merge:
            return pair
        else:
            entries[name] = pair
        return merge

    def _merge(
        self,
        entries: dict[str, tuple[Node, Node]],
        merged: Node,
        parent: str,
        key: str | int,
        depth: int,
    ) -> None:
        path = join(parent, key)
        if depth >= MAX_MERGE_DEPTH:
            message = f"'<<' merges chain more than {MAX_MERGE_DEPTH} deep (or merge themselves)"
            self._node_problem(merged, path, message)
            return
        sources: list[Node] = merged.value if type(merged) is SequenceNode else [merged]
        self._count(len(sources))
        for source in sources:
            if type(source) is MappingNode:
                for name, pair in self._flatten(source, parent, key, depth + 1).items():
                    entries.setdefault(name, pair)
            else:
                message = f"'<<' merges a mapping or a list of mappings, got {kind(source)}"
                self._node_problem(source, path, message)

    def _bad_tag(self, node: Node, parent: str, key: str | int) -> None:
        tag = str(node.tag)
        shown = "!!" + tag.removeprefix(_STD) if tag.startswith(_STD) else tag
        message = (
            f"tag {shown!r} is not allowed here "
            "(a plan may only use the standard !!str, !!int, !!float, !!null, !!seq and !!map)"
        )
        self._node_problem(node, join(parent, key), message)

    def _node_problem(self, node: Node, path: str, message: str) -> None:
        seen = (id(node), message)
        if seen not in self._reported:
            self._reported.add(seen)
            self.problem(line_of(node), path, message)

    def _count(self, reads: int) -> None:
        """Count ``reads`` more nodes read; past :data:`MAX_NODES`, stop with every problem."""
        self._reads += reads
        if self._reads > MAX_NODES:
            message = (
                f"the plan expands to more than {MAX_NODES} YAML nodes "
                "(a node reached through aliases counts each time)"
            )
            raise PlanError([*self.problems, Problem(self.source, None, "", message)])


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        message = f"the plan is not UTF-8 text (byte 0x{bad} cannot be decoded)"
        raise _whole_file(source, message, line) from None


def _whole_file(source: str, message: str, line: int | None = None) -> PlanError:
    return PlanError([Problem(source, line, "", message)])


def _too_large(source: str) -> PlanError:
    return _whole_file(source, f"the plan is larger than {MAX_BYTES // (1024 * 1024)} MiB")


def _yaml_error(exc: yaml.MarkedYAMLError, source: str, text: str) -> PlanError:
    mark = exc.problem_mark or exc.context_mark
    line = int(mark.line) + 1 if mark is not None else None
    if exc.context == "expected a single document in the stream":
        return _whole_file(source, "the file holds more than one YAML document", line)
    if "tab" in (exc.problem or "") or (line is not None and _tab_indented(text, line)):
        # PyYAML words this "found character that cannot start any token".
        message = "tab characters are not allowed in YAML indentation; use spaces"
        return _whole_file(source, message, line)
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.problem and exc.context:
        message += f" ({exc.context})"
    return _whole_file(source, message, line)


def _tab_indented(text: str, line: int) -> bool:
    """Whether the indentation of ``line`` (1-based) of ``text`` holds a tab."""
    lines = text.splitlines()
    written = lines[line - 1] if 0 < line <= len(lines) else ""
    return "\t" in written[: len(written) - len(written.lstrip())]


def _reader_error(exc: yaml.reader.ReaderError, text: str | bytes, source: str) -> PlanError:
    char = exc.character if isinstance(exc.character, int) else ord(exc.character)
    line = (
        text[: exc.position].count(b"\n")
        if isinstance(text, bytes)
        else text.count("\n", 0, exc.position)
    ) + 1
    return _whole_file(source, f"invalid YAML: character U+{char:04X}: {exc.reason}", line)
