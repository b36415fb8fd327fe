"""Per-token call counts in the log, report and journal; ``runs`` and ``show``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from processes import (
    Cli,
    SimProcess,
    closed_port,
    events,
    ids,
    write_plan,
)
from redis_server import redis_url  # noqa: F401

# --------------------------------------------------------- 8. calls per token


def test_calls_per_token_count_every_attempt_in_the_log_report_and_journal(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> None:
    sim = simulators(latency_ms=1, fail_rate=1.0)  # every clear is answered 503 (retryable)
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        [
            'campaign_id: "3001", results: [busy], retries: 1',
            'campaign_id: "4001", results: [no-answer, busy, failed], token_env: T_B,'
            " retries: 0, on_failure: continue",
        ],
    )
    state, report = tmp_path / "state", tmp_path / "report.json"
    done = cli.call(
        "run", plan, "--yes", "--state-dir", state, "--report", report, "--log-format", "json"
    )
    assert done.code == 1, done.err
    token = ids(tokens)
    expected = {token["T_A"]: 2, token["T_B"]: 3}  # 1 clear x 2 attempts; 3 clears x 1
    stats = sim.stats()
    assert stats["calls_per_token"] == expected
    assert stats["statuses"] == {"503": 5}
    finished = events(done.lines, "run.finished")[0]
    assert finished["calls_per_token"] == expected
    document = json.loads(report.read_text())
    assert document["calls_per_token"] == expected
    assert document["totals"] == {
        "succeeded": 0,
        "already_succeeded": 0,
        "failed": 4,
        "skipped": 0,
    }
    assert {c["seq"]: (c["reason"], c["attempts"]) for c in document["clears"]} == {
        1: ("retries_exhausted", 2),
        2: ("retries_exhausted", 1),
        3: ("retries_exhausted", 1),
        4: ("retries_exhausted", 1),
    }
    assert [r["seq"] for r in events(done.lines, "clear.retrying")] == [1]
    assert cli.show(finished["run_id"], state)["calls_per_token"] == expected


# -------------------------------------------------------------- 9. runs, show


def test_runs_and_show_list_journaled_runs_with_totals_exit_codes_and_clear_states(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    state = tmp_path / "state"
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        [
            'campaign_id: "3001", results: [no-answer, busy, abandon], retries: 0',
            'campaign_id: "3002", results: all, retries: 0',
        ],
    )
    dead = f"http://127.0.0.1:{closed_port()}/wv{{server}}"
    # One run succeeds, the other finds nobody listening (no retries) and fails.
    good = cli.call("run", plan, "--yes", "--state-dir", state, "--log-format", "json")
    bad = cli.call(
        "run", plan, "--yes", "--state-dir", state, "--log-format", "json", "--base-url", dead
    )
    assert good.code == 0, good.err
    assert bad.code == 1, bad.err
    good_id, bad_id = ids_ = (good.lines[0]["run_id"], bad.lines[0]["run_id"])

    unknown_id = "20000101T000000Z-000000"
    listed, table, shown_bad, shown_good, text, unknown = (
        cli.call(*args)
        for args in (
            ("runs", "--json", "--state-dir", state),
            ("runs", "--state-dir", state),
            ("show", bad_id, "--json", "--state-dir", state),
            ("show", good_id, "--json", "--state-dir", state),
            ("show", bad_id, "--state-dir", state),
            ("show", unknown_id, "--state-dir", state),
        )
    )
    assert listed.code == 0, listed.err
    runs = json.loads(listed.out)
    by_id = {r["run_id"]: r for r in runs}
    assert len(runs) == 2
    assert [(by_id[i]["exit_code"], by_id[i]["plan"], by_id[i]["dry_run"]) for i in ids_] == [
        (0, str(plan), False),
        (1, str(plan), False),
    ]
    assert [(by_id[i]["base_url"], by_id[i]["simulated"]) for i in ids_] == [
        (sim.base_url, False),
        (dead, False),
    ]
    totals = ("succeeded", "failed", "skipped", "pending", "in_flight")
    assert by_id[good_id]["totals"] == dict(zip(totals, (4, 0, 0, 0, 0), strict=True))
    assert by_id[bad_id]["totals"] == dict(zip(totals, (0, 1, 3, 0, 0), strict=True))
    assert all(r["finished_at"] for r in runs)

    assert table.code == 0, table.err
    assert table.out.split()[:9] == [
        "RUN",
        "STARTED",
        "EXIT",
        "OK",
        "FAILED",
        "SKIPPED",
        "PENDING",
        "TARGET",
        "PLAN",
    ]
    rows = {line.split()[0]: line.split() for line in table.out.splitlines()[1:]}
    assert rows[bad_id][2:] == ["1", "0", "1", "3", "0", dead, str(plan)]
    assert rows[good_id][2:] == ["0", "4", "0", "0", "0", sim.base_url, str(plan)]

    assert shown_bad.code == 0, shown_bad.err
    bad_run = json.loads(shown_bad.out)
    assert bad_run["run_id"] == bad_id and bad_run["exit_code"] == 1
    assert [(c["seq"], c["state"], c["reason"], c["attempts"]) for c in bad_run["clears"]] == [
        (1, "failed", "retries_exhausted", 1),
        (2, "skipped", "blocked_by_failure", 0),
        (3, "skipped", "blocked_by_failure", 0),
        (4, "skipped", "blocked_by_failure", 0),
    ]
    good_run = json.loads(shown_good.out)
    assert [(c["campaign_id"], c["result"], c["state"]) for c in good_run["clears"]] == [
        ("3001", "no-answer", "succeeded"),
        ("3001", "busy", "succeeded"),
        ("3001", "abandon", "succeeded"),
        ("3002", "all", "succeeded"),
    ]
    head = text.out.splitlines()[0]
    assert text.code == 0 and head.startswith(f"run {bad_id}: {plan}, started ")
    assert head.endswith(", exit 1")
    assert text.out.splitlines()[1] == f"  sent to {dead}"
    assert unknown.code == 2
    assert f"orchestrator: no run {unknown_id} in {state / 'journal.sqlite3'}" in unknown.err
    assert sim.stats()["total_calls"] == 4
