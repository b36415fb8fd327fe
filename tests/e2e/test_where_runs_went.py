"""Where a run went: its base URL and whether it was simulated, in the log, report,
journal, ``runs`` and ``show``; simulated runs kept apart; dry runs without an id."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sim_thread import ThreadedSimulator, running_simulator

from orchestrator.cli import main
from orchestrator.plan.tokens import build_lanes, read_tokens
from orchestrator.plan.validate import load_plan
from orchestrator.state.journal import Journal, plan_digest

EXAMPLE = str(Path(__file__).resolve().parents[2] / "plans" / "example.yaml")
TOKEN = "tok-where-0123456789"
RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")

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
    results: [no-answer, busy]
"""


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The production state directory, as ORCHESTRATOR_STATE_DIR names it."""
    monkeypatch.setenv("T_MAIN", TOKEN)
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    with running_simulator(latency_ms=1) as sim:
        yield sim


def write_plan(tmp_path: Path, base_url: str) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(base_url=base_url))
    return str(path)


def log_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def test_a_real_run_records_its_base_url_in_the_log_report_journal_runs_and_show(
    state: Path, sim: ThreadedSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    plan = write_plan(tmp_path, sim.base_url)
    assert main(["run", plan, "--yes", "--log-format", "json", "--report", str(report)]) == 0
    started = log_lines(capsys.readouterr().out)[0]
    assert (started["event"], started["base_url"], started["simulated"]) == (
        "run.started",
        sim.base_url,
        False,
    )
    document = json.loads(report.read_text())
    assert (document["base_url"], document["simulated"]) == (sim.base_url, False)

    assert main(["runs", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["run_id"], listed["base_url"], listed["simulated"]) == (
        started["run_id"],
        sim.base_url,
        False,
    )
    assert main(["runs"]) == 0
    table = capsys.readouterr()
    assert table.out.splitlines()[1].split()[7] == sim.base_url
    assert "--simulated" not in table.err  # no simulated run was ever made here
    assert main(["show", str(started["run_id"])]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"  sent to {sim.base_url}"


def test_a_simulated_run_keeps_its_own_journal_and_show_still_finds_it(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    # The Quickstart's run, in a shell whose ORCHESTRATOR_STATE_DIR is production's.
    argv = ["run", EXAMPLE, "--simulate", "--yes", "--log-format", "json", "--report", str(report)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    started = log_lines(captured.out)[0]
    run_id = str(started["run_id"])
    simulator_url = str(started["base_url"])
    assert started["simulated"] is True
    assert simulator_url.startswith("http://127.0.0.1:") and simulator_url.endswith("/wv{server}")
    assert f"(run {run_id}, exit 0)" in captured.err
    document = json.loads(report.read_text())
    assert (document["base_url"], document["simulated"]) == (simulator_url, True)

    # Not in the production journal; in its own.
    assert not (state / "journal.sqlite3").exists()
    with Journal.open(state / "simulated") as journal:
        record = journal.run(run_id)
    assert record is not None and (record.base_url, record.simulated) == (simulator_url, True)

    assert main(["runs", "--json"]) == 0
    production = capsys.readouterr()
    assert json.loads(production.out) == []
    assert "orchestrator runs --simulated" in main_err(["runs"], capsys)

    assert main(["runs", "--simulated", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["run_id"], listed["simulated"], listed["base_url"]) == (
        run_id,
        True,
        simulator_url,
    )
    assert main(["runs", "--simulated"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert (row[0], row[7]) == (run_id, "simulated")

    assert main(["show", run_id]) == 0  # the id the run printed is found
    assert "the built-in simulator" in capsys.readouterr().out.splitlines()[1]
    assert main(["show", run_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["simulated"], len(shown["clears"])) == (True, 5)


def main_err(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().err


def test_with_state_dir_a_simulated_run_lands_there_marked_simulated(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rehearsal = tmp_path / "rehearsal"
    assert main(["run", EXAMPLE, "--simulate", "--yes", "--state-dir", str(rehearsal)]) == 0
    capsys.readouterr()
    assert not (rehearsal / "simulated").exists() and not (state / "simulated").exists()
    assert main(["runs", "--state-dir", str(rehearsal)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[7] for row in rows] == ["simulated"]


def test_an_unknown_run_is_looked_for_in_both_journals(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", EXAMPLE, "--simulate", "--yes"]) == 0
    capsys.readouterr()
    assert main(["show", "20000101T000000Z-000000"]) == 2
    err = capsys.readouterr().err
    assert f"no run 20000101T000000Z-000000 in {state / 'journal.sqlite3'}" in err
    assert f"nor in {state / 'simulated' / 'journal.sqlite3'}" in err


def test_a_real_run_is_never_resumed_at_the_simulator_nor_a_simulated_one_for_real(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("T_MAIN", TOKEN)
    shared = str(tmp_path / "shared")  # --state-dir: both kinds of run in one journal
    with running_simulator(latency_ms=1, valid_tokens=frozenset()) as sim:
        plan = write_plan(tmp_path, sim.base_url)
        # A real run that fails (its token is rejected): something to resume.
        assert main(["run", plan, "--yes", "--state-dir", shared, "--log-format", "json"]) == 1
        real_id = str(log_lines(capsys.readouterr().out)[0]["run_id"])
        # An unfinished simulated run of the same plan, recorded after it.
        loaded = load_plan(plan)
        lanes = build_lanes(loaded.clears, read_tokens(loaded))
        with Journal.open(Path(shared)) as journal:
            journal.begin_run(
                "sim-run", plan, plan_digest(lanes), lanes, started_at="2026-12-04T02:00:00Z",
                base_url="http://127.0.0.1:1/wv{server}", simulated=True,
            )  # fmt: skip
        calls = sim.simulator.stats()["total_calls"]

        assert main(["run", plan, "--yes", "--state-dir", shared, "--resume", "sim-run"]) == 2
        refused = capsys.readouterr().err
        assert "run sim-run was simulated and cannot be resumed as a real run" in refused
        assert "nothing was sent" in refused
        at_simulator = ["run", plan, "--yes", "--simulate", "--state-dir", shared]
        assert main([*at_simulator, "--resume", real_id]) == 2
        assert f"run {real_id} was real and cannot be resumed as simulated" in (
            capsys.readouterr().err
        )
        assert sim.simulator.stats()["total_calls"] == calls
        # Without an id, a real resume picks the real run, though the simulated one is later.
        real = ["run", plan, "--yes", "--state-dir", shared, "--log-format", "json"]
        assert main([*real, "--resume"]) == 1
        assert {line["run_id"] for line in log_lines(capsys.readouterr().out)} == {real_id}


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_dry_run_prints_no_run_id_and_says_it_is_not_journaled(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    report = tmp_path / "report.json"
    plan = write_plan(tmp_path, "https://wv{server}.wolkvox.com")
    argv = ["run", plan, "--dry-run", "--log-format", log_format, "--report", str(report)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "(dry run, not journaled, exit 0)" in captured.err
    assert "None" not in captured.err + captured.out
    document = json.loads(report.read_text())
    assert (document["run_id"], document["dry_run"], document["simulated"]) == (None, True, False)
    assert document["base_url"] == "https://wv{server}.wolkvox.com"
    if log_format == "json":
        lines = log_lines(captured.out)
        assert {line["run_id"] for line in lines} == {None}
        assert (lines[0]["base_url"], lines[0]["simulated"]) == (
            "https://wv{server}.wolkvox.com",
            False,
        )
    else:
        assert captured.out.splitlines()[0].split()[2:5] == ["dry", "run", "started"]
    # Nothing that looks like a run id, anywhere.
    assert not RUN_ID.search(captured.out + captured.err + report.read_text())
    assert not (state / "journal.sqlite3").exists()  # nothing for show to find


def test_a_simulated_dry_run_names_no_target(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", EXAMPLE, "--simulate", "--dry-run", "--log-format", "json"]) == 0
    started = log_lines(capsys.readouterr().out)[0]
    assert (started["run_id"], started["base_url"], started["simulated"]) == (None, None, True)
