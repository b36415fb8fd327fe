"""Every ending of a run tells the same truth: log, report, metrics, journal and exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.plan.validate import load_plan
from orchestrator.run.execute import Engine, perform
from orchestrator.run.prepare import RunOptions, prepare
from orchestrator.state.journal import Journal
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
