"""Plan text → frozen Plan, or a PlanError naming every problem with its line and field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from orchestrator.errors import PlanError
from orchestrator.plan import validate
from orchestrator.plan.model import RESULT_FILTERS, Clear, OnFailure, Plan, Settings, TokenRef
from orchestrator.plan.schema import plan_schema
from orchestrator.plan.validate import check_base_url, load_plan, parse_plan

EXAMPLE = Path(__file__).resolve().parents[2] / "plans" / "example.yaml"

#: Three lines: the first campaign entry is on line 4.
HEADER = (
    "version: 1\n"
    "defaults: {server: '0014', token_env: WOLKVOX_TOKEN, type_campaign: predictive}\n"
    "campaigns:\n"
)
ENV = TokenRef("env", "WOLKVOX_TOKEN")


def campaigns(*entries: str) -> str:
    """A plan with the usual header and one flow-mapping campaign entry per line."""
    return HEADER + "".join(f"  - {{{entry}}}\n" for entry in entries)


def with_settings(settings: str, *entries: str) -> str:
    """Like :func:`campaigns`, with a flow-mapping ``settings`` block on line 2."""
    return campaigns(*entries).replace("version: 1\n", f"version: 1\nsettings: {{{settings}}}\n", 1)


def parse(text: str | bytes, base_dir: Path = Path("/plans")) -> Plan:
    return parse_plan(text, "p.yaml", base_dir=base_dir)


def problems(text: str | bytes) -> list[str]:
    with pytest.raises(PlanError) as excinfo:
        parse(text)
    return [str(problem) for problem in excinfo.value.problems]


def clear(seq: int, campaign_id: str, result: str | None, line: int) -> Clear:
    """A clear of the usual header's defaults."""
    return Clear(seq, "0014", "predictive", campaign_id, result, ENV, line=line)


# --- the happy path -------------------------------------------------------------

FULL_PLAN = """\
version: 1
settings:
  max_parallel_tokens: 4
  cooldown_s: 2.5
  base_url: https://wv{server}.wolkvox.com/
  protect: [9001, '0042']
  lock_url: rediss://locks.example:6380/1
defaults:
  server: 0014
  token_env: WOLKVOX_TOKEN
  type_campaign: predictive
  retries: 5
campaigns:
  - campaign_id: 3001
    results: [no-answer, busy]
    tags: [nightly, east]
  - campaign_id: 0123
    type_campaign: preview
    results: all
    on_failure: abort
    timeout_s: 30
  - campaign_id: 4001
    server: 0038
    token_file: secrets/ops.token
    results: [failed]
    on_failure: continue
    retries: 0
"""


def test_a_valid_plan_becomes_settings_and_numbered_clears(tmp_path: Path) -> None:
    token_file = os.path.realpath(tmp_path / "secrets" / "ops.token")
    plan = parse_plan(FULL_PLAN, "plans/nightly.yaml", base_dir=tmp_path)
    assert plan == Plan(
        source="plans/nightly.yaml",
        settings=Settings(
            max_parallel_tokens=4,
            cooldown_s=2.5,
            base_url="https://wv{server}.wolkvox.com/",
            protect=frozenset({"9001", "0042"}),
            lock_url="rediss://locks.example:6380/1",
        ),
        clears=(
            Clear(1, "0014", "predictive", "3001", "no-answer", ENV, OnFailure.STOP, 90.0, 5,
                  ("nightly", "east"), 14),
            Clear(2, "0014", "predictive", "3001", "busy", ENV, OnFailure.STOP, 90.0, 5,
                  ("nightly", "east"), 14),
            Clear(3, "0014", "preview", "0123", None, ENV, OnFailure.ABORT, 30.0, 5, (), 17),
            Clear(4, "0038", "predictive", "4001", "failed", TokenRef("file", token_file),
                  OnFailure.CONTINUE, 90.0, 0, (), 22),
        ),
    )  # fmt: skip


def test_settings_and_optional_fields_have_their_defaults() -> None:
    plan = parse(campaigns("campaign_id: 1, results: all"))
    assert plan.settings == Settings()
    assert plan.clears == (clear(1, "1", None, 4),)


def test_the_example_plan_loads() -> None:
    plan = load_plan(EXAMPLE)
    assert [
        (c.seq, c.server, c.type_campaign, c.campaign_id, c.result_label) for c in plan.clears
    ] == [
        (1, "0014", "predictive", "3001", "no-answer"),
        (2, "0014", "predictive", "3001", "busy"),
        (3, "0014", "predictive", "3001", "abandon"),
        (4, "0014", "preview", "3002", "all"),
        (5, "0038", "predictive", "4001", "failed"),
    ]
    assert plan.token_refs() == (ENV, TokenRef("env", "WOLKVOX_TOKEN_OPS"))
    assert plan.settings.protect == frozenset({"9001", "9002"})


def test_load_plan_names_the_file_as_given_and_resolves_token_files_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.yaml").write_text(
        "version: 1\ncampaigns:\n  - {campaign_id: 1, results: all, server: a,"
        " type_campaign: preview, token_file: t.token}\n"
    )
    monkeypatch.chdir(tmp_path)
    plan = load_plan("plans/p.yaml")
    assert plan.source == "plans/p.yaml"
    assert plan.clears[0].token == TokenRef("file", os.path.realpath(tmp_path / "plans/t.token"))


def test_an_absolute_token_file_is_kept() -> None:
    plan = parse(campaigns("campaign_id: 1, results: all, token_file: /etc/wolkvox/t"))
    assert plan.clears[0].token == TokenRef("file", os.path.realpath("/etc/wolkvox/t"))


def test_parse_plan_accepts_bytes() -> None:
    assert parse(campaigns("campaign_id: 1, results: all").encode()).clears[0].campaign_id == "1"


# --- what is written is what is sent ---------------------------------------------


def test_leading_zeros_in_server_and_campaign_id_are_kept() -> None:
    plan = parse(
        "version: 1\ncampaigns:\n  - {campaign_id: 0123, server: 0014,"
        " type_campaign: preview, token_env: T, results: all}\n"
    )
    assert plan.clears[0].target == ("0014", "preview", "0123")


def test_a_sexagesimal_looking_campaign_id_is_refused_not_converted() -> None:
    assert problems(campaigns("campaign_id: 1:20, results: all")) == [
        "p.yaml:4: campaigns[0].campaign_id: expected a campaign id (1 to 20 digits), got '1:20'"
    ]


@pytest.mark.parametrize("written", ["1_0", "0x20", "1e3", "+5", "-1", "2.0", "٣"])
def test_whole_numbers_are_plain_decimal_digits(written: str) -> None:
    assert problems(f"version: 1\nsettings: {{max_parallel_tokens: {written}}}\ncampaigns: []\n")[
        0
    ] == (
        "p.yaml:2: settings.max_parallel_tokens: expected a whole number from 1 to 10000, "
        f"got {written!r}"
    )


@pytest.mark.parametrize(("written", "value"), [("60", 60.0), ("2.5", 2.5), ("0", 0.0)])
def test_cooldown_is_a_decimal_number_of_seconds(written: str, value: float) -> None:
    plan = parse(with_settings(f"cooldown_s: {written}", "campaign_id: 1, results: all"))
    assert plan.settings.cooldown_s == value


@pytest.mark.parametrize("written", ["1e3", ".5", "5.", "3600.5", "1_0", "inf", "-1"])
def test_cooldown_refuses_other_numbers(written: str) -> None:
    assert problems(f"version: 1\nsettings: {{cooldown_s: {written}}}\ncampaigns: []\n")[0] == (
        "p.yaml:2: settings.cooldown_s: expected a number of seconds from 0 to 3600, "
        f"got {written!r}"
    )


@pytest.mark.parametrize(
    ("written", "value"), [("", 1800.0), ("0", 0.0), ("'7200'", 7200.0), ("86400", 86400.0)]
)
def test_the_maintenance_wait_is_seconds_up_to_a_day(written: str, value: float) -> None:
    setting = f"maintenance_wait_s: {written}" if written else "max_parallel_tokens: 1"
    plan = parse(with_settings(setting, "campaign_id: 1, results: all"))
    assert plan.settings.maintenance_wait_s == value


@pytest.mark.parametrize("written", ["86400.5", "100000", "-1", "1e3", "30m"])
def test_the_maintenance_wait_refuses_other_numbers(written: str) -> None:
    text = f"version: 1\nsettings: {{maintenance_wait_s: {written}}}\ncampaigns: []\n"
    assert problems(text)[0] == (
        "p.yaml:2: settings.maintenance_wait_s: expected a number of seconds from 0 to 86400, "
        f"got {written!r}"
    )


@pytest.mark.parametrize("written", ["no", "yes", "on", "Off"])
def test_yaml_1_1_booleans_are_just_text(written: str) -> None:
    assert problems(campaigns(f"campaign_id: 1, results: all, on_failure: {written}")) == [
        f"p.yaml:4: campaigns[0].on_failure: {written!r} is not an on_failure action "
        "(expected one of stop, continue, abort)"
    ]


def test_a_server_that_yaml_1_1_would_read_as_false_stays_text() -> None:
    assert parse(campaigns("campaign_id: 1, results: all, server: no")).clears[0].server == "no"


# --- expansion ------------------------------------------------------------------


def test_each_filter_is_one_clear_in_listed_order() -> None:
    plan = parse(campaigns("campaign_id: 1, results: [busy, abandon, failed]"))
    assert [c.result for c in plan.clears] == ["busy", "abandon", "failed"]


def test_all_is_one_clear_without_a_filter() -> None:
    [only] = parse(campaigns("campaign_id: 1, results: all")).clears
    assert only.result is None
    assert only.result_label == "all"


def test_seq_counts_across_the_plan_and_line_is_the_campaign_entry() -> None:
    text = HEADER + (
        "  - campaign_id: 1\n    results: [busy, abandon]\n  - results: all\n    campaign_id: 2\n"
    )
    assert parse(text).clears == (
        clear(1, "1", "busy", 4),
        clear(2, "1", "abandon", 4),
        clear(3, "2", None, 6),
    )


def test_a_campaign_field_replaces_the_default() -> None:
    text = (
        "version: 1\n"
        "defaults: {server: '0014', token_env: T, type_campaign: predictive, tags: [a, b]}\n"
        "campaigns:\n"
        "  - {campaign_id: 1, results: all, server: '0038', tags: [c]}\n"
    )
    [only] = parse(text).clears
    assert (only.server, only.tags) == ("0038", ("c",))


def test_a_campaign_token_file_replaces_the_default_token_env() -> None:
    plan = parse(campaigns("campaign_id: 1, results: all, token_file: t"))
    assert plan.clears[0].token == TokenRef("file", os.path.realpath("/plans/t"))


def test_a_campaign_token_env_replaces_the_default_token_file() -> None:
    text = (
        "version: 1\n"
        "defaults: {server: a, token_file: t, type_campaign: preview}\n"
        "campaigns: [{campaign_id: 1, results: all, token_env: OPS}]\n"
    )
    assert parse(text).clears[0].token == TokenRef("env", "OPS")


def test_merge_keys_share_a_block_between_campaigns() -> None:
    text = HEADER + (
        "  - &east {campaign_id: 1, results: [busy], server: '0038', tags: [east]}\n"
        "  - {<<: *east, campaign_id: 2}\n"
    )
    assert [(c.server, c.campaign_id, c.tags) for c in parse(text).clears] == [
        ("0038", "1", ("east",)),
        ("0038", "2", ("east",)),
    ]


# --- required fields and structure ----------------------------------------------


def test_missing_fields_are_each_reported_on_the_campaign_line() -> None:
    assert problems("version: 1\ncampaigns:\n  - {campaign_id: 1}\n") == [
        "p.yaml:3: campaigns[0]: missing required key 'results' (set it here or in defaults)",
        "p.yaml:3: campaigns[0]: missing required key 'type_campaign' (set it here or in defaults)",
        "p.yaml:3: campaigns[0]: missing required key 'server' (set it here or in defaults)",
        "p.yaml:3: campaigns[0]: missing a token: set token_env or token_file here or in defaults",
    ]


def test_missing_campaign_id_is_reported() -> None:
    assert problems(campaigns("results: all")) == [
        "p.yaml:4: campaigns[0]: missing required key 'campaign_id'"
    ]


def test_a_null_value_is_no_value() -> None:
    assert problems(campaigns("campaign_id: 1, results: all, server: ~")) == [
        "p.yaml:4: campaigns[0].server: expected a server (1 to 32 letters and digits), got null"
    ]


def test_an_invalid_default_is_reported_once_not_per_campaign() -> None:
    text = (
        "version: 1\ndefaults: {server: 'a.b', token_env: T, type_campaign: preview}\n"
        "campaigns: [{campaign_id: 1, results: all}, {campaign_id: 2, results: all}]\n"
    )
    assert problems(text) == [
        "p.yaml:2: defaults.server: expected a server (1 to 32 letters and digits), got 'a.b'"
    ]


def test_both_token_sources_in_one_mapping_are_refused() -> None:
    assert problems(campaigns("campaign_id: 1, results: all, token_file: t, token_env: X")) == [
        "p.yaml:4: campaigns[0]: set token_env or token_file, not both"
    ]


def test_campaign_id_cannot_have_a_default() -> None:
    text = (
        "version: 1\ndefaults: {campaign_id: 1, server: a, token_env: T, type_campaign: preview}\n"
        "campaigns: [{campaign_id: 2, results: all}]\n"
    )
    assert problems(text) == [
        "p.yaml:2: defaults: campaign_id cannot have a default: each campaign names its own"
    ]


def test_version_is_required() -> None:
    assert problems("campaigns: []\n")[0] == (
        "p.yaml:1: missing required key 'version' (write version: 1)"
    )


@pytest.mark.parametrize("written", ["2", "1.0", "'01'"])
def test_version_must_be_1(written: str) -> None:
    shown = repr(written.strip("'"))
    assert problems(f"version: {written}\ncampaigns: []\n")[0] == (
        f"p.yaml:1: version: unsupported plan format version {shown} (expected 1)"
    )


def test_campaigns_are_required_and_not_empty() -> None:
    assert problems("version: 1\n") == ["p.yaml:1: missing required key 'campaigns'"]
    assert problems("version: 1\ncampaigns: []\n") == [
        "p.yaml:2: campaigns: the list is empty: a plan clears at least one campaign"
    ]


def test_a_mapping_where_a_list_is_expected_is_named() -> None:
    assert problems("version: 1\ncampaigns: {campaign_id: 1}\n") == [
        "p.yaml:2: campaigns: expected a list of campaigns, got a mapping"
    ]


def test_a_list_where_a_string_is_expected_is_named() -> None:
    assert problems(campaigns("campaign_id: [1], results: all")) == [
        "p.yaml:4: campaigns[0].campaign_id: expected a campaign id (1 to 20 digits), got a list"
    ]


def test_settings_and_defaults_must_be_mappings() -> None:
    text = (
        "version: 1\nsettings: [a]\ndefaults: ~\ncampaigns:\n"
        "  - {campaign_id: 1, results: all, server: a, type_campaign: preview, token_env: T}\n"
    )
    assert problems(text) == [
        "p.yaml:2: settings: expected a mapping of settings, got a list",
        "p.yaml:3: defaults: expected a mapping of campaign fields, got null",
    ]


def test_a_campaign_must_be_a_mapping() -> None:
    assert problems(HEADER + "  - 3001\n") == [
        "p.yaml:4: campaigns[0]: expected a campaign (a mapping), got a string"
    ]


# --- unknown keys -------------------------------------------------------------------


def test_an_unknown_campaign_key_suggests_the_close_match() -> None:
    assert problems(campaigns("campaign_id: 1, resutls: [busy]")) == [
        "p.yaml:4: campaigns[0]: unknown key 'resutls' (did you mean 'results'?)",
        "p.yaml:4: campaigns[0]: missing required key 'results' (set it here or in defaults)",
    ]


def test_an_unknown_key_without_a_close_match_lists_the_allowed_ones() -> None:
    assert problems("version: 1\nowner: me\ncampaigns: []\n")[0] == (
        "p.yaml:2: unknown key 'owner' (expected one of version, settings, defaults, campaigns)"
    )


def test_unknown_keys_in_settings_and_defaults_are_refused() -> None:
    text = (
        "version: 1\nsettings: {cooldown: 5}\n"
        "defaults: {sever: a, token_env: T, type_campaign: preview}\n"
        "campaigns: [{campaign_id: 1, results: all, server: b}]\n"
    )
    assert problems(text) == [
        "p.yaml:2: settings: unknown key 'cooldown' (did you mean 'cooldown_s'?)",
        "p.yaml:3: defaults: unknown key 'sever' (did you mean 'server'?)",
    ]


def test_a_key_in_the_wrong_block_is_told_where_it_belongs() -> None:
    text = (
        "version: 1\n"
        "type_campaign: predictive\n"
        "settings:\n"
        "  token_env: T\n"
        "defaults:\n"
        "  server: '0014'\n"
        "  type_campaign: predictive\n"
        "  token_env: T\n"
        "  cooldown_s: 5\n"
        "  settings: {}\n"
        "campaigns:\n"
        "  - campaign_id: 1\n"
        "    results: all\n"
        "    max_parallel_tokens: 2\n"
        "  - campaign_id: 2\n"
        "    results: all\n"
        "campaign_id: 3\n"
    )
    assert problems(text) == [
        "p.yaml:2: type_campaign belongs under defaults: or a campaign",
        "p.yaml:4: settings: token_env belongs under defaults: or a campaign",
        "p.yaml:9: defaults: cooldown_s belongs under settings:",
        "p.yaml:10: defaults: settings belongs at the top level",
        "p.yaml:14: campaigns[0]: max_parallel_tokens belongs under settings:",
        "p.yaml:17: campaign_id belongs under a campaign",
    ]


def test_a_duplicate_key_is_refused() -> None:
    assert problems(HEADER + "  - campaign_id: 1\n    results: [busy]\n    results: all\n") == [
        "p.yaml:6: campaigns[0]: duplicate key 'results' (first at line 5)"
    ]


def test_a_custom_tag_is_refused() -> None:
    assert problems(campaigns("campaign_id: !custom 1, results: all")) == [
        "p.yaml:4: campaigns[0].campaign_id: tag '!custom' is not allowed here "
        "(a plan may only use the standard !!str, !!int, !!float, !!null, !!seq and !!map)"
    ]


# --- field values -----------------------------------------------------------------


def test_a_result_that_is_not_a_filter_is_named_with_the_choices() -> None:
    assert problems(campaigns("campaign_id: 1, results: [busy, nobody]")) == [
        "p.yaml:4: campaigns[0].results[1]: 'nobody' is not a result filter (expected one of "
        "no-answer, answer-machine, abandon, busy, congestion, unknown, failed, do-not-call, "
        "chanunavail, answer)"
    ]


def test_a_misspelt_result_suggests_the_filter() -> None:
    assert problems(campaigns("campaign_id: 1, results: [bussy]")) == [
        "p.yaml:4: campaigns[0].results[0]: 'bussy' is not a result filter (did you mean 'busy'?)"
    ]


def test_a_repeated_filter_is_a_duplicate() -> None:
    assert problems(campaigns("campaign_id: 1, results: [busy, failed, busy]")) == [
        "p.yaml:4: campaigns[0].results[2]: duplicate result filter 'busy' "
        "(also campaigns[0].results[0])"
    ]


def test_all_inside_a_list_is_refused() -> None:
    assert problems(campaigns("campaign_id: 1, results: [all]")) == [
        "p.yaml:4: campaigns[0].results[0]: 'all' cannot be in a list: write results: all"
    ]


def test_an_empty_results_list_is_refused() -> None:
    assert problems(campaigns("campaign_id: 1, results: []")) == [
        "p.yaml:4: campaigns[0].results: the list is empty: name at least one filter, "
        "or write results: all"
    ]


def test_results_must_be_all_or_a_list() -> None:
    assert problems(campaigns("campaign_id: 1, results: {busy: 1}")) == [
        "p.yaml:4: campaigns[0].results: expected 'all' or a list of result filters, got a mapping"
    ]


def test_a_null_result_in_a_list_is_refused() -> None:
    assert problems(campaigns("campaign_id: 1, results: [busy, ~]")) == [
        "p.yaml:4: campaigns[0].results[1]: expected a result filter, got null"
    ]


def test_a_single_filter_without_a_list_is_refused_with_a_hint() -> None:
    assert problems(campaigns("campaign_id: 1, results: busy")) == [
        "p.yaml:4: campaigns[0].results: expected 'all' or a list of result filters, "
        "got 'busy' (for one filter write [busy])"
    ]


@pytest.mark.parametrize("written", ["123456789012345678901", "12a", "'12 '", "''"])
def test_campaign_id_is_1_to_20_digits(written: str) -> None:
    [problem] = problems(campaigns(f"campaign_id: {written}, results: all"))
    assert "campaigns[0].campaign_id: expected a campaign id (1 to 20 digits), got" in problem


@pytest.mark.parametrize("written", ["wv-14", "a" * 33, "'0014\\n'"])
def test_server_is_1_to_32_letters_and_digits(written: str) -> None:
    [problem] = problems(campaigns(f"campaign_id: 1, results: all, server: {written}"))
    assert "campaigns[0].server: expected a server (1 to 32 letters and digits), got" in problem


def test_a_type_campaign_outside_the_list_is_refused() -> None:
    assert problems(campaigns("campaign_id: 1, results: all, type_campaign: Predictive")) == [
        "p.yaml:4: campaigns[0].type_campaign: 'Predictive' is not a campaign type "
        "(did you mean 'predictive'?)"
    ]


@pytest.mark.parametrize("written", ["1WOLKVOX", "WOLKVOX-TOKEN", "''"])
def test_token_env_is_an_environment_variable_name(written: str) -> None:
    [problem] = problems(campaigns(f"campaign_id: 1, results: all, token_env: {written}"))
    assert "campaigns[0].token_env: expected an environment variable name, got" in problem


def test_a_token_file_with_a_nul_character_is_refused() -> None:
    assert problems(campaigns('campaign_id: 1, results: all, token_file: "a\\0b"')) == [
        "p.yaml:4: campaigns[0].token_file: a file path cannot contain a NUL character"
    ]


@pytest.mark.parametrize(("written", "value"), [("0.5", 0.5), ("3600", 3600.0), ("90", 90.0)])
def test_timeout_is_above_0_and_at_most_3600(written: str, value: float) -> None:
    assert (
        parse(campaigns(f"campaign_id: 1, results: all, timeout_s: {written}")).clears[0].timeout_s
        == value
    )


@pytest.mark.parametrize("written", ["0", "0.0", "3601", "1e2"])
def test_timeout_outside_its_range_is_refused(written: str) -> None:
    assert problems(campaigns(f"campaign_id: 1, results: all, timeout_s: {written}")) == [
        "p.yaml:4: campaigns[0].timeout_s: expected a number of seconds above 0 and at most "
        f"3600, got {written!r}"
    ]


@pytest.mark.parametrize(
    ("written", "ok"), [("0", True), ("10", True), ("11", False), ("-1", False)]
)
def test_retries_are_0_to_10(written: str, ok: bool) -> None:
    text = campaigns(f"campaign_id: 1, results: all, retries: {written}")
    if ok:
        assert parse(text).clears[0].retries == int(written)
    else:
        assert problems(text) == [
            f"p.yaml:4: campaigns[0].retries: expected a whole number from 0 to 10, got {written!r}"
        ]


def test_tags_are_a_list_of_non_empty_strings() -> None:
    assert problems(campaigns("campaign_id: 1, results: all, tags: [a, '', ~]")) == [
        "p.yaml:4: campaigns[0].tags[1]: a tag cannot be empty",
        "p.yaml:4: campaigns[0].tags[2]: expected a tag, got null",
    ]
    assert problems(campaigns("campaign_id: 1, results: all, tags: nightly")) == [
        "p.yaml:4: campaigns[0].tags: expected a list of tags, got a string"
    ]


@pytest.mark.parametrize("written", ["1", "10000"])
def test_max_parallel_tokens_accepts_1_to_10000(written: str) -> None:
    plan = parse(with_settings(f"max_parallel_tokens: {written}", "campaign_id: 1, results: all"))
    assert plan.settings.max_parallel_tokens == int(written)


@pytest.mark.parametrize("written", ["0", "10001"])
def test_max_parallel_tokens_outside_1_to_10000_is_refused(written: str) -> None:
    assert problems(
        with_settings(f"max_parallel_tokens: {written}", "campaign_id: 1, results: all")
    ) == [
        "p.yaml:2: settings.max_parallel_tokens: expected a whole number from 1 to 10000, "
        f"got {written!r}"
    ]


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://:secret@locks.example"])
def test_lock_url_accepts_redis_urls(url: str) -> None:
    assert validate._check_lock_url(url) is None


@pytest.mark.parametrize(
    "url", ["http://locks", "redis://", "unix:///tmp/redis.sock", "redis://h:x"]
)
def test_lock_url_refuses_other_urls(url: str) -> None:
    assert validate._check_lock_url(url) is not None
    text = f"version: 1\nsettings: {{lock_url: '{url}'}}\ncampaigns: []\n"
    assert problems(text)[0].startswith(f"p.yaml:2: settings.lock_url: {url!r}")


# --- all problems in one pass ----------------------------------------------------


def test_a_bad_campaign_does_not_hide_problems_in_later_ones() -> None:
    text = campaigns(
        "campaign_id: x, results: [nobody]",
        "campaign_id: 2, results: all",
        "campaign_id: 3, results: all, retries: 99",
    )
    assert [p.split(": ")[1] for p in problems(text)] == [
        "campaigns[0].campaign_id",
        "campaigns[0].results[0]",
        "campaigns[2].retries",
    ]


def test_problems_are_sorted_by_line() -> None:
    text = "version: 3\nsettings: {cooldown_s: x}\ncampaigns: [{}]\n"
    lines = [int(p.split(":")[1]) for p in problems(text)]
    assert lines == sorted(lines)


# --- duplicates and protection ---------------------------------------------------


def test_the_same_clear_twice_is_a_duplicate_naming_the_earlier_line() -> None:
    text = campaigns("campaign_id: 1, results: [busy]", "campaign_id: 1, results: [busy]")
    assert problems(text) == [
        "p.yaml:5: campaigns[1].results: duplicate clear: campaign '1' on server '0014' "
        "(predictive), result 'busy', is already cleared by campaigns[0] at line 4"
    ]


def test_the_same_clear_with_another_token_is_still_a_duplicate() -> None:
    text = campaigns(
        "campaign_id: 1, results: [busy]", "campaign_id: 1, results: [busy], token_env: OPS"
    )
    assert "duplicate clear" in problems(text)[0]


def test_all_twice_is_a_duplicate() -> None:
    text = campaigns("campaign_id: 1, results: all", "campaign_id: 1, results: all")
    assert problems(text) == [
        "p.yaml:5: campaigns[1].results: duplicate clear: campaign '1' on server '0014' "
        "(predictive), result 'all', is already cleared by campaigns[0] at line 4"
    ]


@pytest.mark.parametrize(
    ("first", "second"), [("all", "[busy]"), ("[busy]", "all"), ("[failed]", "all")]
)
def test_all_beside_a_filter_is_a_duplicate(first: str, second: str) -> None:
    text = campaigns(f"campaign_id: 1, results: {first}", f"campaign_id: 1, results: {second}")
    assert problems(text) == [
        "p.yaml:5: campaigns[1].results: duplicate clear: campaign '1' on server '0014' "
        "(predictive) is cleared both with 'all' and with a result filter "
        "(see campaigns[0] at line 4); 'all' already deletes every record"
    ]


def test_one_campaign_written_with_and_without_leading_zeros_is_a_duplicate() -> None:
    # The identity settings.protect uses: wolkvox may read 03001 as 3001.
    text = campaigns("campaign_id: 3001, results: all", "campaign_id: 03001, results: all")
    assert problems(text) == [
        "p.yaml:5: campaigns[1].results: duplicate clear: campaign '03001' on server '0014' "
        "(predictive), result 'all', is already cleared by campaigns[0] at line 4, "
        "written '3001'"
    ]


def test_leading_zeros_are_still_sent_as_written() -> None:
    plan = parse(campaigns("campaign_id: 03001, results: [busy]", "campaign_id: 7, results: all"))
    assert [c.campaign_id for c in plan.clears] == ["03001", "7"]


def test_other_filters_servers_or_types_of_one_campaign_id_are_no_duplicates() -> None:
    plan = parse(
        campaigns(
            "campaign_id: 1, results: [busy]",
            "campaign_id: 1, results: [failed]",
            "campaign_id: 1, results: all, server: '0038'",
            "campaign_id: 1, results: all, type_campaign: preview",
        )
    )
    assert len(plan.clears) == 4


def test_protect_must_be_a_list_of_campaign_ids() -> None:
    assert problems(with_settings("protect: 9001", "campaign_id: 1, results: all")) == [
        "p.yaml:2: settings.protect: expected a list of campaign ids, got a string"
    ]


def test_a_protected_campaign_is_refused_on_any_server_or_type() -> None:
    text = (
        "version: 1\nsettings: {protect: [9001]}\n"
        "defaults: {server: '0014', token_env: T, type_campaign: predictive}\n"
        "campaigns:\n"
        "  - {campaign_id: 9001, results: [busy]}\n"
        "  - {campaign_id: 9001, results: all, server: '0038', type_campaign: preview}\n"
        "  - {campaign_id: 9002, results: all}\n"
    )
    assert problems(text) == [
        "p.yaml:5: campaigns[0].campaign_id: campaign '9001' is protected (settings.protect): "
        "no clear may touch it",
        "p.yaml:6: campaigns[1].campaign_id: campaign '9001' is protected (settings.protect): "
        "no clear may touch it",
    ]


def test_protection_ignores_leading_zeros() -> None:
    text = with_settings("protect: ['0042']", "campaign_id: 42, results: all")
    assert "campaign '42' is protected" in problems(text)[0]


# --- limits and hostile plans ----------------------------------------------------


def test_a_plan_expanding_past_100000_clears_is_refused() -> None:
    filters = "[" + ", ".join(RESULT_FILTERS) + "]"
    text = (
        HEADER
        + f"  - {{campaign_id: 0, results: &all10 {filters}}}\n"
        + "".join(f"  - {{campaign_id: {i}, results: *all10}}\n" for i in range(1, 10_001))
    )
    assert problems(text) == [
        "p.yaml:10004: campaigns[10000]: the plan expands to more than 100000 clears; split it up"
    ]


def test_an_alias_bomb_in_a_plan_is_refused() -> None:
    tags = "[" + ", ".join(["t"] * 10_000) + "]"
    text = (
        "version: 1\n"
        f"defaults: {{server: a, token_env: T, type_campaign: preview, tags: &tags {tags}}}\n"
        "campaigns:\n"
        + "".join(f"  - {{campaign_id: {i}, results: all, tags: *tags}}\n" for i in range(1000))
    )
    assert problems(text)[0] == (
        "p.yaml: the plan expands to more than 3000000 YAML nodes "
        "(a node reached through aliases counts each time)"
    )


def test_a_recursive_alias_is_refused_without_hanging() -> None:
    assert problems("version: 1\ncampaigns: &c [*c]\n") == [
        "p.yaml:2: campaigns[0]: expected a campaign (a mapping), got a list"
    ]


# --- the schema is the rule book ------------------------------------------------


def test_validation_follows_the_schema_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    # The rules are written once, in schema.py: change them there and validate follows.
    stricter = plan_schema()
    retries: Any = stricter["properties"]["defaults"]["properties"]["retries"]
    retries["anyOf"][0]["pattern"] = "^(?:[0-2])$"
    retries["title"] = "a whole number from 0 to 2"
    monkeypatch.setattr(validate, "_validator", lambda: jsonschema_rs.validator_for(stricter))
    monkeypatch.setattr(validate, "plan_schema", lambda: stricter)
    text = (
        HEADER.replace("defaults: {", "defaults: {retries: 3, ")
        + "  - {campaign_id: 1, results: all}\n"
    )
    assert problems(text) == [
        "p.yaml:2: defaults.retries: expected a whole number from 0 to 2, got '3'"
    ]
    monkeypatch.undo()
    assert parse(text).clears[0].retries == 3


def test_a_null_defaults_is_told_once_not_also_both_token_sources() -> None:
    # The token rule applies where token_env is written, so null is only "not a mapping".
    text = "version: 1\ndefaults: ~\ncampaigns: [{campaign_id: 1}]\n"
    assert "p.yaml:2: defaults: expected a mapping of campaign fields, got null" in problems(text)
    assert not any("not both" in problem for problem in problems(text))


def test_every_schema_error_names_a_line() -> None:
    text = (
        "version: 2\nsettings: {max_parallel_tokens: 0, bogus: 1}\n"
        "defaults: {retries: x, tags: [~]}\ncampaigns:\n"
        "  - {campaign_id: '', results: [all, busy, busy], token_env: 1X, token_file: a}\n"
        "  - 7\n"
    )
    found = problems(text)
    assert len(found) >= 8
    assert all(
        problem.startswith("p.yaml:") and problem.split(":")[1].isdigit() for problem in found
    )


# --- whole-file problems ---------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_an_empty_plan_is_refused(text: str) -> None:
    assert problems(text) == ["p.yaml: the plan is empty"]


@pytest.mark.parametrize(("text", "kind"), [("\n- a\n- b\n", "a list"), ("hello\n", "a string")])
def test_a_plan_that_is_not_a_mapping_is_refused_with_its_line(text: str, kind: str) -> None:
    line = 2 if text.startswith("\n") else 1
    assert problems(text) == [
        f"p.yaml:{line}: expected a mapping with version, settings, defaults and campaigns, "
        f"got {kind}"
    ]


def test_invalid_yaml_is_one_problem_with_its_line() -> None:
    [problem] = problems("version: 1\ncampaigns:\n  - campaign_id: 1\n   results: all\n")
    assert problem.startswith("p.yaml:4: invalid YAML: ")


def test_several_documents_are_refused() -> None:
    assert problems("version: 1\n---\nversion: 1\n") == [
        "p.yaml:2: the file holds more than one YAML document"
    ]


def test_a_missing_plan_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as excinfo:
        load_plan(tmp_path / "nowhere.yaml")
    assert [str(p) for p in excinfo.value.problems] == [f"{tmp_path}/nowhere.yaml: no such file"]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="is a directory, not a plan file"):
        load_plan(tmp_path)


def test_a_plan_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    with pytest.raises(PlanError) as excinfo:
        load_plan(path)
    assert [str(p) for p in excinfo.value.problems] == [
        f"{path}:2: the plan is not UTF-8 text (byte 0xe9 cannot be decoded)"
    ]


# --- base URL ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://wv{server}.wolkvox.com",
        "https://wv{server}.wolkvox.com/",
        "https://api.example/{server}/wolkvox",
        "https://proxy.example:8443",
        "HTTPS://wv{server}.wolkvox.com",
        "http://127.0.0.1:8080",
        "http://127.9.9.9/{server}",
        "http://localhost:8080/",
        "http://[::1]:8080",
    ],
)
def test_acceptable_base_urls(url: str) -> None:
    assert check_base_url(url) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "the base URL is empty"),
        ("http://wv{server}.wolkvox.com", "would send the token in clear text"),
        ("http://10.0.0.1", "would send the token in clear text"),
        ("http://localhost.example.com", "would send the token in clear text"),
        ("ftp://wv{server}.wolkvox.com", "must start with https://"),
        ("wv{server}.wolkvox.com", "has no host"),
        ("https://wv{srv}.wolkvox.com", "has a placeholder other than {server}"),
        ("https://wv{server}.wolkvox.com/{", "has a placeholder other than {server}"),
        ("https://wv{server}.wolkvox.com/?a=1", "must not have a query or a fragment"),
        ("https://wv{server}.wolkvox.com/?", "must not have a query or a fragment"),
        ("https://wv{server}.wolkvox.com/#x", "must not have a query or a fragment"),
        ("https://user:pw@wv{server}.wolkvox.com", "must not carry user info"),
        ("https://wv{server}.wolkvox.com:http", "has an invalid host or port"),
        ("https://[::1", "has an invalid host or port"),
        ("https://wv{server}.wolkvox.com\n", "contains spaces or control characters"),
        ("https://wv {server}.wolkvox.com", "contains spaces or control characters"),
    ],
)
def test_refused_base_urls_say_why(url: str, why: str) -> None:
    message = check_base_url(url)
    assert message is not None
    assert why in message


def test_a_null_base_url_is_refused() -> None:
    assert problems(with_settings("base_url: ~", "campaign_id: 1, results: all")) == [
        "p.yaml:2: settings.base_url: expected a URL, got null"
    ]


def test_a_refused_base_url_in_settings_is_a_problem() -> None:
    text = "version: 1\nsettings:\n  base_url: http://wv{server}.wolkvox.com\ncampaigns: []\n"
    assert problems(text)[0] == (
        "p.yaml:3: settings.base_url: 'http://wv{server}.wolkvox.com' would send the token in "
        "clear text: use https (http is only allowed to localhost, 127.0.0.0/8 or ::1)"
    )
