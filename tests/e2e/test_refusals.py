"""The guards, through the real CLI: protected campaigns, open-file limits,
``--max-clears``, and what validate, dry runs and the confirmation count.
"""

from __future__ import annotations

import json
import os
import pty
import resource
import uuid
from collections.abc import Callable
from pathlib import Path

from processes import (
    Cli,
    SimProcess,
    events,
    write_plan,
)
from redis_server import redis_url  # noqa: F401

# ------------------------------------------------------------------ 7. guards


def test_a_protected_campaign_is_refused_by_validate_and_run_before_anything_is_sent(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        ['campaign_id: "3002", results: [busy]', 'campaign_id: "3001", results: all'],
        settings="protect: [9001, 3001]",
    )
    problem = (
        f"{plan}:12: campaigns[1].campaign_id: campaign '3001' is protected (settings.protect):"
        " no clear may touch it"
    )
    checked, done = cli.run_all(
        ("validate", plan), ("run", plan, "--yes", "--state-dir", tmp_path / "state")
    )
    assert checked.code == 2 and problem in checked.err and checked.out == ""
    assert done.code == 2 and problem in done.err
    assert "nothing was sent: the plan has errors" in done.err
    assert done.out == ""
    assert sim.stats()["total_calls"] == 0


FIVE = [
    'campaign_id: "3001", results: [no-answer, busy, abandon]',
    'campaign_id: "3002", type_campaign: preview, results: all',
    'campaign_id: "4001", server: 0038, token_env: T_B, results: [failed]',
]


def many_tokens(cli: Cli, tmp_path: Path, base_url: str, count: int, parallel: int) -> Path:
    """A plan of ``count`` campaigns, each with a token of its own, ``parallel`` at once."""
    cli.env.update({f"T_{i}": f"tok-{i}-{uuid.uuid4().hex[:8]}" for i in range(count)})
    campaigns = [
        f'campaign_id: "{4000 + i}", token_env: T_{i}, results: [busy]' for i in range(count)
    ]
    return write_plan(
        tmp_path / "plan.yaml", base_url, campaigns, settings=f"max_parallel_tokens: {parallel}"
    )


def open_files_limit(soft: int, hard: int | None = None) -> Callable[[], None]:
    """A preexec_fn: the child may open ``soft`` files (and at most ``hard``)."""

    def limit() -> None:
        ceiling = resource.getrlimit(resource.RLIMIT_NOFILE)[1] if hard is None else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, ceiling))

    return limit


def test_a_plan_of_more_tokens_than_the_process_may_open_files_runs_whole(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    # 300 tokens under `ulimit -n 256`: a lock file kept open per token would run out.
    sim = simulators(latency_ms=0)
    plan = many_tokens(cli, tmp_path, sim.base_url, 300, parallel=20)
    done = cli.run(
        "run", plan, "--yes", "--log-format", "json", "--state-dir", tmp_path / "state",
        timeout=60, preexec_fn=open_files_limit(256),
    )  # fmt: skip
    assert done.code == 0, done.err
    assert "300 succeeded, 0 failed, 0 skipped" in done.err
    assert sim.stats()["total_calls"] == 300


def test_a_run_that_may_need_more_files_than_the_hard_limit_exits_2_and_sends_nothing(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    plan = many_tokens(cli, tmp_path, sim.base_url, 100, parallel=100)
    state = tmp_path / "state"
    done = cli.run(
        "run", plan, "--yes", "--log-format", "json", "--state-dir", state,
        preexec_fn=open_files_limit(128, 128),
    )  # fmt: skip
    assert done.code == 2
    assert done.err.splitlines()[-1] == (
        "orchestrator: 100 lanes at once (max_parallel_tokens) may need 264 open files, but "
        "this process may open only 128 (ulimit -n; hard limit 128): lower "
        "max_parallel_tokens or raise the limit; nothing was sent"
    )
    assert done.out == ""
    assert sim.stats()["total_calls"] == 0
    assert json.loads(cli.run("runs", "--json", "--state-dir", state).out) == []


def test_max_clears_refuses_a_larger_plan_and_sends_nothing(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    plan = write_plan(tmp_path / "plan.yaml", sim.base_url, FIVE)
    done = cli.run("run", plan, "--yes", "--max-clears", 2, "--state-dir", tmp_path / "state")
    assert done.code == 2
    assert (
        f"orchestrator: {plan} expands to 5 clears, more than --max-clears 2; nothing was sent"
        in done.err
    )
    assert done.out == ""
    assert sim.stats()["total_calls"] == 0


def test_validate_and_dry_run_count_unfiltered_clears_apart_from_filtered_ones(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    plan = write_plan(tmp_path / "plan.yaml", sim.base_url, FIVE)
    counts = f"{plan}: 5 clears: 1 unfiltered (all records), 4 filtered by result, in 2 lane(s)"
    all_line = "#4     server 0014 preview    campaign 3002: ALL RECORDS"
    checked, dry = cli.run_all(
        ("validate", plan), ("run", plan, "--dry-run", "--log-format", "json")
    )
    assert checked.code == 0, checked.err
    assert checked.out.splitlines()[:3] == [
        counts,
        "1 unfiltered clear(s) delete EVERY record of a campaign:",
        f"  {all_line}",
    ]
    assert dry.code == 0, dry.err
    head = dry.err.splitlines().index(counts)
    assert dry.err.splitlines()[head + 1 : head + 3] == checked.out.splitlines()[1:3]
    assert [(s["seq"], s["result"], s["reason"]) for s in events(dry.lines, "clear.skipped")] == [
        (1, "no-answer", "dry_run"),
        (2, "busy", "dry_run"),
        (3, "abandon", "dry_run"),
        (4, "all", "dry_run"),
        (5, "failed", "dry_run"),
    ]
    assert sim.stats()["total_calls"] == 0


def test_the_confirmation_sets_every_record_campaigns_apart_and_no_sends_nothing(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    plan = write_plan(tmp_path / "plan.yaml", sim.base_url, FIVE)
    primary, secondary = pty.openpty()
    try:
        os.write(primary, b"n\n")
        done = cli.run("run", plan, "--state-dir", tmp_path / "state", stdin=secondary)
    finally:
        os.close(primary)
        os.close(secondary)
    assert done.code == 2
    assert (
        "This run deletes records from 3 campaign(s), "
        "5 clears: 1 unfiltered (all records), 4 filtered by result.\n"
        "EVERY record of 1 campaign(s):\n"
        "  server 0014 preview campaign 3002: ALL RECORDS\n"
        "Records with these results in 2 campaign(s):\n"
        "  server 0014 predictive campaign 3001: no-answer, busy, abandon\n"
        "  server 0038 predictive campaign 4001: failed\n"
        "To delete EVERY record of campaign 3002 on 127.0.0.1, type the campaign id (3002): "
        "orchestrator: not confirmed; nothing was sent"
    ) in done.err
    assert sim.stats()["total_calls"] == 0
