"""History-aware order: the journal's last durations, the longest expected campaign first."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import make_clear
from test_pool_plan import parse
from test_progress import Clock, make, shown

from orchestrator.cli import main
from orchestrator.plan.model import Lane, Order, Secret, Token, TokenPool, TokenRef
from orchestrator.plan.tokens import build_lanes
from orchestrator.run.events import ClearFinished, ClearStarted, Outcome
from orchestrator.run.order import DEFAULT_CLEAR_S, Estimates, expected_s, order_lanes
from orchestrator.state.journal import Journal, read_durations
from orchestrator.wolkvox.client import Answer, Verdict

OK = Answer(Verdict.SUCCEEDED, http_status=200, code=202)
POOL = TokenPool((TokenRef("env", "P_1"), TokenRef("env", "P_2")))


def pool_of(*campaigns: str, clears: int = 2) -> Lane:
    chain = tuple(
        make_clear(n * clears + r + 1, campaign=c, token=POOL, result=("busy", "answer")[r])
        for n, c in enumerate(campaigns)
        for r in range(clears)
    )
    tokens = tuple(Token(Secret(n).token_id, (f"env:{n}",), Secret(n)) for n in ("P_1", "P_2"))
    return Lane("pool-1", ("env:P_1", "env:P_2"), None, chain, tokens)


def heavy(*campaigns: str, seconds: float = 100.0) -> Estimates:
    keys = {("0014", "predictive", c, r): seconds for c in campaigns for r in ("busy", "answer")}
    return Estimates(keys, runs=3)


def campaign_order(lane: Lane) -> list[str]:
    return [chain[0].campaign_id for chain in lane.campaigns()]


def test_a_clears_expected_duration_is_the_median_of_its_last_successes() -> None:
    estimates = Estimates.from_durations({("0014", "predictive", "1", "busy"): [9000, 1000, 2000]})
    assert estimates.runs == 3
    assert estimates.of(make_clear(1, campaign="1")) == 2.0
    assert not estimates.known(make_clear(2, campaign="2"))
    assert estimates.of(make_clear(2, campaign="2")) == DEFAULT_CLEAR_S


def test_a_pools_longest_campaigns_start_first_and_ties_keep_plan_order() -> None:
    lane = pool_of("1", "2", "3", "4", "5")
    (ordered,) = order_lanes([lane], heavy("4", "2"), order=Order.LONGEST_FIRST, max_parallel=8)
    assert campaign_order(ordered) == ["2", "4", "1", "3", "5"]
    # Each campaign's clears keep their plan order.
    assert [c.result for c in ordered.campaigns()[0]] == ["busy", "answer"]
    (kept,) = order_lanes([lane], heavy("4", "2"), order=Order.PLAN, max_parallel=8)
    assert campaign_order(kept) == ["1", "2", "3", "4", "5"]


def test_without_history_a_pool_starts_in_plan_order() -> None:
    (ordered,) = order_lanes(
        [pool_of("1", "2", "3")], Estimates(), order=Order.LONGEST_FIRST, max_parallel=8
    )
    assert campaign_order(ordered) == ["1", "2", "3"]


def lane(name: str, *campaigns: str) -> Lane:
    secret = Secret(name)
    clears = tuple(make_clear(n + 1, campaign=c) for n, c in enumerate(campaigns))
    return Lane(secret.token_id, (f"env:{name}",), secret, clears)


def test_lanes_start_longest_first_only_when_they_must_wait_for_a_slot() -> None:
    a, b, c = lane("A", "1"), lane("B", "2"), lane("C", "3")
    estimates = Estimates({("0014", "predictive", "3", "busy"): 50.0}, runs=1)
    assert order_lanes([a, b, c], estimates, order=Order.LONGEST_FIRST, max_parallel=3) == (a, b, c)
    assert order_lanes([a, b, c], estimates, order=Order.LONGEST_FIRST, max_parallel=2) == (c, a, b)
    assert order_lanes([a, b, c], estimates, order=Order.PLAN, max_parallel=2) == (a, b, c)


def test_a_pool_is_expected_to_take_its_longest_campaign_or_its_work_over_its_tokens() -> None:
    assert expected_s(pool_of("1", "2", "3", "4"), Estimates()) == 4 * 2 * DEFAULT_CLEAR_S / 2
    assert expected_s(pool_of("1", "2"), heavy("1")) == 200.0


def finish(journal: Journal, run_id: str, lanes: tuple[Lane, ...], ms: int, ok: bool) -> None:
    listen = journal.listener(run_id)
    for lane_ in lanes:
        for clear in lane_.clears:
            token = lane_.tokens[0].token_id
            listen(ClearStarted(clear, token, 1))
            outcome = Outcome.SUCCEEDED if ok else Outcome.FAILED
            listen(ClearFinished(clear, token, outcome, None, 1, OK, ms))


def journal_with_runs(
    state_dir: Path, lanes: tuple[Lane, ...], runs: list[tuple[int, bool]]
) -> None:
    with Journal.open(state_dir) as journal:
        for n, (ms, ok) in enumerate(runs):
            journal.begin_run(f"r{n}", "p.yaml", "d", lanes, started_at="2026-01-01T00:00:00Z")
            finish(journal, f"r{n}", lanes, ms, ok)


def test_the_journal_keeps_the_last_five_successful_durations_newest_first(tmp_path: Path) -> None:
    lanes = (lane("A", "1"),)
    runs = [(1000 * n, True) for n in range(1, 8)] + [(99_000, False)]
    journal_with_runs(tmp_path, lanes, runs)
    assert read_durations(tmp_path) == {
        ("0014", "predictive", "1", "busy"): [7000, 6000, 5000, 4000, 3000]
    }


def test_reading_durations_creates_no_journal(tmp_path: Path) -> None:
    assert read_durations(tmp_path / "state") == {}
    assert not (tmp_path / "state").exists()


PLAN = """\
version: 1
defaults: {server: "0014", type_campaign: predictive, results: [busy, answer]}
campaigns:
  - {campaign_id: 1, token_env: [P_1, P_2]}
  - {campaign_id: 2, token_env: [P_1, P_2]}
  - {campaign_id: 3, token_env: [P_1, P_2]}
"""


def test_validate_shows_the_campaign_the_journal_knows_as_longest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PLAN)
    plan = parse(PLAN)
    pool = build_lanes(plan.clears, None)
    journal_with_runs(tmp_path / "state", pool, [(1000, True)])
    with Journal.open(tmp_path / "state") as journal:  # campaign 3 took far longer once
        journal.begin_run("r9", "p.yaml", "d", pool, started_at="2026-01-02T00:00:00Z")
        listen = journal.listener("r9")
        for clear in pool[0].clears[4:]:
            listen(ClearStarted(clear, "x", 1))
            listen(ClearFinished(clear, "x", Outcome.SUCCEEDED, None, 1, OK, 50_000))
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))
    assert main(["validate", str(plan_file)]) == 0
    out = capsys.readouterr().out
    first = out.index("campaign 1 to start:")
    assert out.index("campaign 3: busy") > first
    assert out.index("campaign 3: busy") < out.index("campaign 1: busy")


def test_the_time_left_comes_from_the_journal_and_says_so() -> None:
    a = lane("A", "1", "2")
    estimates = Estimates({("0014", "predictive", "2", "busy"): 30.0}, runs=5)
    progress = make(a, clock=Clock(), estimates=estimates)  # type: ignore[arg-type]
    # Nothing was sent yet: the known clear takes 30 s, the other the default.
    assert progress.estimate_left() == pytest.approx(30.0 + DEFAULT_CLEAR_S)
    assert "from the last 5 runs" in shown(progress)


def test_a_pool_shows_a_row_per_token_on_its_campaign_and_spreads_its_time_left() -> None:
    pool = pool_of("1", "2", "3", "4")
    p1, p2 = (token.token_id for token in pool.pool)
    progress = make(pool, clock=Clock())
    progress(ClearStarted(pool.clears[0], p1, 1))
    progress(ClearStarted(pool.clears[2], p2, 1))
    text = shown(progress)
    assert "env:P_1" in text and "env:P_2" in text
    assert "#1 0014/predictive/1/busy" in text and "#3 0014/predictive/2/busy" in text
    assert "pool(" not in text
    progress(ClearFinished(pool.clears[0], p1, Outcome.SUCCEEDED, None, 1, OK, 4000))
    # 7 clears left at 4 s each, over 2 tokens; the one under way on P_2 began just now.
    assert progress.estimate_left() == pytest.approx(7 * 4.0 / 2)
    assert "lanes: 1 running, 0 queued, 0 done" in shown(progress)
