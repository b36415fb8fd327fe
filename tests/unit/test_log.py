"""The structured log: the lines every event becomes, as structlog captures and renders them."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import structlog
from fakes import MAINTENANCE, OK, TIMEOUT, UNAVAILABLE, make_clear, make_lane, make_log

from orchestrator.output.log import EventLog, LineWriter, make_logger, pick_format
from orchestrator.plan.model import TokenRef
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    Outcome,
    Reason,
    RestReason,
    TokenResting,
    TokenWaiting,
)
from orchestrator.wolkvox.client import Answer, Verdict

LANE = make_lane("A", make_clear(7, campaign="0123", result=None, token=TokenRef("env", "TOK_A")))
CLEAR = LANE.clears[0]
IDENTITY = {
    "run_id": "run-1",
    "seq": 7,
    "token_id": LANE.token_id,
    "token": "env:TOK_A",
    "server": "0014",
    "type_campaign": "predictive",
    "campaign_id": "0123",
    "result": "all",
}


Logged = Callable[..., list[dict[str, object]]]
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def captured(*events: Event) -> list[dict[str, object]]:
    capture = structlog.testing.LogCapture()
    log = EventLog(make_logger("json", "run-1", io.StringIO(), extra_processors=(capture,)))
    for event in events:
        log(event)
    for entry in capture.entries:
        assert entry.pop("log_level") == entry["level"]
        assert STAMP.fullmatch(str(entry.pop("timestamp")))
    return capture.entries


def json_lines(*events: Event) -> list[dict[str, object]]:
    out = io.StringIO()
    _, log = make_log("json", "run-1", out)
    for event in events:
        log(event)
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    for entry in entries:
        assert STAMP.fullmatch(entry.pop("timestamp"))
    return entries


@pytest.fixture(params=[captured, json_lines], ids=["captured", "json"])
def logged(request: pytest.FixtureRequest) -> Logged:
    """The event dicts structlog's processors hand the renderer, and the JSON lines it writes."""
    return request.param  # type: ignore[no-any-return]


def test_an_attempt_is_logged_as_clear_started(logged: Logged) -> None:
    assert logged(ClearStarted(CLEAR, LANE.token_id, 2)) == [
        {"event": "clear.started", "level": "info", **IDENTITY, "attempt": 2}
    ]


def test_a_retry_is_logged_with_its_delay_and_the_answer_that_caused_it(logged: Logged) -> None:
    assert logged(ClearRetrying(CLEAR, LANE.token_id, 1, 1.23456, UNAVAILABLE)) == [
        {
            "event": "clear.retrying",
            "level": "warning",
            **IDENTITY,
            "attempt": 1,
            "delay_s": 1.235,
            "error": "unreadable body: HTTP 503",
            "http_status": 503,
            "code": 503,
        }
    ]


def test_a_retry_after_longer_than_the_cap_is_logged_as_capped(logged: Logged) -> None:
    capped = dataclasses.replace(UNAVAILABLE, retry_after_s=60.0, retry_after_capped=True)
    [line] = logged(ClearRetrying(CLEAR, LANE.token_id, 1, 60.0, capped))
    assert (line["delay_s"], line["retry_after_capped"]) == (60.0, True)
    [plain] = logged(ClearRetrying(CLEAR, LANE.token_id, 1, 1.0, UNAVAILABLE))
    assert "retry_after_capped" not in plain


def test_a_success_is_logged_with_the_answer(logged: Logged) -> None:
    event = ClearFinished(CLEAR, LANE.token_id, Outcome.SUCCEEDED, None, 1, OK, 52)
    assert logged(event) == [
        {
            "event": "clear.succeeded",
            "level": "info",
            **IDENTITY,
            "reason": None,
            "attempts": 1,
            "http_status": 200,
            "code": 202,
            "msg": "All records has been deleted",
            "error": None,
            "duration_ms": 52,
        }
    ]


def test_a_failure_is_logged_as_an_error_with_its_reason(logged: Logged) -> None:
    event = ClearFinished(
        CLEAR, LANE.token_id, Outcome.FAILED, Reason.RETRIES_EXHAUSTED, 4, TIMEOUT, 9000
    )
    assert logged(event) == [
        {
            "event": "clear.failed",
            "level": "error",
            **IDENTITY,
            "reason": "retries_exhausted",
            "attempts": 4,
            "http_status": None,
            "code": None,
            "msg": None,
            "error": "timeout",
            "duration_ms": 9000,
        }
    ]


def test_a_skip_names_the_clear_that_blocked_the_lane(logged: Logged) -> None:
    event = ClearFinished(
        CLEAR, LANE.token_id, Outcome.SKIPPED, Reason.BLOCKED_BY_FAILURE, 0, None, 0, blocked_by=3
    )
    assert logged(event) == [
        {
            "event": "clear.skipped",
            "level": "warning",
            **IDENTITY,
            "reason": "blocked_by_failure",
            "attempts": 0,
            "http_status": None,
            "code": None,
            "msg": None,
            "error": None,
            "duration_ms": 0,
            "blocked_by": 3,
        }
    ]


def test_waiting_for_another_process_is_logged_with_the_seconds_waited(logged: Logged) -> None:
    assert logged(TokenWaiting(CLEAR, LANE.token_id, 2.34567)) == [
        {"event": "token.waiting", "level": "info", **IDENTITY, "waited_s": 2.346}
    ]


def test_a_rest_is_logged_with_why_how_long_and_until_when(logged: Logged) -> None:
    until = datetime(2026, 12, 4, 2, 11, 5, 250000, tzinfo=UTC)
    rests = [
        TokenResting(CLEAR, LANE.token_id, RestReason.OUTCOME_UNKNOWN, 60.0, until, TIMEOUT),
        TokenResting(CLEAR, LANE.token_id, RestReason.IN_FLIGHT_AT_RESUME, 60.0, until),
        TokenResting(CLEAR, LANE.token_id, RestReason.MAINTENANCE, 59.12345, until, MAINTENANCE),
    ]
    common = {"event": "token.resting", **IDENTITY, "until": "2026-12-04T02:11:05.250000Z"}
    assert logged(*rests) == [
        {
            **common,
            "level": "warning",
            "reason": "outcome_unknown",
            "rest_s": 60.0,
            "http_status": None,
            "msg": None,
            "error": "timeout",
        },
        {
            **common,
            "level": "info",
            "reason": "in_flight_at_resume",
            "rest_s": 60.0,
            "http_status": None,
            "msg": None,
            "error": None,
        },
        {
            **common,
            "level": "warning",
            "reason": "maintenance",
            "rest_s": 59.123,
            "http_status": 403,
            "msg": "SERVICE UNDER MAINTENANCE",
            "error": "FORBIDDEN",
        },
    ]


def test_a_clear_that_rested_says_how_long_in_rested_ms(logged: Logged) -> None:
    event = ClearFinished(
        CLEAR, LANE.token_id, Outcome.SUCCEEDED, None, 2, OK, 60_512, rested_ms=60_000
    )
    [line] = logged(event)
    assert (line["duration_ms"], line["rested_ms"]) == (60_512, 60_000)


def test_json_lines_start_with_event_timestamp_level_and_run_id() -> None:
    out = io.StringIO()
    make_logger("json", "run-9", out).info("run.started", plan="p.yaml")
    line = json.loads(out.getvalue())
    assert list(line)[:4] == ["event", "timestamp", "level", "run_id"]
    assert line["plan"] == "p.yaml"


def test_auto_format_is_json_off_a_terminal() -> None:
    assert pick_format("auto", io.StringIO()) == "json"
    assert pick_format("console", io.StringIO()) == "console"


#: A clear whose names need escaping (validation would refuse them; the log must not care).
ODD_CLEAR = dataclasses.replace(
    CLEAR, seq=9, server='00"14', campaign_id='Campa\u00f1a \\ "3001"', result=None
)


def test_json_lines_carry_names_that_need_escaping_unchanged() -> None:
    event = ClearFinished(
        ODD_CLEAR,
        'tok "\u2028',
        Outcome.FAILED,
        Reason.REJECTED,
        1,
        Answer(Verdict.FAILED, http_status=400, code=400, msg='Campa\u00f1a "3001" \\ \u2028'),
        10**12,
    )
    [line] = json_lines(event)
    assert line["server"] == '00"14'
    assert line["campaign_id"] == 'Campa\u00f1a \\ "3001"'
    assert line["token_id"] == 'tok "\u2028'
    assert line["msg"] == 'Campa\u00f1a "3001" \\ \u2028'
    assert line["duration_ms"] == 10**12


def test_the_timestamp_is_iso_8601_in_utc() -> None:
    out = io.StringIO()
    before = datetime.now(UTC)
    make_logger("json", "run-1", out).info("run.empty")
    stamp = datetime.fromisoformat(json.loads(out.getvalue())["timestamp"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert before <= stamp <= datetime.now(UTC)


def test_run_lines_keep_their_fields() -> None:
    out = io.StringIO()
    logger = make_logger("json", 'run "1"', out)
    logger.info("run.started", plan="n\u00f6ghtly.yaml", clears=3, tokens=2, dry_run=False)
    logger.warning("run.interrupted", signal="SIGTERM", calls_in_flight=1, cut=True)
    logger.error("run.finished", succeeded=1, calls_per_token={"ops": 2}, error="halted")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    for line in lines:
        assert STAMP.fullmatch(line.pop("timestamp"))
    assert lines == [
        {
            "event": "run.started",
            "level": "info",
            "run_id": 'run "1"',
            "plan": "n\u00f6ghtly.yaml",
            "clears": 3,
            "tokens": 2,
            "dry_run": False,
        },
        {
            "event": "run.interrupted",
            "level": "warning",
            "run_id": 'run "1"',
            "signal": "SIGTERM",
            "calls_in_flight": 1,
            "cut": True,
        },
        {
            "event": "run.finished",
            "level": "error",
            "run_id": 'run "1"',
            "succeeded": 1,
            "calls_per_token": {"ops": 2},
            "error": "halted",
        },
    ]


class RecordingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())
        super().flush()


async def test_each_line_is_written_and_flushed_as_it_happens() -> None:
    out = RecordingStream()
    logger, log = make_log("json", "run-1", out)
    log(ClearStarted(CLEAR, LANE.token_id, 1))
    # Checked before this coroutine yields: nothing waits for the end of a turn.
    assert [json.loads(line)["event"] for line in out.flushed[-1].splitlines()] == ["clear.started"]
    logger.warning("run.interrupted", signal="SIGINT")
    log(ClearFinished(CLEAR, LANE.token_id, Outcome.SUCCEEDED, None, 1, OK, 52))
    assert [json.loads(line)["event"] for line in out.flushed[-1].splitlines()] == [
        "clear.started",
        "run.interrupted",
        "clear.succeeded",
    ]


class BrokenPipe(io.StringIO):
    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_line_that_cannot_be_written_cuts_the_log_once_and_never_raises() -> None:
    cuts: list[Exception] = []
    lines = LineWriter(BrokenPipe(), on_cut=cuts.append)
    logger = make_logger("json", "run-1", lines)
    log = EventLog(logger)
    assert not lines.cut
    logger.info("run.started", plan="p.yaml")
    # The run goes on: its clear events and its own last line neither raise nor retry.
    log(ClearStarted(CLEAR, LANE.token_id, 1))
    log(ClearFinished(CLEAR, LANE.token_id, Outcome.SUCCEEDED, None, 1, OK, 52))
    logger.info("run.finished", exit_code=0)
    assert lines.cut
    assert [type(exc) for exc in cuts] == [BrokenPipeError]  # told once, at the first line


def test_a_log_that_writes_is_not_cut() -> None:
    cuts: list[Exception] = []
    lines = LineWriter(io.StringIO(), on_cut=cuts.append)
    make_logger("json", "run-1", lines).info("run.started", plan="p.yaml")
    assert (lines.cut, cuts) == (False, [])
