"""The command line end to end: real plans, real loopback HTTP to the simulator."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sim_thread import ThreadedSimulator, running_simulator

from orchestrator.cli import commands as cli
from orchestrator.cli import main
from orchestrator.plan.model import RESULT_FILTERS
from orchestrator.state.journal import Journal

TOKEN = "tok-main-0123456789"
OPS_TOKEN = "tok-ops-9876543210"

PLAN = """\
version: 1
settings:
  base_url: "{base_url}"
  cooldown_s: 0
defaults:
  server: 0014
  token_env: T_MAIN
  type_campaign: predictive
campaigns:
  - campaign_id: 3001
    results: [no-answer, busy, abandon]
    tags: [nightly]
  - campaign_id: 3002
    type_campaign: preview
    results: all
  - campaign_id: 4001
    server: 0038
    token_env: T_OPS
    results: [failed]
    on_failure: continue
"""


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    with running_simulator(latency_ms=5) as sim:
        yield sim


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("T_MAIN", TOKEN)
    monkeypatch.setenv("T_OPS", OPS_TOKEN)
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))


def write_plan(tmp_path: Path, base_url: str, text: str = PLAN) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(text.format(base_url=base_url))
    return str(path)


def log_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def test_a_run_clears_exactly_the_planned_records(
    sim: ThreadedSimulator, tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, sim.base_url)
    assert main(["run", plan, "--yes", "--log-format", "json"]) == 0
    records = sim.simulator.records
    cleared = {"no-answer", "busy", "abandon"}
    assert records("0014", "predictive", "3001") == {
        r: 0 if r in cleared else 100 for r in RESULT_FILTERS
    }
    assert records("0014", "preview", "3002") == dict.fromkeys(RESULT_FILTERS, 0)
    assert records("0038", "predictive", "4001") == {
        r: 0 if r == "failed" else 100 for r in RESULT_FILTERS
    }
    assert records("14", "predictive", "3001") == dict.fromkeys(RESULT_FILTERS, 100)
    assert sim.simulator.stats()["max_in_flight_per_token"] == 1


def test_every_clear_is_logged_started_and_then_exactly_once_as_an_outcome(
    sim: ThreadedSimulator, tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["run", write_plan(tmp_path, sim.base_url), "--yes", "--log-format", "json"])
    lines = log_lines(capsys.readouterr().out)
    assert lines[0]["event"] == "run.started"
    assert lines[0]["clears"] == 5 and lines[0]["tokens"] == 2 and lines[0]["dry_run"] is False
    terminal = [line["seq"] for line in lines if line["event"] == "clear.succeeded"]
    assert sorted(terminal) == [1, 2, 3, 4, 5]
    lane = [(line["event"], line["seq"]) for line in lines if line.get("server") == "0014"]
    assert lane == [
        (event, seq) for seq in (1, 2, 3, 4) for event in ("clear.started", "clear.succeeded")
    ]
    finished = lines[-1]
    assert finished["event"] == "run.finished"
    assert (
        finished["succeeded"],
        finished["failed"],
        finished["skipped"],
        finished["exit_code"],
    ) == (5, 0, 0, 0)
    assert {line["run_id"] for line in lines} == {finished["run_id"]}


def test_a_token_never_appears_in_any_output(
    sim: ThreadedSimulator, tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, sim.base_url)
    report = tmp_path / "report.json"
    main(["run", plan, "--yes", "--log-format", "json", "--report", str(report)])
    main(["run", plan, "--dry-run", "--log-format", "console"])
    main(["validate", plan])
    captured = capsys.readouterr()
    everything = captured.out + captured.err + report.read_text()
    for state_file in (tmp_path / "state").rglob("*"):
        if state_file.is_file():
            everything += state_file.read_bytes().decode("latin-1")
    assert TOKEN not in everything and OPS_TOKEN not in everything


def test_without_yes_and_without_a_terminal_the_run_is_refused_and_nothing_sent(
    sim: ThreadedSimulator,
    tokens: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        assert main(["run", write_plan(tmp_path, sim.base_url)]) == 2
    assert "pass --yes" in capsys.readouterr().err
    assert sim.simulator.stats()["total_calls"] == 0


def test_a_dry_run_sends_nothing_and_lists_the_clears_per_lane(
    sim: ThreadedSimulator, tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["run", write_plan(tmp_path, sim.base_url), "--dry-run", "--log-format", "json"]) == 0
    )
    captured = capsys.readouterr()
    assert sim.simulator.stats()["total_calls"] == 0
    assert "lane 1: env:T_MAIN" in captured.err and "campaign 3002: ALL RECORDS" in captured.err
    skipped = [line for line in log_lines(captured.out) if line["event"] == "clear.skipped"]
    assert [(s["seq"], s["reason"]) for s in skipped] == [(n, "dry_run") for n in (1, 2, 3, 4, 5)]


def test_tag_runs_only_the_campaigns_carrying_it(
    sim: ThreadedSimulator, tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "run",
                write_plan(tmp_path, sim.base_url),
                "--yes",
                "--tag",
                "nightly",
                "--log-format",
                "json",
            ]
        )
        == 0
    )
    done = [
        line["seq"]
        for line in log_lines(capsys.readouterr().out)
        if line["event"] == "clear.succeeded"
    ]
    assert done == [1, 2, 3]
    assert sim.simulator.records("0014", "preview", "3002")["busy"] == 100


def test_an_unknown_tag_is_bad_usage(
    sim: ThreadedSimulator, tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", write_plan(tmp_path, sim.base_url), "--yes", "--tag", "weekly"]) == 2
    assert "no campaign" in capsys.readouterr().err


def test_a_missing_token_stops_the_run_before_anything_is_sent(
    sim: ThreadedSimulator,
    tokens: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("T_OPS")
    assert main(["run", write_plan(tmp_path, sim.base_url), "--yes"]) == 2
    assert "environment variable T_OPS is not set" in capsys.readouterr().err
    assert sim.simulator.stats()["total_calls"] == 0


def test_plain_http_to_another_host_is_refused(
    tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, "https://wv{server}.wolkvox.com")
    assert main(["run", plan, "--yes", "--base-url", "http://wv{server}.wolkvox.com"]) == 2
    assert "--base-url" in capsys.readouterr().err


def test_a_rejected_token_fails_its_lane_and_the_report_says_why(
    tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    with running_simulator(latency_ms=1, valid_tokens=frozenset({OPS_TOKEN})) as sim:
        code = main(
            [
                "run",
                write_plan(tmp_path, sim.base_url),
                "--yes",
                "--log-format",
                "json",
                "--report",
                str(report),
            ]
        )
    assert code == 1
    document = json.loads(report.read_text())
    assert document["exit_code"] == 1 and document["totals"] == {
        "succeeded": 1,
        "already_succeeded": 0,
        "failed": 1,
        "skipped": 3,
    }
    by_seq = {c["seq"]: (c["outcome"], c["reason"], c["http_status"]) for c in document["clears"]}
    assert by_seq == {
        1: ("failed", "token_rejected", 403),
        2: ("skipped", "token_rejected", None),
        3: ("skipped", "token_rejected", None),
        4: ("skipped", "token_rejected", None),
        5: ("succeeded", None, 200),
    }
    assert set(document) >= {
        "run_id",
        "plan",
        "dry_run",
        "started_at",
        "finished_at",
        "calls_per_token",
    }


def test_a_bad_plan_exits_2_with_one_line_per_problem_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "version: 1\ncampaigns:\n  - campaign_id: 12a\n    results: [nobody]\n    resutls: all\n"
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{path}:3: campaigns[0].campaign_id" in err
    assert f"{path}:4: campaigns[0].results[0]: 'nobody' is not a result filter" in err
    assert f"{path}:5: campaigns[0]: unknown key 'resutls' (did you mean 'results'?)" in err


def test_validate_needs_no_tokens_and_warns_about_unset_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("T_MAIN", raising=False)
    assert main(["validate", write_plan(tmp_path, "https://wv{server}.wolkvox.com")]) == 0
    captured = capsys.readouterr()
    assert "warning: environment variable T_MAIN is not set" in captured.err
    assert "#1" in captured.out and "#5" in captured.out


def test_the_console_script_runs_the_example_plan_against_the_simulator(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WOLKVOX_")}
    env["ORCHESTRATOR_STATE_DIR"] = str(tmp_path / "state")
    example = Path(__file__).resolve().parents[2] / "plans" / "example.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(example), "--simulate", "--yes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "5 succeeded, 0 failed, 0 skipped" in done.stderr
    assert all(json.loads(line)["event"] for line in done.stdout.splitlines())


def test_the_command_exits_with_mains_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "main", lambda: 3)
    with pytest.raises(SystemExit) as exited:
        cli.entry()
    assert exited.value.code == 3


def test_the_command_passes_on_an_exit_code_and_flushes_its_output(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "plans" / "example.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WOLKVOX_")}
    bad = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    good = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(example)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (bad.returncode, good.returncode) == (2, 0)
    assert "nothing was sent: the plan has errors" in bad.stderr
    assert good.stdout.rstrip().endswith("#5     server 0038 predictive campaign 4001: failed")


def test_the_simulator_lets_itself_keep_a_connection_per_token_however_many() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 64:  # pragma: no cover - nothing to raise
        pytest.skip("the hard limit of open files is 64 or less: nothing to raise")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    simulator = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "simulate", "--port", "0", "--latency-ms", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=low_soft_limit,
    )
    try:
        assert simulator.stderr is not None
        assert b"simulating wolkvox at" in simulator.stderr.readline()
        limits = Path(f"/proc/{simulator.pid}/limits").read_text().splitlines()
        soft = next(line for line in limits if line.startswith("Max open files")).split()[3]
        assert soft == ("unlimited" if hard == resource.RLIM_INFINITY else str(hard))
    finally:
        simulator.kill()
        simulator.wait(10)


def test_a_one_off_clear_deletes_only_the_named_results(
    sim: ThreadedSimulator, tokens: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "clear",
            "--server",
            "0014",
            "--type-campaign",
            "predictive",
            "--campaign-id",
            "0777",
            "--result",
            "busy",
            "--result",
            "failed",
            "--token-env",
            "T_MAIN",
            "--yes",
            "--base-url",
            sim.base_url,
            "--log-format",
            "json",
        ]
    )
    assert code == 0
    assert sim.simulator.records("0014", "predictive", "0777") == {
        r: 0 if r in ("busy", "failed") else 100 for r in RESULT_FILTERS
    }
    done = [
        (line["campaign_id"], line["result"])
        for line in log_lines(capsys.readouterr().out)
        if line["event"] == "clear.succeeded"
    ]
    assert done == [("0777", "busy"), ("0777", "failed")]


def test_a_one_off_clear_without_result_deletes_every_record(
    sim: ThreadedSimulator, tokens: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "clear",
        "--server",
        "0014",
        "--type-campaign",
        "preview",
        "--campaign-id",
        "12",
        "--token-env",
        "T_MAIN",
        "--yes",
        "--base-url",
        sim.base_url,
    ]
    assert main(args) == 0
    assert sim.simulator.records("0014", "preview", "12") == dict.fromkeys(RESULT_FILTERS, 0)


def test_a_one_off_clear_names_the_option_that_is_wrong_and_sends_nothing(
    sim: ThreadedSimulator, tokens: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "clear",
            "--server",
            "00-14",
            "--type-campaign",
            "predictive",
            "--campaign-id",
            "1",
            "--result",
            "nobody",
            "--token-env",
            "T_MAIN",
            "--yes",
            "--base-url",
            sim.base_url,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "orchestrator clear: --server: " in err
    assert "orchestrator clear: --result: 'nobody' is not a result filter" in err
    assert sim.simulator.stats()["total_calls"] == 0


def test_the_metrics_file_is_written_after_a_run_for_the_textfile_collector(
    sim: ThreadedSimulator, tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = tmp_path / "orchestrator.prom"
    args = ["run", write_plan(tmp_path, sim.base_url), "--yes", "--log-format", "json"]
    assert main([*args, "--metrics-file", str(metrics)]) == 0
    samples = {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "plan"))): s.value
        for family in text_string_to_metric_families(metrics.read_text())
        for s in family.samples
    }
    assert samples[("orchestrator_run_exit_code", ())] == 0
    assert samples[("orchestrator_clears", (("outcome", "succeeded"),))] == 5
    calls = {
        labels[0][1]: v
        for (name, labels), v in samples.items()
        if name == "orchestrator_token_calls"
    }
    assert sorted(calls.values()) == [1, 4]
    assert oct(metrics.stat().st_mode & 0o777) == "0o644"


class _Terminal(io.StringIO):
    """Standard input as a terminal on which the operator types ``text``."""

    def isatty(self) -> bool:
        return True


def test_answering_no_at_a_resume_prompt_leaves_the_journal_as_it_was(
    tokens: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "state"
    with running_simulator(latency_ms=1, valid_tokens=frozenset({OPS_TOKEN})) as sim:
        plan = write_plan(tmp_path, sim.base_url)
        assert main(["run", plan, "--yes", "--log-format", "json"]) == 1
        run_id = log_lines(capsys.readouterr().out)[0]["run_id"]
        with Journal.open(state) as journal:
            before = (journal.run(run_id), journal.clears(run_id))
        monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
        assert main(["run", plan, "--resume"]) == 2
        calls = sim.simulator.stats()["total_calls"]
        assert "not confirmed; nothing was sent" in capsys.readouterr().err
        with Journal.open(state) as journal:
            after = (journal.run(run_id), journal.clears(run_id))
        assert before[0] is not None and before[0].exit_code == 1
        assert after == before
        assert calls == 2  # the first run's: one rejected, one succeeded
        # The refused resume let go of the run: answered yes, it goes on.
        monkeypatch.setattr(sys, "stdin", _Terminal("3002\n"))  # 3002: all records
        assert main(["run", plan, "--resume", "--log-format", "json"]) == 1
    resumed = log_lines(capsys.readouterr().out)
    assert {line["run_id"] for line in resumed} == {run_id}


@pytest.mark.parametrize("where", ["option", "plan"])
def test_a_base_url_whose_host_cannot_be_sent_to_exits_2_before_the_run_starts(
    tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    unsendable = "https://a..b.invalid"
    if where == "option":
        args = ["--base-url", unsendable]
        plan = write_plan(tmp_path, "https://wv{server}.wolkvox.com")
    else:
        args, plan = [], write_plan(tmp_path, unsendable)
    assert main(["run", plan, "--yes", "--log-format", "json", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "no run started: not even run.started"
    assert "'a..b.invalid', which cannot be sent to" in captured.err
    assert ("--base-url: " if where == "option" else "base_url: ") in captured.err
    assert not (tmp_path / "state").exists(), "refused before the journal was opened"


def test_max_clears_lets_exactly_n_clears_run_and_refuses_n_plus_one(
    sim: ThreadedSimulator, tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, sim.base_url)  # 5 clears
    assert main(["run", plan, "--yes", "--log-format", "json", "--max-clears", "5"]) == 0
    assert main(["run", plan, "--yes", "--log-format", "json", "--max-clears", "4"]) == 2
    assert "expands to 5 clears, more than --max-clears 4" in capsys.readouterr().err
    assert sim.simulator.stats()["total_calls"] == 5


def test_simulate_and_base_url_together_are_refused(
    tokens: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path, "https://wv{server}.wolkvox.com")
    args = ["run", plan, "--yes", "--simulate", "--base-url", "https://wv{server}.example.com"]
    assert main(args) == 2
    assert "--simulate and --base-url cannot be used together" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()
