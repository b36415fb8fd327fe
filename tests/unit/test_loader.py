"""YAML text → nodes read as the text written: traps, tags, keys, limits, whole-file problems."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import PlanError
from orchestrator.plan import loader
from orchestrator.plan.loader import Node, Reader, compose


def root_of(text: str | bytes) -> Node:
    root = compose(text, "p.yaml")
    assert root is not None
    return root


def entries_of(text: str, reader: Reader | None = None) -> dict[str, tuple[Node, Node]]:
    entries = (reader or Reader("p.yaml")).entries(root_of(text), "", "", "a mapping")
    assert entries is not None
    return entries


def value_text(text: str, key: str = "v") -> str | None:
    """The text :class:`Reader` gives for ``key`` of a one-level mapping."""
    return Reader("p.yaml").value(entries_of(text)[key][1], "", key)


def problems_of(reader: Reader) -> list[str]:
    return [str(p) for p in reader.problems]


def whole_file_problems(excinfo: pytest.ExceptionInfo[PlanError]) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


@pytest.fixture(params=["libyaml", "pure-python"])
def either_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with libyaml's composer and with PyYAML's pure-Python one."""
    if request.param == "pure-python":
        monkeypatch.setattr(loader, "_Loader", loader._PyLoader)
    elif not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml")
    yield request.param


# --- what is written is what is read ------------------------------------------


YAML_1_1_TRAPS = ["0014", "0123", "1_000", "1:20", "no", "yes", "on", "off", "1e3", "0x20"]
YAML_1_1_TRAPS += [".inf", "2001-01-01", "12:30:45"]


@pytest.mark.parametrize("written", YAML_1_1_TRAPS)
def test_yaml_1_1_implicit_types_stay_the_text_written(either_loader: str, written: str) -> None:
    assert value_text(f"v: {written}\n") == written


def test_leading_zeros_in_server_are_kept() -> None:
    assert value_text("server: 0014\n", "server") == "0014"


def test_quoted_and_explicitly_tagged_scalars_keep_their_text(either_loader: str) -> None:
    entries = entries_of("a: '0014'\nb: !!str 0123\nc: !!int 0x20\nd: ! 1:20\ne: '~'\n")
    reader = Reader("p.yaml")
    texts = [reader.value(entries[k][1], "", k) for k in "abcde"]
    assert texts == ["0014", "0123", "0x20", "1:20", "~"]
    assert reader.problems == []


@pytest.mark.parametrize("written", ["", "~", "null", "Null", "NULL", "!!null x"])
def test_plain_nulls_are_no_value(either_loader: str, written: str) -> None:
    # Whether a null is allowed is the schema's to say (test_validate.py).
    reader = Reader("p.yaml")
    node = entries_of(f"v: {written}\n")["v"][1]
    assert reader.value(node, "x", "v") is None
    assert problems_of(reader) == []


def test_block_scalar_keeps_its_trailing_newline() -> None:
    assert value_text("v: |\n  3001\n") == "3001\n"


# --- tags ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("!!python/object:os.system x", "!!python/object:os.system"),
        ("!custom x", "!custom"),
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!bool yes", "!!bool"),
        ("!!timestamp 2001-01-01", "!!timestamp"),
    ],
)
def test_non_standard_tags_on_text_are_refused(
    either_loader: str, written: str, shown: str
) -> None:
    reader = Reader("p.yaml")
    node = entries_of(f"v: {written}\n")["v"][1]
    assert reader.value(node, "", "v") is None
    assert problems_of(reader) == [
        f"p.yaml:1: v: tag {shown!r} is not allowed here "
        "(a plan may only use the standard !!str, !!int, !!float, !!null, !!seq and !!map)"
    ]


def test_non_standard_tags_on_lists_and_mappings_are_refused() -> None:
    reader = Reader("p.yaml")
    entries = entries_of("l: !custom [a]\nm: !!set {a: 1}\n")
    reader.items(entries["l"][1], "", "l", "a list")
    reader.entries(entries["m"][1], "", "m", "a mapping")
    assert [p.path for p in reader.problems] == ["l", "m"]
    assert all("is not allowed here" in p.message for p in reader.problems)


def test_standard_collection_tags_are_accepted() -> None:
    reader = Reader("p.yaml")
    entries = entries_of("l: !!seq [a]\nm: !!map {a: 1}\n")
    assert reader.items(entries["l"][1], "", "l", "a list") is not None
    assert reader.entries(entries["m"][1], "", "m", "a mapping") is not None
    assert reader.problems == []


# --- mappings -----------------------------------------------------------------


def test_duplicate_key_is_reported_with_the_first_line(either_loader: str) -> None:
    reader = Reader("p.yaml")
    entries_of("campaign_id: 1\nresults: [busy]\nresults: all\n", reader)
    assert problems_of(reader) == ["p.yaml:3: duplicate key 'results' (first at line 2)"]


def test_duplicate_key_path_is_the_mapping_path() -> None:
    reader = Reader("p.yaml")
    node = root_of("- {a: 1, a: 2}\n").value[0]
    reader.entries(node, "campaigns", 2, "a campaign")
    assert problems_of(reader) == ["p.yaml:1: campaigns[2]: duplicate key 'a' (first at line 1)"]


def test_duplicate_key_keeps_the_first_value() -> None:
    reader = Reader("p.yaml")
    entries = entries_of("v: first\nv: second\n", reader)
    assert reader.value(entries["v"][1], "", "v") == "first"


def test_a_custom_tag_on_a_key_is_refused() -> None:
    reader = Reader("p.yaml")
    entries_of("!custom v: 1\n", reader)
    assert [p.message.split(" (")[0] for p in reader.problems] == [
        "tag '!custom' is not allowed here"
    ]


def test_a_key_that_is_not_text_is_refused() -> None:
    reader = Reader("p.yaml")
    entries = entries_of("? [a, b]\n: 1\nok: 2\n", reader)
    assert list(entries) == ["ok"]
    assert problems_of(reader) == ["p.yaml:1: a mapping key must be text, got a list"]


def test_merge_key_copies_keys_not_written_in_the_mapping(either_loader: str) -> None:
    reader = Reader("p.yaml")
    root = root_of("base: &b {server: '0014', results: all}\nc: {<<: *b, results: [busy]}\n")
    top = reader.entries(root, "", "", "a mapping")
    assert top is not None
    entries = reader.entries(top["c"][1], "", "c", "a mapping")
    assert entries is not None
    assert reader.value(entries["server"][1], "c", "server") == "0014"
    assert reader.items(entries["results"][1], "c", "results", "a list") is not None
    assert reader.problems == []


def test_earlier_merged_mappings_win_over_later_ones() -> None:
    reader = Reader("p.yaml")
    root = root_of("a: &a {v: from-a}\nb: &b {v: from-b, w: from-b}\nc: {<<: [*a, *b]}\n")
    top = reader.entries(root, "", "", "a mapping")
    assert top is not None
    entries = reader.entries(top["c"][1], "", "c", "a mapping")
    assert entries is not None
    assert reader.value(entries["v"][1], "c", "v") == "from-a"
    assert reader.value(entries["w"][1], "c", "w") == "from-b"


def test_merging_something_else_than_a_mapping_is_refused() -> None:
    reader = Reader("p.yaml")
    reader.entries(entries_of("c: {<<: [a], v: 1}\n")["c"][1], "", "c", "a mapping")
    assert problems_of(reader) == [
        "p.yaml:1: c: '<<' merges a mapping or a list of mappings, got a string"
    ]


def test_a_mapping_merging_itself_is_refused_without_hanging() -> None:
    reader = Reader("p.yaml")
    reader.entries(root_of("&a {<<: *a, v: 1}\n"), "", "", "a mapping")
    assert [p.message for p in reader.problems] == [
        "'<<' merges chain more than 16 deep (or merge themselves)"
    ]


def test_two_merge_keys_in_one_mapping_are_a_duplicate() -> None:
    reader = Reader("p.yaml")
    reader.entries(entries_of("a: &a {v: 1}\nc: {<<: *a, <<: *a}\n")["c"][1], "", "c", "m")
    assert problems_of(reader) == ["p.yaml:2: c: duplicate key '<<' (first at line 2)"]


def test_quoted_merge_key_is_an_ordinary_key() -> None:
    assert list(entries_of("'<<': {v: 1}\n")) == ["<<"]


def test_data_is_plain_texts_lists_and_mappings() -> None:
    reader = Reader("p.yaml")
    data = reader.data(root_of("l: [a, ~, [b], '0014']\nm: {k: 1:20, <<: {j: no}}\n"))
    assert data == {"l": ["a", None, ["b"], "0014"], "m": {"k": "1:20", "j": "no"}}
    assert problems_of(reader) == []


def test_data_leaves_out_what_has_a_problem() -> None:
    reader = Reader("p.yaml")
    data = reader.data(root_of("a: !custom x\nb: [1, !!binary aGk=]\nc: 1\nc: 2\n"))
    assert data == {"a": None, "b": ["1", None], "c": "1"}
    assert [p.path for p in reader.problems] == ["", "a", "b[1]"]


# --- hostile documents --------------------------------------------------------


def test_billion_laughs_is_refused_at_the_node_budget() -> None:
    keys = ", ".join(f"k{i}: x" for i in range(100))
    lines = [f"l0: &l0 {{{keys}}}"]
    for level in range(1, 10):
        aliases = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"l{level}: &l{level} {{<<: [{aliases}]}}")
    reader = Reader("p.yaml")
    top = entries_of("\n".join(lines) + "\n")
    with pytest.raises(PlanError) as excinfo:
        reader.entries(top["l9"][1], "", "l9", "a mapping")
    assert whole_file_problems(excinfo) == [
        "p.yaml: the plan expands to more than 3000000 YAML nodes "
        "(a node reached through aliases counts each time)"
    ]


def test_aliases_count_each_time_they_are_read() -> None:
    reader = Reader("p.yaml")
    root = root_of("[&a x, *a, *a]\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loader, "MAX_NODES", 3)
        with pytest.raises(PlanError, match="more than 3 YAML nodes"):
            reader.data(root)


def test_recursive_alias_composes_and_reading_it_stops_at_the_depth_limit() -> None:
    reader = Reader("p.yaml")
    data = reader.data(root_of("&c [*c]\n"))
    depth = 0
    while isinstance(data, list):
        depth, data = depth + 1, data[0]
    assert (depth, data) == (loader.MAX_DEPTH, None)


def test_composing_stops_at_the_node_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_NODES", 100)
    with pytest.raises(PlanError) as excinfo:
        compose("[" + ", ".join(["a"] * 100) + "]\n", "p.yaml")
    assert whole_file_problems(excinfo) == ["p.yaml: the plan has more than 100 YAML nodes"]


def test_a_list_longer_than_any_plan_needs_is_refused_at_its_line(
    either_loader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "MAX_ITEMS", 5)
    compose("campaigns:\n" + "  - a\n" * 5, "p.yaml")  # as long as allowed: fine
    with pytest.raises(PlanError) as excinfo:
        compose("version: 1\ncampaigns:\n" + "  - a\n" * 6, "p.yaml")
    assert whole_file_problems(excinfo) == [
        "p.yaml:3: a list of more than 5 entries; a plan has at most 100000 clears: split it up"
    ]


def test_a_mapping_with_more_keys_than_any_plan_needs_is_refused(
    either_loader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "MAX_ITEMS", 5)
    compose("".join(f"k{n}: v\n" for n in range(5)), "p.yaml")
    with pytest.raises(PlanError) as excinfo:
        compose("top:\n" + "".join(f"  k{n}: v\n" for n in range(6)), "p.yaml")
    assert whole_file_problems(excinfo) == [
        "p.yaml:2: a mapping of more than 5 entries; a plan has at most 100000 clears: split it up"
    ]


def test_problems_stop_being_collected_past_the_limit() -> None:
    reader = Reader("p.yaml")
    root = root_of("[" + ", ".join(["!custom x"] * 2000) + "]\n")
    with pytest.raises(PlanError) as excinfo:
        reader.data(root)
    problems = excinfo.value.problems
    assert len(problems) == 1001
    assert str(problems[0]) == "p.yaml: stopped after 1000 problems; fix these first"


def test_deep_nesting_is_refused_by_libyaml() -> None:
    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml")
    with pytest.raises(PlanError) as excinfo:
        compose("[" * 5000 + "]" * 5000, "p.yaml")
    assert whole_file_problems(excinfo) == [
        "p.yaml:1: invalid YAML: exceeded maximum nesting depth (while increasing flow level)"
    ]


def test_deep_nesting_is_refused_by_the_pure_python_composer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loader, "_Loader", loader._PyLoader)
    with pytest.raises(PlanError) as excinfo:
        compose("[" * 600 + "]" * 600, "p.yaml")
    assert whole_file_problems(excinfo) == ["p.yaml: the plan is nested too deeply"]


# --- whole documents ----------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "---\n...\n"])
def test_a_document_without_content_composes_to_nothing_or_null(text: str) -> None:
    root = compose(text, "p.yaml")
    assert root is None or loader.kind(root) == "null"


def test_invalid_yaml_names_its_line_and_problem(either_loader: str) -> None:
    with pytest.raises(PlanError) as excinfo:
        compose("version: 1\ncampaigns: [a,\nb: 2\n", "p.yaml")
    [problem] = excinfo.value.problems
    assert problem.line == 4
    assert problem.message.startswith("invalid YAML: ")
    assert "flow sequence" in problem.message


TAB = "tab characters are not allowed in YAML indentation; use spaces"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('version: 1\ncampaigns:\n  - campaign_id: 1\n\tserver: "0014"\n', 4),
        ("version: 1\ncampaigns:\n\t- campaign_id: 1\n", 3),
        ("version: 1\ncampaigns:\n  - campaign_id: 1\n    \tserver: x\n", 4),
        ("version: 1\nsettings:\n\tcooldown_s: 1\n", 3),
    ],
)
def test_a_tab_in_indentation_is_called_a_tab(either_loader: str, text: str, line: int) -> None:
    with pytest.raises(PlanError) as excinfo:
        compose(text, "p.yaml")
    assert whole_file_problems(excinfo) == [f"p.yaml:{line}: {TAB}"]


def test_other_invalid_yaml_is_not_called_a_tab(either_loader: str) -> None:
    with pytest.raises(PlanError) as excinfo:
        compose("version: 1\nname: a: b\tc\n", "p.yaml")
    [problem] = whole_file_problems(excinfo)
    assert problem.startswith("p.yaml:2: invalid YAML: ") and "tab" not in problem


def test_more_than_one_document_is_refused(either_loader: str) -> None:
    with pytest.raises(PlanError) as excinfo:
        compose("version: 1\n---\nversion: 1\n", "p.yaml")
    assert whole_file_problems(excinfo) == ["p.yaml:2: the file holds more than one YAML document"]


def test_undefined_alias_is_invalid_yaml() -> None:
    with pytest.raises(PlanError, match=r"p\.yaml:1: invalid YAML: .*undefined alias"):
        compose("v: *nowhere\n", "p.yaml")


def test_anchor_defined_twice_is_invalid_yaml() -> None:
    with pytest.raises(PlanError, match=r"invalid YAML: .*duplicate anchor"):
        compose("a: &x 1\nb: &x 2\n", "p.yaml")


def test_control_character_is_refused_with_its_line(either_loader: str) -> None:
    with pytest.raises(PlanError) as excinfo:
        compose("version: 1\nname: café\nv: a\x07b\n", "p.yaml")
    [problem] = excinfo.value.problems
    assert problem.line == 3
    assert problem.message.startswith("invalid YAML: character U+0007: ")


def test_bytes_that_are_not_utf8_are_refused_with_their_line() -> None:
    with pytest.raises(PlanError) as excinfo:
        compose(b"version: 1\nserver: caf\xe9\n", "p.yaml")
    assert whole_file_problems(excinfo) == [
        "p.yaml:2: the plan is not UTF-8 text (byte 0xe9 cannot be decoded)"
    ]


@pytest.mark.parametrize("text", ["\ufeffv: 1\n", b"\xef\xbb\xbfv: 1\n"])
def test_a_utf8_byte_order_mark_is_accepted(text: str | bytes) -> None:
    reader = Reader("p.yaml")
    entries = reader.entries(root_of(text), "", "", "a mapping")
    assert entries is not None
    assert reader.value(entries["v"][1], "", "v") == "1"


def test_text_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(PlanError) as excinfo:
        compose("version: 1\nv: \udc80\n", "p.yaml")
    assert whole_file_problems(excinfo) == ["p.yaml:2: the plan is not valid Unicode text"]


def test_lines_are_one_based() -> None:
    entries = entries_of("\n\nv: x\n")
    assert loader.line_of(entries["v"][0]) == 3


# --- files --------------------------------------------------------------------


def test_reading_a_missing_file_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as excinfo:
        loader.read_file(tmp_path / "none.yaml", "plans/none.yaml")
    assert whole_file_problems(excinfo) == ["plans/none.yaml: no such file"]


def test_reading_a_directory_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as excinfo:
        loader.read_file(tmp_path, "plans")
    assert whole_file_problems(excinfo) == ["plans: is a directory, not a plan file"]


def test_reading_an_unreadable_file_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, which reads any file: refuse the open itself.
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(loader, "open", refuse, raising=False)
    with pytest.raises(PlanError) as excinfo:
        loader.read_file(tmp_path / "p.yaml", "p.yaml")
    assert whole_file_problems(excinfo) == ["p.yaml: permission denied: cannot read the plan"]


def test_reading_a_file_larger_than_64_mib_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as stream:
        stream.truncate(loader.MAX_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(PlanError) as excinfo:
        loader.read_file(path, "huge.yaml")
    assert whole_file_problems(excinfo) == ["huge.yaml: the plan is larger than 64 MiB"]


def test_reading_a_file_returns_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\n")
    assert loader.read_file(os.fspath(path), "p.yaml") == b"version: 1\n"


def test_text_larger_than_64_mib_is_refused_before_parsing() -> None:
    with pytest.raises(PlanError, match="larger than 64 MiB"):
        compose(b" " * (loader.MAX_BYTES + 1), "p.yaml")
