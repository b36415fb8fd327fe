"""Durability end to end: the real ``orchestrator`` CLI in subprocesses against a
simulator in its own process (``orchestrator simulate``).

What is proved: a SIGKILLed run resumes without resending what it had journaled
as succeeded, and rests a token whose call was in flight; ``--resume`` refuses a
changed plan, an empty journal and a run still going in another process; two
processes on one plan's tokens never use a token twice at once (file locks, Redis
locks across state dirs, and after a timed-out call, also when interrupted), and
wait for each other while the journal is created; locking and journaling that
cannot work stop the run before anything is sent, and a journal that fails mid-run
halts it before another request; the guards; the per-token call counts; ``runs``
and ``show``.

Simulators are shared per configuration within this module and reset before each
test; every child process is killed at teardown. Waits are bounded and wait on a
condition (a log line, the simulator's stats), never on a fixed sleep.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import resource
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_server import redis_url  # noqa: F401

from orchestrator.output.log import make_logger
from orchestrator.plan.model import token_fingerprint
from orchestrator.plan.tokens import build_lanes, read_tokens
from orchestrator.plan.validate import load_plan
from orchestrator.run.events import ClearStarted, Event
from orchestrator.run.execute import Engine, RunSpec, execute
from orchestrator.state.journal import JournalError
from orchestrator.state.redis_locks import EPOCH_KEY, KEY_PREFIX
from orchestrator.wolkvox.simulator import Simulator, SimulatorConfig

Json = dict[str, Any]

#: Longest a child process may take to do what a test waits for.
WAIT_S = 20.0

#: Six result filters: one lane of six clears per token.
SIX = "[no-answer, answer-machine, abandon, busy, congestion, unknown]"


# ----------------------------------------------------------------- simulators


@dataclass
class SimProcess:
    """``orchestrator simulate`` in its own process, on a port it picked itself."""

    proc: subprocess.Popen[bytes]
    root: str  # http://127.0.0.1:PORT

    @property
    def base_url(self) -> str:
        return self.root + "/wv{server}"

    def stats(self) -> Json:
        with urllib.request.urlopen(self.root + "/_simulator/stats", timeout=5) as answer:
            document: Json = json.load(answer)
        return document

    def reset(self) -> None:
        request = urllib.request.Request(self.root + "/_simulator/reset", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def wait_idle(self) -> Json:
        """Stats once no call is being served (calls of a killed client end on their own)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            stats = self.stats()
            if all(call["status"] != 0 for call in stats["timeline"]):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"the simulator still serves calls: {stats['timeline']}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def launch_simulator(
    workdir: Path, latency_ms: float, fail_rate: float
) -> Callable[[], SimProcess]:
    """Start ``orchestrator simulate``; the returned function waits until it answers."""
    log = workdir / f"simulator-{latency_ms}-{fail_rate}.err"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "simulate",
                "--host",
                "127.0.0.1",
                "--port",
                "0",  # the simulator binds a free port and prints it: no race for it
                "--latency-ms",
                str(latency_ms),
                "--fail-rate",
                str(fail_rate),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )

    def ready() -> SimProcess:
        deadline = time.monotonic() + WAIT_S
        prefix = "simulating wolkvox at "
        while True:
            text = log.read_text(errors="replace")
            if prefix in text:
                url = text.split(prefix, 1)[1].splitlines()[0].strip()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(10)
                raise AssertionError(f"the simulator did not start: {text}")
            time.sleep(0.02)
        sim = SimProcess(proc, url.removesuffix("/wv{server}"))
        while True:  # it listens before it prints, so this normally answers at once
            try:
                sim.stats()
                return sim
            except OSError:
                if time.monotonic() > deadline:
                    sim.stop()
                    raise
                time.sleep(0.02)

    return ready


#: The configurations the tests use (latency_ms, fail_rate), started side by side.
SIMULATORS = ((5, 0.0), (150, 0.0), (50, 0.0), (1, 1.0), (300, 0.0))


@pytest.fixture(scope="module")
def simulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SimProcess]]:
    """``simulators(latency_ms=.., fail_rate=..)``: a reset simulator of that configuration."""
    workdir = tmp_path_factory.mktemp("simulators")
    running: dict[tuple[float, float], SimProcess] = {}
    starting = {key: launch_simulator(workdir, *key) for key in SIMULATORS}

    def get(latency_ms: float = 5, fail_rate: float = 0.0) -> SimProcess:
        key = (latency_ms, fail_rate)
        if key not in running:
            ready = starting.pop(key, None) or launch_simulator(workdir, *key)
            running[key] = ready()
        sim = running[key]
        sim.reset()
        return sim

    try:
        yield get
    finally:
        for sim in running.values():
            sim.stop()
        for ready in starting.values():  # never used: still wait for it, then stop it
            with contextlib.suppress(AssertionError, OSError):
                ready().stop()


# -------------------------------------------------------------- the CLI itself


@dataclass
class Cli:
    """Runs ``python -m orchestrator`` in ``cwd`` with test tokens; kills leftovers."""

    cwd: Path
    env: dict[str, str]
    children: list[subprocess.Popen[Any]] = field(default_factory=list)

    def run(self, *args: object, timeout: float = WAIT_S, **popen: Any) -> Done:
        popen.setdefault("stdin", subprocess.DEVNULL)
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", *map(str, args)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **popen,
        )
        return Done(done.returncode, done.stdout, done.stderr)

    def run_all(self, *commands: tuple[object, ...], timeout: float = WAIT_S) -> list[Done]:
        """Independent commands side by side (start-up dominates short commands)."""
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *map(str, args)],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in commands
        ]
        self.children.extend(procs)
        outputs = [proc.communicate(timeout=timeout) for proc in procs]
        return [Done(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]

    def start(self, *args: object, name: str) -> Child:
        err = self.cwd / f"{name}.err"
        with err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *map(str, args)],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                bufsize=0,
            )
        self.children.append(proc)
        return Child(proc, err)

    def show(self, run_id: str, state: Path) -> Json:
        done = self.run("show", run_id, "--json", "--state-dir", state)
        assert done.code == 0, done.err
        document: Json = json.loads(done.out)
        return document


@dataclass
class Done:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[Json]:
        return [json.loads(line) for line in self.out.splitlines()]


class Child:
    """A running CLI process whose JSON log lines are read with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes], err: Path) -> None:
        self.proc = proc
        self.err_path = err
        self.lines: list[Json] = []
        self._buffer = b""
        self._eof = False
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def next_line(self, deadline: float) -> Json | None:
        """The next log line, or None at the end of output; fails at ``deadline``."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no log line in time; so far {self.lines}\n{self.err}")
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._fd, 65536) if not self._eof else b""
            if not chunk:
                self._eof = True
                if self._buffer:
                    raise AssertionError(f"a cut log line: {self._buffer!r}")
                return None
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        line: Json = json.loads(raw)
        self.lines.append(line)
        return line

    def ready_lines(self) -> list[Json]:
        """The log lines that arrived by now, without waiting."""
        found: list[Json] = []
        while not self._eof and select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 65536)
            self._eof = not chunk
            self._buffer += chunk
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            found.append(json.loads(raw))
        self.lines.extend(found)
        return found

    def finish(self, timeout: float = WAIT_S) -> int:
        """Read to the end of output and return the exit code."""
        deadline = time.monotonic() + timeout
        while self.next_line(deadline) is not None:
            pass
        return self.proc.wait(max(0.1, deadline - time.monotonic()))


@pytest.fixture
def tokens() -> dict[str, str]:
    """Fresh token values per test: Redis keys and simulator counters never mix."""
    tag = uuid.uuid4().hex[:12]
    return {"T_A": f"tok-a-{tag}", "T_B": f"tok-b-{tag}"}


@pytest.fixture
def cli(tmp_path: Path, tokens: dict[str, str]) -> Iterator[Cli]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WOLKVOX_", "T_"))}
    # Whatever a command is not told with --state-dir stays inside the test's directory.
    env["ORCHESTRATOR_STATE_DIR"] = str(tmp_path / "default-state")
    env.update(tokens)
    runner = Cli(tmp_path, env)
    try:
        yield runner
    finally:
        for child in runner.children:
            if child.poll() is None:
                child.kill()
            child.wait(10)
            if child.stdout is not None:
                child.stdout.close()


def ids(tokens: dict[str, str]) -> dict[str, str]:
    """token_id of each token variable."""
    return {name: token_fingerprint(value) for name, value in tokens.items()}


def write_plan(
    path: Path,
    base_url: str,
    campaigns: list[str],
    *,
    cooldown_s: float = 0,
    settings: str = "",
) -> Path:
    text = "\n".join(
        [
            "version: 1",
            "settings:",
            f'  base_url: "{base_url}"',
            f"  cooldown_s: {cooldown_s}",
            *([f"  {settings}"] if settings else []),
            "defaults:",
            "  server: 0014",
            "  token_env: T_A",
            "  type_campaign: predictive",
            "campaigns:",
            *(f"  - {{{c}}}" for c in campaigns),
            "",
        ]
    )
    path.write_text(text)
    return path


def events(lines: list[Json], name: str) -> list[Json]:
    return [line for line in lines if line["event"] == name]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def calls_of(timeline: list[Json]) -> Counter[tuple[str, str | None]]:
    return Counter((call["campaign_id"], call["result"]) for call in timeline)


# --------------------------------------------------------- 1. SIGKILL, resume


def test_a_sigkilled_run_resumes_without_resending_journaled_successes_and_rests_busy_tokens(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path, tokens: dict[str, str]
) -> None:
    cooldown_s = 0.5
    sim = simulators(latency_ms=150)
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        [
            f'campaign_id: "3001", results: {SIX}',
            f'campaign_id: "4001", results: {SIX}, token_env: T_B',
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

    done = cli.run("run", plan, "--yes", "--state-dir", state, "--resume", "--log-format", "json")
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
    assert (
        finished["succeeded"],
        finished["failed"],
        finished["skipped"],
        finished["exit_code"],
    ) == (
        12 - len(succeeded_before),
        0,
        len(succeeded_before),
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
    for token_id in cooling:
        first = min(c["arrived"] for c in resumed if c["token_id"] == token_id)
        assert first - killed_at >= cooldown_s, (token_id, first - killed_at)
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
    cooldown_s = 0.4
    sim = simulators(latency_ms=300)
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        ['campaign_id: "3001", results: [busy], timeout_s: 0.05, retries: 0'],
        cooldown_s=cooldown_s,
    )
    state = tmp_path / "state"
    failed = cli.run("run", plan, "--yes", "--state-dir", state, "--log-format", "json")
    assert failed.code == 1, failed.err
    assert events(failed.lines, "clear.failed")[0]["error"] == "timeout"
    sim.wait_idle()

    resumed_at = time.monotonic()
    again = cli.run("run", plan, "--yes", "--state-dir", state, "--resume", "--log-format", "json")
    assert again.code == 1, again.err
    timeline = sim.wait_idle()["timeline"]
    assert len(timeline) == 2
    assert timeline[1]["arrived"] - resumed_at >= cooldown_s, timeline


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
    cooldown_s = 2.0
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
    resumed_at = time.monotonic()
    done = cli.run("run", plan, "--yes", "--state-dir", state, "--resume", "--log-format", "json")
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
    assert resumed[0]["arrived"] - resumed_at >= cooldown_s, resumed[0]
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
    failed = cli.run("run", plan, "--yes", "--state-dir", state, "--log-format", "json")
    assert failed.code == 1, failed.err
    run_id = failed.lines[0]["run_id"]

    changed = write_plan(
        tmp_path / "changed.yaml",
        sim.base_url,
        ['campaign_id: "3001", results: [busy, failed, answer], retries: 0'],
    )
    by_id, latest, empty = cli.run_all(
        ("run", changed, "--yes", "--state-dir", state, "--resume", run_id),
        ("run", changed, "--yes", "--state-dir", state, "--resume"),
        ("run", plan, "--yes", "--state-dir", tmp_path / "empty", "--resume"),
    )
    assert by_id.code == 2
    assert f"--resume: run {run_id} was made from a different plan" in by_id.err
    assert "nothing was sent" in by_id.err
    # Without a run id, a changed plan has no run of its own to resume.
    assert latest.code == 2
    assert "--resume: found no" in latest.err and str(changed) in latest.err
    assert empty.code == 2 and "--resume: found no" in empty.err
    assert sim.stats()["total_calls"] == 0

    # Resumed where it now can get through, the run completes; then nothing is left.
    done = cli.run(
        "run", plan, "--yes", "--state-dir", state, "--resume", "--base-url", sim.base_url,
        "--log-format", "json",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert {line["run_id"] for line in done.lines} == {run_id}
    again = cli.run(
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
    first = cli.run("run", plan, "--yes", "--state-dir", state, "--log-format", "json")
    second = cli.run("run", plan, "--yes", "--state-dir", state, "--log-format", "json")
    assert (first.code, second.code) == (1, 1), first.err + second.err
    first_id, second_id = first.lines[0]["run_id"], second.lines[0]["run_id"]
    # The clock was stepped back before the second run: it says it started long before.
    with contextlib.closing(sqlite3.connect(state / "journal.sqlite3")) as conn, conn:
        conn.execute(
            "UPDATE runs SET started_at = '2000-01-01T00:00:00.000Z' WHERE run_id = ?",
            (second_id,),
        )

    listed = cli.run("runs", "--json", "--state-dir", state)
    assert listed.code == 0, listed.err
    assert [r["run_id"] for r in json.loads(listed.out)] == [second_id, first_id]
    done = cli.run(
        "run", plan, "--yes", "--state-dir", state, "--resume", "--base-url", sim.base_url,
        "--log-format", "json",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert {line["run_id"] for line in done.lines} == {second_id}
    assert sim.stats()["total_calls"] == 1


def test_resume_refuses_a_run_that_is_still_running_in_another_process(
    simulators: Callable[..., SimProcess], cli: Cli, tmp_path: Path
) -> None:
    sim = simulators(latency_ms=150)
    plan = write_plan(
        tmp_path / "plan.yaml",
        sim.base_url,
        [
            'campaign_id: "3001", results: [no-answer, answer-machine, abandon, busy, congestion,'
            " unknown, failed, answer]"
        ],
    )
    state = tmp_path / "state"
    live = cli.start("run", plan, "--yes", "--state-dir", state, "--log-format", "json", name="l")
    deadline = time.monotonic() + WAIT_S
    while (line := live.next_line(deadline)) is None or line["event"] != "clear.succeeded":
        assert line is not None, f"the run ended early:\n{live.err}"
    # 7 clears of 150 ms are left: the live run is far from done when this one looks.
    second = cli.run("run", plan, "--yes", "--state-dir", state, "--resume", "--log-format", "json")
    assert (state / "runs" / f"{live.lines[0]['run_id']}.lock").exists()  # while it runs
    assert live.finish() == 0, live.err
    sent = calls_of(sim.wait_idle()["timeline"])
    assert second.code == 2, f"resumed a live run: {sent}\n{second.err}"
    assert set(sent.values()) == {1} and len(sent) == 8
    assert list((state / "runs").iterdir()) == []  # no lock file left behind


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
        "Delete these records? [y/N] orchestrator: not confirmed; nothing was sent"
    ) in done.err
    assert sim.stats()["total_calls"] == 0


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
    done = cli.run(
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
    assert document["totals"] == {"succeeded": 0, "failed": 4, "skipped": 0}
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
    # Side by side: one run succeeds, the other finds nobody listening (no retries) and fails.
    good, bad = cli.run_all(
        ("run", plan, "--yes", "--state-dir", state, "--log-format", "json"),
        ("run", plan, "--yes", "--state-dir", state, "--log-format", "json", "--base-url", dead),
    )
    assert good.code == 0, good.err
    assert bad.code == 1, bad.err
    good_id, bad_id = ids_ = (good.lines[0]["run_id"], bad.lines[0]["run_id"])

    unknown_id = "20000101T000000Z-000000"
    listed, table, shown_bad, shown_good, text, unknown = cli.run_all(
        ("runs", "--json", "--state-dir", state),
        ("runs", "--state-dir", state),
        ("show", bad_id, "--json", "--state-dir", state),
        ("show", good_id, "--json", "--state-dir", state),
        ("show", bad_id, "--state-dir", state),
        ("show", unknown_id, "--state-dir", state),
    )
    assert listed.code == 0, listed.err
    runs = json.loads(listed.out)
    by_id = {r["run_id"]: r for r in runs}
    assert len(runs) == 2
    assert [(by_id[i]["exit_code"], by_id[i]["plan"], by_id[i]["dry_run"]) for i in ids_] == [
        (0, str(plan), False),
        (1, str(plan), False),
    ]
    totals = ("succeeded", "failed", "skipped", "pending", "in_flight")
    assert by_id[good_id]["totals"] == dict(zip(totals, (4, 0, 0, 0, 0), strict=True))
    assert by_id[bad_id]["totals"] == dict(zip(totals, (0, 1, 3, 0, 0), strict=True))
    assert all(r["finished_at"] for r in runs)

    assert table.code == 0, table.err
    assert table.out.split()[:8] == [
        "RUN",
        "STARTED",
        "EXIT",
        "OK",
        "FAILED",
        "SKIPPED",
        "PENDING",
        "PLAN",
    ]
    rows = {line.split()[0]: line.split() for line in table.out.splitlines()[1:]}
    assert rows[bad_id][2:] == ["1", "0", "1", "3", "0", str(plan)]
    assert rows[good_id][2:] == ["0", "4", "0", "0", "0", str(plan)]

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
    assert unknown.code == 2
    assert f"orchestrator: no run {unknown_id} in {state / 'journal.sqlite3'}" in unknown.err
    assert sim.stats()["total_calls"] == 4
