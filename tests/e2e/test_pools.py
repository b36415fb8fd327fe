"""A pool of tokens end to end against the simulator: the report of each campaign's chain,
two processes sharing the pool's tokens without overlap, and a killed pooled run resumed.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from processes import (
    SIX,
    WAIT_S,
    Child,
    Cli,
    SimProcess,
    assert_rested_before_first_use,
    calls_of,
    events,
    ids,
    write_plan,
)
from test_two_processes import has_open

POOL = "token_env: [T_A, T_B]"


def pooled_plan(path: Path, sim: SimProcess, campaigns: int, *, cooldown_s: float = 0) -> Path:
    # timeout_s bounds the busy mark a killed call leaves, which a resumed run waits out too:
    # short, yet far above the simulator's answers.
    entries = [
        f'campaign_id: "{5001 + n}", results: {SIX}, {POOL}, timeout_s: 1' for n in range(campaigns)
    ]
    return write_plan(path, sim.base_url, entries, cooldown_s=cooldown_s)


def in_plan_order_per_campaign(timeline: list[dict[str, object]]) -> bool:
    """Each campaign's calls arrived in the order of its results, none while another ran."""
    order = SIX.strip("[]").split(", ")
    by_campaign: dict[object, list[dict[str, object]]] = {}
    for call in sorted(timeline, key=lambda c: float(c["arrived"])):  # type: ignore[arg-type]
        by_campaign.setdefault(call["campaign_id"], []).append(call)
    for calls in by_campaign.values():
        results = [c["result"] for c in calls]
        if [r for r in order if r in results] != list(dict.fromkeys(results)):
            return False
        for before, after in itertools.pairwise(calls):
            if float(after["arrived"]) < float(before["departed"]):  # type: ignore[arg-type]
                return False
    return True


def test_a_pooled_run_reports_calls_per_token_and_each_campaigns_chain(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> None:
    sim = simulators(latency_ms=5)
    plan = pooled_plan(tmp_path / "plan.yaml", sim, campaigns=4)
    state, report = tmp_path / "state", tmp_path / "report.json"
    done = cli.run(
        "run", plan, "--yes", "--state-dir", state, "--report", report, "--log-format", "json"
    )
    assert done.code == 0, done.err
    stats = sim.wait_idle()
    assert stats["max_in_flight_per_token"] == 1
    assert stats["simultaneous_rejections"] == 0
    assert in_plan_order_per_campaign(stats["timeline"])
    token = ids(tokens)
    document = json.loads(report.read_text())
    totals = document["totals"]
    assert (totals["succeeded"], totals["failed"], totals["skipped"]) == (24, 0, 0)
    assert document["calls_per_token"] == stats["calls_per_token"]
    assert set(document["calls_per_token"]) == {token["T_A"], token["T_B"]}
    chains = document["pool_campaigns"]
    assert [c["campaign_id"] for c in chains] == ["5001", "5002", "5003", "5004"]
    assert [c["seqs"] for c in chains] == [list(range(n * 6 + 1, n * 6 + 7)) for n in range(4)]
    # A campaign stays on the token that started it.
    assert all(len(c["token_ids"]) == 1 for c in chains)
    run_id = events(done.lines, "run.finished")[0]["run_id"]
    assert cli.show(run_id, state)["calls_per_token"] == stats["calls_per_token"]
    # Each line names the pool's token that sent the clear, beside its fingerprint.
    named = {(e["token"], e["token_id"]) for e in events(done.lines, "clear.succeeded")}
    assert named == {("env:T_A", token["T_A"]), ("env:T_B", token["T_B"])}


def test_two_processes_sharing_a_pools_tokens_never_use_one_twice_at_once(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> None:
    sim = simulators(latency_ms=50)
    plan = pooled_plan(tmp_path / "plan.yaml", sim, campaigns=3)
    state = tmp_path / "state"
    assert cli.run("runs", "--state-dir", state).code == 0  # the journal exists already
    lock_file = state / "locks" / f"{ids(tokens)['T_A']}.lock"
    lock_file.parent.mkdir()
    held = os.open(lock_file, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    runs: list[Child] = [
        cli.start("run", plan, "--yes", "--state-dir", state, "--log-format", "json", name=f"p{n}")
        for n in range(2)
    ]
    try:
        # Both wait for T_A at once (each keeps its lock file open), then meet on it.
        deadline = time.monotonic() + WAIT_S
        while not all(has_open(run.proc.pid, lock_file) for run in runs):
            assert all(run.proc.poll() is None for run in runs), [r.err for r in runs]
            assert time.monotonic() < deadline, "the runs never waited for the token"
            time.sleep(0.005)
    finally:
        os.close(held)
    codes = [run.finish() for run in runs]
    stats = sim.wait_idle()
    detail = f"{[run.err for run in runs]}\n{stats['timeline']}"
    assert codes == [0, 0], detail
    assert stats["max_in_flight_per_token"] == 1, detail
    assert stats["simultaneous_rejections"] == 0, detail
    assert stats["total_calls"] == 2 * 3 * 6
    for run in runs:
        assert len(events(run.lines, "clear.succeeded")) == 3 * 6


def test_a_killed_pooled_run_resumes_without_resending_successes(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> None:
    cooldown_s = 0.3
    sim = simulators(latency_ms=150)
    plan = pooled_plan(tmp_path / "plan.yaml", sim, campaigns=3, cooldown_s=cooldown_s)
    state = tmp_path / "state"
    run = cli.start("run", plan, "--yes", "--state-dir", state, "--log-format", "json", name="k")
    deadline = time.monotonic() + WAIT_S
    succeeded = 0
    while True:
        line = run.next_line(deadline)
        assert line is not None, f"the run ended before it could be killed:\n{run.err}"
        succeeded += line["event"] == "clear.succeeded"
        if line["event"] == "clear.started" and succeeded >= 3:
            break
    run.proc.send_signal(signal.SIGKILL)
    assert run.proc.wait(WAIT_S) == -signal.SIGKILL
    run_id = line["run_id"]
    before = cli.show(run_id, state)
    state_of = {c["seq"]: c["state"] for c in before["clears"]}
    succeeded_before = {seq for seq, s in state_of.items() if s == "succeeded"}
    in_flight = [c for c in before["clears"] if c["state"] == "in_flight"]
    assert len(succeeded_before) >= 3 and in_flight
    # An in-flight pooled clear names the token that sent it, not its pool.
    assert {c["token_id"] for c in in_flight} <= set(ids(tokens).values())
    killed = sim.wait_idle()["timeline"]

    done = cli.call("run", plan, "--yes", "--state-dir", state, "--resume", "--log-format", "json")
    assert done.code == 0, done.err
    already = {
        s["seq"] for s in events(done.lines, "clear.skipped") if s["reason"] == "already_succeeded"
    }
    assert already == succeeded_before
    assert not {s["seq"] for s in events(done.lines, "clear.started")} & succeeded_before
    stats = sim.wait_idle()
    resumed = stats["timeline"][len(killed) :]
    by_seq = {c["seq"]: (c["campaign_id"], c["result"]) for c in before["clears"]}
    for seq in succeeded_before:
        assert calls_of(resumed)[by_seq[seq]] == 0
    # Every clear was sent at least once, and none twice except one in flight at the kill.
    counts = calls_of(stats["timeline"])
    assert set(counts) == set(by_seq.values())
    assert {key for key, n in counts.items() if n > 1} <= {by_seq[c["seq"]] for c in in_flight}
    assert in_plan_order_per_campaign(resumed)
    # A token whose call was in flight rests cooldown_s before it is used again.
    cooling = {c["token_id"] for c in in_flight}
    assert_rested_before_first_use(done.lines, resumed, cooling, cooldown_s)
    assert stats["max_in_flight_per_token"] == 1
    after = cli.show(run_id, state)
    assert {c["state"] for c in after["clears"]} == {"succeeded"}
    assert Counter(after["calls_per_token"]).total() >= len(by_seq)
