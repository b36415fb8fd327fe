"""Reading tokens and grouping clears into lanes by token."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from fakes import make_clear
from sim_thread import running_simulator

from orchestrator.cli import main
from orchestrator.errors import PlanError
from orchestrator.plan.model import Plan, Settings, TokenRef
from orchestrator.plan.tokens import build_lanes, missing_tokens, placeholder_tokens, read_tokens

MAIN = TokenRef("env", "WOLKVOX_TOKEN")
OPS = TokenRef("env", "WOLKVOX_TOKEN_OPS")


def plan_of(*refs: TokenRef) -> Plan:
    clears = tuple(make_clear(i, token=ref, line=10 + i) for i, ref in enumerate(refs, 1))
    return Plan("plan.yaml", Settings(), clears)


def test_two_names_holding_one_token_share_a_lane() -> None:
    plan = plan_of(MAIN, OPS, MAIN)
    lanes = build_lanes(
        plan.clears, read_tokens(plan, {"WOLKVOX_TOKEN": "s3cr3t", "WOLKVOX_TOKEN_OPS": "s3cr3t"})
    )
    assert len(lanes) == 1
    assert [c.seq for c in lanes[0].clears] == [1, 2, 3]
    assert lanes[0].token_names == ("env:WOLKVOX_TOKEN", "env:WOLKVOX_TOKEN_OPS")


def test_distinct_tokens_get_distinct_lanes_in_order_of_first_use() -> None:
    plan = plan_of(OPS, MAIN, OPS)
    lanes = build_lanes(
        plan.clears, read_tokens(plan, {"WOLKVOX_TOKEN": "a", "WOLKVOX_TOKEN_OPS": "b"})
    )
    assert [[c.seq for c in lane.clears] for lane in lanes] == [[1, 3], [2]]
    assert lanes[0].token_id != lanes[1].token_id


def test_unset_and_empty_tokens_are_errors_naming_the_variable_not_the_value() -> None:
    plan = plan_of(MAIN, OPS)
    with pytest.raises(PlanError) as caught:
        read_tokens(plan, {"WOLKVOX_TOKEN_OPS": "   "})
    assert [str(p) for p in caught.value.problems] == [
        "plan.yaml:11: environment variable WOLKVOX_TOKEN is not set (needed by campaign 3001)",
        "plan.yaml:12: environment variable WOLKVOX_TOKEN_OPS is empty (needed by campaign 3002)",
    ]


def test_a_missing_token_is_told_once_naming_every_campaign_that_needs_it() -> None:
    clears = [make_clear(1, "3001", token=MAIN, line=11)]
    clears += [make_clear(i, str(3000 + i), token=OPS, line=10 + i) for i in range(2, 15)]
    clears.append(make_clear(15, "3002", token=OPS, result="failed", line=25))
    plan = Plan("plan.yaml", Settings(), tuple(clears))
    expected = (
        "plan.yaml:12: environment variable WOLKVOX_TOKEN_OPS is not set (needed by campaigns "
        "3002, 3003, 3004, 3005, 3006, 3007, 3008, 3009, 3010, 3011 and 3 more)"
    )
    with pytest.raises(PlanError) as caught:
        read_tokens(plan, {"WOLKVOX_TOKEN": "x"})
    assert [str(p) for p in caught.value.problems] == [expected]
    assert missing_tokens(plan, {"WOLKVOX_TOKEN": "x"}) == [
        expected.replace("plan.yaml:12: ", "plan.yaml:12: warning: ")
    ]


def test_a_token_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("abc123\n")
    plan = plan_of(TokenRef("file", str(tmp_path / "token")))
    keyring = read_tokens(plan, {})
    assert keyring[plan.clears[0].token].reveal() == "abc123"


def test_a_missing_token_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(PlanError, match=f"token file {path} cannot be read"):
        read_tokens(plan_of(TokenRef("file", str(path))), {})


def test_a_token_with_spaces_is_refused_without_showing_it() -> None:
    with pytest.raises(PlanError) as caught:
        read_tokens(plan_of(MAIN), {"WOLKVOX_TOKEN": "abc def"})
    assert "abc" not in str(caught.value)
    assert "spaces or control characters" in str(caught.value)


def test_missing_tokens_are_only_warnings_for_validate() -> None:
    assert missing_tokens(plan_of(MAIN, OPS), {"WOLKVOX_TOKEN": "x"}) == [
        "plan.yaml:12: warning: environment variable WOLKVOX_TOKEN_OPS is not set "
        "(needed by campaign 3002)"
    ]


def test_without_tokens_lanes_are_grouped_by_token_name() -> None:
    plan = plan_of(MAIN, OPS, MAIN)
    lanes = build_lanes(plan.clears, None)
    assert [(lane.token_id, lane.secret) for lane in lanes] == [
        ("env:WOLKVOX_TOKEN", None),
        ("env:WOLKVOX_TOKEN_OPS", None),
    ]


def test_placeholders_keep_token_names_apart() -> None:
    plan = plan_of(MAIN, OPS)
    assert len(build_lanes(plan.clears, placeholder_tokens(plan))) == 2


def test_a_secret_never_shows_its_value() -> None:
    keyring = read_tokens(plan_of(MAIN), {"WOLKVOX_TOKEN": "topsecret"})
    secret = keyring[MAIN]
    assert "topsecret" not in repr(secret) + str(secret) + repr(keyring)
    assert secret.token_id == hashlib.sha256(b"topsecret").hexdigest()[:12]


@pytest.mark.timeout(10)
def test_a_fifo_token_file_is_refused_without_blocking(tmp_path: Path) -> None:
    # Nobody ever writes to this FIFO: opening it for reading blocks unless told not to.
    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo)
    with pytest.raises(PlanError) as caught:
        read_tokens(plan_of(TokenRef("file", str(fifo))), {})
    assert str(caught.value) == (
        f"plan.yaml:11: token file {fifo} is a FIFO (named pipe), not a regular file "
        "(needed by campaign 3001)"
    )


@pytest.mark.timeout(10)
def test_a_device_token_file_is_refused_without_reading_it() -> None:
    with pytest.raises(PlanError, match="token file /dev/zero is a device, not a regular file"):
        read_tokens(plan_of(TokenRef("file", "/dev/zero")), {})


def test_a_directory_as_token_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="is a directory, not a regular file"):
        read_tokens(plan_of(TokenRef("file", str(tmp_path))), {})


def test_a_token_file_larger_than_4_kib_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_text("a" * 4097)
    (tmp_path / "fits").write_text("a" * 4095 + "\n")
    with pytest.raises(PlanError, match="is larger than 4096 bytes: not a token"):
        read_tokens(plan_of(TokenRef("file", str(tmp_path / "big"))), {})
    keyring = read_tokens(plan_of(TokenRef("file", str(tmp_path / "fits"))), {})
    assert len(next(iter(keyring.values())).reveal()) == 4095


def test_validate_warns_about_a_fifo_token_file_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo)
    assert missing_tokens(plan_of(TokenRef("file", str(fifo))), {}) == [
        f"plan.yaml:11: warning: token file {fifo} is a FIFO (named pipe), not a regular file "
        "(needed by campaign 3001)"
    ]


@pytest.mark.timeout(30)
def test_a_run_with_a_fifo_token_file_exits_2_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))
    with running_simulator(latency_ms=1) as sim:
        code = main(
            [
                "clear",
                "--server",
                "0014",
                "--type-campaign",
                "predictive",
                "--campaign-id",
                "0777",
                "--token-file",
                str(fifo),
                "--yes",
                "--base-url",
                sim.base_url,
            ]
        )
        assert code == 2
        assert "is a FIFO (named pipe), not a regular file" in capsys.readouterr().err
        assert sim.simulator.stats()["total_calls"] == 0
