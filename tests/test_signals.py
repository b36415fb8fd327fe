"""SIGINT and SIGTERM against a real `orchestrator run` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from sim_thread import running_simulator

PLAN = """\
version: 1
settings: {{base_url: "{base_url}", cooldown_s: 0}}
defaults: {{server: "0014", token_env: T_MAIN, type_campaign: predictive}}
campaigns:
  - {{campaign_id: "1", results: [busy, failed, answer]}}
"""


def start_run(tmp_path: Path, base_url: str) -> subprocess.Popen[str]:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(base_url=base_url))
    env = {
        **os.environ,
        "T_MAIN": "token-for-signals",
        "ORCHESTRATOR_STATE_DIR": str(tmp_path / "state"),
    }
    return subprocess.Popen(
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


def read_until(proc: subprocess.Popen[str], event: str) -> list[dict[str, object]]:
    assert proc.stdout is not None
    lines = []
    for raw in proc.stdout:
        lines.append(json.loads(raw))
        if lines[-1]["event"] == event:
            return lines
    raise AssertionError(
        f"the run ended before {event}: {proc.stderr.read() if proc.stderr else ''}"
    )


def read_until_started(proc: subprocess.Popen[str]) -> list[dict[str, object]]:
    return read_until(proc, "clear.started")


def finish(proc: subprocess.Popen[str], lines: list[dict[str, object]]) -> list[dict[str, object]]:
    out, _ = proc.communicate(timeout=30)
    return lines + [json.loads(raw) for raw in out.splitlines()]


def test_sigterm_lets_the_call_in_flight_finish_and_skips_the_rest(tmp_path: Path) -> None:
    with running_simulator(latency_ms=700) as sim:
        proc = start_run(tmp_path, sim.base_url)
        try:
            lines = read_until_started(proc)
            proc.send_signal(signal.SIGTERM)
            lines = finish(proc, lines)
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
    interrupted = [line for line in lines if line["event"] == "run.interrupted"]
    assert [(i["signal"], i["calls_in_flight"], i["cut"]) for i in interrupted] == [
        ("SIGTERM", 1, False)
    ]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["exit_code"] == 143 and report["totals"] == {
        "succeeded": 1,
        "failed": 0,
        "skipped": 2,
    }


def test_a_second_sigint_cuts_the_call_in_flight(tmp_path: Path) -> None:
    with running_simulator(latency_ms=5000) as sim:
        proc = start_run(tmp_path, sim.base_url)
        try:
            lines = read_until_started(proc)
            proc.send_signal(signal.SIGINT)
            # Signals of one kind sent back to back can merge: wait until the first one landed.
            lines += read_until(proc, "run.interrupted")
            proc.send_signal(signal.SIGINT)
            lines = finish(proc, lines)
        finally:
            proc.kill()
    assert proc.returncode == 130
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
    import pty

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
            while "[y/N]" not in prompt:
                prompt += proc.stderr.read(1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 143
        finally:
            os.close(controller)
            os.close(terminal)
        assert sim.simulator.stats()["total_calls"] == 0
    assert "This run deletes records from 1 campaign(s)" in prompt
