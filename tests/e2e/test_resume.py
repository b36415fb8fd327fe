"""A SIGKILLed run resumes without resending what it had journaled as succeeded and
rests a token whose call was in flight; ``--resume`` refuses a changed plan, an empty
journal and a run still going in another process, and follows the order runs were
recorded.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from processes import (
    SIX,
    WAIT_S,
    Child,
    Cli,
    Json,
    SimProcess,
    assert_rested_before_first_use,
    calls_of,
    closed_port,
    events,
    ids,
    write_plan,
)
from redis_server import redis_url  # noqa: F401

from orchestrator.plan.model import token_fingerprint

# --------------------------------------------------------- 1. SIGKILL, resume


def test_a_sigkilled_run_resumes_without_resending_journaled_successes_and_rests_busy_tokens(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> None:
    cooldown_s = 0.3
    sim = simulators(latency_ms=150)
    # timeout_s bounds the killed call's busy mark, which the resumed run waits out too:
    # short, yet far above the simulator's 150 ms answers.
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        [
            f'campaign_id: "3001", results: {SIX}, timeout_s: 1',
            f'campaign_id: "4001", results: {SIX}, token_env: T_B, timeout_s: 1',
        ],
        cooldown_s=cooldown_s,
    )
    state = tmp_path / "state"
    run = cli.start("run", plan, "--yes", "--state-dir", state, "--log-format", "json", name="k")

    # Read until two clears succeeded and a later one has started: its in_flight mark
    # is committed before its log line, so the journal has it in flight from here on.
    deadline = time.monotonic() + WAIT_S
    succeeded = 0
    while True:
        line = run.next_line(deadline)
        assert line is not None, f"the run ended before it could be killed:\n{run.err}"
        if line["event"] == "clear.succeeded":
            succeeded += 1
        elif line["event"] == "clear.started" and succeeded >= 2:
            target = line
            break
    # Kill while the server is serving that very call, as a crash mid-call would.
    while True:
        timeline = sim.stats()["timeline"]
        mine = [
            c
            for c in timeline
            if (c["campaign_id"], c["result"]) == (target["campaign_id"], target["result"])
        ]
        if mine:
            break
        assert time.monotonic() < deadline, f"clear {target['seq']} never reached the simulator"
        time.sleep(0.002)
    assert mine[0]["status"] == 0, f"clear {target['seq']} was answered before the kill: {mine}"
    run.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()  # CLOCK_MONOTONIC: the simulator's clock too
    assert run.proc.wait(WAIT_S) == -signal.SIGKILL
    run_id = target["run_id"]

    before = cli.show(run_id, state)
    assert before["exit_code"] is None and before["finished_at"] is None
    state_of = {c["seq"]: c["state"] for c in before["clears"]}
    succeeded_before = {seq for seq, s in state_of.items() if s == "succeeded"}
    in_flight_before = {seq for seq, s in state_of.items() if s == "in_flight"}
    assert len(succeeded_before) >= 2
    assert target["seq"] in in_flight_before
    assert set(state_of.values()) <= {"succeeded", "in_flight", "pending"}
    killed = sim.wait_idle()["timeline"]  # the call cut by the kill is still served
    cut = next(
        c
        for c in killed
        if c["campaign_id"] == target["campaign_id"] and c["result"] == target["result"]
    )
    assert cut["status"] == 200 and cut["departed"] > killed_at

    done = cli.call("run", plan, "--yes", "--state-dir", state, "--resume", "--log-format", "json")
    assert done.code == 0, done.err
    lines = done.lines
    assert {line["run_id"] for line in lines} == {run_id}
    already = {
        s["seq"] for s in events(lines, "clear.skipped") if s["reason"] == "already_succeeded"
    }
    assert already == succeeded_before
    assert not {s["seq"] for s in events(lines, "clear.started")} & succeeded_before
    assert {s["seq"] for s in events(lines, "clear.succeeded")} == set(state_of) - succeeded_before
    finished = events(lines, "run.finished")[0]
    # Done before is not skipped now: the resumed run that completes succeeded.
    assert (
        finished["succeeded"],
        finished["already_succeeded"],
        finished["failed"],
        finished["skipped"],
        finished["exit_code"],
    ) == (
        12 - len(succeeded_before),
        len(succeeded_before),
        0,
        0,
        0,
    )

    stats = sim.wait_idle()
    timeline = stats["timeline"]
    resumed = timeline[len(killed) :]
    by_seq = {c["seq"]: (c["campaign_id"], c["result"], c["token_id"]) for c in before["clears"]}
    # Every clear was sent once, except those in flight at the kill: sent again if the
    # killed run's call reached wolkvox (its outcome was unknown to the client).
    reached = calls_of(killed)
    expected = Counter(
        {
            (campaign, result): 1 + (seq in in_flight_before and reached[(campaign, result)] > 0)
            for seq, (campaign, result, _) in by_seq.items()
        }
    )
    assert calls_of(timeline) == expected
    assert all(call["status"] == 200 for call in timeline)
    for seq in succeeded_before:  # journaled as succeeded: never sent again
        assert calls_of(resumed)[by_seq[seq][:2]] == 0
    # A token whose call was in flight rests cooldown_s before it is used again.
    cooling = {by_seq[seq][2] for seq in in_flight_before}
    assert_rested_before_first_use(lines, resumed, cooling, cooldown_s)
    assert stats["max_in_flight_per_token"] == 1
    assert stats["simultaneous_rejections"] == 0
    # run.finished counts the calls of this session; `show` adds up every session (below).
    assert finished["calls_per_token"] == dict(Counter(c["token_id"] for c in resumed))

    after = cli.show(run_id, state)
    assert after["exit_code"] == 0
    assert {c["seq"]: c["state"] for c in after["clears"]} == dict.fromkeys(state_of, "succeeded")
    # The journal counts every attempt of both sessions, the cut one included.
    never_arrived = Counter(
        by_seq[seq][2] for seq in in_flight_before if reached[by_seq[seq][:2]] == 0
    )
    assert after["calls_per_token"] == {
        token_id: n + never_arrived[token_id] for token_id, n in stats["calls_per_token"].items()
    }
    assert set(after["calls_per_token"]) == set(ids(tokens).values())


def test_a_resumed_run_rests_a_token_whose_last_call_timed_out_before_using_it(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    # The journal cannot tell whether the rest after that timeout was taken in full (a
    # second signal or a crash cuts it), so the resumed run takes it again.
    cooldown_s = 0.3
    sim = simulators(latency_ms=300)
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        ['campaign_id: "3001", results: [busy], timeout_s: 0.05, retries: 0'],
        cooldown_s=cooldown_s,
    )
    state = tmp_path / "state"
    failed = cli.call("run", plan, "--yes", "--state-dir", state, "--log-format", "json")
    assert failed.code == 1, failed.err
    assert events(failed.lines, "clear.failed")[0]["error"] == "timeout"
    sim.wait_idle()

    again = cli.call("run", plan, "--yes", "--state-dir", state, "--resume", "--log-format", "json")
    assert again.code == 1, again.err
    timeline = sim.wait_idle()["timeline"]
    assert len(timeline) == 2
    [token_id] = {call["token_id"] for call in timeline}
    assert_rested_before_first_use(again.lines, timeline[1:], {token_id}, cooldown_s)


def kill_mid_call(run: Child, sim: SimProcess) -> Json:
    """SIGKILL ``run`` while the simulator serves a clear started after the first success.

    Returns that clear's ``clear.started`` line.
    """
    deadline = time.monotonic() + WAIT_S
    succeeded = False
    while True:
        line = run.next_line(deadline)
        assert line is not None, f"the run ended before it could be killed:\n{run.err}"
        succeeded = succeeded or line["event"] == "clear.succeeded"
        if line["event"] == "clear.started" and succeeded:
            break
    target = (line["campaign_id"], line["result"])
    while not any((c["campaign_id"], c["result"]) == target for c in sim.stats()["timeline"]):
        assert time.monotonic() < deadline, f"clear {line['seq']} never reached the simulator"
        time.sleep(0.002)
    run.proc.send_signal(signal.SIGKILL)
    assert run.proc.wait(WAIT_S) == -signal.SIGKILL
    return line


def test_a_resume_after_rotating_the_token_continues_the_run_with_the_new_value(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> None:
    # The operator fixes a token by exporting a new value; the plan file does not change.
    cooldown_s = 0.3
    sim = simulators(latency_ms=150)
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        [f'campaign_id: "3001", results: {SIX}'],
        cooldown_s=cooldown_s,
    )
    state = tmp_path / "state"
    run = cli.start("run", plan, "--yes", "--state-dir", state, "--log-format", "json", name="k")
    target = kill_mid_call(run, sim)
    killed = sim.wait_idle()["timeline"]
    before = cli.show(target["run_id"], state)
    done_before = {c["seq"] for c in before["clears"] if c["state"] == "succeeded"}
    assert {c["seq"] for c in before["clears"] if c["state"] == "in_flight"} == {target["seq"]}

    rotated = f"{tokens['T_A']}-rotated"
    cli.env["T_A"] = rotated
    done = cli.call("run", plan, "--yes", "--state-dir", state, "--resume", "--log-format", "json")
    assert done.code == 0, done.err
    assert {line["run_id"] for line in done.lines} == {target["run_id"]}
    skipped = events(done.lines, "clear.skipped")
    assert {s["seq"] for s in skipped if s["reason"] == "already_succeeded"} == done_before
    resent = {s["seq"] for s in events(done.lines, "clear.succeeded")}
    assert resent == {c["seq"] for c in before["clears"]} - done_before

    resumed = sim.wait_idle()["timeline"][len(killed) :]
    new_id = token_fingerprint(rotated)
    assert {c["token_id"] for c in resumed} == {new_id}
    assert {c["token_id"] for c in killed} == {ids(tokens)["T_A"]}
    # The clear in flight at the kill may still run at wolkvox: its lane rests first.
    assert_rested_before_first_use(done.lines, resumed, {new_id}, cooldown_s)
    after = cli.show(target["run_id"], state)
    assert after["exit_code"] == 0
    assert {c["state"] for c in after["clears"]} == {"succeeded"}
    assert {c["token_id"] for c in after["clears"] if c["seq"] in resent} == {new_id}
    assert rotated not in done.out + done.err


# ------------------------------------------------------------ 2. resume refusals


def test_resume_refuses_a_changed_plan_and_a_journal_with_nothing_to_resume(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    state = tmp_path / "state"
    # A run that fails (nobody listens on its port, no retries) leaves something to resume.
    dead = f"http://127.0.0.1:{closed_port()}/wv{{server}}"
    plan = write_plan(
        tmp_path / "plan.yaml", dead, ['campaign_id: "3001", results: [busy, failed], retries: 0']
    )
    failed = cli.call("run", plan, "--yes", "--state-dir", state, "--log-format", "json")
    assert failed.code == 1, failed.err
    run_id = failed.lines[0]["run_id"]

    changed = write_plan(
        tmp_path / "changed.yaml",
        sim.base_url,
        ['campaign_id: "3001", results: [busy, failed, answer], retries: 0'],
    )
    by_id = cli.call("run", changed, "--yes", "--state-dir", state, "--resume", run_id)
    latest = cli.call("run", changed, "--yes", "--state-dir", state, "--resume")
    empty = cli.call("run", plan, "--yes", "--state-dir", tmp_path / "empty", "--resume")
    assert by_id.code == 2
    assert f"--resume: run {run_id} was made from a different plan" in by_id.err
    assert "nothing was sent" in by_id.err
    # Without a run id, a changed plan has no run of its own to resume.
    assert latest.code == 2
    assert "--resume: found no" in latest.err and str(changed) in latest.err
    assert empty.code == 2 and "--resume: found no" in empty.err
    assert sim.stats()["total_calls"] == 0

    # Resumed where it now can get through, the run completes; then nothing is left.
    done = cli.call(
        "run", plan, "--yes", "--state-dir", state, "--resume", "--base-url", sim.base_url,
        "--log-format", "json",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert {line["run_id"] for line in done.lines} == {run_id}
    again = cli.call(
        "run", plan, "--yes", "--state-dir", state, "--resume", "--base-url", sim.base_url
    )
    assert again.code == 2 and "--resume: found no" in again.err
    assert sim.stats()["total_calls"] == 2


def test_resume_and_runs_follow_the_order_runs_were_recorded_when_the_clock_steps_back(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    state = tmp_path / "state"
    dead = f"http://127.0.0.1:{closed_port()}/wv{{server}}"
    plan = write_plan(
        tmp_path / "plan.yaml", dead, ['campaign_id: "3001", results: [busy], retries: 0']
    )
    first = cli.call("run", plan, "--yes", "--state-dir", state, "--log-format", "json")
    second = cli.call("run", plan, "--yes", "--state-dir", state, "--log-format", "json")
    assert (first.code, second.code) == (1, 1), first.err + second.err
    first_id, second_id = first.lines[0]["run_id"], second.lines[0]["run_id"]
    # The clock was stepped back before the second run: it says it started long before.
    with contextlib.closing(sqlite3.connect(state / "journal.sqlite3")) as conn, conn:
        conn.execute(
            "UPDATE runs SET started_at = '2000-01-01T00:00:00.000Z' WHERE run_id = ?",
            (second_id,),
        )

    listed = cli.call("runs", "--json", "--state-dir", state)
    assert listed.code == 0, listed.err
    assert [r["run_id"] for r in json.loads(listed.out)] == [second_id, first_id]
    done = cli.call(
        "run", plan, "--yes", "--state-dir", state, "--resume", "--base-url", sim.base_url,
        "--log-format", "json",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert {line["run_id"] for line in done.lines} == {second_id}
    assert sim.stats()["total_calls"] == 1


def stopped_outside_a_write(child: Child, journal: Path, deadline: float) -> None:
    """SIGSTOP ``child`` at a log line, at one where it holds no write lock on ``journal``.

    A process stopped inside a transaction would keep every other one waiting out
    SQLite's busy timeout, then failing for that instead.
    """
    while True:
        line = child.next_line(deadline)
        assert line is not None, f"the run ended early:\n{child.err}"
        if line["event"] not in ("clear.started", "clear.succeeded"):
            continue
        child.proc.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{child.proc.pid}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":  # stopped by now
            assert time.monotonic() < deadline, "the run never stopped"
            time.sleep(0.001)
        with contextlib.closing(sqlite3.connect(journal, timeout=0)) as probe:
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                return
            except sqlite3.OperationalError:  # stopped mid-transaction: try the next line
                child.proc.send_signal(signal.SIGCONT)


def test_resume_refuses_a_run_that_is_still_running_in_another_process(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators(latency_ms=150)
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        ['campaign_id: "3001", results: [no-answer, busy, congestion, failed, answer]'],
    )
    state = tmp_path / "state"
    live = cli.start("run", plan, "--yes", "--state-dir", state, "--log-format", "json", name="l")
    # Held still (its locks kept) while the second one looks, however slow its start-up:
    # the live run is still running then, whatever the machine's load.
    stopped_outside_a_write(live, state / "journal.sqlite3", time.monotonic() + WAIT_S)
    try:
        second = cli.call(
            "run", plan, "--yes", "--state-dir", state, "--resume", "--log-format", "json"
        )
        assert (state / "runs" / f"{live.lines[0]['run_id']}.lock").exists()  # while it runs
    finally:
        live.proc.send_signal(signal.SIGCONT)
    assert live.finish() == 0, live.err
    sent = calls_of(sim.wait_idle()["timeline"])
    assert second.code == 2, f"resumed a live run: {sent}\n{second.err}"
    assert "is still running in another process" in second.err, second.err
    assert set(sent.values()) == {1} and len(sent) == 5
    assert list((state / "runs").iterdir()) == []  # no lock file left behind
