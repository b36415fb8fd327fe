"""The structured log: whole captured lines for every event."""

from __future__ import annotations

import io
import json
import re

import structlog
from fakes import OK, TIMEOUT, UNAVAILABLE, make_clear, make_lane

from orchestrator.events import ClearFinished, ClearRetrying, ClearStarted, Outcome, Reason
from orchestrator.log import EventLog, make_logger, pick_format

LANE = make_lane("A", make_clear(7, campaign="0123", result=None))
CLEAR = LANE.clears[0]
IDENTITY = {
    "run_id": "run-1",
    "seq": 7,
    "token_id": LANE.token_id,
    "server": "0014",
    "type_campaign": "predictive",
    "campaign_id": "0123",
    "result": "all",
}


def captured(*events: object) -> list[dict[str, object]]:
    capture = structlog.testing.LogCapture()
    log = EventLog(make_logger("json", "run-1", io.StringIO(), extra_processors=(capture,)))
    for event in events:
        log(event)  # type: ignore[arg-type]
    for entry in capture.entries:
        assert entry.pop("log_level") == entry["level"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", str(entry.pop("timestamp")))
    return capture.entries


def test_an_attempt_is_logged_as_clear_started() -> None:
    assert captured(ClearStarted(CLEAR, LANE.token_id, 2)) == [
        {"event": "clear.started", "level": "info", **IDENTITY, "attempt": 2}
    ]


def test_a_retry_is_logged_with_its_delay_and_the_answer_that_caused_it() -> None:
    assert captured(ClearRetrying(CLEAR, LANE.token_id, 1, 1.23456, UNAVAILABLE)) == [
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


def test_a_success_is_logged_with_the_answer() -> None:
    event = ClearFinished(CLEAR, LANE.token_id, Outcome.SUCCEEDED, None, 1, OK, 52)
    assert captured(event) == [
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


def test_a_failure_is_logged_as_an_error_with_its_reason() -> None:
    event = ClearFinished(
        CLEAR, LANE.token_id, Outcome.FAILED, Reason.RETRIES_EXHAUSTED, 4, TIMEOUT, 9000
    )
    assert captured(event) == [
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


def test_a_skip_names_the_clear_that_blocked_the_lane() -> None:
    event = ClearFinished(
        CLEAR, LANE.token_id, Outcome.SKIPPED, Reason.BLOCKED_BY_FAILURE, 0, None, 0, blocked_by=3
    )
    assert captured(event) == [
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


def test_json_lines_start_with_event_timestamp_level_and_run_id() -> None:
    out = io.StringIO()
    make_logger("json", "run-9", out).info("run.started", plan="p.yaml")
    line = json.loads(out.getvalue())
    assert list(line)[:4] == ["event", "timestamp", "level", "run_id"]
    assert line["plan"] == "p.yaml"


def test_auto_format_is_json_off_a_terminal() -> None:
    assert pick_format("auto", io.StringIO()) == "json"
    assert pick_format("console", io.StringIO()) == "console"
