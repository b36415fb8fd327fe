"""SIGINT and SIGTERM against a real `orchestrator run` process."""

from __future__ import annotations

import json
import os
import pty
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sim_thread import running_simulator

PLAN = """\
version: 1
settings: {{base_url: "{base_url}", cooldown_s: 0}}
defaults: {{server: "0014", token_env: T_MAIN, type_campaign: predictive}}
campaigns:
  - {{campaign_id: "1", results: [busy, failed, answer]}}
"""


#: Longest the run may take to do what a test waits for.
WAIT_S = 30.0


class Run:
    """An ``orchestrator run`` process whose log lines are read with a time limit."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw)
        self.lines.put(None)

    def until(self, event: str) -> list[dict[str, object]]:
        """The log lines up to and including the first ``event``; fails after WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        lines = []
        while (raw := self.lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            lines.append(json.loads(raw))
            if lines[-1]["event"] == event:
                return lines
        stderr = self.proc.stderr.read() if self.proc.stderr else ""
        raise AssertionError(f"the run ended before {event}: {stderr}")

    def finish(self) -> list[dict[str, object]]:
        """The remaining log lines, once the process exited (within WAIT_S)."""
        self.proc.wait(WAIT_S)
        lines = []
        while (raw := self.lines.get(timeout=WAIT_S)) is not None:
            lines.append(json.loads(raw))
        return lines


def start_run(tmp_path: Path, base_url: str) -> Run:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(base_url=base_url))
    env = {
        **os.environ,
        "T_MAIN": "token-for-signals",
        "ORCHESTRATOR_STATE_DIR": str(tmp_path / "state"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "run",
            str(plan),
            "--yes",
            "--log-format",
            "json",
            "--report",
            str(tmp_path / "report.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return Run(proc)


def test_sigterm_lets_the_call_in_flight_finish_and_skips_the_rest(tmp_path: Path) -> None:
    with running_simulator(latency_ms=700) as sim:
        run = start_run(tmp_path, sim.base_url)
        proc = run.proc
        try:
            lines = run.until("clear.started")
            proc.send_signal(signal.SIGTERM)
            lines += run.finish()
        finally:
            proc.kill()
        calls = sim.simulator.stats()["total_calls"]
    assert proc.returncode == 143
    outcomes = {
        (line["seq"], line["event"], line.get("reason"))
        for line in lines
        if line["event"].startswith("clear.") and line["event"] != "clear.started"
    }
    assert outcomes == {
        (1, "clear.succeeded", None),
        (2, "clear.skipped", "interrupted"),
        (3, "clear.skipped", "interrupted"),
    }
    assert calls == 1
    assert proc.stderr is not None
    said = proc.stderr.read().splitlines()
    # Said once, where the operator looks, with what a second signal would do.
    explained = [line for line in said if line.startswith("orchestrator: SIGTERM")]
    assert explained == [
        "orchestrator: SIGTERM: nothing new starts; letting 1 call in flight finish. "
        "Send a second signal to cut them: their outcome is then unknown."
    ]
    assert said[-1].startswith("to resume: orchestrator run ") and "--resume=" in said[-1]
    interrupted = [line for line in lines if line["event"] == "run.interrupted"]
    assert [(i["signal"], i["calls_in_flight"], i["cut"]) for i in interrupted] == [
        ("SIGTERM", 1, False)
    ]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["exit_code"] == 143 and report["totals"] == {
        "succeeded": 1,
        "already_succeeded": 0,
        "failed": 0,
        "skipped": 2,
    }


def test_a_second_sigint_cuts_the_call_in_flight(tmp_path: Path) -> None:
    with running_simulator(latency_ms=5000) as sim:
        run = start_run(tmp_path, sim.base_url)
        proc = run.proc
        try:
            lines = run.until("clear.started")
            proc.send_signal(signal.SIGINT)
            # Signals of one kind sent back to back can merge: wait until the first one landed.
            lines += run.until("run.interrupted")
            proc.send_signal(signal.SIGINT)
            lines += run.finish()
        finally:
            proc.kill()
    assert proc.returncode == 130
    assert proc.stderr is not None
    said = [line for line in proc.stderr.read().splitlines() if "interrupted" in line]
    assert said[:2] == [
        "orchestrator: interrupted: nothing new starts; letting 1 call in flight finish. "
        "Press Ctrl-C again to cut them: their outcome is then unknown.",
        "orchestrator: interrupted again: cutting 1 call in flight; the outcome of a cut call "
        "is unknown, and --resume rests its token before using it again",
    ]
    ends = {
        line["seq"]: (line["event"], line["reason"], line["error"])
        for line in lines
        if line["event"] in ("clear.failed", "clear.skipped")
    }
    assert ends == {
        1: ("clear.failed", "interrupted", "interrupted"),
        2: ("clear.skipped", "interrupted", None),
        3: ("clear.skipped", "interrupted", None),
    }


def test_sigterm_at_the_confirmation_prompt_exits_143_and_sends_nothing(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    with running_simulator(latency_ms=1) as sim:
        plan.write_text(PLAN.format(base_url=sim.base_url))
        env = {
            **os.environ,
            "T_MAIN": "token-for-signals",
            "ORCHESTRATOR_STATE_DIR": str(tmp_path / "s"),
        }
        controller, terminal = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "run", str(plan)],
                stdin=terminal,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            assert proc.stderr is not None
            prompt = ""
            deadline = time.monotonic() + WAIT_S
            while "[y/N]" not in prompt:
                assert time.monotonic() < deadline, f"no prompt: {prompt!r}"
                prompt += proc.stderr.read(1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 143
        finally:
            os.close(controller)
            os.close(terminal)
        assert sim.simulator.stats()["total_calls"] == 0
    assert "This run deletes records from 1 campaign(s)" in prompt
