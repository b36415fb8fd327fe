"""--check-quota: each token's calls left today against its lane's worst case, via the simulator."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.plan.model import Lane, Secret, token_fingerprint
from orchestrator.plan.tokens import build_lanes, read_tokens
from orchestrator.plan.validate import parse_plan
from orchestrator.state.locks import FileLocks
from orchestrator.wolkvox.client import (
    HttpRequest,
    HttpResponse,
    TokenInfo,
    TokenInfoError,
    WolkvoxClient,
    parse_token_info,
)
from orchestrator.wolkvox.quota import QuotaLine, check_quota, render_quota, worst_case
from orchestrator.wolkvox.simulator import SERVER_PREFIX, Simulator, SimulatorConfig
from orchestrator.wolkvox.transport import AiohttpTransport

TOKEN = "tok-main-SECRET-0123456789"
OPS_TOKEN = "tok-ops-SECRET-9876543210"
ENV = {"T_MAIN": TOKEN, "T_OPS": OPS_TOKEN}
MAIN_ID = token_fingerprint(TOKEN)
OPS_ID = token_fingerprint(OPS_TOKEN)

#: T_MAIN: 3 clears x (1 + 3 retries) + 1 clear x (1 + 0) = 13; T_OPS: 1 x (1 + 1) = 2.
PLAN = """\
version: 1
defaults: {server: 0014, token_env: T_MAIN, type_campaign: predictive}
campaigns:
  - {campaign_id: 3001, results: [no-answer, busy, abandon]}
  - {campaign_id: 3002, results: all, retries: 0}
  - {campaign_id: 4001, server: 0038, token_env: T_OPS, results: [failed], retries: 1}
"""


def lanes(text: str = PLAN, env: dict[str, str] = ENV) -> tuple[Lane, ...]:
    plan = parse_plan(text, "p.yaml", base_dir=Path("/plans"))
    return build_lanes(plan.clears, read_tokens(plan, env))


@asynccontextmanager
async def simulated(**config: object) -> AsyncIterator[tuple[Simulator, WolkvoxClient]]:
    settings = SimulatorConfig(latency_ms=0, **config)  # type: ignore[arg-type]
    async with Simulator(settings) as sim, AiohttpTransport(limit=4) as transport:
        yield sim, WolkvoxClient(transport, sim.url + SERVER_PREFIX)


def open_lock_files(state_dir: Path) -> list[str]:
    """Lock files under ``state_dir`` this process has open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(state_dir / "locks")):
                found.append(target)
    return found


def test_the_worst_case_is_every_clear_once_plus_all_its_retries() -> None:
    main, ops = lanes()
    assert (worst_case(main), worst_case(ops)) == (13, 2)


async def test_enough_quota_one_token_info_call_per_token_and_nothing_cleared() -> None:
    async with simulated(token_limit=100) as (sim, client):
        lines = await check_quota(lanes(), client)
        stats = sim.stats()
    assert lines == [
        QuotaLine(
            MAIN_ID, ("env:T_MAIN",), "0014", 100, 1, 99, 13, True, f"simulated token {MAIN_ID}"
        ),
        QuotaLine(OPS_ID, ("env:T_OPS",), "0038", 100, 1, 99, 2, True, f"simulated token {OPS_ID}"),
    ]
    assert stats["calls_per_token"] == {MAIN_ID: 1, OPS_ID: 1}
    assert {(c["api"], c["server"]) for c in stats["timeline"]} == {
        ("token_info", "0014"),
        ("token_info", "0038"),
    }
    assert stats["max_in_flight_per_token"] == 1
    assert "NOT ENOUGH" not in render_quota(lines)


async def test_not_enough_quota_shows_the_exact_figures() -> None:
    async with simulated(token_limit=13) as (_, client):
        lines = await check_quota(lanes(), client)
    main, ops = lines
    assert (main.limit, main.used_today, main.left, main.worst_case, main.enough) == (
        13,
        1,
        12,
        13,
        False,
    )
    assert (ops.left, ops.worst_case, ops.enough) == (12, 2, True)
    table = render_quota(lines)
    row = next(line for line in table.splitlines() if "env:T_MAIN" in line)
    assert row.split()[-6:] == ["13", "1", "12", "13", "NOT", "ENOUGH"]
    assert "1 of 2 token(s) may run out of calls today" in table


async def test_a_worst_case_of_exactly_the_calls_left_is_enough() -> None:
    async with simulated(token_limit=14) as (_, client):
        main, _ops = await check_quota(lanes(), client)
    assert (main.left, main.worst_case, main.enough) == (13, 13, True)


async def test_used_today_counts_earlier_calls_and_the_check_itself() -> None:
    main, _ops = lanes()
    assert main.secret is not None
    async with simulated(token_limit=50) as (sim, client):
        for _ in range(5):  # calls made earlier today, by anyone
            await client.token_info("0014", main.secret, 5.0)
        first = (await check_quota([main], client))[0]
        spent_after_first = sim.stats()["calls_per_token"][MAIN_ID]
        second = (await check_quota([main], client))[0]
        spent_after_second = sim.stats()["calls_per_token"][MAIN_ID]
    # What the check reports as used is what wolkvox has counted once it answered.
    assert (first.used_today, first.left) == (6, 44) == (spent_after_first, 50 - spent_after_first)
    assert (second.used_today, second.left) == (7, 43)
    assert spent_after_second == 7


async def test_a_token_that_reports_usage_after_the_call_is_not_counted_twice() -> None:
    main, _ops = lanes()
    async with simulated(token_limit=50) as (_, client):
        line = (await check_quota([main], client, usage_includes_check=True))[0]
    # The simulator reports usage before the call: read the other way, one call is missed.
    assert (line.used_today, line.left) == (0, 50)


async def test_a_spent_quota_leaves_nothing_and_is_not_enough() -> None:
    main, _ops = lanes()
    async with simulated(token_limit=3) as (_, client):
        assert main.secret is not None
        for _ in range(4):
            await client.token_info("0014", main.secret, 5.0)
        line = (await check_quota([main], client))[0]
    assert (line.limit, line.used_today, line.left, line.enough) == (3, 5, 0, False)


async def test_a_rejected_token_raises_token_info_error_naming_it_but_never_its_value() -> None:
    async with simulated(valid_tokens=frozenset({TOKEN})) as (sim, client):
        with pytest.raises(TokenInfoError) as excinfo:
            await check_quota(lanes(), client)
        stats = sim.stats()
    message = str(excinfo.value)
    assert isinstance(excinfo.value, OrchestratorError)
    assert "env:T_OPS" in message and OPS_ID in message and "0038" in message
    assert "PLEASE VALIDATE TOKEN" in message
    assert "T_MAIN" not in message  # only the token that failed
    assert excinfo.value.http_status == 403
    assert TOKEN not in message and OPS_TOKEN not in message
    # The other token's check was not cut off half-way.
    assert stats["calls_per_token"] == {MAIN_ID: 1, OPS_ID: 1}


@pytest.mark.parametrize(
    "valid", [frozenset({TOKEN, OPS_TOKEN}), frozenset()], ids=["read", "refused"]
)
async def test_no_token_lock_file_stays_open_after_the_quota_check(
    tmp_path: Path, valid: frozenset[str]
) -> None:
    locks = FileLocks(tmp_path)
    try:
        async with simulated(valid_tokens=valid) as (_, client):
            with contextlib.suppress(TokenInfoError):
                await check_quota(lanes(), client, locks=locks)
        assert open_lock_files(tmp_path) == []  # none kept for thousands of tokens
    finally:
        await locks.aclose()
    # Each token's lock file is removed when its hold ends: none piles up either.
    assert list((tmp_path / "locks").iterdir()) == []


async def test_every_token_that_cannot_be_read_is_named() -> None:
    async with simulated(maintenance=True) as (_, client):
        with pytest.raises(TokenInfoError) as excinfo:
            await check_quota(lanes(), client)
    lines = str(excinfo.value).splitlines()
    assert len(lines) == 2
    assert "env:T_MAIN" in lines[0] and "env:T_OPS" in lines[1]
    assert all("SERVICE UNDER MAINTENANCE" in line for line in lines)


async def test_an_unreachable_api_raises_token_info_error() -> None:
    async with simulated() as (sim, _):
        dead = sim.url + SERVER_PREFIX
    async with AiohttpTransport(limit=4) as transport:
        with pytest.raises(TokenInfoError) as excinfo:
            await check_quota(lanes(), WolkvoxClient(transport, dead), timeout_s=5.0)
    assert "connection failed" in str(excinfo.value)
    assert TOKEN not in str(excinfo.value)


async def test_many_tokens_are_checked_side_by_side_never_twice_at_once() -> None:
    env = {f"T{i}": f"token-number-{i:02d}-SECRET" for i in range(12)}
    text = "version: 1\ndefaults: {server: 0014, type_campaign: preview}\ncampaigns:\n" + "".join(
        f"  - {{campaign_id: {100 + i}, token_env: T{i}, results: all}}\n" for i in range(12)
    )
    async with simulated(token_limit=10) as (sim, client):
        lines = await check_quota(lanes(text, env), client, max_parallel=3)
        stats = sim.stats()
    assert [line.token_names for line in lines] == [(f"env:T{i}",) for i in range(12)]
    assert all(line.worst_case == 4 and line.left == 9 and line.enough for line in lines)
    assert sorted(stats["calls_per_token"].values()) == [1] * 12
    assert stats["max_in_flight_per_token"] == 1


async def test_render_never_shows_a_token() -> None:
    async with simulated(token_limit=13) as (_, client):
        lines = await check_quota(lanes(), client)
    shown = render_quota(lines) + repr(lines)
    for secret in (TOKEN, OPS_TOKEN, "SECRET"):
        assert secret not in shown
    assert MAIN_ID in shown and "env:T_MAIN" in shown


def test_render_is_an_aligned_table_with_every_figure() -> None:
    lines = [
        QuotaLine("a1b2c3d4e5f6", ("env:WOLKVOX_TOKEN",), "0014", 10000, 41, 9959, 1200, True),
        QuotaLine("f6e5d4c3b2a1", ("env:OPS", "file:/run/ops"), "0038", 500, 499, 1, 8, False),
    ]
    table = render_quota(lines).splitlines()
    assert table[0].startswith("quota check")
    header, first, second = table[1:4]
    for column in ("TOKEN", "SERVER", "LIMIT", "USED TODAY", "LEFT", "WORST CASE"):
        assert column in header
    assert first.split() == [
        *("env:WOLKVOX_TOKEN", "(token", "a1b2c3d4e5f6)", "0014", "10000", "41", "9959"),
        *("1200", "OK"),
    ]
    assert "env:OPS, file:/run/ops (token f6e5d4c3b2a1)" in second and second.endswith("NOT ENOUGH")
    # Numbers are right-aligned under their headers.
    assert first.index("9959") + 4 == header.index("LEFT") + 4
    assert render_quota([]) == "quota check: no token to check"


async def test_lanes_without_tokens_or_sharing_one_are_refused_before_any_call() -> None:
    plan = parse_plan(PLAN, "p.yaml", base_dir=Path("/plans"))
    unread = build_lanes(plan.clears, None)
    main, ops = lanes()
    twin = Lane(ops.token_id, ops.token_names, Secret(TOKEN), ops.clears)
    async with simulated() as (sim, client):
        with pytest.raises(ValueError, match="no token"):
            await check_quota(unread, client)
        with pytest.raises(ValueError, match="same token"):
            await check_quota([main, twin], client)
        assert await check_quota([Lane(MAIN_ID, ("env:T_MAIN",), main.secret, ())], client) == []
        assert sim.stats()["total_calls"] == 0


# -------------------------------------------------- token_info as wolkvox sends it


def answer(**record: object) -> bytes:
    """A token_info answer in wolkvox's shape: code as text, the record in a data list."""
    body = {"code": "200", "error": None, "msg": "1 records were found", "data": [record]}
    return json.dumps(body).encode()


REAL = {
    "description": "Nightly recycling",
    "token_limit": "4,800",
    "token_use_today": "1,200",
    "all_token_today": "2,000",
    "available_consumption_options": "3,600",
}


def fixed(body: bytes) -> WolkvoxClient:
    """A client whose every token_info call gets ``body``."""

    async def transport(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, body)

    return WolkvoxClient(transport, "https://wv{server}.example")


def test_the_real_answer_is_read_whole() -> None:
    assert parse_token_info(HttpResponse(200, answer(**REAL))) == TokenInfo(
        token_limit=4800,
        token_use_today=1200,
        all_token_today=2000,
        available_consumption_options=3600,
        description="Nightly recycling",
    )


@pytest.mark.parametrize("value", ["", "  ", "4.800", "lots", "-5", "1,20", True])
def test_a_value_that_cannot_be_read_is_named_not_guessed(value: object) -> None:
    info = parse_token_info(HttpResponse(200, answer(**{**REAL, "token_limit": value})))
    assert (info.token_limit, info.unreadable) == (None, ("token_limit",))
    assert info.available_consumption_options == 3600


async def test_an_unreadable_value_is_a_warning_naming_the_field_not_a_refusal() -> None:
    main, _ops = lanes()
    client = fixed(answer(**{**REAL, "token_use_today": ""}))
    (line,) = await check_quota([main], client)
    # available_consumption_options still says what is left: 3,600 less this check's call.
    assert (line.limit, line.used_today, line.left, line.enough) == (4800, None, 3599, True)
    assert line.warnings == (
        f"env:T_MAIN (token {MAIN_ID}): token_info field token_use_today could not be read "
        "(not a count)",
    )
    table = render_quota([line])
    assert f"warning: env:T_MAIN (token {MAIN_ID}): token_info field token_use_today" in table
    assert '"Nightly recycling"' in table


async def test_a_field_missing_from_the_answer_is_a_warning_too() -> None:
    main, _ops = lanes()
    record = {k: v for k, v in REAL.items() if k != "all_token_today"}
    (line,) = await check_quota([main], fixed(answer(**record)))
    assert line.warnings == (
        f"env:T_MAIN (token {MAIN_ID}): token_info answer has no all_token_today",
    )
    assert line.enough


async def test_a_quota_that_cannot_be_read_at_all_is_not_checked_and_says_so() -> None:
    main, _ops = lanes()
    record = {**REAL, "token_limit": "", "available_consumption_options": "n/a"}
    (line,) = await check_quota([main], fixed(answer(**record)))
    assert (line.left, line.enough) == (None, True)
    assert any("quota not checked" in w for w in line.warnings)
    row = next(
        r for r in render_quota([line]).splitlines() if "env:T_MAIN" in r and "warning" not in r
    )
    assert row.split()[-6:] == ["?", "1201", "?", "13", "NOT", "CHECKED"]


async def test_the_smaller_of_the_two_statements_of_what_is_left_wins() -> None:
    main, _ops = lanes()
    record = {**REAL, "available_consumption_options": "10"}  # says less than 4,800 - 1,200
    (line,) = await check_quota([main], fixed(answer(**record)))
    assert (line.left, line.worst_case, line.enough) == (9, 13, False)


SAME_SERVER = """\
version: 1
defaults: {server: 0014, type_campaign: predictive}
campaigns:
  - {campaign_id: 3001, token_env: T_MAIN, results: all}
  - {campaign_id: 3002, token_env: T_MAIN, results: all}
  - {campaign_id: 4001, token_env: T_OPS, results: all}
"""


async def _outsider_then_check(shared_limit: bool, outsider_calls: int) -> list[QuotaLine]:
    """Another token of the operation spends ``outsider_calls`` first; then the check runs."""
    outsider = Secret("tok-someone-else-SECRET-000")
    async with simulated(token_limit=30, shared_limit=shared_limit) as (_, client):
        for _ in range(outsider_calls):
            await client.token_info("0014", outsider, 5.0)
        return await check_quota(lanes(SAME_SERVER), client, max_parallel=1)


async def test_a_shared_limit_is_checked_for_all_tokens_of_the_server_together() -> None:
    main, ops, shared = await _outsider_then_check(shared_limit=True, outsider_calls=16)
    # Each token alone fits (8 and 4 calls)...
    assert (main.left, main.worst_case, main.enough) == (13, 8, True)
    assert (ops.left, ops.worst_case, ops.enough) == (12, 4, True)
    # ...but together they need 12 of the operation's calls, and 11 are left: 30 less the
    # outsider's 16, the other check's call the later answer saw, and both check calls.
    assert (shared.shared, shared.server, shared.token_id) == (True, "0014", "")
    assert (shared.limit, shared.used_today, shared.left, shared.worst_case) == (30, 19, 11, 12)
    assert not shared.enough
    table = render_quota([main, ops, shared])
    assert "all tokens (shared limit)" in table and "NOT ENOUGH" in table


async def test_a_shared_limit_with_room_for_every_token_passes() -> None:
    lines = await _outsider_then_check(shared_limit=True, outsider_calls=10)
    assert [line.shared for line in lines] == [False, False, True]
    assert all(line.enough for line in lines)


async def test_other_tokens_use_does_not_count_when_each_token_has_its_own_limit() -> None:
    lines = await _outsider_then_check(shared_limit=False, outsider_calls=16)
    # all_token_today shows 16+ calls, but available_consumption_options counts this
    # token's own use only: no shared line, and nothing refused for the outsider's calls.
    assert [line.shared for line in lines] == [False, False]
    assert [(line.left, line.enough) for line in lines] == [(29, True), (29, True)]


async def test_a_description_that_echoes_the_token_never_shows_it() -> None:
    main, _ops = lanes()
    (line,) = await check_quota([main], fixed(answer(**{**REAL, "description": f"main {TOKEN}"})))
    shown = render_quota([line]) + repr(line)
    assert TOKEN not in shown and "main [token]" in shown
