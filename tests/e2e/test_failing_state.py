"""Locking and journaling that cannot work stop the run before anything is sent; a
journal that fails mid-run halts it before another request.
"""

from __future__ import annotations

import io
import json
import resource
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from processes import (
    Cli,
    SimProcess,
    calls_of,
    closed_port,
    events,
    write_plan,
)
from redis_server import redis_url  # noqa: F401

from orchestrator.output.log import make_logger
from orchestrator.plan.tokens import build_lanes, read_tokens
from orchestrator.plan.validate import load_plan
from orchestrator.run.events import ClearStarted, Event
from orchestrator.run.execute import Engine, RunSpec, execute
from orchestrator.state.journal import JournalError
from orchestrator.wolkvox.simulator import Simulator, SimulatorConfig

# ----------------------------------------- 5, 6. locks and journal that fail


def test_an_unreachable_redis_lock_url_exits_2_before_anything_is_sent(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    plan = write_plan(
        tmp_path / "plan.yaml", sim.base_url, ['campaign_id: "3001", results: [busy]']
    )
    url = f"redis://127.0.0.1:{closed_port()}/0"
    state = tmp_path / "state"
    done = cli.run(
        "run", plan, "--yes", "--state-dir", state, "--lock-url", url, "--log-format", "json"
    )
    assert done.code == 2
    assert f"orchestrator: cannot reach Redis at {url}" in done.err
    assert "Traceback" not in done.err
    assert not events(done.lines, "clear.started")
    assert sim.stats()["total_calls"] == 0
    listed = cli.run("runs", "--json", "--state-dir", state)
    assert listed.code == 0 and json.loads(listed.out) == []


def test_a_lock_url_without_the_redis_extra_exits_2_naming_it_and_sends_nothing(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    plan = write_plan(
        tmp_path / "plan.yaml", sim.base_url, ['campaign_id: "3001", results: [busy]']
    )
    # An installation without the extra: `import redis` fails.
    shim = tmp_path / "no-redis"
    (shim / "redis").mkdir(parents=True)
    (shim / "redis" / "__init__.py").write_text("raise ImportError('No module named redis')\n")
    without_redis = Cli(cli.cwd, {**cli.env, "PYTHONPATH": str(shim)})
    url = f"redis://127.0.0.1:{closed_port()}/0"
    done = without_redis.run(
        "run", plan, "--yes", "--state-dir", tmp_path / "state", "--lock-url", url
    )
    assert done.code == 2, done.err
    assert "pip install 'orchestrator[redis]'" in done.err
    assert "Traceback" not in done.err
    assert sim.stats()["total_calls"] == 0


def test_a_journal_that_cannot_be_created_exits_2_naming_it_and_sends_nothing(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    plan = write_plan(
        tmp_path / "plan.yaml", sim.base_url, ['campaign_id: "3001", results: [busy]']
    )
    (tmp_path / "afile").write_text("a file, not a directory\n")
    state = tmp_path / "afile" / "state"
    done = cli.run("run", plan, "--yes", "--state-dir", state, "--log-format", "json")
    assert done.code == 2
    assert f"orchestrator: journal {state / 'journal.sqlite3'} cannot be opened" in done.err
    assert done.out == "" and "Traceback" not in done.err
    assert sim.stats()["total_calls"] == 0


def test_a_journal_that_fills_up_mid_run_halts_it_before_another_unrecorded_request(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    seven = "[no-answer, answer-machine, abandon, busy, congestion, unknown, failed]"
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        [
            f'campaign_id: "3001", results: {seven}',
            f'campaign_id: "4001", results: {seven}, token_env: T_B',
        ],
    )
    state = tmp_path / "state"
    # A file size limit makes the journal's WAL stop growing a few commits into the run
    # (every change commits at least one page): SQLite fails its writes as on a full disk
    # (CPython ignores SIGXFSZ). Log lines go to a pipe, which the limit does not cover.
    limit = 60_000

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = cli.run(
        "run", plan, "--yes", "--state-dir", state, "--log-format", "json",
        preexec_fn=small_files,
    )  # fmt: skip
    lines = done.lines
    finished = events(lines, "run.finished")[0]
    assert done.code == 1, done.err
    assert finished["exit_code"] == 1 and finished["level"] == "error"
    assert finished["error"].startswith(f"the run halted: journal {state / 'journal.sqlite3'}")
    assert "the run halted: journal" in done.err
    assert finished["skipped"] > 0 and finished["failed"] == 0
    assert {s["reason"] for s in events(lines, "clear.skipped")} == {"recording_failed"}

    stats = sim.wait_idle()
    journal = cli.show(finished["run_id"], state)
    sent = calls_of(stats["timeline"])
    # Every request that left had its in_flight mark committed first, and nothing else left.
    marked = Counter(
        (c["campaign_id"], c["result"])
        for c in journal["clears"]
        if c["state"] in ("in_flight", "succeeded")
    )
    assert sent == marked
    assert sum(c["attempts"] for c in journal["clears"]) == stats["total_calls"]
    logged = Counter((s["campaign_id"], s["result"]) for s in events(lines, "clear.started"))
    assert logged == sent
    assert finished["calls_per_token"] == stats["calls_per_token"]
    assert 0 < stats["total_calls"] < 14


@dataclass
class BrokenJournal:
    """A recorder that records ``healthy`` events, then fails like a full disk."""

    healthy: int
    recorded: list[Event] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        if len(self.recorded) >= self.healthy:
            raise JournalError(
                "journal /x/journal.sqlite3 cannot be written: database or disk is full"
            )
        self.recorded.append(event)

    async def settle(self) -> None:
        """Each event is durable as soon as it is recorded."""


@pytest.mark.parametrize(
    ("healthy", "exit_code", "calls", "succeeded"),
    [
        # The first in_flight mark fails: nothing leaves, so it is bad input (exit 2).
        (0, 2, 0, []),
        # Clear 1 is recorded in flight, then its success cannot be recorded.
        (1, 1, 1, [1]),
        # Clear 1 is recorded done, clear 2's in_flight mark fails: clear 2 never leaves.
        (2, 1, 1, [1]),
        (3, 1, 2, [1, 2]),
    ],
)
async def test_a_recorder_that_fails_halts_the_run_and_no_request_follows_it(
    tmp_path: Path, healthy: int, exit_code: int, calls: int, succeeded: list[int]
) -> None:
    async with Simulator(SimulatorConfig(latency_ms=1)) as sim:
        plan = load_plan(
            write_plan(
                tmp_path / "plan.yaml",
                sim.url + "/wv{server}",
                ['campaign_id: "3001", results: [no-answer, busy, abandon, failed]'],
            )
        )
        lanes = build_lanes(plan.clears, read_tokens(plan, {"T_A": "tok-in-process"}))
        out = io.StringIO()
        recorder = BrokenJournal(healthy)
        spec = RunSpec(
            plan, lanes, sim.url + "/wv{server}", make_logger("json", "r-1", out), "r-1",
            recorder=recorder,
        )  # fmt: skip
        result = await execute(spec, Engine(handle_signals=False))
        timeline = sim.stats()["timeline"]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    finished = events(lines, "run.finished")[0]
    error = "the run halted: journal /x/journal.sqlite3 cannot be written: database or disk is full"
    assert (result.exit_code, result.error) == (exit_code, error)
    assert (finished["exit_code"], finished["error"], finished["level"]) == (
        exit_code,
        error,
        "error",
    )
    assert len(timeline) == calls
    # Each request that left was recorded as started before it left.
    recorded_starts = [e.clear.seq for e in recorder.recorded if isinstance(e, ClearStarted)]
    assert [c["result"] for c in timeline] == [
        lanes[0].clears[s - 1].result for s in recorded_starts
    ]
    assert [s["seq"] for s in events(lines, "clear.started")] == recorded_starts
    assert [s["seq"] for s in events(lines, "clear.succeeded")] == succeeded
    skipped = events(lines, "clear.skipped")
    assert [(s["seq"], s["reason"]) for s in skipped] == [
        (seq, "recording_failed") for seq in range(len(succeeded) + 1, 5)
    ]
    assert (finished["succeeded"], finished["failed"], finished["skipped"]) == (
        len(succeeded),
        0,
        4 - len(succeeded),
    )
