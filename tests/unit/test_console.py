"""The console log: the one line a person reads for each event, rendered through structlog."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import re
import struct
import termios
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fakes import BAD_REQUEST, OK, REJECTED, TIMEOUT, UNAVAILABLE, make_clear, make_lane, make_log
from sim_thread import ThreadedSimulator, running_simulator
from structlog.typing import EventDict, WrappedLogger

from orchestrator.cli import main
from orchestrator.output.console import MAX_WIDTH, console_width
from orchestrator.output.log import EventLog, make_logger
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

RUN_ID = "20261204T021000Z-3fa9c1"
LANE = make_lane("A", make_clear(7, campaign="3001", token=TokenRef("env", "TOK_A")))
CLEAR = LANE.clears[0]
ALL = dataclasses.replace(
    CLEAR, seq=8, result=None, token=TokenRef("file", "/run/secrets/ops"), type_campaign="preview"
)
CAPPED = dataclasses.replace(UNAVAILABLE, retry_after_s=60.0, retry_after_capped=True)
ID = LANE.token_id
#: The maintenance answer as wolkvox (and the simulator) sends it.
MAINTENANCE = Answer(
    Verdict.MAINTENANCE, 403, 403, msg="SERVICE UNDER MAINTENANCE", error="FORBIDDEN"
)


def local(clock: str) -> datetime:
    """Today at ``clock`` on this machine's wall clock, as the UTC time events carry."""
    hours, minutes, seconds = map(int, clock.split(":"))
    today = datetime.now().replace(hour=hours, minute=minutes, second=seconds, microsecond=0)
    return today.astimezone(UTC)


#: A run's lines, in the order a run logs them: every kind of line at least once.
RUN = [
    ("info", "run.started", {"plan": "plans/nightly.yaml", "clears": 25, "tokens": 3}),
    TokenWaiting(CLEAR, ID, 2.345),
    ClearStarted(CLEAR, ID, 1),
    ClearRetrying(CLEAR, ID, 1, 0.6, UNAVAILABLE),
    ClearStarted(CLEAR, ID, 2),
    ClearFinished(CLEAR, ID, Outcome.SUCCEEDED, None, 2, OK, 1234),
    ClearFinished(ALL, ID, Outcome.FAILED, Reason.RETRIES_EXHAUSTED, 4, TIMEOUT, 95_000),
    ("warning", "run.interrupted", {"signal": "SIGINT", "calls_in_flight": 1, "cut": False}),
    TokenResting(ALL, ID, RestReason.OUTCOME_UNKNOWN, 60.0, local("02:11:05"), TIMEOUT),
    ("error", "run.finished", {"succeeded": 1, "failed": 1, "skipped": 0, "exit_code": 1}),
]


def at_two_am(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """A fixed time, so a line can be compared whole."""
    event_dict["timestamp"] = "02:10:05"
    return event_dict


def console(
    *items: Event | tuple[str, str, dict[str, object]], stream: io.StringIO | None = None
) -> list[str]:
    """The console lines of ``items``: scheduler events, or (level, name, fields) of run lines."""
    out = stream if stream is not None else io.StringIO()
    logger = make_logger("console", RUN_ID, out, extra_processors=(at_two_am,))
    log = EventLog(logger)
    for item in items:
        if isinstance(item, tuple):
            level, name, fields = item
            getattr(logger, level)(name, **fields)
        else:
            log(item)
    return out.getvalue().splitlines()


@pytest.mark.parametrize(
    ("item", "line"),
    [
        (
            (
                "info",
                "run.started",
                {"plan": "plans/n.yaml", "clears": 25, "tokens": 1, "dry_run": False},
            ),
            f"02:10:05 ▶ run {RUN_ID} started  plans/n.yaml: 25 clears, 1 token",
        ),
        (
            (
                "info",
                "run.started",
                {"plan": "plans/n.yaml", "clears": 2, "tokens": 1, "simulated": True},
            ),
            f"02:10:05 ▶ run {RUN_ID} started  plans/n.yaml: 2 clears, 1 token"
            "  at the simulator, not wolkvox",
        ),
        (
            (
                "info",
                "run.started",
                {"plan": "plans/n.yaml", "clears": 1, "tokens": 1, "dry_run": True},
            ),
            # A dry run is not journaled: no id that ``show`` could not find.
            "02:10:05 ▶ dry run started  plans/n.yaml: 1 clear, 1 token"
            "  nothing is sent, not journaled",
        ),
        (
            ClearStarted(CLEAR, ID, 1),
            "02:10:05 ▶ started    #7 0014/predictive/3001/busy  env:TOK_A",
        ),
        (
            ClearStarted(CLEAR, ID, 2),
            "02:10:05 ▶ started    #7 0014/predictive/3001/busy  env:TOK_A  attempt 2",
        ),
        (
            ClearRetrying(CLEAR, ID, 1, 0.6, UNAVAILABLE),
            "02:10:05 ↻ retrying   #7 0014/predictive/3001/busy  env:TOK_A  in 0.6 s"
            "  attempt 1: unreadable body: HTTP 503",
        ),
        (
            ClearRetrying(CLEAR, ID, 1, 60.0, CAPPED),
            "02:10:05 ↻ retrying   #7 0014/predictive/3001/busy  env:TOK_A  in 1m00s"
            " (Retry-After capped)  attempt 1: unreadable bod…",
        ),
        (
            ClearRetrying(CLEAR, ID, 2, 75.0, TIMEOUT),
            "02:10:05 ↻ retrying   #7 0014/predictive/3001/busy  env:TOK_A  in 1m15s"
            "  attempt 2: timeout",
        ),
        (
            ClearFinished(CLEAR, ID, Outcome.SUCCEEDED, None, 1, OK, 52),
            "02:10:05 ✓ succeeded  #7 0014/predictive/3001/busy  env:TOK_A  52 ms",
        ),
        (
            ClearFinished(CLEAR, ID, Outcome.SUCCEEDED, None, 3, OK, 9_050),
            "02:10:05 ✓ succeeded  #7 0014/predictive/3001/busy  env:TOK_A  3 attempts, 9.1 s",
        ),
        (
            ClearFinished(ALL, ID, Outcome.FAILED, Reason.RETRIES_EXHAUSTED, 4, TIMEOUT, 3_725_000),
            "02:10:05 ✗ failed     #8 0014/preview/3001/all  file:/run/secrets/ops"
            "  4 attempts, 1h02m05s  retries exhausted: timeout",
        ),
        (
            ClearFinished(CLEAR, ID, Outcome.FAILED, Reason.REJECTED, 1, BAD_REQUEST, 310),
            "02:10:05 ✗ failed     #7 0014/predictive/3001/busy  env:TOK_A  310 ms"
            "  rejected: HTTP 400: SOME PARAMETERS ARE REQUIRED",
        ),
        (
            ClearFinished(
                CLEAR,
                ID,
                Outcome.FAILED,
                Reason.TOKEN_REJECTED,
                1,
                Answer(
                    Verdict.TOKEN_REJECTED,
                    http_status=403,
                    code=403,
                    msg="PLEASE VALIDATE TOKEN",
                    error="FORBIDDEN",
                ),
                200,
            ),
            "02:10:05 ✗ failed     #7 0014/predictive/3001/busy  env:TOK_A  200 ms"
            "  token rejected: HTTP 403: PLEASE VALIDATE TOKEN…",
        ),
        (
            ClearFinished(CLEAR, ID, Outcome.FAILED, Reason.TOKEN_REJECTED, 1, REJECTED, 200),
            "02:10:05 ✗ failed     #7 0014/predictive/3001/busy  env:TOK_A  200 ms"
            "  token rejected: HTTP 403: PLEASE VALIDATE TOKEN",
        ),
        (
            ClearFinished(
                CLEAR, ID, Outcome.FAILED, Reason.LOCK_LOST, 1, None, 4_000, error="lock lost"
            ),
            "02:10:05 ✗ failed     #7 0014/predictive/3001/busy  env:TOK_A  4.0 s"
            "  lock lost: lock lost",
        ),
        (
            ClearFinished(
                CLEAR, ID, Outcome.SKIPPED, Reason.BLOCKED_BY_FAILURE, 0, None, 0, blocked_by=3
            ),
            "02:10:05 – skipped    #7 0014/predictive/3001/busy  env:TOK_A"  # noqa: RUF001
            "  blocked by failure of #3",
        ),
        (
            ClearFinished(CLEAR, ID, Outcome.SKIPPED, Reason.DRY_RUN, 0, None, 0),
            "02:10:05 – skipped    #7 0014/predictive/3001/busy  env:TOK_A  dry run",  # noqa: RUF001
        ),
        (
            ClearFinished(CLEAR, ID, Outcome.SKIPPED, Reason.ALREADY_SUCCEEDED, 0, None, 0),
            "02:10:05 ✓ done       #7 0014/predictive/3001/busy  env:TOK_A"
            "  already succeeded, not sent again",
        ),
        (
            TokenWaiting(CLEAR, ID, 2.345),
            "02:10:05 ⋯ waited     #7 0014/predictive/3001/busy  env:TOK_A"
            "  2.3 s for another process using the token",
        ),
        (
            (
                "warning",
                "run.interrupted",
                {"signal": "SIGINT", "calls_in_flight": 2, "tokens_resting": 1, "cut": False},
            ),
            "02:10:05 ! stopping   SIGINT: 2 calls in flight let finish, 1 token resting",
        ),
        (
            (
                "warning",
                "run.interrupted",
                {"signal": "SIGINT", "calls_in_flight": 1, "tokens_resting": 0, "cut": True},
            ),
            "02:10:05 ! stopping   SIGINT again: 1 call in flight cut, outcome unknown",
        ),
        (
            (
                "warning",
                "run.interrupted",
                {"signal": "SIGTERM", "calls_in_flight": 0, "tokens_resting": 0, "cut": False},
            ),
            "02:10:05 ! stopping   SIGTERM: no call in flight let finish",
        ),
        (
            (
                "info",
                "run.finished",
                {
                    "succeeded": 25,
                    "failed": 0,
                    "skipped": 0,
                    "duration_ms": 12_345,
                    "exit_code": 0,
                    "calls_per_token": {ID: 25},
                },
            ),
            "02:10:05 ✓ finished   25 succeeded, 0 failed, 0 skipped in 12.3 s, exit 0",
        ),
        (
            (
                "error",
                "run.finished",
                {
                    "succeeded": 3,
                    "failed": 1,
                    "skipped": 21,
                    "duration_ms": 125_000,
                    "exit_code": 1,
                    "calls_per_token": {ID: 4},
                    "error": "the run halted: disk full",
                },
            ),
            "02:10:05 ✗ finished   3 succeeded, 1 failed, 21 skipped in 2m05s, exit 1"
            "  the run halted: disk full",
        ),
        (
            # An event without a line of its own still reads as one line, empty fields left out.
            (
                "warning",
                "lock.renewed",
                {"seq": 7, "token": "env:TOK_A", "token_id": ID, "lease_s": 60.0, "why": None},
            ),
            "02:10:05 ! lock.renewed  #7  env:TOK_A  lease_s=60.0",
        ),
        (
            TokenResting(CLEAR, ID, RestReason.OUTCOME_UNKNOWN, 60.0, local("02:11:05"), TIMEOUT),
            "02:10:05 ⋯ resting    #7 0014/predictive/3001/busy  env:TOK_A"
            "  1m00s until 02:11:05  outcome unknown: timeout",
        ),
        (
            TokenResting(CLEAR, ID, RestReason.IN_FLIGHT_AT_RESUME, 42.0, local("02:10:47")),
            "02:10:05 ⋯ resting    #7 0014/predictive/3001/busy  env:TOK_A"
            "  42.0 s until 02:10:47  in flight when the run stopped",
        ),
        (
            TokenResting(CLEAR, ID, RestReason.MAINTENANCE, 120.0, local("02:12:05"), MAINTENANCE),
            "02:10:05 ⋯ resting    #7 0014/predictive/3001/busy  env:TOK_A"
            "  2m00s until 02:12:05  wolkvox under maintenance",
        ),
        (
            TokenResting(CLEAR, ID, RestReason.BUSY_ELSEWHERE, 90.0, local("02:11:35")),
            "02:10:05 ⋯ resting    #7 0014/predictive/3001/busy  env:TOK_A"
            "  1m30s until 02:11:35  another process's call may run",
        ),
        (
            ClearFinished(
                CLEAR,
                ID,
                Outcome.FAILED,
                Reason.MAINTENANCE,
                5,
                MAINTENANCE,
                1_801_000,
                rested_ms=1_800_000,
            ),
            "02:10:05 ✗ failed     #7 0014/predictive/3001/busy  env:TOK_A"
            "  5 attempts, 30m01s  maintenance: HTTP 403: SERVICE UNDER…",
        ),
    ],
)
def test_each_event_is_one_line_a_person_reads(
    item: Event | tuple[str, str, dict[str, object]], line: str
) -> None:
    assert console(item) == [line]


def test_the_run_id_is_said_once_at_the_start() -> None:
    lines = console(*RUN)
    assert [line for line in lines if RUN_ID in line] == [lines[0]]
    assert "run.started" not in lines[0] and "started" in lines[0]


def test_no_line_shows_an_empty_value() -> None:
    for line in console(*RUN):
        after_word = line[11:].split(None, 1)[1]  # past the time, the mark and the padded word
        assert not re.search(r"\bNone\b|=\s|=$|:$|\s$|\s{3}", after_word), line
        assert ID not in line  # the fingerprint is for machines: the JSON has it


def test_a_long_message_is_cut_at_120_characters_never_wrapped() -> None:
    answer = Answer(Verdict.FAILED, http_status=400, code=400, msg="No such campaign " * 40)
    event = ClearFinished(CLEAR, ID, Outcome.FAILED, Reason.REJECTED, 1, answer, 10)
    [line] = console(event)
    assert line == (
        "02:10:05 ✗ failed     #7 0014/predictive/3001/busy  env:TOK_A  10 ms"
        "  rejected: HTTP 400: No such campaign No such camp…"
    )
    assert len(line) == MAX_WIDTH


def test_a_deep_token_file_loses_the_middle_of_its_path_not_the_outcome() -> None:
    deep = dataclasses.replace(CLEAR, token=TokenRef("file", "/srv/" + "deep/" * 20 + "ops.token"))
    [line] = console(ClearFinished(deep, ID, Outcome.SUCCEEDED, None, 1, OK, 52))
    assert line == (
        "02:10:05 ✓ succeeded  #7 0014/predictive/3001/busy"
        "  file:/srv/dee…p/deep/deep/deep/ops.token  52 ms"
    )


def test_every_line_of_a_run_fits_in_120_columns() -> None:
    long = dataclasses.replace(CLEAR, campaign_id="C" * 150, token=TokenRef("file", "/x" * 80))
    lines = console(*RUN, TokenWaiting(long, ID, 1.0), ClearStarted(long, ID, 3))
    assert len(lines) == len(RUN) + 2
    assert all(len(line) <= MAX_WIDTH for line in lines)


def test_line_breaks_and_escape_codes_from_the_answer_cannot_break_the_line() -> None:
    answer = Answer(Verdict.FAILED, http_status=400, code=400, msg="bad\nline\x1b[2J\u2028end")
    [line] = console(ClearFinished(CLEAR, ID, Outcome.FAILED, Reason.REJECTED, 1, answer, 10))
    assert line.endswith("rejected: HTTP 400: bad\\nline\\x1b[2J\\u2028end")


@pytest.mark.parametrize(
    ("columns", "width"), [(None, 120), (40, 80), (80, 80), (100, 100), (120, 120), (250, 120)]
)
def test_the_width_follows_the_terminal_between_80_and_120_columns(
    columns: int | None, width: int
) -> None:
    assert console_width(columns) == width


@pytest.fixture
def terminal() -> Iterator[tuple[int, io.TextIOWrapper]]:
    """A pseudo-terminal 90 columns wide: its reading end and a text stream on the terminal."""
    reader, writer = os.openpty()
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 90, 0, 0))
    stream = open(writer, "w", encoding="utf-8", closefd=True)  # noqa: SIM115
    try:
        yield reader, stream
    finally:
        stream.close()
        os.close(reader)


def test_on_a_terminal_lines_fit_its_width_and_only_the_mark_is_coloured(
    terminal: tuple[int, io.TextIOWrapper], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    reader, stream = terminal
    answer = Answer(Verdict.FAILED, http_status=400, code=400, msg="No such campaign " * 10)
    _, log = make_log("console", RUN_ID, stream)
    log(ClearFinished(CLEAR, ID, Outcome.FAILED, Reason.REJECTED, 1, answer, 10))
    shown = os.read(reader, 4096).decode()
    assert "\x1b[1;31m✗\x1b[0m" in shown
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown).rstrip("\r\n")
    assert 85 <= len(plain) <= 90 and plain.endswith("…")  # cut at the terminal's 90, not 120


def test_no_colour_when_no_color_is_set(
    terminal: tuple[int, io.TextIOWrapper], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    reader, stream = terminal
    _, log = make_log("console", RUN_ID, stream)
    log(ClearStarted(CLEAR, ID, 1))
    assert "\x1b" not in os.read(reader, 4096).decode()


def test_a_stream_that_cannot_take_the_marks_gets_ascii_and_never_fails() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    odd = dataclasses.replace(CLEAR, campaign_id="Campa\u00f1a")
    answer = Answer(Verdict.FAILED, http_status=400, code=400, msg="x" * 300)
    _, log = make_log("console", RUN_ID, stream)
    log(ClearFinished(odd, ID, Outcome.SUCCEEDED, None, 1, OK, 52))
    log(ClearFinished(CLEAR, ID, Outcome.FAILED, Reason.REJECTED, 1, answer, 52))
    log(ClearFinished(CLEAR, ID, Outcome.SKIPPED, Reason.DRY_RUN, 0, None, 0))
    log(ClearRetrying(CLEAR, ID, 1, 1.0, TIMEOUT))
    lines = raw.getvalue().decode("ascii").splitlines()
    marks = [line.split(" ")[1] for line in lines]
    assert marks == ["+", "x", "-", "~"]
    assert "#7 0014/predictive/Campa\\xf1a/busy" in lines[0]
    assert len(lines[1]) == MAX_WIDTH and lines[1].endswith("xxx...")


def test_the_time_is_the_local_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/Bogota")
    time.tzset()
    try:
        before = datetime.now().astimezone()
        out = io.StringIO()
        make_logger("console", RUN_ID, out).info("clear.started", seq=1)
        after = datetime.now().astimezone()
    finally:
        monkeypatch.undo()
        time.tzset()
    stamp = out.getvalue()[:8]
    assert before.utcoffset() is not None and before.utcoffset().total_seconds() == -5 * 3600  # type: ignore[union-attr]
    assert re.fullmatch(r"\d\d:\d\d:\d\d", stamp)
    if before.date() == after.date():  # a test that ran across midnight says nothing
        assert before.strftime("%H:%M:%S") <= stamp <= after.strftime("%H:%M:%S")


# The token: its reference where people read, never its value anywhere.

SECRET_LANE = make_lane("s3cr3t-value-0123", dataclasses.replace(CLEAR, seq=1))


def secret_events() -> list[Event]:
    token_id, clear = SECRET_LANE.token_id, SECRET_LANE.clears[0]
    return [
        TokenWaiting(clear, token_id, 1.0),
        ClearStarted(clear, token_id, 1),
        ClearRetrying(clear, token_id, 1, 1.0, UNAVAILABLE),
        ClearFinished(clear, token_id, Outcome.FAILED, Reason.TOKEN_REJECTED, 2, REJECTED, 10),
        ClearFinished(clear, token_id, Outcome.SKIPPED, Reason.BLOCKED_BY_FAILURE, 0, None, 0),
    ]


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_token_value_never_appears_in_the_log(fmt: str) -> None:
    out = io.StringIO()
    logger, log = make_log(fmt, RUN_ID, out)  # type: ignore[arg-type]
    logger.info("run.started", plan="p.yaml", clears=1, tokens=1)
    for event in secret_events():
        log(event)
    logger.info("run.finished", calls_per_token={SECRET_LANE.token_id: 2}, exit_code=1)
    text = out.getvalue()
    assert SECRET_LANE.secret is not None
    assert SECRET_LANE.secret.reveal() not in text and "s3cr3t" not in text
    assert text.count("env:TOK_A") == len(secret_events())


def test_json_lines_name_the_token_by_reference_and_by_fingerprint() -> None:
    out = io.StringIO()
    _, log = make_log("json", RUN_ID, out)
    for event in secret_events():
        log(event)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {(line["token"], line["token_id"]) for line in lines} == {
        ("env:TOK_A", SECRET_LANE.token_id)
    }
    assert list(lines[0])[4:7] == ["seq", "token_id", "token"]


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
  - campaign_id: 4001
    token_file: {token_file}
    results: [failed]
"""


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    with running_simulator(latency_ms=1) as sim:
        yield sim


def test_a_real_run_names_tokens_by_reference_and_never_shows_a_value(
    sim: ThreadedSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("T_MAIN", "tok-main-0123456789")
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))
    token_file = tmp_path / "ops.token"
    token_file.write_text("tok-ops-9876543210\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(base_url=sim.base_url, token_file=token_file))
    assert main(["run", str(plan), "--yes", "--log-format", "console"]) == 0
    console_out = capsys.readouterr().out
    assert main(["run", str(plan), "--yes", "--log-format", "json"]) == 0
    json_out = capsys.readouterr().out
    for text in (console_out, json_out):
        assert "tok-main-0123456789" not in text and "tok-ops-9876543210" not in text
    assert "#1 0014/predictive/3001/no-answer  env:T_MAIN" in console_out
    assert re.search(
        r"✓ succeeded  #3 0014/predictive/4001/failed  file:\S+ops\.token  \d+ ms", console_out
    )
    lines = console_out.splitlines()
    assert len(lines) == 1 + 3 * 2 + 1 and all(len(line) <= MAX_WIDTH for line in lines)
    tokens = {json.loads(line).get("token") for line in json_out.splitlines()}
    assert tokens == {None, "env:T_MAIN", f"file:{token_file}"}
