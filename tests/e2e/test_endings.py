"""What the end of a run tells: the clears not done, the command that resumes, and a
resume that finishes as a success; a reader that goes away is no crash.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sim_thread import running_simulator

from orchestrator.cli import main
from orchestrator.state.journal import SIMULATED_DIR, Journal

GOOD = "tok-main-0123456789"
OPS = "tok-ops-9876543210"

PLAN = """\
version: 1
settings: {{base_url: "{base_url}", cooldown_s: 0}}
defaults: {{server: "0014", token_env: T_MAIN, type_campaign: predictive}}
campaigns:
  - {{campaign_id: "3001", results: [no-answer, busy, abandon]}}
  - {{campaign_id: "3002", type_campaign: preview, results: all}}
  - {{campaign_id: "4001", server: "0038", token_env: T_OPS, results: [failed, busy]}}
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("T_MAIN", GOOD)
    monkeypatch.setenv("T_OPS", "tok-ops-rotated-away")  # rejected until fixed
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "default-state"))
    return monkeypatch


def resume_command(stderr: str) -> list[str]:
    """The command the ending says resumes the run, as argv for ``main``."""
    [line] = [line for line in stderr.splitlines() if line.startswith("to resume: ")]
    argv = shlex.split(line.removeprefix("to resume: "))
    assert argv[0] == "orchestrator"
    return argv[1:]


def clears_by_outcome(metrics: Path) -> dict[str, float]:
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(metrics.read_text())
        for sample in family.samples
        if sample.name == "orchestrator_clears"
    }


def test_a_failed_run_says_what_is_left_and_its_resume_finishes_as_a_success(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.yaml"
    state, report, metrics = tmp_path / "state", tmp_path / "report.json", tmp_path / "run.prom"
    with running_simulator(latency_ms=1, valid_tokens=frozenset({GOOD, OPS})) as sim:
        plan.write_text(PLAN.format(base_url=sim.base_url))
        options = ["--state-dir", str(state), "--report", str(report)]
        first = ["run", str(plan), "--yes", "--log-format", "json", *options]
        assert main([*first, "--metrics-file", str(metrics)]) == 1
        err = capsys.readouterr().err.splitlines()
        run_id = json.loads(report.read_text())["run_id"]
        assert err[:3] == [
            "failed or skipped:",
            "  ✗ failed     #5 0038/predictive/4001/failed  env:T_OPS"
            + err[1].partition("env:T_OPS")[2],
            "  – skipped    #6 0038/predictive/4001/busy  env:T_OPS  token rejected",  # noqa: RUF001
        ]
        assert err[1].endswith("token rejected: HTTP 403: PLEASE VALIDATE TOKEN: FORBIDDEN")
        assert err[3].startswith("4 succeeded, 1 failed, 1 skipped in ")
        assert err[3].endswith(f"(run {run_id}, exit 1)")
        argv = resume_command("\n".join(err))
        assert argv == [
            "run",
            str(plan),
            *options,
            "--metrics-file",
            str(metrics),
            f"--resume={run_id}",
        ]

        env.setenv("T_OPS", OPS)  # the rejected token fixed, as the operator would
        assert main([*argv, "--yes", "--log-format", "json"]) == 0
        captured = capsys.readouterr()
    finished = json.loads(captured.out.splitlines()[-1])
    assert finished["event"] == "run.finished"
    done = {key: finished[key] for key in ("succeeded", "already_succeeded", "failed", "skipped")}
    assert done == {"succeeded": 2, "already_succeeded": 4, "failed": 0, "skipped": 0}
    [summary] = captured.err.splitlines()  # nothing failed, nothing left to do
    assert summary.startswith("2 succeeded, 4 already succeeded, 0 failed, 0 skipped in ")
    assert summary.endswith(f"(run {run_id}, exit 0)")
    document = json.loads(report.read_text())
    assert (document["run_id"], document["exit_code"], document["totals"]) == (run_id, 0, done)
    assert document["log_cut"] is False  # its reader read every line
    outcomes = {c["seq"]: c["outcome"] for c in document["clears"]}
    assert outcomes == {
        **dict.fromkeys((1, 2, 3, 4), "already_succeeded"),
        5: "succeeded",
        6: "succeeded",
    }
    assert clears_by_outcome(metrics) == {
        "succeeded": 2.0,
        "already_succeeded": 4.0,
        "failed": 0.0,
        "skipped": 0.0,
    }
    with Journal.open(state) as journal:
        record = journal.run(run_id)
        states = {c.seq: c.state for c in journal.clears(run_id)}
    assert record is not None and record.exit_code == 0
    assert states == dict.fromkeys(range(1, 7), "succeeded")


def test_a_failed_one_off_clear_tells_the_clear_that_resumes_it(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with running_simulator(latency_ms=1, valid_tokens=frozenset({GOOD, OPS})) as sim:
        one_off = [
            *("clear", "--server", "0038", "--type-campaign", "predictive"),
            *("--campaign-id", "4001", "--result", "failed", "--result", "busy"),
            *("--token-env", "T_OPS", "--state-dir", str(state), "--base-url", sim.base_url),
        ]
        assert main([*one_off, "--yes", "--log-format", "json"]) == 1
        argv = resume_command(capsys.readouterr().err)
        assert argv[: len(one_off)] == one_off and argv[-1].startswith("--resume=")
        run_id = argv[-1].removeprefix("--resume=")
        env.setenv("T_OPS", OPS)
        assert main([*argv, "--yes", "--log-format", "json"]) == 0
        assert sim.simulator.records("0038", "predictive", "4001")["busy"] == 0
    err = capsys.readouterr().err
    assert err.startswith("2 succeeded, 0 already succeeded, 0 failed, 0 skipped in ")
    assert f"(run {run_id}, exit 0)" in err


# ------------------------------------------------------------------ closed pipes


def run_into_a_closed_pipe(workdir: Path, *args: str) -> tuple[int, str]:
    """Run the command with a stdout nobody reads any more (``| head -c 0``): exit code, stderr.

    Its journal is in ``workdir / "state"`` (``state/simulated`` for a simulated run).
    """
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before the first byte: every write fails
    err = workdir / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WOLKVOX_", "T_"))}
    env["ORCHESTRATOR_STATE_DIR"] = str(workdir / "state")
    try:
        with err.open("w") as stderr:
            done = subprocess.run(
                [sys.executable, "-m", "orchestrator", *args],
                stdout=write_end,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=env,
                timeout=30,
            )
    finally:
        os.close(write_end)
    return done.returncode, err.read_text()


@pytest.fixture
def example(tmp_path: Path) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(base_url="https://wv{server}.wolkvox.com"))
    return str(path)


def test_a_run_whose_log_reader_went_away_carries_on_and_says_so_once(
    tmp_path: Path, example: str
) -> None:
    report = tmp_path / "report.json"
    code, err = run_into_a_closed_pipe(
        tmp_path, "run", example, "--simulate", "--yes", "--report", str(report)
    )
    assert code == 0, err
    assert "Traceback" not in err
    cut = [line for line in err.splitlines() if "log on stdout was cut" in line]
    document = json.loads(report.read_text())
    run_id = document["run_id"]
    assert cut == [
        "orchestrator: the log on stdout was cut (Broken pipe); the run goes on: the report "
        f"and the journal keep the record (orchestrator show {run_id} lists every clear)"
    ]
    assert document["log_cut"] is True
    assert document["totals"] == {"succeeded": 6, "already_succeeded": 0, "failed": 0, "skipped": 0}
    # A simulated run keeps its own journal, beside the production one.
    with Journal.open(tmp_path / "state" / SIMULATED_DIR) as journal:
        assert {c.state for c in journal.clears(run_id)} == {"succeeded"}
    assert err.splitlines()[-1].endswith(f"(run {run_id}, exit 0)")


@pytest.fixture(scope="module")
def journaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A directory whose journal holds one run, and that run's id."""
    workdir = tmp_path_factory.mktemp("journaled")
    plan, report = workdir / "plan.yaml", workdir / "report.json"
    plan.write_text(PLAN.format(base_url="https://wv{server}.wolkvox.com"))
    code, err = run_into_a_closed_pipe(
        workdir, "run", str(plan), "--simulate", "--yes", "--report", str(report)
    )
    assert code == 0, err
    return workdir, json.loads(report.read_text())["run_id"]


@pytest.mark.parametrize(
    "command",
    # The journaled run was simulated, so it is listed by ``runs --simulated``.
    [
        ["runs", "--simulated", "--json"],
        ["runs", "--simulated"],
        ["show", "RUN_ID"],
        ["show", "RUN_ID", "--json"],
        ["schema"],
    ],
    ids=["runs --json", "runs", "show", "show --json", "schema"],
)
def test_a_read_only_command_whose_reader_went_away_exits_0_quietly(
    journaled: tuple[Path, str], command: list[str]
) -> None:
    workdir, run_id = journaled
    argv = [run_id if word == "RUN_ID" else word for word in command]
    assert run_into_a_closed_pipe(workdir, *argv) == (0, "")
