"""The structured log: whole captured lines for every event."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
from collections.abc import Callable

import pytest
import structlog
from fakes import OK, TIMEOUT, UNAVAILABLE, make_clear, make_lane

from orchestrator.output.log import EventLog, JsonEventLog, make_logger, pick_format
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Event,
    Outcome,
    Reason,
    TokenWaiting,
)
from orchestrator.wolkvox.client import Answer, Verdict

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


Logged = Callable[..., list[dict[str, object]]]
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def through_structlog(*events: Event) -> list[dict[str, object]]:
    capture = structlog.testing.LogCapture()
    log = EventLog(make_logger("json", "run-1", io.StringIO(), extra_processors=(capture,)))
    for event in events:
        log(event)
    for entry in capture.entries:
        assert entry.pop("log_level") == entry["level"]
        assert STAMP.fullmatch(str(entry.pop("timestamp")))
    return capture.entries


def written_directly(*events: Event) -> list[dict[str, object]]:
    out = io.StringIO()
    log = JsonEventLog(out, "run-1")
    for event in events:
        log(event)
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    for entry in entries:
        assert STAMP.fullmatch(entry.pop("timestamp"))
    return entries


@pytest.fixture(params=[through_structlog, written_directly], ids=["structlog", "direct"])
def logged(request: pytest.FixtureRequest) -> Logged:
    """Both ways a clear event becomes a log line: they must give the same lines."""
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
EVERY_KIND = (
    TokenWaiting(CLEAR, LANE.token_id, 2.5),
    ClearStarted(CLEAR, LANE.token_id, 1),
    ClearRetrying(CLEAR, LANE.token_id, 1, 1.23456, UNAVAILABLE),
    ClearFinished(CLEAR, LANE.token_id, Outcome.SUCCEEDED, None, 2, OK, 52),
    ClearFinished(CLEAR, LANE.token_id, Outcome.FAILED, Reason.RETRIES_EXHAUSTED, 4, TIMEOUT, 9),
    ClearFinished(
        CLEAR, LANE.token_id, Outcome.SKIPPED, Reason.BLOCKED_BY_FAILURE, 0, None, 0, blocked_by=3
    ),
    ClearFinished(CLEAR, LANE.token_id, Outcome.FAILED, Reason.LOCK_LOST, 1, None, 7, "lost: x"),
    ClearFinished(
        CLEAR,
        LANE.token_id,
        Outcome.FAILED,
        Reason.REJECTED,
        1,
        Answer(Verdict.FAILED, http_status=400, code=400, msg='Campa\u00f1a "3001" \\ \u2028'),
        10**12,
    ),
    ClearStarted(ODD_CLEAR, 'tok "\u2028', 3),
)


def test_direct_lines_are_structlogs_lines_byte_for_byte_but_the_timestamp() -> None:
    via_structlog, direct = io.StringIO(), io.StringIO()
    slow, fast = (
        EventLog(make_logger("json", 'run "1"', via_structlog)),
        JsonEventLog(direct, 'run "1"'),
    )
    for event in EVERY_KIND:
        slow(event)
        fast(event)

    def unstamped(text: str) -> list[str]:
        return [STAMP.sub("T", line) for line in text.splitlines()]

    assert unstamped(direct.getvalue()) == unstamped(via_structlog.getvalue())
    assert len(direct.getvalue().splitlines()) == len(EVERY_KIND)


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


async def test_direct_lines_are_flushed_once_per_turn_of_the_event_loop() -> None:
    out = CountingStream()
    log = JsonEventLog(out, "run-1")
    for event in EVERY_KIND:
        log(event)
    assert out.flushes == 0
    await asyncio.sleep(0)
    assert out.flushes == 1
    log(EVERY_KIND[0])
    await asyncio.sleep(0)
    assert out.flushes == 2


class RecordingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


async def test_direct_lines_of_one_turn_reach_the_stream_in_one_write() -> None:
    out = RecordingStream()
    log = JsonEventLog(out, "run-1")
    for event in EVERY_KIND:
        log(event)
    assert out.writes == []
    await asyncio.sleep(0)
    assert len(out.writes) == 1
    assert len(out.writes[0].splitlines()) == len(EVERY_KIND)


async def test_run_lines_keep_their_place_among_the_direct_clear_lines() -> None:
    out = RecordingStream()
    log = JsonEventLog(out, "run-1")
    log(EVERY_KIND[1])
    log.warning("run.interrupted", signal="SIGINT")
    log(EVERY_KIND[3])
    await asyncio.sleep(0)
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events == ["clear.started", "run.interrupted", "clear.succeeded"]
    assert len(out.writes) == 1


def test_direct_run_lines_are_structlogs_lines_byte_for_byte_but_the_timestamp() -> None:
    via_structlog, direct = io.StringIO(), io.StringIO()
    slow, fast = make_logger("json", 'run "1"', via_structlog), JsonEventLog(direct, 'run "1"')
    for logger in (slow, fast):
        logger.info("run.started", plan="n\u00f6ghtly.yaml", clears=3, tokens=2, dry_run=False)
        logger.warning("run.interrupted", signal="SIGTERM", calls_in_flight=1, cut=True)
        logger.error(
            "run.finished",
            succeeded=1,
            calls_per_token={"ops": 2, 'a "b"': 1},
            error="the run halted: journal full",
        )
        logger.info("run.empty")

    def unstamped(text: str) -> list[str]:
        return [STAMP.sub("T", line) for line in text.splitlines()]

    assert unstamped(direct.getvalue()) == unstamped(via_structlog.getvalue())
    assert len(direct.getvalue().splitlines()) == 4


async def test_flush_writes_the_pending_direct_lines_before_the_turn_ends() -> None:
    out = RecordingStream()
    log = JsonEventLog(out, "run-1")
    log(EVERY_KIND[1])
    log.flush()
    assert [json.loads(text)["event"] for text in out.writes] == ["clear.started"]


def test_direct_lines_are_flushed_at_once_outside_an_event_loop() -> None:
    out = CountingStream()
    JsonEventLog(out, "run-1")(EVERY_KIND[1])
    assert out.flushes == 1


class BrokenPipe(io.StringIO):
    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


async def test_a_flush_that_fails_makes_the_next_event_raise() -> None:
    log = JsonEventLog(BrokenPipe(), "run-1")
    log(EVERY_KIND[1])
    await asyncio.sleep(0)
    with pytest.raises(BrokenPipeError):
        log(EVERY_KIND[3])
