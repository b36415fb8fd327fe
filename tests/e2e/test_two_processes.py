"""Two processes on one plan's tokens never use a token twice at once: file locks in
a shared state dir, Redis locks across state dirs, after a timed-out call, also when
interrupted; and they wait for each other while the journal is created.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis
from processes import (
    WAIT_S,
    Child,
    Cli,
    SimProcess,
    events,
    ids,
    write_plan,
)
from redis_server import redis_url  # noqa: F401

from orchestrator.state.redis_locks import EPOCH_KEY, KEY_PREFIX

# ------------------------------------------------ 3, 4. two processes at once


def two_runs_at_once(
    cli: Cli,
    sim: SimProcess,
    tmp_path: Path,
    state_dirs: tuple[Path, Path],
    *extra: object,
    meanwhile: Callable[[list[Child]], None],
) -> None:
    """Two runs of one plan on two tokens; ``meanwhile`` makes them meet, then lets go."""
    clears = 6
    results = "[no-answer, answer-machine, abandon, busy, congestion, unknown]"
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        [
            f'campaign_id: "3001", results: {results}',
            f'campaign_id: "4001", results: {results}, token_env: T_B',
        ],
    )
    runs = [
        cli.start(
            "run", plan, "--yes", "--state-dir", state, "--log-format", "json", *extra, name=f"p{n}"
        )
        for n, state in enumerate(state_dirs)
    ]
    meanwhile(runs)
    codes = [run.finish() for run in runs]
    stats = sim.wait_idle()
    detail = f"{[run.err for run in runs]}\n{stats['timeline']}"
    assert codes == [0, 0], detail
    assert stats["simultaneous_rejections"] == 0, detail
    assert stats["max_in_flight_per_token"] == 1, detail
    assert stats["total_calls"] == 2 * 2 * clears
    # They did overlap: one process waited for the other's call on a token.
    waiting = [line for run in runs for line in events(run.lines, "token.waiting")]
    assert waiting, f"the runs never contended for a token: {detail}"
    assert all(w["waited_s"] > 0 for w in waiting)
    for run in runs:
        assert len(events(run.lines, "clear.succeeded")) == 2 * clears


def test_two_processes_sharing_a_state_dir_never_use_a_token_twice_at_once(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> None:
    state = tmp_path / "state"
    # The journal exists already: creating it at once from two processes is another test's.
    assert cli.run("runs", "--state-dir", state).code == 0
    lock_file = state / "locks" / f"{ids(tokens)['T_A']}.lock"
    lock_file.parent.mkdir()
    held = os.open(lock_file, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)

    def both_wait_then_release(runs: list[Child]) -> None:
        # Each run keeps the lock file open while it waits for it: then both have met.
        try:
            deadline = time.monotonic() + WAIT_S
            while not all(has_open(run.proc.pid, lock_file) for run in runs):
                assert all(run.proc.poll() is None for run in runs), [r.err for r in runs]
                assert time.monotonic() < deadline, "the runs never waited for the token"
                time.sleep(0.005)
        finally:
            os.close(held)

    two_runs_at_once(
        cli, simulators(latency_ms=50), tmp_path, (state, state), meanwhile=both_wait_then_release
    )


def test_a_run_waits_for_another_process_creating_the_journal_instead_of_exiting_2(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators()
    plan = write_plan(
        tmp_path / "plan.yaml", sim.base_url, ['campaign_id: "3001", results: [busy]']
    )
    state = tmp_path / "state"
    state.mkdir()
    database = state / "journal.sqlite3"
    # What another orchestrator does for a moment while it creates the journal: a write
    # lock on the new file, still in its first (rollback) journal mode.
    creator = sqlite3.connect(database, isolation_level=None)
    try:
        creator.execute("BEGIN IMMEDIATE")
        run = cli.start(
            "run", plan, "--yes", "--state-dir", state, "--log-format", "json", name="r"
        )
        deadline = time.monotonic() + WAIT_S
        while not has_open(run.proc.pid, database) and run.proc.poll() is None:
            assert time.monotonic() < deadline, "the run never opened the journal"
            time.sleep(0.005)
        # A run that waits (busy timeout) is still alive well after it opened the file.
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.proc.wait(0.3)
        exited_early = run.proc.poll()
    finally:
        creator.execute("COMMIT")
        creator.close()
    code = run.finish()
    assert exited_early is None, (
        f"exit {exited_early} while the journal was being created:\n{run.err}"
    )
    assert code == 0, run.err
    assert sim.stats()["total_calls"] == 1


def has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    folder = Path(f"/proc/{pid}/fd")
    try:
        links = [os.readlink(folder / fd) for fd in os.listdir(folder)]
    except OSError:  # it exited, or closed a descriptor while we looked
        return False
    return str(path) in links


def test_two_processes_with_separate_state_dirs_are_kept_apart_by_redis_locks(
    simulators: Callable[..., SimProcess],
    cli: Cli,
    tmp_path: Path,
    tokens: dict[str, str],
    redis_url: str,  # noqa: F811
) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=WAIT_S)
    # A Redis that kept its data since earlier runs: no fence to wait out first.
    client.set(EPOCH_KEY, "kept-since-earlier-runs", nx=True)
    lease = KEY_PREFIX + ids(tokens)["T_A"]
    client.set(lease, "the-test", px=round(WAIT_S * 1000))

    def both_wait_then_release(runs: list[Child]) -> None:
        # Each attempt to take the lease names its owner, host:pid:nonce; once both
        # processes have tried and found it taken, they have met.
        pids = {str(run.proc.pid) for run in runs}
        tried: set[str] = set()
        deadline = time.monotonic() + WAIT_S
        try:
            with client.monitor() as monitor:
                while tried != pids:
                    assert time.monotonic() < deadline, "the runs never waited for the token"
                    command = monitor.next_command()["command"]
                    if lease in command and "'NX'" in command:
                        tried |= pids & set(re.findall(r":(\d+):[0-9a-f]{16}\b", command))
        finally:
            client.delete(lease)

    try:
        two_runs_at_once(
            cli,
            simulators(latency_ms=50),
            tmp_path,
            (tmp_path / "state-1", tmp_path / "state-2"),
            "--lock-url",
            redis_url,
            meanwhile=both_wait_then_release,
        )
    finally:
        client.close()


def contending_runs(cli: Cli, plan: Path, state: Path, token_id: str) -> list[Child]:
    """Two runs of ``plan`` that both wait for ``token_id``'s lock when it comes free."""
    (state / "locks").mkdir(parents=True)
    lock = os.open(state / "locks" / f"{token_id}.lock", os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = [
            cli.start("run", plan, "--yes", "--state-dir", state, "--log-format", "json", name=n)
            for n in ("first", "second")
        ]
        deadline = time.monotonic() + WAIT_S
        for run in runs:
            while (line := run.next_line(deadline)) is None or line["event"] != "run.started":
                assert line is not None, f"the run ended early:\n{run.err}"
    finally:
        os.close(lock)  # releases the lock
    return runs


def contending_on_a_slow_token(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> tuple[SimProcess, list[Child]]:
    """Two runs of a one-clear plan on T_A whose call times out and leaves wolkvox busy.

    wolkvox takes 0.3 s; a call gives up after 20 ms and must leave the token to rest 0.35 s.
    """
    sim = simulators(latency_ms=300)
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        ['campaign_id: "3001", results: [busy], timeout_s: 0.02, retries: 0'],
        cooldown_s=0.35,
    )
    return sim, contending_runs(cli, plan, tmp_path / "state", ids(tokens)["T_A"])


def test_a_token_cooling_after_a_timeout_in_one_process_is_not_used_by_another(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> None:
    sim, runs = contending_on_a_slow_token(simulators, cli, tmp_path, tokens)
    codes = [run.finish() for run in runs]
    stats = sim.wait_idle()
    assert codes == [1, 1], [run.err for run in runs]  # both calls time out: failed
    assert stats["simultaneous_rejections"] == 0, stats["timeline"]
    assert stats["max_in_flight_per_token"] == 1, stats["timeline"]


def test_an_interrupted_run_still_keeps_other_processes_off_a_token_that_timed_out(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> None:
    sim, runs = contending_on_a_slow_token(simulators, cli, tmp_path, tokens)
    # The run that got the token first: its call will time out and leave wolkvox busy.
    deadline = time.monotonic() + WAIT_S
    while not (
        first := [r for r in runs if any(e["event"] == "clear.started" for e in r.ready_lines())]
    ):
        assert time.monotonic() < deadline, [run.lines for run in runs]
        select.select([r.proc.stdout for r in runs], [], [], 0.05)
    (holder,) = first
    (waiter,) = [r for r in runs if r is not holder]
    holder.proc.send_signal(signal.SIGINT)  # an operator's Ctrl-C: graceful, one signal
    assert holder.finish() == 130, holder.err
    waiter.finish()
    stats = sim.wait_idle()
    assert stats["simultaneous_rejections"] == 0, stats["timeline"]
    assert stats["max_in_flight_per_token"] == 1, stats["timeline"]
