"""Every ending of a run tells the same truth: log, report, metrics, journal and exit code."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.output.log import make_logger
from orchestrator.plan.tokens import build_lanes, read_tokens
from orchestrator.plan.validate import load_plan
from orchestrator.run.events import ClearStarted, Event
from orchestrator.run.execute import Engine, RunSpec, execute, perform
from orchestrator.run.prepare import RunOptions, prepare
from orchestrator.state.journal import Journal, JournalError
from orchestrator.wolkvox.client import HttpRequest, HttpResponse

TOKEN = "tok-ending-0123456789"

PLAN = """\
version: 1
settings: {{base_url: "{base_url}", cooldown_s: 0}}
defaults: {{server: "0014", token_env: T_MAIN, type_campaign: predictive}}
campaigns:
  - {{campaign_id: "3001", results: [busy, failed, answer]}}
"""


class BreaksOnSecondCall:
    """A transport whose second call raises what no one planned for, as a library bug would."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.calls += 1
        if self.calls == 2:
            raise UnicodeError(f"encoding with 'idna' codec failed ({request.token.reveal()})")
        return HttpResponse(200, b'{"code": 200, "error": null, "msg": "ok"}')


async def test_an_unexpected_exception_mid_run_ends_it_with_exit_1_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("T_MAIN", TOKEN)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PLAN.format(base_url="https://wv{server}.wolkvox.com"))
    report, metrics, state = tmp_path / "report.json", tmp_path / "run.prom", tmp_path / "state"
    options = RunOptions(
        report=str(report),
        log_format="json",
        metrics_file=str(metrics),
        state_dir=str(state),
    )
    said: list[str] = []
    transport = BreaksOnSecondCall()
    with prepare(load_plan(plan_file), options, say=said.append) as prepared:
        code = await perform(
            prepared, say=said.append, engine=Engine(transport=transport, handle_signals=False)
        )
    assert (code, transport.calls) == (1, 2)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finished = lines[-1]
    assert finished["event"] == "run.finished" and finished["exit_code"] == 1
    assert finished["error"].startswith("the run failed: UnicodeError: encoding with 'idna'")
    document = json.loads(report.read_text())
    assert (document["exit_code"], document["error"]) == (1, finished["error"])
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(metrics.read_text())
        for s in family.samples
    }
    assert samples["orchestrator_run_exit_code"] == 1
    with Journal.open(state) as journal:
        record = journal.run(finished["run_id"])
    assert record is not None and record.exit_code == 1 and record.finished_at is not None
    assert said[-1].endswith("exit 1)")
    assert any("UnicodeError" in text for text in said), "the traceback goes to stderr"
    everything = json.dumps(lines) + report.read_text() + "\n".join(said)
    assert TOKEN not in everything


class FullDisk:
    """A journal that records ``healthy`` events, then fails as on a full disk."""

    def __init__(self, healthy: int) -> None:
        self.healthy = healthy
        self.recorded: list[Event] = []

    def __call__(self, event: Event) -> None:
        if len(self.recorded) >= self.healthy:
            raise JournalError("journal /x/journal.sqlite3 cannot be written: disk is full")
        self.recorded.append(event)

    async def settle(self) -> None:
        """Each event is durable as soon as it is recorded."""


async def test_an_outcome_the_journal_could_not_record_is_said_in_its_log_line_and_the_ending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_MAIN", TOKEN)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PLAN.format(base_url="https://wv{server}.wolkvox.com"))
    plan = load_plan(plan_file)
    out, report = io.StringIO(), tmp_path / "report.json"
    journal = FullDisk(healthy=1)  # clear 1's start is recorded, its success is not
    spec = RunSpec(
        plan,
        build_lanes(plan.clears, read_tokens(plan)),
        plan.settings.base_url,
        make_logger("json", "r-1", out),
        "r-1",
        report_path=str(report),
        recorder=journal,
    )
    result = await execute(spec, Engine(transport=BreaksOnSecondCall(), handle_signals=False))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    succeeded = [line for line in lines if line["event"] == "clear.succeeded"]
    why = "journal /x/journal.sqlite3 cannot be written: disk is full"
    assert [(s["seq"], s["unrecorded"]) for s in succeeded] == [(1, why)]
    assert [type(e) for e in journal.recorded] == [ClearStarted]
    finished = lines[-1]
    assert (finished["event"], finished["exit_code"], finished["unrecorded"]) == (
        "run.finished",
        1,
        3,
    )
    assert result.unrecorded == (1, 2, 3)
    document = json.loads(report.read_text())
    assert document["unrecorded"] == [1, 2, 3]
    assert {c["seq"]: c.get("unrecorded") for c in document["clears"]} == dict.fromkeys(
        (1, 2, 3), why
    )
