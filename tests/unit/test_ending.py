"""Every ending of a run tells the same truth: log, report, metrics, journal and exit code."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes import REJECTED, UNAVAILABLE, make_clear
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.output.log import make_logger
from orchestrator.plan.model import TokenRef
from orchestrator.plan.tokens import build_lanes, read_tokens
from orchestrator.plan.validate import load_plan, parse_plan
from orchestrator.run.ending import RunResult, explain_interrupt, tell
from orchestrator.run.events import ClearFinished, ClearStarted, Event, Outcome, Reason
from orchestrator.run.execute import Engine, RunSpec, execute, perform
from orchestrator.run.prepare import Prepared, Resume, RunOptions, prepare
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
    # Every clear of the plan is in the report, the ones the crash left unfinished too.
    assert [c["seq"] for c in document["clears"]] == [c.seq for c in prepared.plan.clears]
    assert {c["outcome"] for c in document["clears"][1:]} == {"unfinished"}
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


# --------------------------------------------------------- what the ending tells


def prepared_run(
    options: RunOptions, *, resumed: bool = False, run_id: str = "20261204T021000Z-a1b2c3"
) -> Prepared:
    plan = parse_plan(PLAN.format(base_url="https://wv{server}.wolkvox.com"), "p", base_dir=Path())
    # tell() asks the state only for the run's id and whether the run resumes another.
    state = SimpleNamespace(run_id=run_id, resume=Resume() if resumed else None)
    return Prepared(plan, (), options, plan.settings.base_url, state)  # type: ignore[arg-type]


def told(result: RunResult, prepared: Prepared, *, journaled: bool = True) -> str:
    said: list[str] = []
    tell(result, prepared, said.append, journaled=journaled)
    return "\n".join(said)


def totals(
    succeeded: int = 0, already: int = 0, failed: int = 0, skipped: int = 0
) -> dict[str, int]:
    return {
        "succeeded": succeeded,
        "already_succeeded": already,
        "failed": failed,
        "skipped": skipped,
    }


NIGHTLY = ("orchestrator", "run", "plans/nightly recycling.yaml", "--tag", "nightly")


def test_a_failed_run_names_what_failed_or_was_skipped_and_how_to_resume() -> None:
    rejected = ClearFinished(
        make_clear(5), "t", Outcome.FAILED, Reason.TOKEN_REJECTED, 1, REJECTED, 12
    )
    blocked = [
        ClearFinished(make_clear(seq), "t", Outcome.SKIPPED, Reason.TOKEN_REJECTED, 0, None, 0)
        for seq in (6, 7)
    ]
    busy = ClearFinished(
        make_clear(2, token=TokenRef("file", "/run/secrets/ops")),
        "u",
        Outcome.FAILED,
        Reason.RETRIES_EXHAUSTED,
        4,
        UNAVAILABLE,
        9_300,
    )
    result = RunResult(
        1, totals(3, failed=2, skipped=2), 10_400, not_done=(rejected, *blocked, busy)
    )
    options = RunOptions(
        state_dir="/srv/state", resume_command=(*NIGHTLY, "--state-dir", "/srv/state")
    )
    assert told(result, prepared_run(options)) == (
        "failed or skipped:\n"
        "  ✗ failed     #2 0014/predictive/3002/busy  file:/run/secrets/ops  4 attempts, 9.3 s"
        "  retries exhausted: unreadable body: HTTP 503\n"
        "  ✗ failed     #5 0014/predictive/3005/busy  env:WOLKVOX_TOKEN  12 ms"
        "  token rejected: HTTP 403: PLEASE VALIDATE TOKEN\n"
        "  – skipped    #6 0014/predictive/3006/busy  env:WOLKVOX_TOKEN  token rejected\n"  # noqa: RUF001
        "  – skipped    #7 0014/predictive/3007/busy  env:WOLKVOX_TOKEN  token rejected\n"  # noqa: RUF001
        "3 succeeded, 2 failed, 2 skipped in 10.4 s (run 20261204T021000Z-a1b2c3, exit 1)\n"
        "to resume: orchestrator run 'plans/nightly recycling.yaml' --tag nightly"
        " --state-dir /srv/state --resume=20261204T021000Z-a1b2c3"
    )


def test_past_twenty_clears_the_rest_are_counted_and_show_lists_them() -> None:
    interrupted = tuple(
        ClearFinished(make_clear(seq), "t", Outcome.SKIPPED, Reason.INTERRUPTED, 0, None, 0)
        for seq in range(1, 21)
    )
    result = RunResult(130, totals(skipped=25), 800, not_done=interrupted)
    lines = told(result, prepared_run(RunOptions(resume_command=NIGHTLY))).splitlines()
    assert len(lines) == 1 + 20 + 3
    last = "  – skipped    #20 0014/predictive/3020/busy  env:WOLKVOX_TOKEN  interrupted"  # noqa: RUF001
    assert lines[20] == last
    assert lines[21:] == [
        "  and 5 more (orchestrator show 20261204T021000Z-a1b2c3 lists every clear)",
        "0 succeeded, 0 failed, 25 skipped in 0.8 s (run 20261204T021000Z-a1b2c3, exit 130)",
        "to resume: orchestrator run 'plans/nightly recycling.yaml' --tag nightly"
        " --resume=20261204T021000Z-a1b2c3",
    ]


def test_a_resume_that_finishes_says_what_was_done_before_and_nothing_to_do() -> None:
    result = RunResult(0, totals(10, already=15), 3_000)
    assert told(result, prepared_run(RunOptions(resume_command=NIGHTLY), resumed=True)) == (
        "10 succeeded, 15 already succeeded, 0 failed, 0 skipped in 3.0 s"
        " (run 20261204T021000Z-a1b2c3, exit 0)"
    )


def test_a_new_run_that_succeeds_says_only_its_counts() -> None:
    result = RunResult(0, totals(25), 12_300)
    assert told(result, prepared_run(RunOptions(resume_command=NIGHTLY))) == (
        "25 succeeded, 0 failed, 0 skipped in 12.3 s (run 20261204T021000Z-a1b2c3, exit 0)"
    )


def test_a_run_the_journal_never_began_tells_no_command() -> None:
    result = RunResult(2, totals(), 10, error="the run halted: journal cannot be written")
    text = told(result, prepared_run(RunOptions(resume_command=NIGHTLY)), journaled=False)
    assert "to resume" not in text and "orchestrator show" not in text


@pytest.mark.parametrize(
    ("signum", "in_flight", "resting", "cut", "said"),
    [
        (
            signal.SIGINT,
            2,
            1,
            False,
            "orchestrator: interrupted: nothing new starts; letting 2 calls in flight finish, "
            "1 token resting after an unknown outcome. Press Ctrl-C again to cut them: "
            "their outcome is then unknown.",
        ),
        (
            signal.SIGTERM,
            1,
            0,
            False,
            "orchestrator: SIGTERM: nothing new starts; letting 1 call in flight finish. "
            "Send a second signal to cut them: their outcome is then unknown.",
        ),
        (
            signal.SIGINT,
            0,
            0,
            False,
            "orchestrator: interrupted: nothing new starts, and no call is in flight",
        ),
        (
            signal.SIGINT,
            2,
            1,
            True,
            "orchestrator: interrupted again: cutting 2 calls in flight and the cooldown of "
            "1 token; the outcome of a cut call is unknown, and --resume rests its token "
            "before using it again",
        ),
    ],
    ids=["sigint", "sigterm", "idle", "cut"],
)
def test_a_signal_says_what_it_does(
    signum: int, in_flight: int, resting: int, cut: bool, said: str
) -> None:
    assert explain_interrupt(signum, in_flight, resting, cut=cut) == said
