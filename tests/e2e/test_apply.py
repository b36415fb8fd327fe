"""Reviewed plans end to end: ``run --dry-run --save``, then ``apply`` against the simulator."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from sim_thread import ThreadedSimulator, running_simulator

from orchestrator.cli import main
from orchestrator.plan.model import token_fingerprint
from orchestrator.state.journal import Journal

TOKEN_A = "tok-apply-a-0123456789"
TOKEN_B = "tok-apply-b-9876543210"

PLAN = """\
version: 1
settings:
  base_url: "{base_url}"
  cooldown_s: 0
defaults:
  server: 0014
  token_env: T_A
  type_campaign: predictive
campaigns:
  - campaign_id: 3001
    results: [no-answer, busy, abandon]
  - campaign_id: 3002
    type_campaign: preview
    results: [answer]
  - campaign_id: 4001
    server: 0038
    token_env: T_B
    results: [failed, busy]
    on_failure: continue
"""


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    with running_simulator(latency_ms=1) as sim:
        yield sim


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("T_A", TOKEN_A)
    monkeypatch.setenv("T_B", TOKEN_B)
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def plan(sim: ThreadedSimulator, tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(base_url=sim.base_url))
    return path


def save(plan: Path, tmp_path: Path) -> Path:
    reviewed = tmp_path / "reviewed.json"
    code = main(["run", str(plan), "--dry-run", "--save", str(reviewed), "--log-format", "json"])
    assert code == 0
    return reviewed


def sent(sim: ThreadedSimulator) -> list[tuple[str, str | None, str | None, str | None]]:
    """Every clear_campaign call the simulator saw, in arrival order."""
    calls = sorted(sim.simulator.calls, key=lambda c: c.arrived)
    return [
        (c.token_id, c.server, c.campaign_id, c.result) for c in calls if c.api == "clear_campaign"
    ]


def apply(reviewed: Path, *options: str) -> int:
    return main(["apply", str(reviewed), "--yes", "--log-format", "json", *options])


def runs_in(state: Path) -> int:
    if not (state / "journal.sqlite3").exists():
        return 0
    with Journal.open(state) as journal:
        return len(journal.runs(100))


def test_apply_sends_exactly_the_saved_clears_lane_by_lane_in_order(
    sim: ThreadedSimulator, state: Path, plan: Path, tmp_path: Path
) -> None:
    reviewed = save(plan, tmp_path)
    assert sent(sim) == []  # saving is a dry run
    report = tmp_path / "report.json"
    assert apply(reviewed, "--report", str(report)) == 0
    document = json.loads(reviewed.read_text())
    by_seq = {c["seq"]: c for c in document["clears"]}
    tokens = {"env:T_A": token_fingerprint(TOKEN_A), "env:T_B": token_fingerprint(TOKEN_B)}
    calls = sent(sim)
    for lane in document["lanes"]:
        (token,) = lane["tokens"]
        expected = [
            (tokens[token], by_seq[s]["server"], by_seq[s]["campaign_id"], by_seq[s]["result"])
            for s in lane["seqs"]
        ]
        assert [call for call in calls if call[0] == tokens[token]] == expected
    assert len(calls) == len(document["clears"]) == 6
    assert json.loads(report.read_text())["exit_code"] == 0
    with Journal.open(state) as journal:
        (run,) = journal.runs(10)
    assert run.plan == str(reviewed) and run.exit_code == 0


def test_the_saved_file_holds_token_references_never_their_values(
    sim: ThreadedSimulator, state: Path, plan: Path, tmp_path: Path
) -> None:
    text = save(plan, tmp_path).read_text()
    for value in (TOKEN_A, TOKEN_B):
        assert value not in text and token_fingerprint(value) not in text
    assert '"env:T_A"' in text and '"env:T_B"' in text


def test_an_edited_file_is_refused_and_nothing_is_sent(
    sim: ThreadedSimulator,
    state: Path,
    plan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reviewed = save(plan, tmp_path)
    reviewed.write_text(reviewed.read_text().replace('"3002"', '"3009"'))
    assert apply(reviewed) == 2
    assert "changed after it was saved" in capsys.readouterr().err
    assert sent(sim) == [] and runs_in(state) == 0


def test_a_plan_changed_since_the_review_is_refused_and_nothing_is_sent(
    sim: ThreadedSimulator,
    state: Path,
    plan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reviewed = save(plan, tmp_path)
    plan.write_text(plan.read_text() + "  - campaign_id: 5001\n    results: all\n")
    assert apply(reviewed) == 2
    assert f"saved from {plan}" in capsys.readouterr().err
    assert sent(sim) == [] and runs_in(state) == 0


def test_a_token_that_cannot_be_read_is_refused_and_nothing_is_sent(
    sim: ThreadedSimulator,
    state: Path,
    plan: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reviewed = save(plan, tmp_path)
    monkeypatch.delenv("T_B")
    assert apply(reviewed) == 2
    err = capsys.readouterr().err
    assert "environment variable T_B is not set" in err and "campaign 4001" in err
    assert "nothing was sent" in err
    assert sent(sim) == [] and runs_in(state) == 0


def test_a_different_base_url_is_refused_and_nothing_is_sent(
    sim: ThreadedSimulator,
    state: Path,
    plan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reviewed = save(plan, tmp_path)
    other = sim.base_url.replace("127.0.0.1", "localhost")
    assert apply(reviewed, "--base-url", other) == 2
    assert f"--base-url says {other}" in capsys.readouterr().err
    assert sent(sim) == [] and runs_in(state) == 0


def test_tokens_that_now_share_one_value_are_refused_and_nothing_is_sent(
    sim: ThreadedSimulator,
    state: Path,
    plan: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reviewed = save(plan, tmp_path)
    monkeypatch.setenv("T_B", TOKEN_A)
    assert apply(reviewed) == 2
    assert "other lanes than the tokens read now make" in capsys.readouterr().err
    assert sent(sim) == [] and runs_in(state) == 0


def test_a_plan_that_is_gone_is_applied_as_reviewed(
    sim: ThreadedSimulator,
    state: Path,
    plan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reviewed = save(plan, tmp_path)
    plan.unlink()
    assert apply(reviewed) == 0
    assert f"the plan {plan} is gone" in capsys.readouterr().err
    assert len(sent(sim)) == 6


def test_save_without_dry_run_is_refused_and_nothing_is_sent(
    sim: ThreadedSimulator, state: Path, plan: Path, tmp_path: Path
) -> None:
    reviewed = tmp_path / "reviewed.json"
    assert main(["run", str(plan), "--yes", "--save", str(reviewed)]) == 2
    assert not reviewed.exists() and sent(sim) == [] and runs_in(state) == 0


def test_a_tag_selection_is_saved_with_the_seqs_of_the_plan(
    sim: ThreadedSimulator, state: Path, plan: Path, tmp_path: Path
) -> None:
    plan.write_text(
        plan.read_text().replace("results: [answer]", "results: [answer]\n    tags: [x]")
    )
    reviewed = tmp_path / "reviewed.json"
    argv = ["run", str(plan), "--dry-run", "--tag", "x", "--save", str(reviewed)]
    assert main([*argv, "--log-format", "json"]) == 0
    document = json.loads(reviewed.read_text())
    assert [c["seq"] for c in document["clears"]] == [4]
    assert document["plan"]["tags"] == ["x"]
    assert apply(reviewed) == 0
    assert [call[2:] for call in sent(sim)] == [("3002", "answer")]


def test_a_review_saved_with_simulate_is_applied_to_the_simulator_and_says_so(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("T_A")  # the built-in simulator needs no token
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(base_url="https://wv{server}.wolkvox.com"))
    reviewed = tmp_path / "reviewed.json"
    argv = ["run", str(plan), "--simulate", "--dry-run", "--save", str(reviewed)]
    assert main([*argv, "--log-format", "json"]) == 0
    capsys.readouterr()
    assert apply(reviewed) == 0
    out, err = capsys.readouterr()
    assert "saved with --simulate" in err
    finished = json.loads(out.splitlines()[-1])
    assert (finished["event"], finished["succeeded"]) == ("run.finished", 6)


def test_without_yes_and_without_a_terminal_apply_is_refused_and_nothing_is_sent(
    sim: ThreadedSimulator,
    state: Path,
    plan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reviewed = save(plan, tmp_path)
    assert main(["apply", str(reviewed), "--log-format", "json"]) == 2
    assert "pass --yes" in capsys.readouterr().err
    assert sent(sim) == [] and runs_in(state) == 0


def test_a_failed_apply_is_resumed_from_its_plan_sending_only_what_did_not_succeed(
    state: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rotated = "tok-apply-c-5555555555"
    with running_simulator(latency_ms=1, valid_tokens=frozenset({TOKEN_A, rotated})) as sim:
        plan = tmp_path / "plan.yaml"
        plan.write_text(PLAN.format(base_url=sim.base_url))
        reviewed = save(plan, tmp_path)
        capsys.readouterr()
        assert apply(reviewed) == 1  # T_B's token is rejected
        (hint,) = [line for line in capsys.readouterr().err.splitlines() if "to resume:" in line]
        command = shlex.split(hint.partition("to resume: ")[2])
        assert command[:3] == ["orchestrator", "run", str(plan)]
        before = len(sent(sim))
        monkeypatch.setenv("T_B", rotated)
        assert main([*command[1:], "--yes", "--log-format", "json"]) == 0
        resent = sent(sim)[before:]
    assert [call[0] for call in resent] == [token_fingerprint(rotated)] * 2
    with Journal.open(state) as journal:
        (run,) = journal.runs(10)
    assert run.exit_code == 0


def test_a_pooled_plan_is_applied_with_its_pool(
    sim: ThreadedSimulator, state: Path, tmp_path: Path
) -> None:
    plan = tmp_path / "pooled.yaml"
    plan.write_text(
        PLAN.format(base_url=sim.base_url).replace("token_env: T_A", "token_env: [T_A, T_B]")
    )
    reviewed = save(plan, tmp_path)
    assert '["env:T_A", "env:T_B"]' in reviewed.read_text()
    assert apply(reviewed) == 0
    pool = {token_fingerprint(TOKEN_A), token_fingerprint(TOKEN_B)}
    calls = sent(sim)
    assert len(calls) == 6 and {call[0] for call in calls[:4]} <= pool
