"""Token pools in a plan: how they are written, refused, read and shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import PlanError
from orchestrator.output.views import render_schedule, schedule_document
from orchestrator.plan.model import Order, Plan, TokenPool, TokenRef
from orchestrator.plan.tokens import build_lanes, read_tokens
from orchestrator.plan.validate import parse_plan
from orchestrator.run.ending import describe

HEAD = """\
version: 1
defaults:
  server: "0014"
  type_campaign: predictive
  results: [busy, answer]
"""


def parse(text: str, base_dir: Path = Path("/plans")) -> Plan:
    return parse_plan(text, "p.yaml", base_dir=base_dir)


def problems(text: str) -> list[str]:
    with pytest.raises(PlanError) as caught:
        parse(text)
    return [str(p) for p in caught.value.problems]


POOLED = HEAD + (
    "  token_env: [WV_1, WV_2, WV_3]\n"
    "campaigns:\n"
    "  - campaign_id: 1\n"
    "  - campaign_id: 2\n"
    "  - campaign_id: 3\n"
    "    token_env: WV_2\n"
)


def test_a_list_of_variables_is_a_pool_serving_the_campaigns_that_use_it() -> None:
    plan = parse(POOLED)
    pool = TokenPool(tuple(TokenRef("env", f"WV_{n}") for n in (1, 2, 3)))
    assert [c.token for c in plan.clears] == [pool] * 4 + [TokenRef("env", "WV_2")] * 2
    assert plan.token_refs() == pool.refs
    assert plan.settings.order is Order.LONGEST_FIRST


def test_a_pool_is_one_lane_of_its_tokens_and_a_token_alone_is_the_same_token() -> None:
    plan = parse(POOLED)
    keyring = read_tokens(plan, {"WV_1": "a", "WV_2": "b", "WV_3": "c"})
    pool, alone = build_lanes(plan.clears, keyring)
    assert pool.token_id == "pool-1" and pool.secret is None
    assert [t.token_names for t in pool.pool] == [("env:WV_1",), ("env:WV_2",), ("env:WV_3",)]
    assert [c.seq for c in pool.clears] == [1, 2, 3, 4]
    assert [[c.seq for c in chain] for chain in pool.campaigns()] == [[1, 2], [3, 4]]
    # One value, one token: the scheduler keeps its calls one at a time across both.
    assert alone.token_id == pool.pool[1].token_id == keyring[TokenRef("env", "WV_2")].token_id


def test_two_names_holding_one_value_in_a_pool_are_one_token() -> None:
    plan = parse(POOLED)
    (pool, _) = build_lanes(plan.clears, read_tokens(plan, {"WV_1": "a", "WV_2": "a", "WV_3": "c"}))
    assert [t.token_names for t in pool.pool] == [("env:WV_1", "env:WV_2"), ("env:WV_3",)]


def test_a_pool_listing_one_variable_twice_is_refused() -> None:
    text = HEAD + "  token_env: [WV_1, WV_2, WV_1]\ncampaigns:\n  - campaign_id: 1\n"
    assert problems(text) == [
        "p.yaml:6: defaults.token_env[2]: duplicate environment variable name 'WV_1' "
        "(also defaults.token_env[0])"
    ]


def test_a_pool_listing_one_file_twice_under_two_spellings_is_refused() -> None:
    text = HEAD + "campaigns:\n  - campaign_id: 1\n    token_file: [a.token, ./a.token]\n"
    (problem,) = problems(text)
    assert "file:/plans/a.token twice" in problem


def test_one_variable_in_two_pools_is_refused() -> None:
    text = HEAD + (
        "campaigns:\n"
        "  - campaign_id: 1\n    token_env: [WV_1, WV_2]\n"
        "  - campaign_id: 2\n    token_env: [WV_2, WV_3]\n"
    )
    (problem,) = problems(text)
    assert problem.startswith("p.yaml:9: campaigns[1].token_env: env:WV_2 is in two pools")


def test_a_pool_written_again_in_another_order_is_the_same_pool() -> None:
    text = HEAD + (
        "campaigns:\n"
        "  - campaign_id: 1\n    token_env: [WV_1, WV_2]\n"
        "  - campaign_id: 2\n    token_env: [WV_2, WV_1]\n"
    )
    plan = parse(text)
    assert plan.clears[0].token == plan.clears[-1].token
    (lane,) = build_lanes(plan.clears, read_tokens(plan, {"WV_1": "a", "WV_2": "b"}))
    assert [[c.seq for c in chain] for chain in lane.campaigns()] == [[1, 2], [3, 4]]


def test_one_token_value_in_two_pools_is_refused_without_showing_it() -> None:
    text = HEAD + (
        "campaigns:\n"
        "  - campaign_id: 1\n    token_env: [WV_1, WV_2]\n"
        "  - campaign_id: 2\n    token_env: [WV_3]\n"
    )
    plan = parse(text)
    with pytest.raises(PlanError) as caught:
        read_tokens(plan, {"WV_1": "a", "WV_2": "s3cr3t", "WV_3": "s3cr3t"})
    (problem,) = [str(p) for p in caught.value.problems]
    assert "env:WV_3 holds the same token as env:WV_2 of another pool" in problem
    assert "s3cr3t" not in problem


def test_an_unknown_order_is_refused_and_plan_order_is_read() -> None:
    text = HEAD + "  token_env: A\ncampaigns:\n  - campaign_id: 1\n"
    (problem,) = problems(text.replace("defaults:", "settings:\n  order: fastest\ndefaults:"))
    assert "'fastest' is not an order" in problem
    plan = parse(text.replace("defaults:", "settings:\n  order: plan\ndefaults:"))
    assert plan.settings.order is Order.PLAN


def test_the_schedule_shows_each_pool_its_tokens_and_its_campaigns_in_start_order() -> None:
    plan = parse(POOLED)
    shown = render_schedule(plan, build_lanes(plan.clears, None))
    assert "lane 1: pool-1, a pool of 3 token(s): 2 campaign(s), 4 clear(s)" in shown
    assert "  token env:WV_1\n  token env:WV_2\n  token env:WV_3\n  campaign 1 to start:" in shown
    assert "lane 2: env:WV_2: 2 clear(s), one at a time" in shown


def test_an_unexpected_error_quoting_a_pool_token_does_not_show_it() -> None:
    plan = parse(POOLED)
    lanes = build_lanes(
        plan.clears, read_tokens(plan, {"WV_1": "a1", "WV_2": "b2", "WV_3": "s3cr3t-two"})
    )
    text = describe(RuntimeError("header wolkvox-token: s3cr3t-two refused"), lanes)
    assert "s3cr3t-two" not in text and text.startswith("RuntimeError: header wolkvox-token:")


def test_validate_json_names_each_pool_and_its_clears_in_start_order() -> None:
    plan = parse(POOLED)
    document = schedule_document(plan, build_lanes(plan.clears, None), [])
    pool, alone = document["lanes"]  # type: ignore[misc]
    assert pool == {
        "lane": 1,
        "tokens": ["env:WV_1", "env:WV_2", "env:WV_3"],
        "pool": "pool-1",
        "seqs": [1, 2, 3, 4],
    }
    assert "pool" not in alone
